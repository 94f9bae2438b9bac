"""``python invert.py``: invert a folder of real images into W+ codes of a generator (In-Domain GAN Inversion's
domain-regularized optimization, ``models.inversion``; docs/methods/idinvert.md).

Writes into ``--outdir``::

    codes/<name>.pt            the W+ code [n_latent, style_dim] of each image (torch.save of a tensor)
    reconstructions/<name>.png G(code)
    rendered/<generator>/<name>.png   the codes through each ``--render-with`` generator (same architecture)
    results.csv                per image: mse, psnr, ssim, lpips (when its weights are present), seconds
    summary.json               the means, the settings, the files used
    grid.png                   the first images (top row) above their reconstructions

Any generator ``models.checkpoints.load`` reads (or a registered asset name) and an encoder exported by the
``idinvert`` method (``encoder.pt``).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import save_image
from tqdm.auto import tqdm

from launch.errors import ConfigError

log = logging.getLogger("invert")


def build_parser() -> argparse.ArgumentParser:
    from models.inversion import PRESETS

    p = argparse.ArgumentParser(prog="python invert.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, help="generator file or asset name (its g_ema is used)")
    p.add_argument("--encoder", help="encoder.pt of an idinvert run (needed by every preset but mse_from_mean)")
    p.add_argument("--images", required=True, help="folder (or dataset zip) of aligned images")
    p.add_argument("--outdir", required=True)
    p.add_argument("--preset", default="in_domain", choices=sorted(PRESETS),
                   help="in_domain (the paper), encoder (no optimization), mse_from_mean, from_encoder")
    p.add_argument("--steps", type=int, help="optimization steps (100)")
    p.add_argument("--lr", type=float, help="Adam learning rate (0.01)")
    p.add_argument("--lambda-vgg", type=float, help="perceptual weight (5e-5)")
    p.add_argument("--lambda-dom", type=float, help="domain regularizer weight (2)")
    p.add_argument("--carry-optimizer", action="store_true", help="one Adam across batches (the TF inverter)")
    p.add_argument("--perceptual", default=None,
                   help="VGG16 weights (asset or file; default: the registered Caffe VGG16); 'random' for a stand-in")
    p.add_argument("--lpips", default="alex", help="LPIPS net of the table (alex, vgg, squeeze) or 'none'")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--render-with", nargs="*", default=[], help="more generators to render the codes through")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--grid", type=int, default=8, help="images in grid.png")
    return p


def _load_networks(args, settings):
    from models import checkpoints
    from models.encoders import load_encoder
    from models.perceptual import DEFAULT_WEIGHTS, VGG16Perceptual

    device = torch.device(args.device)
    loaded = checkpoints.load(args.generator, networks=("g_ema", "g"))
    generator = loaded.g_ema if loaded.g_ema is not None else loaded.g
    if generator is None:
        raise ConfigError(f"{args.generator} holds no generator")
    generator = generator.to(device).eval()
    encoder = None
    if args.encoder is not None:
        encoder, _ = load_encoder(args.encoder)
        encoder = encoder.to(device).eval()
        expected = (int(generator.n_latent), int(generator.style_dim))
        if (int(encoder.n_latent), int(encoder.style_dim)) != expected:
            raise ConfigError(f"encoder {args.encoder} makes codes {(encoder.n_latent, encoder.style_dim)} but "
                              f"generator {args.generator} takes {expected}")
    elif settings.init == "encoder" or settings.lambda_dom > 0:
        raise ConfigError(f"preset {args.preset!r} needs --encoder (or use --preset mse_from_mean)")
    perceptual = None
    if settings.lambda_vgg > 0:
        weights = None if args.perceptual == "random" else (args.perceptual or DEFAULT_WEIGHTS)
        perceptual = VGG16Perceptual(weights).to(device)
    mean_w = None
    if settings.init == "mean":
        mean_w = (loaded.latent_avg if loaded.latent_avg is not None else _mean_w(generator)).to(device)
    return generator, encoder, perceptual, mean_w


@torch.no_grad()
def _mean_w(generator) -> torch.Tensor:
    z = torch.randn(4096, generator.style_dim, generator=torch.Generator().manual_seed(0))
    return generator.style(z.to(next(generator.parameters()).device)).mean(0)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args) -> int:
    from datamodules.images import ImageDataModule
    from metrics.features import quantize
    from metrics.lpips_family import LPIPSDistance, load_lpips, reconstruction_scores
    from models.inversion import Inverter, settings_from

    settings = settings_from(args.preset, steps=args.steps, lr=args.lr, lambda_vgg=args.lambda_vgg,
                             lambda_dom=args.lambda_dom, carry_optimizer=args.carry_optimizer or None)
    generator, encoder, perceptual, mean_w = _load_networks(args, settings)
    device = next(generator.parameters()).device
    data = ImageDataModule(args.images, resolution=int(generator.size), batch_size=args.batch_size, xflip=False,
                           max_images=args.max_images)
    data.setup()
    names = list(data.manifest_names)
    dist = None
    if args.lpips != "none":
        try:
            model, lp_name, sha = load_lpips(args.lpips, "auto", device)
            dist = LPIPSDistance(model, lp_name, sha)
        except FileNotFoundError as err:
            log.warning("LPIPS column skipped: %s", str(err).splitlines()[0])
    others = []
    for path in args.render_with:
        from models import checkpoints

        other = checkpoints.load_generator(path).to(device)
        if (other.n_latent, other.style_dim, other.size) != (generator.n_latent, generator.style_dim, generator.size):
            raise ConfigError(f"{path} has another architecture than {args.generator}: its codes do not transfer")
        others.append((Path(str(path)).stem, other))

    out = Path(args.outdir)
    for sub in ("codes", "reconstructions", *(f"rendered/{n}" for n, _ in others)):
        (out / sub).mkdir(parents=True, exist_ok=True)
    inverter = Inverter(generator, encoder, perceptual, mean_w)
    rows, grid_real, grid_rec = [], [], []
    batches = data.reference_set("train").batches(args.batch_size)
    start = 0
    for batch in tqdm(batches, total=-(-len(names) // args.batch_size), desc="invert", unit="batch"):
        batch_names = names[start:start + batch.shape[0]]
        start += batch.shape[0]
        images = batch.to(device).float() / 127.5 - 1.0
        result = inverter.invert(images, settings)
        recon8 = quantize(result.images).cpu()
        scores = reconstruction_scores(dist, recon8, batch) if dist is not None else None
        if scores is None:
            from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

            p01, t01 = recon8.double() / 255, batch.double() / 255
            scores = {"psnr": peak_signal_noise_ratio(p01, t01, data_range=1.0, reduction="none", dim=(1, 2, 3)),
                      "ssim": structural_similarity_index_measure(p01, t01, data_range=1.0, reduction="none"),
                      "mse": ((p01 - t01) * 2).pow(2).mean(dim=(1, 2, 3))}
        for i, name in enumerate(batch_names):
            stem = Path(name).with_suffix("").as_posix().replace("/", "__")
            torch.save(result.codes[i].cpu().clone(), out / "codes" / f"{stem}.pt")
            save_image(result.images[i] * 0.5 + 0.5, out / "reconstructions" / f"{stem}.png")
            for other_name, other in others:
                with torch.no_grad():
                    img = other([result.codes[i:i + 1]], input_is_latent=True, randomize_noise=False)[0]
                save_image(img.clamp(-1, 1)[0] * 0.5 + 0.5, out / "rendered" / other_name / f"{stem}.png")
            row = {"name": name, **{k: float(v[i]) for k, v in scores.items()},
                   "seconds": result.seconds / len(batch_names)}
            rows.append(row)
        if len(grid_real) < args.grid:
            grid_real.extend(images[: args.grid - len(grid_real)].cpu())
            grid_rec.extend(result.images[: args.grid - len(grid_rec)].cpu())
    columns = ["name", "mse", "psnr", "ssim"] + (["lpips"] if dist is not None else []) + ["seconds"]
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    means = {k: sum(r[k] for r in rows) / len(rows) for k in columns[1:]}
    summary = {"images": len(rows), "means": means, "preset": args.preset, "settings": vars(settings),
               "generator": str(args.generator), "encoder": args.encoder, "lpips": None if dist is None else dist.name,
               "time": time.time()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if grid_real:
        save_image(torch.cat([torch.stack(grid_real), torch.stack(grid_rec)]) * 0.5 + 0.5, out / "grid.png",
                   nrow=len(grid_real))
    print("\n" + " | ".join(f"{k} {v:.4g}" for k, v in means.items()) + f"  ({len(rows)} images) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
