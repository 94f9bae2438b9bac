"""``python generate.py``: render images of a generator for seeds (or saved W / W+ codes), with the conventions
of NVIDIA's and rosinality's generation scripts::

    python generate.py --network FILE --seeds 0-63 --trunc 0.7 --outdir out/
    python generate.py --network FILE --seeds 0-7 --grid --interpolate 16 --outdir out/
    python generate.py --network FILE --projected-w codes/img.pt --outdir out/
    python generate.py --network runs/<run>/generator.pt --domain all --seeds 0-3 --outdir out/
    python generate.py --network source.pt --pair-with adapted.pt --seeds 0-7 --outdir out/

``--network`` is any file ``models.checkpoints.load`` reads (rosinality ``.pt``, NVIDIA ``.pkl``, our
``generator.pt``), a registered asset name, or a Lightning checkpoint of a StyleShift run (``.ckpt``; its
generator is taken out as ``python -m launch.ckpt_tools convert`` does). Its ``g_ema`` is used (``g`` when the
file has no EMA copy).

Seed ``s`` draws its latent from ``numpy.random.RandomState(s).randn(style_dim)`` (NVIDIA's convention; the
same as ``models.sampler.seeded_normal([s], 0, dim)``). Truncation ``w' = w_avg + psi (w - w_avg)`` pulls
toward the file's ``latent_avg`` when it has one, else toward the mean W of 4096 fixed z (seed 0, as the
runs' exports). Noise: ``const`` (the stored noise buffers, the default), ``random`` (fresh noise, drawn from
a generator seeded with the image's seed, so it is reproducible too) or ``none``.

Files written into ``--outdir``:

=============================  ===================================================================================
``seed0000.png``               one image per seed (with ``--domain all`` or ``--pair-with``: the variants side by side)
``proj0000.png``               one image per code of ``--projected-w`` (instead of the seeds)
``grid.png``                   ``--grid``: every image in one grid (one row per seed when variants are side by side)
``interpolation.png`` / .gif   ``--interpolate N``: N frames from each seed to the next, lerped in W after truncation
=============================  ===================================================================================

Method selectors: ``--domain NAME`` renders the domain NAME of a Domain Expansion export (its ``expansion``
table: ``models.expansion.ExpansionBasis``), ``--domain base`` the base (every repurposed direction reset to
the mean), ``--domain all`` base and every domain side by side; ``--pair-with FILE`` renders the same seeds
through a second generator of the same architecture (a NADA source / adapted pair, a fine-tuned model): the
same z through each one's own mapping and truncation centre (``--projected-w``: the same codes).

DualStyleGAN selectors (docs/methods/dualstylegan.md, "Inference"): ``--style NAME|INDEX|all`` (or a comma
list) renders a DualStyleGAN export (``models.dualstylegan.load``) or an official generator file
(``models.dualstylegan.load_official``) with the extrinsic codes of those exemplars, read by file name (or
stem, or row) from the code table ``--codes`` (default: the path the export records under ``style_codes``)::

    python generate.py --network runs/<run>/generator.pt --style all --seeds 0-3 --grid --outdir out/
    python generate.py --network G.pt --codes codes.pt --style 3 --weights structure --trunc 0.75 \\
        --trunc-center zero --content me.png --encoder encoder.pt --preserve-color --outdir out/

* ``--weights``: the weight vector w: ``inference`` (default: 0.75 on the structure rows, 1 on the colour rows),
  ``full`` (1 everywhere), ``structure`` (structure rows only), ``color`` (colour rows only) or ``n_latent``
  comma-separated numbers;
* ``--trunc PSI`` truncates the intrinsic code only, toward the mean W (``--trunc-center mean``, as above) or
  toward 0 (``--trunc-center zero``: W+ scaled by psi, the official scripts' convention);
* the content is the seeds' ``mapping(z)`` or, with ``--content IMG [IMG ...]`` and ``--encoder E.pt`` (our W+
  encoder, ``models.encoders``), each photo's encoder code (resized to the encoder's resolution);
* ``--preserve-color``: the exemplar's colour rows (index > res_index, 7..17 at 1024 px) are replaced by the
  content's untruncated intrinsic rows, so only the structure comes from the exemplar;
* output: one PNG per content (``seed0000.png`` or ``<photo>.png``) with the exemplars side by side;
  ``--grid``: ``grid.png``, one row per content: its intrinsic rendering, then every exemplar;
  ``--weight-sweep N``: ``sweep.png``, one row per (content, exemplar), N frames with the structure weight
  going 0 -> 1 (colour rows as ``--weights``).

Mistakes (an unreadable file, a bad seed list, a code of the wrong shape, an unknown domain or style, a file that
is not a DualStyleGAN generator) are printed as one ``error:`` line with exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

NOISE_CHOICES = ("const", "random", "none")


class GenerateError(Exception):
    """A mistake in the arguments or the files they name (exit status 2)."""


# ------------------------------------------------------------------------------------------------- parsing
def parse_seeds(text: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]`` (ranges inclusive, order kept, seeds in ``[0, 2**32)``)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if b < a:
                    raise GenerateError(f"seed range {part!r} runs backwards")
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise GenerateError(f"bad seed list {text!r}: {part!r} is not a seed or a range like 0-63") from None
    if not seeds:
        raise GenerateError(f"bad seed list {text!r}: no seeds")
    bad = [s for s in seeds if not 0 <= s < 2 ** 32]
    if bad:
        raise GenerateError(f"seeds must be in [0, 2**32), got {bad[0]}")
    return seeds


def seed_latents(seeds: Sequence[int], dim: int) -> torch.Tensor:
    """z [len(seeds), dim]: seed ``s`` from ``RandomState(s)``."""
    from models.sampler import seeded_normal

    return seeded_normal(list(seeds), 0, dim)


# ------------------------------------------------------------------------------------------------- networks
@dataclass
class Network:
    """A generator in eval mode, its truncation centre and the file's other entries (``extra``)."""

    generator: nn.Module
    latent_avg: torch.Tensor | None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def style_dim(self) -> int:
        return int(self.generator.style_dim)

    @property
    def n_latent(self) -> int:
        return int(self.generator.n_latent)


def _is_lightning_checkpoint(path: str) -> bool:
    """A run's Lightning checkpoint: named ``*.ckpt``, or any other name when ``launch.ckpt_tools`` reads it."""
    from launch import ckpt_tools

    return path.endswith(".ckpt") or ckpt_tools.is_run_checkpoint(path)


def _from_run_checkpoint(path: str) -> Network:
    from launch import ckpt_tools
    from models.checkpoint_formats.config import infer_config
    from models.checkpoints import build_generator

    try:
        ckpt = ckpt_tools.read(path)
    except (ckpt_tools.NotARunCheckpoint, OSError) as err:
        raise GenerateError(str(err)) from None
    nets = ckpt_tools.networks(ckpt)
    state = nets.get("g_ema", nets.get("g"))
    if state is None:
        raise GenerateError(f"{path} holds no StyleGAN2 generator (state-dict prefixes: "
                            f"{sorted({k.split('.')[0] for k in ckpt['state_dict']})})")
    try:
        generator = build_generator(infer_config(dict(state), None, source_format="styleshift"), state)
    except Exception as err:  # noqa: BLE001 - an unusual network in the file: say so, in one line
        raise GenerateError(f"{path}: cannot build its generator ({type(err).__name__}: {err})") from None
    return Network(generator.eval(), None, {}, path)


def load_network(spec: str, device: torch.device | str = "cpu") -> Network:
    """A generator file, a registered asset name or a run's ``.ckpt`` as a :class:`Network` on ``device``."""
    from models import assets, checkpoints
    from models.checkpoint_formats.errors import CheckpointError

    spec = os.fspath(spec)
    if not os.path.exists(spec) and spec not in assets.ASSETS:
        raise GenerateError(f"network {spec!r} not found (a generator file, a run's .ckpt or a registered asset "
                            f"name: python -m models.assets list)")
    if os.path.exists(spec) and os.path.isdir(spec):
        raise GenerateError(f"network {spec!r} is a folder; give a checkpoint file")
    if os.path.exists(spec) and spec.endswith(".ckpt"):
        net = _from_run_checkpoint(spec)
    else:
        try:
            loaded = checkpoints.load(spec, networks=("g_ema", "g"))
        except (CheckpointError, FileNotFoundError) as err:
            if os.path.isfile(spec) and _is_lightning_checkpoint(spec):  # a run checkpoint under another name
                loaded = None
            else:
                raise GenerateError(_one_line(err)) from None
        if loaded is None:
            net = _from_run_checkpoint(spec)
            net.generator.to(device)
            return net
        generator = loaded.g_ema if loaded.g_ema is not None else loaded.g
        if generator is None:
            raise GenerateError(f"{spec}: the checkpoint holds no generator (neither g_ema nor g)")
        net = Network(generator.eval(), loaded.latent_avg, dict(loaded.extra), spec)
    net.generator.to(device)
    if net.latent_avg is not None:
        net.latent_avg = net.latent_avg.to(device)
    return net


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


@torch.no_grad()
def truncation_center(net: Network) -> torch.Tensor:
    """The W (``[style_dim]``) or W+ (``[n_latent, style_dim]``) truncation pulls toward: the file's
    ``latent_avg``, else the mean W of 4096 fixed z (seed 0)."""
    avg = net.latent_avg
    if avg is not None:
        avg = avg.reshape(-1, avg.shape[-1]).float()
        if avg.shape[-1] != net.style_dim:
            raise GenerateError(f"{net.source}: latent_avg has width {avg.shape[-1]}, the generator {net.style_dim}")
        if avg.shape[0] == 1:
            return avg[0]
        if avg.shape[0] == net.n_latent:
            return avg
        return avg.mean(0)
    from lightning_modules.base import MEAN_W_SAMPLES, MEAN_W_SEED

    device = next(net.generator.parameters()).device
    z = torch.randn(MEAN_W_SAMPLES, net.style_dim, generator=torch.Generator().manual_seed(MEAN_W_SEED))
    return net.generator.style(z.to(device)).mean(0)


# ------------------------------------------------------------------------------------------------- codes
def read_codes(path: str | os.PathLike, net: Network) -> torch.Tensor:
    """Saved codes as W+ ``[B, n_latent, style_dim]``: a ``.pt`` tensor (or a dict with ``w``/``latent``) of
    shape ``[D]``, ``[n_latent, D]``, ``[B, D]`` or ``[B, n_latent, D]``, or an ``.npz`` / ``.npy`` with NVIDIA's
    ``w`` array ``[B, num_ws, D]``. A 2-D array with ``n_latent`` rows is one W+ code; other 2-D arrays are
    batches of W."""
    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"--projected-w: {path} not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                key = "w" if "w" in data.files else (data.files[0] if len(data.files) == 1 else None)
                if key is None:
                    raise GenerateError(f"--projected-w: {path} has no 'w' array (arrays: {', '.join(data.files)})")
                value: Any = torch.from_numpy(np.asarray(data[key]))
        elif path.suffix == ".npy":
            value = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            value = torch.load(path, map_location="cpu", weights_only=True)
    except GenerateError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file: one line
        raise GenerateError(f"--projected-w: cannot read {path} ({type(err).__name__}: {err})") from None
    if isinstance(value, dict):
        key = next((k for k in ("w", "latent", "latents", "code", "codes") if k in value), None)
        if key is None or not isinstance(value[key], torch.Tensor):
            raise GenerateError(f"--projected-w: {path} holds a dict without a 'w' tensor (keys: {sorted(value)[:8]})")
        value = value[key]
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise GenerateError(f"--projected-w: {path} must hold a float tensor, got {type(value).__name__}")
    w = value.detach().float()
    d, n = net.style_dim, net.n_latent
    if w.shape[-1] != d:
        raise GenerateError(f"--projected-w: codes of width {w.shape[-1]} ({tuple(w.shape)}), the generator's "
                            f"style_dim is {d}")
    if w.ndim == 1:
        w = w[None, None]
    elif w.ndim == 2:
        w = w[None] if w.shape[0] == n else w[:, None]
    elif w.ndim != 3:
        raise GenerateError(f"--projected-w: expected [D], [n_latent, D], [B, D] or [B, n_latent, D], "
                            f"got {tuple(w.shape)}")
    if w.shape[1] == 1:
        w = w.expand(-1, n, -1)
    if w.shape[1] != n:
        raise GenerateError(f"--projected-w: codes have {w.shape[1]} rows, the generator takes {n} (W+ rows)")
    if w.shape[0] == 0:
        raise GenerateError(f"--projected-w: {path} holds no codes")
    return w.contiguous()


# ------------------------------------------------------------------------------------------------- rendering
def noise_for(generator: nn.Module, seeds: Sequence[int], mode: str) -> list[torch.Tensor] | None:
    """Per-image noise for ``mode="random"``: image ``i``'s maps from ``torch.Generator().manual_seed(seeds[i])``;
    None (the generator's own handling) for ``const`` and ``none``."""
    if mode != "random":
        return None
    shapes = [tuple(n.shape[-2:]) for n in generator.stored_noise()]
    device = generator.stored_noise()[0].device
    per_seed = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        per_seed.append([torch.randn(1, 1, *hw, generator=g) for hw in shapes])
    return [torch.cat([maps[i] for maps in per_seed]).to(device) for i in range(len(shapes))]


@torch.no_grad()
def synthesize(generator: nn.Module, wplus: torch.Tensor, noise_mode: str,
               noise_seeds: Sequence[int]) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] of W+ ``wplus`` [B, n_latent, D]."""
    device = next(generator.parameters()).device
    noise = noise_for(generator, noise_seeds, noise_mode)
    image = generator.synthesis(wplus.to(device), noise=noise, noise_mode=noise_mode)
    return image.clamp(-1, 1).cpu()


@torch.no_grad()
def seed_wplus(net: Network, seeds: Sequence[int], psi: float) -> torch.Tensor:
    """Truncated W+ [len(seeds), n_latent, D] of the seeds."""
    device = next(net.generator.parameters()).device
    w = net.generator.style(seed_latents(seeds, net.style_dim).to(device))
    wplus = w[:, None].repeat(1, net.n_latent, 1)
    if psi != 1:
        center = truncation_center(net).to(wplus)
        wplus = center + psi * (wplus - center)
    return wplus


@dataclass
class Column:
    """One of the images shown side by side: a network and a map of its W+ codes (identity, an expansion's
    ``base`` or ``edit``)."""

    label: str
    net: Network
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def columns_for(net: Network, args: argparse.Namespace, pair: Network | None) -> list[Column]:
    """The columns of every image: one, or base and the domains, or the generator and its pair."""
    if args.domain is None:
        return [Column("", net)] + ([Column("pair", pair)] if pair is not None else [])
    basis, names = expansion_table(net)
    device = next(net.generator.parameters()).device

    def base(wp: torch.Tensor) -> torch.Tensor:
        return basis.base(wp.to(device))

    def domain(index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda wp: basis.edit(wp.to(device), index)

    if args.domain == "base":
        return [Column("base", net, base)]
    if args.domain == "all":
        return [Column("base", net, base)] + [Column(name, net, domain(i)) for i, name in enumerate(names)]
    if args.domain not in names:
        raise GenerateError(f"--domain {args.domain!r}: {net.source} has the domains {', '.join(names)} "
                            f"(or base, all)")
    return [Column(args.domain, net, domain(names.index(args.domain)))]


def expansion_table(net: Network):
    """The :class:`models.expansion.ExpansionBasis` and the domain names of a Domain Expansion export."""
    from models.expansion import ExpansionBasis, expansion_table as read_table

    try:
        table = read_table(net.extra, net.latent_avg)
        if table is None:
            raise GenerateError(f"--domain: {net.source} is not an expanded generator (no 'expansion' table or "
                                f"official 'latent_basis'; a Domain Expansion run's generator.pt has one)")
        basis = ExpansionBasis.from_state(table)
    except (KeyError, ValueError, TypeError) as err:
        raise GenerateError(f"--domain: {net.source} has a broken expansion table ({err})") from None
    names = [str(n) for n in table.get("names") or [f"domain{i}" for i in range(len(basis.dims))]]
    if basis.basis.shape[0] != net.style_dim:
        raise GenerateError(f"--domain: the expansion basis is {tuple(basis.basis.shape)}, the generator's "
                            f"style_dim is {net.style_dim}")
    return basis, names


def render_rows(columns: list[Column], codes: dict[int, torch.Tensor], seeds: Sequence[int], noise_mode: str,
                batch: int) -> torch.Tensor:
    """Images [B, C, 3, H, W]: code ``b`` of each column's network (``codes[id(net)]`` [B, n_latent, D])
    through every column; ``seeds`` seed the ``random`` noise."""
    rows = []
    n = len(seeds)
    for start in range(0, n, batch):
        sd = list(seeds[start:start + batch])
        images = []
        for col in columns:
            wp = codes[id(col.net)][start:start + batch]
            if col.transform is not None:
                wp = col.transform(wp)
            images.append(synthesize(col.net.generator, wp, noise_mode, sd))
        rows.append(torch.stack(images, dim=1))
    return torch.cat(rows)


# ------------------------------------------------------------------------------------------------- files
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> [..., H, W, 3] uint8 (NVIDIA's quantization)."""
    from metrics.features import quantize

    return quantize(images).movedim(-3, -1).numpy()


def side_by_side(row: torch.Tensor) -> np.ndarray:
    """[C, 3, H, W] -> H x (C*W) x 3 uint8, no padding (one column = the single image)."""
    return np.concatenate(list(to_uint8(row)), axis=1)


def grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    from torchvision.utils import make_grid

    from metrics.features import quantize

    return make_grid(quantize(images), nrow=nrow, padding=2, pad_value=0).permute(1, 2, 0).numpy()


def save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG")


def interpolate(w_a: torch.Tensor, w_b: torch.Tensor, frames: int) -> torch.Tensor:
    """[frames, n_latent, D]: ``lerp(w_a, w_b, t)`` at t = 0, 1/(frames-1), ..., 1."""
    t = torch.linspace(0, 1, frames, dtype=w_a.dtype)[:, None, None]
    return w_a[None] + t * (w_b - w_a)[None]


# ------------------------------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        self.exit(2, f"error: {message} (python generate.py --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python generate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", required=True, help="generator file, registered asset name or a run's .ckpt")
    p.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-63 or 0-3,7 (default 0-7)")
    p.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1: none)")
    p.add_argument("--outdir", required=True, help="output folder (created)")
    p.add_argument("--noise-mode", default="const", choices=NOISE_CHOICES, help="const (default), random or none")
    p.add_argument("--grid", action="store_true", help="also write every image into grid.png")
    p.add_argument("--grid-only", action="store_true", help="write grid.png instead of one PNG per seed")
    p.add_argument("--nrow", type=int, default=None, help="images per grid row (default: about the square root)")
    p.add_argument("--interpolate", type=int, default=0, metavar="N",
                   help="N frames from each seed to the next (W space): interpolation.png and .gif")
    p.add_argument("--fps", type=float, default=12.0, help="frames per second of interpolation.gif")
    p.add_argument("--projected-w", default=None, metavar="FILE",
                   help="render saved W / W+ codes (.pt tensor, .npz/.npy with 'w') instead of the seeds")
    p.add_argument("--domain", default=None, help="Domain Expansion export: a domain name, base or all")
    p.add_argument("--pair-with", default=None, metavar="FILE",
                   help="a second generator of the same architecture, rendered side by side")
    dsg = p.add_argument_group("DualStyleGAN")
    dsg.add_argument("--style", default=None, help="exemplar(s) of the code table: file name, stem, row, a comma "
                                                   "list or all; random:K = K styles of --sampler")
    dsg.add_argument("--codes", default=None, metavar="FILE",
                     help="code table (models.style_codes; default: the one the export records)")
    dsg.add_argument("--weights", default="inference",
                     help="inference (default), full, structure, color or n_latent comma-separated numbers")
    dsg.add_argument("--trunc-center", default="mean", choices=("mean", "zero"),
                     help="truncate the intrinsic code toward the mean W (default) or toward 0 (official)")
    dsg.add_argument("--content", nargs="+", default=None, metavar="IMG", help="real content photos (with --encoder)")
    dsg.add_argument("--encoder", default=None, metavar="FILE", help="W+ encoder (models.encoders) for --content")
    dsg.add_argument("--preserve-color", action="store_true",
                     help="keep the content's colours: its colour rows replace the exemplar's")
    dsg.add_argument("--sampler", default=None, metavar="FILE",
                     help="sampling network N (python -m launch.style_sampler) for --style random:K")
    dsg.add_argument("--sampler-seed", type=int, default=0, help="seed of the random styles (0)")
    dsg.add_argument("--weight-sweep", type=int, default=0, metavar="N",
                     help="sweep.png: N frames with the structure weight from 0 to 1")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if not np.isfinite(args.trunc):
        raise GenerateError(f"--trunc must be a finite number, got {args.trunc}")
    if args.interpolate and args.interpolate < 2:
        raise GenerateError(f"--interpolate needs at least 2 frames, got {args.interpolate}")
    if args.batch_size < 1:
        raise GenerateError("--batch-size must be at least 1")
    if args.nrow is not None and args.nrow < 1:
        raise GenerateError("--nrow must be at least 1")
    if args.domain is not None and args.pair_with is not None:
        raise GenerateError("--domain and --pair-with cannot be combined; render them one at a time")
    if args.projected_w is not None and args.interpolate:
        raise GenerateError("--interpolate works on --seeds, not on --projected-w codes")


def run(args: argparse.Namespace) -> list[Path]:
    """Render what ``args`` asks for; the files written."""
    _check_args(args)
    seeds = parse_seeds(args.seeds)
    if args.interpolate and len(seeds) < 2:
        raise GenerateError("--interpolate needs at least two seeds")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerateError("--device cuda: this machine has no CUDA device")
    if args.style is not None:
        return run_dualstylegan(args, seeds, device)
    used = [flag for flag, on in (("--codes", args.codes is not None), ("--content", args.content is not None),
                                  ("--encoder", args.encoder is not None), ("--preserve-color", args.preserve_color),
                                  ("--weight-sweep", bool(args.weight_sweep)), ("--sampler", args.sampler is not None),
                                  ("--trunc-center", args.trunc_center != "mean"),
                                  ("--weights", args.weights != "inference")) if on]
    if used:
        raise GenerateError(f"{', '.join(used)} need --style (a DualStyleGAN exemplar)")
    net = load_network(args.network, device)
    pair = None
    if args.pair_with is not None:
        pair = load_network(args.pair_with, device)
        mine = (net.style_dim, net.n_latent, int(net.generator.size))
        theirs = (pair.style_dim, pair.n_latent, int(pair.generator.size))
        if mine != theirs:
            raise GenerateError(f"--pair-with: {args.pair_with} has (style_dim, n_latent, resolution) {theirs}, "
                                f"{args.network} has {mine}")
    columns = columns_for(net, args, pair)
    nets = {id(c.net): c.net for c in columns}
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise GenerateError(f"--outdir {outdir} exists and is not a folder")
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    if args.projected_w is not None:  # the same codes through every network
        wplus = read_codes(args.projected_w, net)
        codes = {key: wplus for key in nets}
        ids = list(range(wplus.shape[0]))
        prefix = "proj"
    else:  # the same z through every network, each with its own mapping and truncation centre
        codes = {key: seed_wplus(other, seeds, args.trunc) for key, other in nets.items()}
        ids = seeds
        prefix = "seed"
    images = render_rows(columns, codes, ids, args.noise_mode, args.batch_size)  # [B, C, 3, H, W]
    if not args.grid_only:
        for i, row in zip(ids, images):
            path = outdir / f"{prefix}{i:04d}.png"
            save_png(side_by_side(row), path)
            written.append(path)
    if args.grid or args.grid_only:
        b, c = images.shape[:2]
        nrow = c if c > 1 else (args.nrow or max(1, int(np.ceil(np.sqrt(b)))))
        path = outdir / "grid.png"
        save_png(grid(images.flatten(0, 1), nrow), path)
        written.append(path)
    if args.interpolate:
        written += write_interpolation(columns, codes, seeds, args, outdir)
    return written


def write_interpolation(columns: list[Column], codes: dict[int, torch.Tensor], seeds: Sequence[int],
                        args: argparse.Namespace, outdir: Path) -> list[Path]:
    """``interpolation.png`` (one row per consecutive seed pair, N frames) and ``interpolation.gif`` (the rows
    one after another, each shared end frame once). Along a row the noise stays that of the row's first seed."""
    from PIL import Image

    n = args.interpolate
    strips, frames = [], []
    for k in range(len(seeds) - 1):
        path_w = {key: interpolate(wp[k], wp[k + 1], n) for key, wp in codes.items()}
        noise_seeds = [seeds[k]] * n  # the same noise along a path: only W moves
        images = render_rows(columns, path_w, noise_seeds, args.noise_mode, args.batch_size)  # [N, C, 3, H, W]
        tiles = [side_by_side(row) for row in images]
        strips.append(np.concatenate(tiles, axis=1))
        frames += tiles if k == 0 else tiles[1:]  # a segment starts where the previous one ended
    strip_path, gif_path = outdir / "interpolation.png", outdir / "interpolation.gif"
    save_png(np.concatenate(strips, axis=0), strip_path)
    pil = [Image.fromarray(f) for f in frames]
    pil[0].save(gif_path, format="GIF", save_all=True, append_images=pil[1:],
                duration=max(1, int(round(1000 / args.fps))), loop=0)
    return [strip_path, gif_path]


# ------------------------------------------------------------------------------------------------- DualStyleGAN
@dataclass
class StyleNetwork:
    """A DualStyleGAN generator in eval mode (``models.dualstylegan.DualStyleGAN``), its file's ``latent_avg``
    and the code table path its export records (None for official files)."""

    model: nn.Module
    latent_avg: torch.Tensor | None
    codes_path: str | None
    source: str

    @property
    def n_latent(self) -> int:
        return int(self.model.n_latent)

    @property
    def style_dim(self) -> int:
        return int(self.model.style_dim)

    @property
    def res_index(self) -> int:
        return int(self.model.res_index)

    def as_network(self) -> Network:
        """The intrinsic generator as a :class:`Network` (truncation centre, saved codes)."""
        return Network(self.model.generator, self.latent_avg, {}, self.source)


def _export_entries(path: Path) -> dict[str, Any]:
    """Top-level ``latent_avg`` and ``style_codes`` of an export, read without building networks."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - e.g. a file written without zipfile serialization: no mmap
        raw = torch.load(path, map_location="cpu", weights_only=True)
    return {k: raw.get(k) for k in ("latent_avg", "style_codes")} if isinstance(raw, dict) else {}


def load_style_network(spec: str, device: torch.device | str = "cpu") -> StyleNetwork:
    """Our DualStyleGAN export or an official generator file as a :class:`StyleNetwork` on ``device``."""
    from models import dualstylegan as dsg
    from models.checkpoint_formats.errors import CheckpointError

    path = Path(os.fspath(spec))
    if not path.is_file():
        raise GenerateError(f"network {spec!r} not found (a DualStyleGAN generator.pt or an official DualStyleGAN "
                            f"generator file)")
    entries: dict[str, Any] = {}
    try:
        model = dsg.load(path)
        entries = _export_entries(path)
    except Exception as err:  # noqa: BLE001 - every unreadable file: one line
        if not (isinstance(err, CheckpointError) and "load_official" in str(err)):
            raise GenerateError(f"--style needs a DualStyleGAN generator: {_one_line(err)}") from None
        try:
            model = dsg.load_official(path)
        except Exception as err2:  # noqa: BLE001
            raise GenerateError(f"--style needs a DualStyleGAN generator: {_one_line(err2)}") from None
    avg = entries.get("latent_avg")
    codes = entries.get("style_codes")
    codes_path = codes.get("path") if isinstance(codes, dict) and isinstance(codes.get("path"), str) else None
    model = model.to(device).eval()
    return StyleNetwork(model, avg.float().to(device) if isinstance(avg, torch.Tensor) else None, codes_path,
                        str(spec))


def load_style_codes(path: str | None, net: StyleNetwork):
    """The code table (``models.style_codes.StyleCodes``) ``--codes`` names or the export records, checked
    against the generator's W+ shape. A recorded relative path is also looked up next to the export."""
    from models.style_codes import StyleCodes, StyleCodesError

    if path is None:
        path = net.codes_path
        if path is None:
            raise GenerateError(f"--style: {net.source} records no code table; give --codes FILE")
        if not Path(path).is_file() and not Path(path).is_absolute() and (Path(net.source).parent / path).is_file():
            path = str(Path(net.source).parent / path)
    try:
        table = StyleCodes.load(path)
        table.check(net.n_latent, net.style_dim, where=f"--codes {path}")
    except (FileNotFoundError, StyleCodesError) as err:
        raise GenerateError(_one_line(err)) from None
    return table


def random_styles(text: str, sampler_path: str | None, seed: int, net: StyleNetwork):
    """``--style random[:K]``: a code table of K extrinsic codes drawn from the sampling network N."""
    from models.style_codes import StyleCodes
    from models.style_sampler import StyleSampler

    count = text.strip().partition(":")[2] or "4"
    if not count.isdigit() or int(count) < 1:
        raise GenerateError(f"--style {text!r}: random:K needs a positive number of styles K")
    if sampler_path is None:
        raise GenerateError("--style random:K needs --sampler FILE (python -m launch.style_sampler writes one)")
    try:
        sampler = StyleSampler.load(sampler_path)
    except (FileNotFoundError, ValueError) as err:
        raise GenerateError(_one_line(err)) from None
    if (sampler.n_latent, sampler.style_dim, sampler.res_index) != (net.n_latent, net.style_dim, net.res_index):
        raise GenerateError(f"--sampler {sampler_path}: codes of [{sampler.n_latent}, {sampler.style_dim}] split at "
                            f"row {sampler.res_index}; the generator has [{net.n_latent}, {net.style_dim}], "
                            f"res_index {net.res_index}")
    codes = sampler.sample(int(count), torch.Generator().manual_seed(seed))
    return StyleCodes([f"random{i}" for i in range(int(count))], torch.zeros_like(codes), codes)


def parse_styles(text: str, table) -> list[int]:
    """``--style``: ``all``, or comma-separated file names, stems or rows -> table rows."""
    from models.style_codes import StyleCodesError

    if text.strip() == "all":
        return list(range(len(table)))
    rows = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        key: str | int = int(part) if part.lstrip("-").isdigit() else part
        try:
            rows.append(table.index(key))
        except StyleCodesError as err:
            raise GenerateError(f"--style: {_one_line(err)}") from None
    if not rows:
        raise GenerateError(f"--style {text!r}: no exemplar named")
    return rows


def parse_weights(text: str, n_latent: int, res_index: int) -> list[float]:
    """``--weights``: a preset of ``models.dualstylegan`` or ``n_latent`` comma-separated numbers."""
    from models import dualstylegan as dsg

    text = text.strip()
    if text == "inference":
        return dsg.inference_weights(n_latent, res_index)
    if text in ("full", "structure", "color", "colour"):
        return dsg.weight_preset(text, n_latent, res_index)
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GenerateError(f"--weights {text!r}: a preset (inference, full, structure, color) or {n_latent} "
                            f"comma-separated numbers") from None
    if len(values) != n_latent:
        raise GenerateError(f"--weights: {len(values)} numbers given, the generator needs {n_latent} (one per W+ "
                            f"row; rows 0-{res_index} structure, {res_index + 1}-{n_latent - 1} colour)")
    if not all(np.isfinite(values)):
        raise GenerateError(f"--weights: every weight must be finite, got {text!r}")
    return values


def read_photo(path: str | os.PathLike, size: int) -> torch.Tensor:
    """One RGB photo [3, size, size] in [-1, 1]: centre square crop, Lanczos resize (``models.image_io``)."""
    from models.image_io import read_image

    try:
        return read_image(path, size)
    except ValueError as err:
        raise GenerateError(f"--content: {err}") from None


@torch.no_grad()
def encode_photos(paths: Sequence[str], encoder_path: str, net: StyleNetwork, batch: int) -> torch.Tensor:
    """W+ codes [len(paths), n_latent, D] of the content photos through our W+ encoder."""
    from models.encoders import EncoderFileError, load_encoder

    if not Path(encoder_path).is_file():
        raise GenerateError(f"--encoder: {encoder_path} not found")
    try:
        encoder, config = load_encoder(encoder_path)
    except EncoderFileError as err:
        raise GenerateError(_one_line(err)) from None
    if (int(config["n_latent"]), int(config["style_dim"])) != (net.n_latent, net.style_dim):
        raise GenerateError(f"--encoder: {encoder_path} emits W+ [{config['n_latent']}, {config['style_dim']}], "
                            f"the generator takes [{net.n_latent}, {net.style_dim}]")
    for p in paths:
        if not Path(p).is_file():
            raise GenerateError(f"--content: {p} not found")
    device = next(net.model.generator.parameters()).device
    encoder = encoder.to(device).eval()
    size = int(config["resolution"])
    codes = []
    for start in range(0, len(paths), batch):
        images = torch.stack([read_photo(p, size) for p in paths[start:start + batch]]).to(device)
        codes.append(encoder(images).float())
    return torch.cat(codes)


def style_truncate(net: StyleNetwork, wplus: torch.Tensor, psi: float, center_mode: str) -> torch.Tensor:
    """The intrinsic code after truncation: ``t + psi (w - t)`` with t the mean W (``mean``) or 0 (``zero``)."""
    if psi == 1:
        return wplus
    if center_mode == "zero":
        center = torch.zeros((), dtype=wplus.dtype, device=wplus.device)
    else:
        center = truncation_center(net.as_network()).to(wplus)
    return center + psi * (wplus - center)


def exemplar_codes(net: StyleNetwork, table, row: int, content: torch.Tensor, preserve_color: bool) -> torch.Tensor:
    """Extrinsic W+ [B, n_latent, D] of exemplar ``row`` for contents ``content`` (untruncated W+); with
    ``preserve_color`` its colour rows (> res_index) are the content's."""
    e = table.extrinsic[row].to(content).unsqueeze(0).expand(content.shape[0], -1, -1)
    if preserve_color:
        e = e.clone()
        e[:, net.res_index + 1:] = content[:, net.res_index + 1:]
    return e


@torch.no_grad()
def render_style(net: StyleNetwork, latent: torch.Tensor, e: torch.Tensor | None, weights: Sequence[float],
                 noise_mode: str, noise_seeds: Sequence[int], use_res: bool = True) -> torch.Tensor:
    """``G(latent, e, w)`` [B, 3, H, W] in [-1, 1] (``use_res=False``: the intrinsic generator)."""
    model = net.model
    device = next(model.generator.parameters()).device
    noise = noise_for(model.generator, noise_seeds, noise_mode)
    image, _ = model(latent.to(device), None if e is None else e.to(device), input_is_latent=True,
                     interp_weights=list(weights), use_res=use_res, noise=noise, noise_mode=noise_mode)
    return image.clamp(-1, 1).cpu()


def _check_style_args(args: argparse.Namespace) -> None:
    for flag, on in (("--domain", args.domain is not None), ("--pair-with", args.pair_with is not None),
                     ("--interpolate", bool(args.interpolate))):
        if on:
            raise GenerateError(f"{flag} cannot be combined with --style")
    if (args.content is None) != (args.encoder is None):
        raise GenerateError("--content and --encoder go together (the encoder turns the photos into W+ codes)")
    if args.content is not None and args.projected_w is not None:
        raise GenerateError("--content and --projected-w cannot be combined; give one kind of content")
    if args.weight_sweep and args.weight_sweep < 2:
        raise GenerateError(f"--weight-sweep needs at least 2 frames, got {args.weight_sweep}")


def _labels(paths: Sequence[str]) -> list[str]:
    labels, seen = [], set()
    for i, p in enumerate(paths):
        label = Path(p).stem
        if label in seen or label.startswith("seed") or label in ("grid", "sweep"):
            label = f"{label}-{i}"
        seen.add(label)
        labels.append(label)
    return labels


def run_dualstylegan(args: argparse.Namespace, seeds: list[int], device: torch.device) -> list[Path]:
    """``--style``: exemplar-based style transfer of random or real content (module docstring)."""
    _check_style_args(args)
    net = load_style_network(args.network, device)
    if args.style.strip().startswith("random"):
        table = random_styles(args.style, args.sampler, args.sampler_seed, net)
    else:
        if args.sampler is not None:
            raise GenerateError("--sampler goes with --style random:K")
        table = load_style_codes(args.codes, net)
    rows = parse_styles("all" if args.style.strip().startswith("random") else args.style, table)
    weights = parse_weights(args.weights, net.n_latent, net.res_index)
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise GenerateError(f"--outdir {outdir} exists and is not a folder")
    # the content codes (untruncated W+) and their names
    if args.content is not None:
        content = encode_photos(args.content, args.encoder, net, args.batch_size)
        labels, noise_ids = _labels(args.content), list(range(len(args.content)))
    elif args.projected_w is not None:
        content = read_codes(args.projected_w, net.as_network()).to(device)
        labels, noise_ids = [f"proj{i:04d}" for i in range(content.shape[0])], list(range(content.shape[0]))
    else:
        with torch.no_grad():
            w = net.model.generator.style(seed_latents(seeds, net.style_dim).to(device))
        content = w[:, None].repeat(1, net.n_latent, 1)
        labels, noise_ids = [f"seed{s:04d}" for s in seeds], list(seeds)
    latent = style_truncate(net, content, args.trunc, args.trunc_center)
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def batches():
        for start in range(0, content.shape[0], args.batch_size):
            yield slice(start, start + args.batch_size), noise_ids[start:start + args.batch_size]

    def stylised(row: int, w: Sequence[float]) -> torch.Tensor:  # [B, 3, H, W] over every content
        out = []
        for sl, ids in batches():
            e = exemplar_codes(net, table, row, content[sl], args.preserve_color)
            out.append(render_style(net, latent[sl], e, w, args.noise_mode, ids))
        return torch.cat(out)

    images = torch.stack([stylised(r, weights) for r in rows], dim=1)  # [B, S, 3, H, W]
    if not args.grid_only:
        for label, row in zip(labels, images):
            path = outdir / f"{label}.png"
            save_png(side_by_side(row), path)
            written.append(path)
    if args.grid or args.grid_only:
        intrinsic = torch.cat([render_style(net, latent[sl], None, weights, args.noise_mode, ids, use_res=False)
                               for sl, ids in batches()])
        full = torch.cat([intrinsic[:, None], images], dim=1)  # content x (intrinsic, exemplars)
        path = outdir / "grid.png"
        save_png(grid(full.flatten(0, 1), full.shape[1]), path)
        written.append(path)
    if args.weight_sweep:
        n_s = net.res_index + 1
        frames = []  # [N] of [B, S, 3, H, W]
        for t in np.linspace(0.0, 1.0, args.weight_sweep):
            w_t = [float(t)] * n_s + list(weights[n_s:])
            frames.append(torch.stack([stylised(r, w_t) for r in rows], dim=1))
        strip = torch.stack(frames, dim=2)  # [B, S, N, 3, H, W]
        path = outdir / "sweep.png"
        save_png(np.concatenate([side_by_side(r) for r in strip.flatten(0, 1)], axis=0), path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = os.environ.get("STYLESHIFT_DEBUG", "") not in ("", "0")
    try:
        written = run(args)
    except GenerateError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} file(s) to {args.outdir}")
    return 0


__all__ = ["parse_seeds", "seed_latents", "load_network", "truncation_center", "read_codes", "seed_wplus",
           "synthesize", "run", "main", "GenerateError", "StyleNetwork", "load_style_network", "load_style_codes",
           "parse_styles", "parse_weights", "style_truncate", "exemplar_codes", "render_style", "encode_photos"]
