"""``bench/compare_reference.py --baseline``: ours against a checkout of ours gives the same outputs
(docs/methods/stylegan2.md, "Fast paths")."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_baseline_rows_compare_equal_outputs():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "compare_reference.py"), "--baseline", str(ROOT),
                          "--rows", "g_infer", "d_train", "--sizes", "64", "--pairs", "1"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("baseline")]
    assert [(r[1], r[3]) for r in rows] == [("g_infer", "1"), ("g_infer", "8"), ("d_train", "4")]
    assert all(float(r[-1]) == 0.0 for r in rows), out  # same code, same weights: bit-equal outputs
    assert "rosinality: skipped" in out and "ada: skipped" in out
