"""DualStyleGAN's facial destylization and the refinement of extrinsic codes, in W+.

Yang, Jiang, Liu, Loy, "Pastiche Master: Exemplar-Based High-Resolution Portrait Style Transfer", CVPR 2022
(the paper's facial destylization and its latent optimisation of extrinsic style codes); our description:
docs/methods/dualstylegan.md, "Facial destylization" and "Refining extrinsic codes".

**Destylization** (:func:`destylize`) turns every style image S into a pair of W+ codes. With E our W+ encoder,
g' the StyleGAN2 briefly fine-tuned on the style images and g the original (source) StyleGAN2:

1. extrinsic code ``e = E(S)``;
2. ``w^ = argmin_w LPIPS(g'(w, n)|, S) + lambda_id ID(g'(w, n)|, S) + lambda_reg std_rows(w) + lambda_noise N(n)``
   over the W+ code w (initialised at e) and the noise maps n (random start), where ``|`` is the average-pool
   to the loss resolution (256 px), ``std_rows`` the mean over channels of the standard deviation over the
   W+ rows (the layer-wise regulariser: it pulls the rows toward one shared W code), N the StyleGAN2
   projector's noise autocorrelation penalty, the noise maps renormalised after every step; Adam with the
   projector's schedule (lr 0 at the first step, linear ramp-up over 5 %, cosine ramp-down over the last 25 %);
3. with ``preserve_colour``, the colour rows ``[colour_from:]`` of w^ are replaced by e's; the destylized face
   ``X = g(c + psi (w^ - c), n)`` is rendered by the *source* generator at truncation psi toward the centre c;
   the intrinsic code is ``i = E(X)``, whose colour rows are again replaced by e's.

The table :class:`models.style_codes.StyleCodes` holds ``i`` (intrinsic) and ``e`` (extrinsic) per file name.

**Refinement** (:func:`refine_extrinsic`): for fixed intrinsic codes, the extrinsic codes (structure rows
``<= res_index`` and colour rows ``> res_index`` as two Adam groups) and random noise maps are optimised so that
the DualStyleGAN output ``G(i, e, n)|`` matches S: ``LPIPS + cx_weight CX_relu3_1 + lambda_noise N(n)``,
constant learning rates, no identity term and no regulariser.

Differences from the official scripts (each documented on the method page):

* **W+ everywhere.** The official codes are Z+ (a Z+ pSp encoder; the std regulariser runs over Z+ layers; the
  refinement optimises Z+). With a W+ encoder every one of those moves to W+ together.
* **Truncation centre.** The official renders X with ``truncation_latent=0``, i.e. it scales the W+ code by
  psi. ``truncation_center="zero"`` reproduces that; the default ``"mean"`` is the usual truncation trick
  toward the mean W, the centre of the region our W+ encoder's codes live in (scaling toward the origin of W
  leaves that region for any generator whose mean W is far from 0).
* **Per-image objective.** Every term is computed per image and the per-image objectives are summed (the
  official sums LPIPS but averages ID and the regulariser over the batch and couples the noise penalty and
  the noise renormalisation across the batch). At the official batch size 1 the two agree; here an image's
  codes never depend on the other images of its batch, nor on the batch size.
* **Determinism.** The starting noise of an image is drawn from a generator seeded by ``(seed, file name)``,
  and images are processed in sorted name order, so a table does not depend on the order of the inputs
  (the official keys follow ``os.listdir``).
* **Lazy loading.** Images are read per batch, never all at once (official issue #93 reports RAM exhaustion).
* **Optional identity term** (``identity=None``) for non-face styles (official issues #18, #23, #89).

Layering: plain PyTorch, no Lightning.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses.contextual import contextual_loss
from models.dualstylegan import DualStyleGAN, default_res_index
from models.frozen import trainable
from models.style_codes import StyleCodes

__all__ = ["DestylizedBatch", "RefinedBatch", "TRUNCATION_CENTERS", "colour_start", "destylize", "image_seed",
           "layerwise_std", "load_style_image", "mean_w", "noise_regularization", "normalize_noise_",
           "projector_lr", "refine_extrinsic", "resize_to", "truncate"]

TRUNCATION_CENTERS = ("mean", "zero")
LOSS_SIZE = 256
"""Resolution of the losses: the official code average-pools its 1024-px outputs to 256 px."""


# ---------------------------------------------------------------------------------------------- formulas
def projector_lr(t: float, base_lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """StyleGAN2 projector learning rate at progress ``t = step / steps`` in [0, 1):

    ``base_lr * min(1, t / rampup) * (0.5 - 0.5 cos(pi min(1, (1 - t) / rampdown)))``; 0 at ``t = 0``.
    """
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return base_lr * ramp * min(1.0, t / rampup)


def noise_regularization(noises: Sequence[Tensor]) -> Tensor:
    """StyleGAN2 projector noise penalty per image ``[B]`` of noise maps ``[B, 1, r, r]``.

    For every map and each of its 2x2 average-pooled versions down to 8x8 (a map of 8x8 or less counts once):
    ``(mean n * roll(n, 1, x))^2 + (mean n * roll(n, 1, y))^2``, the means over one image's map, summed.
    """
    total: Tensor | None = None
    for noise in noises:
        size = noise.shape[2]
        while True:
            term = ((noise * torch.roll(noise, shifts=1, dims=3)).mean(dim=(1, 2, 3)).pow(2)
                    + (noise * torch.roll(noise, shifts=1, dims=2)).mean(dim=(1, 2, 3)).pow(2))
            total = term if total is None else total + term
            if size <= 8:
                break
            noise = noise.reshape(noise.shape[0], 1, size // 2, 2, size // 2, 2).mean(dim=(3, 5))
            size //= 2
    if total is None:
        raise ValueError("noise_regularization needs at least one noise map")
    return total


@torch.no_grad()
def normalize_noise_(noises: Sequence[Tensor]) -> None:
    """Renormalise every image's noise map in place to zero mean and unit (unbiased) standard deviation."""
    for noise in noises:
        mean = noise.mean(dim=(1, 2, 3), keepdim=True)
        std = noise.std(dim=(1, 2, 3), keepdim=True)
        noise.sub_(mean).div_(std)


def layerwise_std(w: Tensor) -> Tensor:
    """Layer-wise regulariser per image ``[B]`` of W+ codes ``[B, n_latent, D]``: the mean over the D channels
    of the (unbiased) standard deviation over the ``n_latent`` rows; 0 for a code with equal rows."""
    if w.ndim != 3:
        raise ValueError(f"a W+ code has shape [B, n_latent, D], got {tuple(w.shape)}")
    return w.std(dim=1).mean(dim=1)


def colour_start(res_index: int) -> int:
    """First W+ row that destylization copies from the extrinsic code: ``res_index + 2`` (8 of 18 at 1024 px,
    where the official code copies rows 8-17; its Stage I / inference colour split is one earlier, at 7)."""
    return int(res_index) + 2


def truncate(w: Tensor, psi: float, center: Tensor | None) -> Tensor:
    """``c + psi (w - c)``; ``center=None`` is the origin (the official ``truncation_latent=0``: ``psi w``)."""
    if center is None:
        return w * psi
    return center + psi * (w - center)


@torch.no_grad()
def mean_w(generator: nn.Module, n: int = 4096, seed: int = 0) -> Tensor:
    """Mean W ``[1, style_dim]`` of ``generator``'s mapping over ``n`` z drawn from ``seed`` (global RNG untouched)."""
    z = torch.randn(n, int(generator.style_dim), generator=torch.Generator().manual_seed(seed))
    device = next(generator.parameters()).device
    return generator.style(z.to(device)).mean(0, keepdim=True)


def image_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one image: a hash of ``(seed, file name)``, the same on every machine and run."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def resize_to(images: Tensor, size: int) -> Tensor:
    """Images ``[B, 3, H, W]`` to ``size x size``: average pooling when smaller (the official ``4x4`` pool of
    1024-px outputs), antialiased bilinear otherwise; unchanged when already that size."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    if images.shape[-1] >= size and images.shape[-2] >= size:
        return F.adaptive_avg_pool2d(images, (size, size))
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def load_style_image(path: str | os.PathLike, size: int) -> Tensor:
    """A style image as ``[3, size, size]`` in [-1, 1]: RGB, shorter side resized to ``size`` (bicubic), centre
    crop (the official ``Resize`` + ``CenterCrop``). An unreadable file raises ``ValueError`` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            new = (max(size, round(w * scale)), max(size, round(h * scale)))
            img = img.resize(new, Image.BICUBIC)
            left, top = (new[0] - size) // 2, (new[1] - size) // 2
            img = img.crop((left, top, left + size, top + size))
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    return data.view(size, size, 3).permute(2, 0, 1).float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------- inputs
Loader = Callable[[str | os.PathLike, int], Tensor]


def _fetch(images: Any, index: int, size: int, loader: Loader) -> Tensor:
    """Item ``index`` of ``images`` (a path, a tensor, or a dataset item whose first entry is one) as
    ``[3, size, size]`` in [-1, 1]."""
    item = images[index]
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, (str, os.PathLike)):
        item = loader(item, size)
    if not isinstance(item, Tensor) or item.ndim != 3 or item.shape[0] != 3:
        shape = tuple(item.shape) if isinstance(item, Tensor) else type(item).__name__
        raise ValueError(f"image {index}: expected a path or an RGB tensor [3, H, W], got {shape}")
    if item.dtype == torch.uint8:
        item = item.float() / 127.5 - 1.0
    return resize_to(item.float()[None], size)[0]


def _batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [list(order[s:s + batch_size]) for s in range(0, len(order), batch_size)]


def _check_names(names: Sequence[str], n: int) -> list[str]:
    names = [str(x) for x in names]
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} images")
    if len(set(names)) != len(names):
        dup = sorted({x for x in names if names.count(x) > 1})
        raise ValueError(f"file names {dup} appear more than once")
    return names


def _random_noise(generator: nn.Module, names: Sequence[str], seed: int, device: torch.device) -> list[Tensor]:
    """N(0, 1) noise maps ``[B, 1, r, r]`` in the generator's layer order, image b from ``image_seed(seed, name)``."""
    shapes = [tuple(n.shape[1:]) for n in generator.make_noise()]
    per_image = []
    for name in names:
        rng = torch.Generator().manual_seed(image_seed(seed, name))
        per_image.append([torch.randn(shape, generator=rng) for shape in shapes])
    return [torch.stack([maps[k] for maps in per_image]).to(device) for k in range(len(shapes))]


def _progress(progress: Any, total: int, desc: str):
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="step")
    return progress or None


# ---------------------------------------------------------------------------------------------- destylize
@dataclass
class DestylizedBatch:
    """One processed batch (handed to ``on_batch``): W+ codes ``[B, n_latent, D]``, noise ``[B, 1, r, r]``.

    ``optimized`` is the code that step 2 found (before the colour rows are copied from ``extrinsic``),
    ``destylized`` the face X, ``objective_start`` / ``objective_end`` the per-image objective at the first step
    and after the last one (``terms_end`` its terms).
    """

    names: list[str]
    styles: Tensor
    extrinsic: Tensor
    optimized: Tensor
    noises: list[Tensor]
    destylized: Tensor
    intrinsic: Tensor
    objective_start: Tensor
    objective_end: Tensor
    terms_end: dict[str, Tensor] = field(default_factory=dict)
    previews: Tensor | None = None
    """With ``previews=True``: ``[B, 4, 3, s, s]`` = S | g(e) | X | g(i) at the loss resolution."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The settings, as stored in the table's ``meta``."""

    def codes(self) -> StyleCodes:
        """This batch as a code table."""
        return StyleCodes(list(self.names), self.intrinsic.detach().cpu(), self.extrinsic.detach().cpu(),
                          dict(self.meta))


def _frozen(*nets: nn.Module | None) -> list[nn.Module]:
    nets = [n for n in nets if n is not None]
    for net in nets:
        net.eval()
    return nets


def destylize(images: Sequence[Any], names: Sequence[str], *, encoder: nn.Module, finetuned: nn.Module,
              source: nn.Module, lpips: nn.Module, identity: nn.Module | None = None, steps: int = 300,
              lr: float = 0.1, lambda_id: float = 0.1, lambda_reg: float = 1.0, lambda_noise: float = 1e5,
              truncation: float = 0.7, truncation_center: str = "mean", center: Tensor | None = None,
              preserve_colour: bool = True, res_index: int | None = None, colour_from: int | None = None,
              batch_size: int = 1, seed: int = 0, loader: Loader = load_style_image, loss_size: int = LOSS_SIZE,
              previews: bool = False, on_batch: Callable[[DestylizedBatch], None] | None = None,
              progress: Any = False) -> StyleCodes:
    """Facial destylization (module docstring) of style ``images`` named ``names`` -> a :class:`StyleCodes` table
    (rows in the order of ``names``).

    Args:
        images: a sequence / ``Dataset`` indexed like ``names``; items are file paths (read with ``loader(path,
            encoder.resolution)`` one batch at a time), RGB tensors ``[3, H, W]`` (float in [-1, 1] or uint8), or
            tuples whose first entry is one of those.
        encoder: W+ encoder E (``models.encoders``; input ``encoder.resolution``, output ``[B, n_latent, D]``).
        finetuned: g', the StyleGAN2 fine-tuned on the style images; ``source``: g, the generator it started
            from (same architecture). Both are called as ``G([w], input_is_latent=True, noise=...)``.
        lpips: an LPIPS network ``lpips(x, y) -> [B, 1, 1, 1]`` on images in [-1, 1] (``metrics.lpips_family.
            load_lpips("vgg")``), summed over images.
        identity: a face-identity network with ``embed(images) -> unit [B, 512]`` (``models.identity``), or None
            to drop the ID term (non-face styles).
        steps, lr, lambda_id, lambda_reg, lambda_noise: 300, 0.1, 0.1, 1, 1e5 (official).
        truncation: psi of the rendering of X (0.7; the official README suggests 0.5 for styles far from faces).
        truncation_center: ``"mean"`` (default; ``center`` or the source's mean W from 4096 samples of ``seed``)
            or ``"zero"`` (the official code: the code is scaled by psi).
        preserve_colour: copy e's colour rows ``[colour_from:]`` into w^ and into i (official: on).
        res_index: last structure row (default ``default_res_index(size)``: 6 at 1024 px);
            ``colour_from`` defaults to :func:`colour_start` (``res_index + 2``).
        batch_size: images per optimisation (the results do not depend on it; official default 1).
        seed: seeds the starting noise of each image (with its name) and the mean W.
        loss_size: resolution of the losses (256; generator outputs are average-pooled to it).
        previews: also render the S | g(e) | X | g(i) strip of every image (``DestylizedBatch.previews``).
        on_batch: called with each :class:`DestylizedBatch` once it is done (e.g. to save partial tables).
        progress: ``True`` for a tqdm bar over all steps, or a tqdm-like object with ``update``.
    """
    if truncation_center not in TRUNCATION_CENTERS:
        raise ValueError(f"truncation_center must be one of {TRUNCATION_CENTERS}, got {truncation_center!r}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps}")
    names = _check_names(names, len(images))
    n_latent, style_dim = int(finetuned.n_latent), int(finetuned.style_dim)
    for what, net in (("source", source), ("encoder", encoder)):
        if (int(net.n_latent), int(net.style_dim)) != (n_latent, style_dim):
            raise ValueError(f"{what} works on W+ [{net.n_latent}, {net.style_dim}], the fine-tuned generator on "
                             f"[{n_latent}, {style_dim}]")
    if int(source.size) != int(finetuned.size):
        raise ValueError(f"source ({source.size} px) and fine-tuned ({finetuned.size} px) generators differ in size")
    res_index = default_res_index(int(finetuned.size)) if res_index is None else int(res_index)
    colour_from = colour_start(res_index) if colour_from is None else int(colour_from)
    if preserve_colour and not 0 < colour_from <= n_latent:
        raise ValueError(f"colour_from must be in 1..{n_latent}, got {colour_from}")
    device = next(encoder.parameters()).device
    enc_size = int(encoder.resolution)
    loss_res = min(int(loss_size), int(finetuned.size))
    frozen = _frozen(encoder, finetuned, source, lpips, identity)
    use_id = identity is not None and lambda_id != 0
    if truncation_center == "mean" and center is None and truncation != 1:
        center = mean_w(source, seed=seed)
    centre = None if truncation_center == "zero" else (None if center is None else center.to(device).view(1, 1, -1))
    meta = {"method": "dualstylegan-destylization", "space": "w+", "steps": int(steps), "lr": float(lr),
            "lambda_id": float(lambda_id) if use_id else 0.0, "lambda_reg": float(lambda_reg),
            "lambda_noise": float(lambda_noise), "truncation": float(truncation),
            "truncation_center": truncation_center, "preserve_colour": bool(preserve_colour),
            "colour_from": colour_from, "res_index": res_index, "seed": int(seed), "loss_size": loss_res}

    def objective(w: Tensor, noises: list[Tensor], target: Tensor, target_id: Tensor | None) -> dict[str, Tensor]:
        image = resize_to(finetuned([w], input_is_latent=True, noise=noises)[0], loss_res)
        terms = {"lpips": lpips(image, target).flatten(), "reg": layerwise_std(w),
                 "noise": noise_regularization(noises)}
        total = terms["lpips"] + lambda_reg * terms["reg"] + lambda_noise * terms["noise"]
        if use_id:
            terms["id"] = 1.0 - (identity.embed(image) * target_id).sum(dim=-1)
            total = total + lambda_id * terms["id"]
        terms["total"] = total
        return terms

    order = sorted(range(len(names)), key=lambda k: names[k])
    batches = _batches(order, batch_size)
    bar = _progress(progress, max(1, int(steps)) * len(batches), "destylize")
    intrinsic: dict[str, Tensor] = {}
    extrinsic: dict[str, Tensor] = {}
    with trainable([], frozen):
        for rows in batches:
            batch_names = [names[k] for k in rows]
            styles = torch.stack([_fetch(images, k, enc_size, loader) for k in rows]).to(device)
            with torch.no_grad():
                e = encoder(styles)
                target = resize_to(styles, loss_res)
                target_id = identity.embed(target) if use_id else None
            noises = [n.requires_grad_(True) for n in _random_noise(finetuned, batch_names, seed, device)]
            w = e.detach().clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w] + noises, lr=lr)
            start: Tensor | None = None
            with torch.enable_grad():
                for step in range(int(steps)):
                    optimizer.param_groups[0]["lr"] = projector_lr(step / steps, lr)
                    terms = objective(w, noises, target, target_id)
                    if not torch.isfinite(terms["total"]).all():
                        raise FloatingPointError(f"destylization objective is not finite for {batch_names}: "
                                                 f"{terms['total'].tolist()}")
                    if start is None:
                        start = terms["total"].detach()
                    optimizer.zero_grad(set_to_none=True)
                    terms["total"].sum().backward()
                    optimizer.step()
                    normalize_noise_(noises)
                    if bar is not None:
                        bar.update(1)
            with torch.no_grad():
                final = {k: v.detach() for k, v in objective(w, noises, target, target_id).items()}
                start = final["total"] if start is None else start
                noises = [n.detach() for n in noises]
                w_opt = w.detach().clone()
                w_hat = w_opt.clone()
                if preserve_colour:
                    w_hat[:, colour_from:] = e[:, colour_from:]
                x = source([truncate(w_hat, truncation, centre)], input_is_latent=True, noise=noises)[0]
                i = encoder(resize_to(x, enc_size))
                if preserve_colour:
                    i[:, colour_from:] = e[:, colour_from:]
                strips = None
                if previews:
                    g_e = source([e], input_is_latent=True, noise=noises)[0]
                    g_i = source([i], input_is_latent=True, noise=noises)[0]
                    strips = torch.stack([target] + [resize_to(v, loss_res).clamp(-1, 1) for v in (g_e, x, g_i)], 1)
            if bar is not None and not steps:
                bar.update(1)
            for b, name in enumerate(batch_names):
                intrinsic[name], extrinsic[name] = i[b].cpu(), e[b].cpu()
            if on_batch is not None:
                on_batch(DestylizedBatch(batch_names, styles, e, w_opt, noises, x, i, start, final["total"],
                                         final, strips, dict(meta)))
    if bar is not None and progress is True:
        bar.close()
    if not names:
        empty = torch.zeros(0, n_latent, style_dim)
        return StyleCodes([], empty, empty.clone(), meta)
    return StyleCodes(names, torch.stack([intrinsic[n] for n in names]), torch.stack([extrinsic[n] for n in names]),
                      meta)


# ---------------------------------------------------------------------------------------------- refinement
@dataclass
class RefinedBatch:
    """One refined batch (handed to ``on_batch``): the refined extrinsic codes and the objective per image."""

    names: list[str]
    extrinsic: Tensor
    objective_start: Tensor
    objective_end: Tensor
    images: Tensor
    """The DualStyleGAN outputs of the refined codes at the loss resolution."""


def refine_extrinsic(codes: StyleCodes, images: Sequence[Any] | Mapping[str, Any], generator: DualStyleGAN,
                     lpips: nn.Module, *, vgg: nn.Module | None = None, steps: int = 100, lr_colour: float = 0.01,
                     lr_structure: float = 0.005, lr_noise: float = 0.1, cx_weight: float = 1.0,
                     lambda_noise: float = 1e5, interp_weights: Sequence[float] | None = None, batch_size: int = 1,
                     seed: int = 0, loader: Loader = load_style_image, loss_size: int = LOSS_SIZE,
                     on_batch: Callable[[RefinedBatch], None] | None = None, progress: Any = False) -> StyleCodes:
    """Refine the extrinsic codes of ``codes`` against their style images (module docstring) -> a new table
    with the same names and intrinsic codes.

    Args:
        images: aligned with ``codes.names`` (a sequence / ``Dataset`` of paths or tensors, as in :func:`destylize`)
            or a mapping file name -> path / tensor.
        generator: the trained DualStyleGAN; structure rows are ``<= generator.res_index``.
        lpips: LPIPS network on images in [-1, 1]; ``vgg``: a feature network returning a list whose last entry is
            ``relu3_1`` (default :class:`models.vgg19.VGG19Features` ``(("relu3_1",))`` from the asset registry).
        steps, lr_colour, lr_structure, lr_noise, cx_weight, lambda_noise: 100, 0.01 (README for cartoons: 0.1),
            0.005, 0.1, 1, 1e5 (official); constant learning rates.
        interp_weights: the DualStyleGAN weight vector (default all 1, as the official refinement).
        seed: seeds each image's starting noise (with its name).
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps}")
    codes.check(int(generator.n_latent), int(generator.style_dim), "refine_extrinsic")
    if isinstance(images, Mapping):
        missing = [n for n in codes.names if n not in images]
        if missing:
            raise ValueError(f"no style image for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        images = [images[n] for n in codes.names]
    names = _check_names(codes.names, len(images))
    if vgg is None and cx_weight != 0:
        from models.vgg19 import VGG19Features

        vgg = VGG19Features(("relu3_1",))
    device = next(generator.parameters()).device
    if vgg is not None:
        vgg.to(device)
    frozen = _frozen(generator, lpips, vgg)
    n_s = int(generator.res_index) + 1
    size = int(generator.size)
    loss_res = min(int(loss_size), size)
    weights = list(interp_weights) if interp_weights is not None else None

    def objective(intr: Tensor, structure: Tensor, colour: Tensor, noises: list[Tensor], target: Tensor,
                  target_feat: Tensor | None) -> tuple[Tensor, Tensor]:
        e = torch.cat([structure, colour], dim=1)
        image = resize_to(generator([intr], e, interp_weights=weights, input_is_latent=True, noise=noises)[0], loss_res)
        total = lpips(image, target).flatten() + lambda_noise * noise_regularization(noises)
        if cx_weight != 0:
            feat = vgg(image)[-1]
            cx = torch.stack([contextual_loss(feat[b:b + 1], target_feat[b:b + 1]) for b in range(feat.shape[0])])
            total = total + cx_weight * cx
        return total, image

    batches = _batches(list(range(len(names))), batch_size)
    bar = _progress(progress, max(1, int(steps)) * len(batches), "refine")
    refined = codes.extrinsic.detach().clone()
    with trainable([], frozen):
        for rows in batches:
            batch_names = [names[k] for k in rows]
            styles = torch.stack([_fetch(images, k, size, loader) for k in rows]).to(device)
            intr = codes.intrinsic[rows].to(device)
            e0 = codes.extrinsic[rows].to(device)
            with torch.no_grad():
                target = resize_to(styles, loss_res)
                target_feat = vgg(target)[-1] if cx_weight != 0 else None
            structure = e0[:, :n_s].clone().requires_grad_(True)
            colour = e0[:, n_s:].clone().requires_grad_(True)
            noises = [n.requires_grad_(True) for n in _random_noise(generator, batch_names, seed, device)]
            optimizer = torch.optim.Adam([{"params": [colour], "lr": lr_colour},
                                          {"params": [structure], "lr": lr_structure},
                                          {"params": noises, "lr": lr_noise}])
            start: Tensor | None = None
            with torch.enable_grad():
                for _ in range(int(steps)):
                    total, _ = objective(intr, structure, colour, noises, target, target_feat)
                    if not torch.isfinite(total).all():
                        raise FloatingPointError(f"refinement objective is not finite for {batch_names}")
                    if start is None:
                        start = total.detach()
                    optimizer.zero_grad(set_to_none=True)
                    total.sum().backward()
                    optimizer.step()
                    normalize_noise_(noises)
                    if bar is not None:
                        bar.update(1)
            with torch.no_grad():
                end, image = objective(intr, structure, colour, noises, target, target_feat)
                start = end if start is None else start
                e = torch.cat([structure, colour], dim=1).detach()
            refined[rows] = e.cpu()
            if on_batch is not None:
                on_batch(RefinedBatch(batch_names, e, start, end, image))
    if bar is not None and progress is True:
        bar.close()
    meta = dict(codes.meta)
    meta["refined_extrinsic"] = {
        "steps": int(steps), "lr_colour": float(lr_colour), "lr_structure": float(lr_structure),
        "lr_noise": float(lr_noise), "cx_weight": float(cx_weight), "lambda_noise": float(lambda_noise),
        "seed": int(seed), "loss_size": loss_res}
    return StyleCodes(list(codes.names), codes.intrinsic.clone(), refined, meta)
