"""Metric result files and tables (README, "Evaluation": the test harness's JSON and printed table).

Per-value lines of ``run_dir/metrics.jsonl`` are written by :func:`metrics.jsonl.append_jsonl`, the one
writer of that file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no NaN), tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Plain-text table (values formatted with 6 significant digits)."""
    def fmt(v):
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])
