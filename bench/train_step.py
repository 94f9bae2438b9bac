"""Benchmark of the StyleGAN2 training step per phase (docs/methods/stylegan2.md, "Training algorithm").

Times each phase of ``lightning_modules.gan.StyleGAN2Core`` - loss, backward and Adam step, with the other
network frozen as in training - outside Lightning, and prints images/second per phase plus the amortized
iteration (G_main + D_main + G_reg / pl_interval + D_reg / r1_interval), on CPU and on CUDA when available.

    python bench/train_step.py --sizes 32 64 --batch 16 --iters 5
    python bench/train_step.py --channels default --style-dim 512 --n-mlp 8 --sizes 64 --batch 4
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_modules.stylegan2 import StyleGAN2Module  # noqa: E402

#: the demo's channel table (configs/demo.yaml), extended to 64 px
TINY_CHANNELS = {4: 64, 8: 64, 16: 32, 32: 32, 64: 32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def phase_runners(module: StyleGAN2Module, real: torch.Tensor) -> dict:
    """Closures running one optimizer step of each phase, as ``training_step`` does."""
    opt_g, opt_d = module.configure_optimizers()

    def run(opt, trained, frozen, loss_fn, *args):
        def step():
            frozen.requires_grad_(False)
            trained.requires_grad_(True)
            loss, _ = loss_fn(*args)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            frozen.requires_grad_(True)
        return step

    g, d = module.generator, module.discriminator

    def d_main():
        with torch.no_grad():
            fake, _ = module.generate(real.shape[0])
        return module.discriminator_loss(real, fake)

    return {
        "G_main": run(opt_g, g, d, module.generator_loss, real),
        "G_reg": run(opt_g, g, d, module.generator_reg, real),
        "D_main": run(opt_d, d, g, d_main),
        "D_reg": run(opt_d, d, g, module.discriminator_reg, real),
    }


def time_ms(fn, iters: int, device: torch.device) -> float:
    """Median wall time in milliseconds after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench(size: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    channels = None if args.channels == "default" else {r: c for r, c in TINY_CHANNELS.items() if r <= size}
    torch.manual_seed(0)
    module = StyleGAN2Module(generator=dict(resolution=size, style_dim=args.style_dim, n_mlp=args.n_mlp,
                                            channels=channels), seed=0).to(device)
    real = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
    rows, amortized = [], 0.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    for phase, fn in phase_runners(module, real).items():
        with autocast:
            ms = time_ms(fn, args.iters, device)
        images = max(1, args.batch // module.gan.pl_batch_shrink) if phase == "G_reg" else args.batch
        weight = {"G_reg": 1 / module.gan.pl_interval, "D_reg": 1 / module.gan.r1_interval}.get(phase, 1.0)
        amortized += ms * weight
        rows.append({"device": device.type, "size": size, "phase": phase, "ms": ms, "img/s": images / ms * 1e3})
    rows.append({"device": device.type, "size": size, "phase": "iteration", "ms": amortized,
                 "img/s": args.batch / amortized * 1e3})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--channels", choices=["tiny", "default"], default="tiny",
                        help="tiny: the demo's table; default: rosinality's (512 up to 32 px)")
    parser.add_argument("--style-dim", type=int, default=64)
    parser.add_argument("--n-mlp", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="main phases under bf16 autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch}, "
          f"channels {args.channels}, style_dim {args.style_dim}, n_mlp {args.n_mlp}, bf16 {args.bf16}")
    print(f"{'device':<7}{'size':>5}  {'phase':<10}{'ms':>10}{'img/s':>10}")
    for name in devices:
        for size in args.sizes:
            for row in bench(size, args, torch.device(name)):
                print(f"{row['device']:<7}{row['size']:>5}  {row['phase']:<10}{row['ms']:>10.1f}{row['img/s']:>10.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
