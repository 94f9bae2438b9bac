"""Re-export of :mod:`metrics.jsonl`, the one writer of ``run_dir/metrics.jsonl`` (kept for the launcher's
imports; the callbacks and loggers import :mod:`metrics.jsonl` directly)."""
from metrics.jsonl import FILENAME, append_jsonl, global_rank, json_safe, read_jsonl

__all__ = ["FILENAME", "json_safe", "global_rank", "append_jsonl", "read_jsonl"]
