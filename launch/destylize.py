"""``python -m launch.destylize``: DualStyleGAN's facial destylization of a folder of style images into a table
of intrinsic / extrinsic W+ codes (``models.destylization``; docs/methods/dualstylegan.md, "Facial destylization").

Example::

    python -m launch.destylize --styles data/cartoon/images --finetuned runs/cartoon-g/g.pt \\
        --source stylegan2-ffhq-1024 --encoder runs/idinvert-ffhq/encoder.pt --out cartoon_codes.pt

Needs the fine-tuned generator g', the generator it was fine-tuned from (g), a W+ encoder of g (the
``encoder.pt`` of an ``idinvert`` run), LPIPS-VGG (asset ``lpips-vgg``) and, for faces, the identity network
(asset ``identity-arcface-ir-se50``; ``--no-identity`` for non-face styles).

The table (``models.style_codes.StyleCodes``: file name -> intrinsic and extrinsic code) is rewritten after every
batch; a rerun with the same ``--out`` skips the file names already in it, so an interrupted run resumes.
``--previews DIR`` saves, per image, the strip style image | g(e) | destylized face X | g(i).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from launch.errors import ConfigError

log = logging.getLogger("destylize")

IDENTITY_ASSET = "identity-arcface-ir-se50"
_COMPARED = ("steps", "lr", "lambda_id", "lambda_reg", "lambda_noise", "truncation", "truncation_center",
             "preserve_colour", "colour_from", "res_index", "seed", "loss_size")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.destylize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--styles", required=True, help="folder of (aligned) style images; names are paths relative to it")
    p.add_argument("--finetuned", required=True, help="g': the generator fine-tuned on the styles (file or asset)")
    p.add_argument("--source", required=True, help="g: the generator g' was fine-tuned from (file or asset)")
    p.add_argument("--encoder", required=True, help="W+ encoder of g (encoder.pt of an idinvert run)")
    p.add_argument("--out", required=True, help="code table to write (and resume from)")
    p.add_argument("--steps", type=int, default=300, help="optimisation steps per image (300)")
    p.add_argument("--lr", type=float, default=0.1, help="peak Adam learning rate (0.1)")
    p.add_argument("--lambda-id", type=float, default=0.1, help="identity weight (0.1)")
    p.add_argument("--lambda-reg", type=float, default=1.0, help="layer-wise regulariser weight (1)")
    p.add_argument("--lambda-noise", type=float, default=1e5, help="noise regulariser weight (1e5)")
    p.add_argument("--truncation", type=float, default=0.7, help="psi of the destylized face (0.7; 0.5 for "
                                                                   "styles far from real faces)")
    p.add_argument("--truncation-center", choices=("mean", "zero"), default="mean",
                   help="truncate toward the mean W (default) or scale the code toward 0 (the official code)")
    p.add_argument("--no-preserve-colour", dest="preserve_colour", action="store_false",
                   help="keep the optimised colour rows instead of the style image's")
    p.add_argument("--colour-from", type=int, default=None, help="first colour row (default res_index + 2)")
    p.add_argument("--no-identity", action="store_true", help="no identity term (non-face styles)")
    p.add_argument("--identity-weights", default="auto",
                   help="auto (asset identity-arcface-ir-se50), a file, random (a stand-in, smoke runs only) or none")
    p.add_argument("--lpips-weights", default="auto",
                   help="auto (asset lpips-vgg), a VGG16 file, or random (a stand-in, smoke runs only)")
    p.add_argument("--batch", type=int, default=4, help="images per optimisation (results do not depend on it)")
    p.add_argument("--loss-size", type=int, default=256, help="resolution of the losses (256)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--previews", default=None, help="folder for the preview strips (optional)")
    return p


def list_styles(root: Path) -> list[str]:
    """Image files under ``root`` (recursively, hidden entries skipped) as sorted relative POSIX paths."""
    from datamodules.transforms import IMAGE_EXTENSIONS

    if not root.is_dir():
        raise ConfigError(f"style folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not names:
        raise ConfigError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) in style folder {root}")
    return names


def check_readable(root: Path, names: list[str]) -> None:
    """Fail early, naming the first file that is not a readable image."""
    from PIL import Image

    for name in names:
        try:
            with Image.open(root / name) as img:
                img.verify()
        except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
            raise ConfigError(f"{root / name}: not a readable image ({type(err).__name__}: {err})") from None


def _identity(args, device):
    from models.identity import ArcFaceIRSE50, load_arcface

    choice = "none" if args.no_identity or args.lambda_id == 0 else args.identity_weights
    if choice == "none":
        return None
    if choice == "random":
        log.warning("identity: a random IR-SE50 stand-in (smoke runs only; not an identity loss)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = ArcFaceIRSE50()
        return net.requires_grad_(False).eval().to(device)
    from models.assets import resolve

    try:
        path = resolve(IDENTITY_ASSET if choice == "auto" else choice)
    except FileNotFoundError as err:
        raise ConfigError(f"{err}\n(non-face styles: pass --no-identity)") from None
    return load_arcface(path).to(device)


def _load(args):
    from metrics.lpips_family import load_lpips
    from models import checkpoints
    from models.encoders import load_encoder

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu)")
    if not Path(args.encoder).is_file():
        raise ConfigError(f"--encoder {args.encoder}: file not found (the encoder.pt of an idinvert run)")
    finetuned = checkpoints.load_generator(args.finetuned).to(device)
    source = checkpoints.load_generator(args.source).to(device)
    arch = lambda g: (int(g.size), int(g.n_latent), int(g.style_dim))  # noqa: E731
    if arch(finetuned) != arch(source):
        raise ConfigError(f"--finetuned {args.finetuned} {arch(finetuned)} and --source {args.source} {arch(source)} "
                          f"differ in (size, n_latent, style_dim): codes do not transfer between them")
    encoder, _ = load_encoder(args.encoder, map_location=device)
    if (int(encoder.n_latent), int(encoder.style_dim)) != arch(source)[1:]:
        raise ConfigError(f"--encoder {args.encoder} makes W+ codes {(encoder.n_latent, encoder.style_dim)}, the "
                          f"generators take {arch(source)[1:]}")
    if args.lpips_weights == "random":
        log.warning("LPIPS: random VGG16 trunk (smoke runs only; not a perceptual loss)")
    lpips, _, _ = load_lpips("vgg", None if args.lpips_weights == "random" else args.lpips_weights, device)
    return finetuned, source, encoder.to(device), lpips, _identity(args, device)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as err:
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 2


def _check_args(args) -> None:
    for key in ("steps", "batch", "loss_size"):
        value = getattr(args, key)
        if value < (0 if key == "steps" else 1):
            raise ConfigError(f"--{key.replace('_', '-')} must be {'>= 0' if key == 'steps' else '>= 1'}, got {value}")
    if not 0 <= args.truncation <= 1:
        raise ConfigError(f"--truncation must be in [0, 1], got {args.truncation}")


def run(args) -> int:
    from torchvision.utils import save_image
    from tqdm.auto import tqdm

    from models.destylization import destylize
    from models.style_codes import StyleCodes

    _check_args(args)
    root = Path(args.styles)
    names = list_styles(root)
    out = Path(args.out)
    done = StyleCodes.load(out) if out.is_file() else None
    todo = [n for n in names if done is None or n not in done.names]
    if done is not None:
        log.info("%s: %d of %d style images already done, %d to go", out, len(names) - len(todo), len(names),
                 len(todo))
    if not todo:
        print(f"nothing to do: every image of {root} is in {out}")
        return 0
    check_readable(root, todo)
    finetuned, source, encoder, lpips, identity = _load(args)
    if done is not None:
        done.check(int(source.n_latent), int(source.style_dim), str(out))
    previews = Path(args.previews) if args.previews else None

    table = {"codes": done}

    def save_batch(batch) -> None:
        new = batch.codes()
        old = table["codes"]
        if old is not None:
            differ = {k: (old.meta.get(k), new.meta.get(k)) for k in _COMPARED if old.meta.get(k) != new.meta.get(k)}
            if differ and not table.get("warned"):
                log.warning("%s was written with other settings %s (old, new); appending anyway", out, differ)
                table["warned"] = True
            new = StyleCodes(old.names + new.names, torch.cat([old.intrinsic, new.intrinsic]),
                             torch.cat([old.extrinsic, new.extrinsic]), dict(old.meta))
        table["codes"] = new
        new.save(out)
        if previews is not None and batch.previews is not None:
            for name, strip in zip(batch.names, batch.previews):
                path = previews / Path(name).with_suffix(".png")
                path.parent.mkdir(parents=True, exist_ok=True)
                save_image(strip.cpu() * 0.5 + 0.5, path, nrow=4, padding=1)

    bar = tqdm(total=max(1, args.steps) * -(-len(todo) // args.batch), desc="destylize", unit="step")
    try:
        codes = destylize(
            [root / n for n in todo], todo, encoder=encoder, finetuned=finetuned, source=source, lpips=lpips,
            identity=identity, steps=args.steps, lr=args.lr, lambda_id=args.lambda_id, lambda_reg=args.lambda_reg,
            lambda_noise=args.lambda_noise, truncation=args.truncation, truncation_center=args.truncation_center,
            preserve_colour=args.preserve_colour, colour_from=args.colour_from, batch_size=args.batch, seed=args.seed,
            loss_size=args.loss_size, previews=previews is not None, progress=bar, on_batch=save_batch)
    finally:
        bar.close()
    final = table["codes"]
    print(f"{len(codes)} style images destylized ({len(final)} in the table) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
