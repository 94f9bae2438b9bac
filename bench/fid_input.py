"""The clean resize of the FID/KID input pipeline (metrics/features.py, docs/metrics.md "FID and KID").

Times, interleaved on the same random uint8 batches, the former formulation (clean-fid's resizer per NHWC
image, ``np.stack``, permute + ``.contiguous()``; written out below) against ``make_resize("clean")``
(the same resizer per image, written into one preallocated NCHW float32 buffer), checks that both give the
same bits, and prints the median milliseconds per batch and the ratio new/old::

    python bench/fid_input.py --threads 1 --batches 16 64 --sizes 64 256 --iters 7
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metrics.features import _pool, make_resize  # noqa: E402


def make_old_clean(size: int):
    """The former ``make_resize("clean")``: per-image clean-fid resizer, then stack and permute."""
    from cleanfid.resize import make_resizer

    fn = make_resizer("PIL", False, "bicubic", (size, size))

    def old_clean(images: torch.Tensor) -> torch.Tensor:
        arrays = images.detach().cpu().permute(0, 2, 3, 1).numpy()
        out = list(_pool().map(fn, arrays)) if len(arrays) > 1 else [fn(a) for a in arrays]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()

    return old_clean


def interleaved(fns: dict, x: torch.Tensor, iters: int) -> dict[str, float]:
    """Median ms of each function, calls alternating (order flipped every round) after one warm-up each."""
    for fn in fns.values():
        fn(x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(iters):
        for name in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name](x)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, which also size the resize pool")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="input resolutions")
    parser.add_argument("--out", type=int, default=299, help="output resolution")
    parser.add_argument("--iters", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # before the first resize: the pool is sized from it once
    old, new = make_old_clean(args.out), make_resize("clean", args.out)
    rows = []
    for res in args.sizes:
        for batch in args.batches:
            x = torch.from_numpy(np.random.RandomState(res + batch).randint(0, 256, (batch, 3, res, res),
                                                                               dtype=np.uint8))
            if not torch.equal(old(x), new(x)):
                raise SystemExit(f"B={batch} {res}px: outputs differ")
            t = interleaved({"old": old, "new": new}, x, args.iters)
            rows.append((batch, res, t["old"], t["new"]))
    print(f"\ntorch threads / resize pool workers: {torch.get_num_threads()} / {_pool()._max_workers}, "
          f"output {args.out}x{args.out}, median of {args.iters}, outputs bit-identical")
    print(f"{'B':>4} {'input':>8} {'old ms':>10} {'new ms':>10} {'new/old':>8} {'ms/img new':>11}")
    for batch, res, t_old, t_new in rows:
        print(f"{batch:>4} {f'{res}x{res}':>8} {t_old:>10.1f} {t_new:>10.1f} {t_new / t_old:>8.3f} "
              f"{t_new / batch:>11.2f}")


if __name__ == "__main__":
    main()
