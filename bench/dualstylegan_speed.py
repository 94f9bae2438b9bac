"""Speed of a DualStyleGAN Stage III iteration (docs/methods/dualstylegan.md, "Stage III: style transfer"), fp32.

One Stage III iteration of ``lightning_modules.dualstylegan.DualStyleGANModule`` (``stage: style``) as the
Trainer runs it: the D step (logistic loss on the paired exemplars or the style data, lazy R1 every 16), then
the G step (adversarial, perceptual on paired steps, CX at relu3_1, feature matching, identity against the
content image, L2 of the extrinsic path), path length every 4. Paired and unpaired steps alternate, so the
table gives the median over ``--iters`` iterations after ``--warmup`` (both kinds), and the median of each kind.

Networks are random: a Stage II product built on the spot from a random intrinsic StyleGAN2 (speed does not
depend on the weights), VGG19 and ArcFace as seeded random stand-ins of the real architectures (the same
cost), a code table of random W+ codes and a folder of random style images at the resolution. Widths:

* ``full``: config-f (style_dim 512, 8 mapping layers, channel multiplier 2), VGG and ArcFace inputs pooled
  to 256 (the official setting): the network of the paper at that resolution;
* ``small``: style_dim 128, 4 mapping layers, channels halved twice (channel multiplier 1, capped at 128).

    python bench/dualstylegan_speed.py                           # 64 and 256 px, small and full, CPU
    python bench/dualstylegan_speed.py --sizes 64 --widths full --iters 6 --batch 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_modules.dualstylegan import DualStyleGANModule  # noqa: E402
from models import checkpoints  # noqa: E402
from models.stylegan2 import Discriminator, Generator  # noqa: E402
from models.style_codes import StyleCodes  # noqa: E402
from tests.helpers_gan import RandomImages  # noqa: E402

N_STYLES = 8


def arch(width: str, size: int) -> dict:
    if width == "full":
        return dict(size=size, style_dim=512, n_mlp=8, channel_multiplier=2)
    channels = {r: min(128, 512 // max(1, r // 16)) for r in (2 ** k for k in range(2, size.bit_length()))}
    return dict(size=size, style_dim=128, n_mlp=4, channels=channels)


def build(width: str, size: int, root: Path, batch: int, iterations: int) -> DualStyleGANModule:
    from PIL import Image

    torch.manual_seed(0)
    a = arch(width, size)
    g = Generator(**a)
    d = Discriminator(size, channel_multiplier=a.get("channel_multiplier", 2), channels=a.get("channels"))
    parent = checkpoints.save(root / "parent.pt", g_ema=g, g=g, d=d)
    stage2 = DualStyleGANModule(generator=str(parent), vgg="random", seed=0)
    init = stage2.export(root / "stage2.pt")
    names = [f"s{i}.png" for i in range(N_STYLES)]
    (root / "styles").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (size, size, 3)).astype(np.uint8)).save(root / "styles" / name)
    gen = torch.Generator().manual_seed(1)
    shape = (N_STYLES, g.n_latent, g.style_dim)
    codes = StyleCodes(names, torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)).save(root / "c.pt")
    return DualStyleGANModule(stage="style", init=str(init), codes=str(codes), styles=str(root / "styles"),
                              vgg="random", identity="random", seed=0, vgg_size=min(256, size),
                              total_kimg=batch * iterations / 1000)


class Timer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append((batch_idx, time.perf_counter() - self._t))


def time_iterations(module: DualStyleGANModule, size: int, batch: int, iters: int, warmup: int) -> dict:
    timer = Timer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], default_root_dir=tempfile.mkdtemp(prefix="styleshift-bench-"))
    trainer.fit(module, RandomImages(n=batch * (iters + warmup), batch_size=batch, size=size))
    kept = timer.times[warmup:warmup + iters]
    by_kind = {"unpaired": [t for i, t in kept if i % 2 == 0], "paired": [t for i, t in kept if i % 2 == 1]}
    return {"s/it": statistics.median(t for _, t in kept),
            **{f"{k} s/it": statistics.median(v) for k, v in by_kind.items() if v}, "iters": len(kept)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--widths", default="small,full")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for width in args.widths.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                module = build(width, size, Path(tmp), args.batch, args.iters + args.warmup)
                result = time_iterations(module, size, args.batch, args.iters, args.warmup)
            rows.append({"size": size, "width": width, "batch": args.batch, **result})
            print(rows[-1], flush=True)
    print(f"\nDualStyleGAN Stage III iteration, CPU fp32, {args.threads} threads, batch {args.batch}\n")
    print("| size | width | s/it | unpaired s/it | paired s/it | img/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['width']} | {r['s/it']:.3f} | {r.get('unpaired s/it', float('nan')):.3f} | "
              f"{r.get('paired s/it', float('nan')):.3f} | {r['batch'] / r['s/it']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
