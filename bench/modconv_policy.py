"""Fused (grouped conv) vs non-fused (shared-weight conv) modulation, per layer shape
(docs/methods/stylegan2.md, "Fast paths"): the table ``fused_modconv="auto"`` was chosen from.

Times one ``StyledConv`` (plain and 2x-upsampling) of the config-f channel table at each resolution,
inference (no grad) and forward+backward (with the input gradient, as inside a network), with interleaved
pairs; prints the median of per-pair ratios ``fused / non-fused`` (below 1: fused is faster) with min-max.

    python bench/modconv_policy.py --batches 1 2 4 8 --sizes 8 32 64 128 256 --pairs 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.stylegan2 import default_channels  # noqa: E402
from models.stylegan2_layers import StyledConv  # noqa: E402


def ratio(fn_a, fn_b, pairs: int) -> tuple[float, float, float]:
    fn_a(), fn_b()
    rs = []
    for k in range(pairs):
        t = {}
        for name, fn in (("a", fn_a), ("b", fn_b)) if k % 2 == 0 else (("b", fn_b), ("a", fn_a)):
            t0 = time.perf_counter()
            fn()
            t[name] = time.perf_counter() - t0
        rs.append(t["a"] / t["b"])
    return statistics.median(rs), min(rs), max(rs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 64, 128, 256])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = default_channels(2)
    print(f"# torch {torch.__version__}, cpu x{torch.get_num_threads()} threads, fp32; ratio = fused / non-fused")
    print(f"{'res':>4} {'in':>4} {'out':>4} {'up':>3} {'batch':>5} | {'infer':>6} {'min-max':>11} | "
          f"{'fwd+bwd':>7} {'min-max':>11}")
    for res in args.sizes:
        for up in (True, False):
            cin = table[res // 2] if up else table[res]
            cout = table[res]
            torch.manual_seed(0)
            layer = StyledConv(cin, cout, 3, 512, upsample=up)
            for b in args.batches:
                x = torch.randn(b, cin, res // 2 if up else res, res // 2 if up else res)
                w = torch.randn(b, 512)

                def infer(fused, layer=layer, x=x, w=w):
                    with torch.no_grad():
                        layer(x, w, noise_mode="none", fused=fused)

                xg = x.clone().requires_grad_(True)  # inside a network the input gradient is needed too

                def train(fused, layer=layer, x=xg, w=w):
                    layer.zero_grad(set_to_none=True)
                    x.grad = None
                    layer(x, w, noise_mode="none", fused=fused).square().mean().backward()

                ri = ratio(lambda: infer(True), lambda: infer(False), args.pairs)
                rt = ratio(lambda: train(True), lambda: train(False), args.pairs)
                print(f"{res:>4} {cin:>4} {cout:>4} {'y' if up else 'n':>3} {b:>5} | {ri[0]:>6.2f} "
                      f"{ri[1]:>5.2f}-{ri[2]:<5.2f} | {rt[0]:>7.2f} {rt[1]:>5.2f}-{rt[2]:<5.2f}", flush=True)


if __name__ == "__main__":
    main()
