"""``metrics.jsonl``: one JSON object per line in the run directory (README, "Run directory").

Every writer (the scalar logger, the metrics callback, the launcher's resume marker) goes through
:func:`append_jsonl`: global rank zero only, one ``write`` of a whole line under an exclusive ``flock``, so
lines from several writers never interleave and a crash never leaves half a line. Values are made
JSON-safe: tensors and numpy scalars become numbers, paths become strings, and non-finite floats become
the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (strict JSON has no NaN; the value is kept
visible, not dropped).

No Lightning import: the global rank comes from ``torch.distributed`` when a process group is
initialized, else from the launcher's environment (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``,
``JSM_NAMESPACE_RANK``, the variables Lightning reads too), else 0.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch.distributed as dist

FILENAME = "metrics.jsonl"
RANK_ENV_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


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


def global_rank() -> int:
    """This process's global rank: the process group's, else the launcher's environment, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for key in RANK_ENV_VARS:
        value = os.environ.get(key)
        if value is not None:
            return int(value)
    return 0


def append_jsonl(run_dir: str | Path | None, record: Mapping[str, Any], filename: str = FILENAME) -> Path | None:
    """Append ``record`` as one line to ``run_dir/metrics.jsonl``; return the file path.

    A no-op returning ``None`` when ``run_dir`` is ``None`` (runs without a directory) or on ranks other
    than zero.
    """
    if run_dir is None or global_rank() != 0:
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


__all__ = ["FILENAME", "json_safe", "global_rank", "append_jsonl", "read_jsonl"]
