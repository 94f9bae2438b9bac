"""``metrics.jsonl``: one JSON object per line in the run directory (DESIGN.md contracts 4 and 6).

Every writer (the scalar logger, the metric callbacks) goes through :func:`append_jsonl`: rank zero only,
one ``write`` of a whole line under an exclusive ``flock``, so lines from several writers never
interleave and a crash never leaves half a line. Values are made JSON-safe: tensors and numpy scalars
become numbers, paths become strings, and non-finite floats become the strings ``"NaN"``,
``"Infinity"``, ``"-Infinity"`` (strict JSON has no NaN; the value is kept visible, not dropped).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

FILENAME = "metrics.jsonl"


def json_safe(value: Any, where: str = "record") -> Any:
    """``value`` as plain JSON types; raise ``TypeError`` naming ``where`` for anything else."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
    item = getattr(value, "item", None)  # torch tensors and numpy scalars / arrays
    numel = getattr(value, "numel", None) or getattr(value, "size", None)
    if callable(item) and (numel() if callable(numel) else numel) == 1:
        return json_safe(item(), where)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return json_safe(tolist(), where)
    raise TypeError(f"{where}: cannot write a {type(value).__name__} to {FILENAME}")


def _is_rank_zero() -> bool:
    from lightning_fabric.utilities.rank_zero import rank_zero_only
    return getattr(rank_zero_only, "rank", 0) == 0


def append_jsonl(run_dir: str | Path | None, record: Mapping[str, Any], filename: str = FILENAME) -> Path | None:
    """Append ``record`` as one line to ``run_dir/metrics.jsonl``; return the file path.

    A no-op returning ``None`` when ``run_dir`` is ``None`` (tests, runs without a directory) or on
    ranks other than zero.
    """
    if run_dir is None or not _is_rank_zero():
        return None
    line = (json.dumps(json_safe(dict(record)), allow_nan=False) + "\n").encode()
    path = Path(run_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)  # closing releases the lock
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a JSONL file (a convenience for tests and notebooks)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
