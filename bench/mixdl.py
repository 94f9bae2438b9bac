"""Benchmark: a MixDL training iteration vs a plain StyleGAN2 iteration (docs/methods/mixdl.md, "Compute").

Both modules are trained by a Lightning ``Trainer`` on random images (the real training step: manual
optimization, lazy R1 / path length at their intervals, EMA). Wall time is taken per iteration with a
callback (CUDA synchronized); the first iteration (warm-up, and the one where every regularizer fires) is
dropped. MixDL alternates mixup iterations (patch heads, two distance losses, ~5 generator passes) and
plain StyleGAN2 iterations; both kinds are reported, and their mean is what a run costs.

    python bench/mixdl.py --sizes 64 256 --batch 4 --iters 6
    python bench/mixdl.py --sizes 256 --width 0.25 --iters 2     # CPU: a quarter of config-f's channels
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_modules.mixdl import MixDLModule  # noqa: E402
from lightning_modules.stylegan2 import StyleGAN2Module  # noqa: E402
from models.stylegan2 import default_channels  # noqa: E402


class IterationTimer(pl.Callback):
    """Seconds of every training iteration, tagged mixup / plain."""

    def __init__(self, device: torch.device):
        self.device, self.times, self._t0 = device, [], 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync()
        iteration = pl_module.iteration - 1
        mixup = bool(getattr(pl_module, "is_mixup_iteration", lambda i: False)(iteration))
        self.times.append((iteration, mixup, time.perf_counter() - self._t0))


def channel_table(channel_multiplier: int, width: float) -> dict[int, int] | None:
    """The default channel table scaled by ``width`` (None at width 1)."""
    if width == 1:
        return None
    return {res: max(8, int(round(c * width))) for res, c in default_channels(channel_multiplier).items()}


def run(method: str, size: int, batch: int, iters: int, channel_multiplier: int, width: float,
        device: torch.device) -> list:
    torch.manual_seed(0)
    common = dict(generator=dict(resolution=size, channel_multiplier=channel_multiplier,
                                 channels=channel_table(channel_multiplier, width)), seed=0)
    module = (MixDLModule(**common, patch_resolutions=(32, 16)) if method == "mixdl"
              else StyleGAN2Module(**common))
    data = torch.rand(batch * (iters + 1), 3, size, size) * 2 - 1
    timer = IterationTimer(device)
    trainer = pl.Trainer(accelerator=device.type, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                         default_root_dir=tempfile.mkdtemp(prefix="styleshift-bench-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(data, batch_size=batch, drop_last=True))
    return timer.times[1:]


def summarize(times: list, batch: int) -> str:
    def cell(rows):
        if not rows:
            return f"{'-':>9} {'-':>7}"
        ms = statistics.mean(t for _, _, t in rows) * 1e3
        return f"{ms:>9.0f} {batch / ms * 1e3:>7.2f}"
    return f"{cell(times)} | {cell([r for r in times if r[1]])} | {cell([r for r in times if not r[1]])}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batch", type=int, default=4, help="per-device batch = number of mixup anchors")
    ap.add_argument("--iters", type=int, default=6, help="timed iterations (after one warm-up)")
    ap.add_argument("--channel-multiplier", type=int, default=2)
    ap.add_argument("--width", type=float, default=1.0, help="scale every channel count (CPU runs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"# MixDL vs StyleGAN2 training iteration on {name}, torch {torch.__version__}, fp32, "
          f"batch {args.batch}, cm={args.channel_multiplier}, width {args.width}, "
          f"mean of {args.iters} iterations after a warm-up")
    header = (f"{'size':>5} {'method':>9} | {'all ms':>9} {'img/s':>7} | {'mixup ms':>9} {'img/s':>7} | "
              f"{'plain ms':>9} {'img/s':>7}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for method in ("stylegan2", "mixdl"):
            times = run(method, size, args.batch, args.iters, args.channel_multiplier, args.width, device)
            print(f"{size:>5} {method:>9} | {summarize(times, args.batch)}", flush=True)


if __name__ == "__main__":
    main()
