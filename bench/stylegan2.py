"""Benchmark of the StyleGAN2 backbone (docs/methods/stylegan2.md, "Fast paths").

Measures, side by side in one run:
  * generator inference (no grad) and a G+D training step (non-saturating loss, both backwards),
  * fused (grouped conv) vs non-fused (shared-weight conv) modulation,
  * fp32 vs bf16 autocast,
at the given resolutions and batch sizes, on CPU and on CUDA when available.

    python bench/stylegan2.py --sizes 64 256 --batches 1 4 --iters 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.stylegan2 import Discriminator, Generator  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cpu_has_native_bf16() -> bool:
    """True when /proc/cpuinfo lists avx512_bf16 or amx_bf16 (fast oneDNN bf16 convolutions)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def time_it(fn, iters: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in milliseconds after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_case(size: int, batch: int, fused: bool, bf16: bool, device: torch.device, iters: int,
               channel_multiplier: int) -> dict:
    torch.manual_seed(0)
    g = Generator(size, channel_multiplier=channel_multiplier).to(device)
    d = Discriminator(size, channel_multiplier=channel_multiplier).to(device)
    g.fused_modconv = fused
    z = torch.randn(batch, 512, device=device)
    real = torch.randn(batch, 3, size, size, device=device)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else \
        (lambda: torch.autocast(device.type, enabled=False))

    def infer():
        with torch.no_grad(), ctx():
            g([z], noise_mode="const")

    def train_step():
        g.zero_grad(set_to_none=True)
        d.zero_grad(set_to_none=True)
        with ctx():
            fake = g([z])[0]
            loss_g = F.softplus(-d(fake)).mean()
        loss_g.backward()
        with ctx():
            loss_d = F.softplus(d(fake.detach())).mean() + F.softplus(-d(real)).mean()
        loss_d.backward()

    t_inf = time_it(infer, iters, device)
    t_train = time_it(train_step, iters, device)
    return dict(size=size, batch=batch, modconv="fused" if fused else "non-fused",
                precision="bf16" if bf16 else "fp32", infer_ms=t_inf, infer_ips=batch / t_inf * 1e3,
                train_ms=t_train, train_ips=batch / t_train * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--channel-multiplier", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                    help="default: fp32 and bf16 on CUDA or on CPUs with native bf16, else fp32 only")
    args = ap.parse_args()
    device = torch.device(args.device)
    precisions = args.precisions or (["fp32", "bf16"] if device.type == "cuda" or cpu_has_native_bf16()
                                     else ["fp32"])
    if "bf16" not in precisions:
        print("# bf16 skipped: this CPU has no native bf16 (avx512_bf16/amx_bf16); bf16 convs fall back to "
              "slow reference kernels here (pass --precisions fp32 bf16 to measure anyway)")
    if device.type == "cuda":  # conformance-style fp32: no TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"# StyleGAN2 backbone benchmark on {name}, torch {torch.__version__}, cm={args.channel_multiplier}")
    header = (f"{'size':>5} {'batch':>5} {'modconv':>9} {'prec':>5} | {'G infer ms':>10} {'img/s':>8} | "
              f"{'G+D step ms':>11} {'img/s':>8}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for batch in args.batches:
            for bf16 in [p == "bf16" for p in precisions]:
                for fused in (True, False):
                    r = bench_case(size, batch, fused, bf16, device, args.iters, args.channel_multiplier)
                    print(f"{r['size']:>5} {r['batch']:>5} {r['modconv']:>9} {r['precision']:>5} | "
                          f"{r['infer_ms']:>10.1f} {r['infer_ips']:>8.2f} | "
                          f"{r['train_ms']:>11.1f} {r['train_ips']:>8.2f}",
                          flush=True)


if __name__ == "__main__":
    main()
