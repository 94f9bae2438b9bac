"""Differentiable Augmentation (Zhao et al., NeurIPS 2020), a shared augmentation for any GAN module.

The same random, differentiable transform is applied to every image D sees (reals and fakes, in
both the D and the G step), so gradients flow through it to G. MixDL's ``train_diffaug.py`` uses the
policy ``"color,translation,cutout"`` (docs/methods/mixdl.md, "Options"); the ops follow the paper:

- ``color``: brightness ``x + U[-0.5, 0.5)``, then saturation ``(x - mean_c) * U[0, 2) + mean_c``
  (mean over channels, per pixel), then contrast ``(x - mean) * U[0.5, 1.5) + mean`` (mean over the
  whole image). One draw per sample.
- ``translation``: integer shift of up to ``round(ratio * size)`` pixels (ratio 1/8) along each axis,
  drawn per sample, with zero padding.
- ``cutout``: a zeroed square of ``round(ratio * size)`` pixels (ratio 1/2) per sample; its centre is
  uniform over the image, so the square may be clipped at the border.

Ops run in policy order. Randomness comes from an optional ``torch.Generator`` (on any device); the
sampled parameters are exposed by the ``sample_*`` functions and applied by pure functions, so each
op can be checked against its parameters.
"""
from __future__ import annotations

import torch
from torch import nn


def _uniform(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(device=like.device, dtype=like.dtype)


def _randint(low: int, high: int, shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randint(low, high, shape, generator=generator, device=device).to(like.device)


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"DiffAugment expects float images [B, C, H, W], got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', '')}")


# --- color -------------------------------------------------------------------------------------

def sample_color(x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-sample ``brightness`` in [-0.5, 0.5), ``saturation`` in [0, 2), ``contrast`` in [0.5, 1.5)."""
    b = x.shape[0]
    return {"brightness": _uniform((b,), generator, x) - 0.5,
            "saturation": _uniform((b,), generator, x) * 2.0,
            "contrast": _uniform((b,), generator, x) + 0.5}


def adjust_brightness(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``x + delta_b``, one offset per sample."""
    return x + delta.view(-1, 1, 1, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's deviation from its channel mean by ``factor_b``."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * factor.view(-1, 1, 1, 1) + mean


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale the deviation from the image mean (over C, H, W) by ``factor_b``."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor.view(-1, 1, 1, 1) + mean


def apply_color(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Brightness, then saturation, then contrast with the given per-sample parameters."""
    x = adjust_brightness(x, params["brightness"])
    x = adjust_saturation(x, params["saturation"])
    return adjust_contrast(x, params["contrast"])


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return apply_color(x, sample_color(x, generator))


# --- translation -------------------------------------------------------------------------------

def max_translation(size: int, ratio: float = 0.125) -> int:
    """Largest shift in pixels along an axis of ``size`` pixels: ``int(size * ratio + 0.5)``."""
    return int(size * ratio + 0.5)


def sample_translation(x: torch.Tensor, ratio: float = 0.125,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample integer shifts [B, 2] = (dy, dx), each uniform in [-max, max]."""
    b, _, h, w = x.shape
    sy, sx = max_translation(h, ratio), max_translation(w, ratio)
    dy = _randint(-sy, sy + 1, (b,), generator, x)
    dx = _randint(-sx, sx + 1, (b,), generator, x)
    return torch.stack([dy, dx], dim=1)


def translate(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``out[b, :, y, x] = in[b, :, y - dy_b, x - dx_b]``, zero where the source is outside the image."""
    b, _, h, w = x.shape
    dy, dx = shifts[:, 0].view(b, 1, 1), shifts[:, 1].view(b, 1, 1)
    src_y = torch.arange(h, device=x.device).view(1, h, 1) - dy            # [B, H, 1]
    src_x = torch.arange(w, device=x.device).view(1, 1, w) - dx            # [B, 1, W]
    inside = ((src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)).unsqueeze(1)   # [B, 1, H, W]
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    moved = x.permute(0, 2, 3, 1)[batch, src_y.clamp(0, h - 1), src_x.clamp(0, w - 1)]  # [B, H, W, C]
    return moved.permute(0, 3, 1, 2) * inside.to(x.dtype)


def translation(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    return translate(x, sample_translation(x, ratio, generator))


# --- cutout ------------------------------------------------------------------------------------

def cutout_size(size: int, ratio: float = 0.5) -> int:
    """Side of the cutout square along an axis of ``size`` pixels: ``int(size * ratio + 0.5)``."""
    return int(size * ratio + 0.5)


def sample_cutout(x: torch.Tensor, ratio: float = 0.5,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample top-left corners [B, 2] = (top, left) of the cutout square (may lie outside).

    The square's centre is uniform over ``[0, size + (1 - side % 2))`` as in the paper's code, so the
    square always overlaps the image and is clipped at the border.
    """
    b, _, h, w = x.shape
    ch, cw = cutout_size(h, ratio), cutout_size(w, ratio)
    cy = _randint(0, h + (1 - ch % 2), (b,), generator, x)
    cx = _randint(0, w + (1 - cw % 2), (b,), generator, x)
    return torch.stack([cy - ch // 2, cx - cw // 2], dim=1)


def apply_cutout(x: torch.Tensor, corners: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero the ``size = (height, width)`` rectangle at ``corners`` (clipped to the image) per sample."""
    b, _, h, w = x.shape
    top, left = corners[:, 0].view(b, 1, 1), corners[:, 1].view(b, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (ys >= top) & (ys < top + size[0]) & (xs >= left) & (xs < left + size[1])
    return x * (~hole).unsqueeze(1).to(x.dtype)


def cutout(x: torch.Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    size = (cutout_size(x.shape[2], ratio), cutout_size(x.shape[3], ratio))
    return apply_cutout(x, sample_cutout(x, ratio, generator), size)


# --- policy ------------------------------------------------------------------------------------

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> ops in order; ``""``/``None`` -> no ops. Unknown names raise."""
    if not policy:
        return ()
    if not isinstance(policy, str):
        raise TypeError(f"DiffAugment policy must be a comma-separated string, got {type(policy).__name__}")
    ops = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in ops if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment op(s) {unknown} in policy {policy!r}; valid ops: {list(POLICIES)}")
    return ops


class DiffAugment(nn.Module):
    """``DiffAugment(policy)(x, generator=None)``: the policy's ops applied in order (no parameters).

    Apply the same instance to real and fake images before every D call. An empty policy returns the
    input unchanged.
    """

    def __init__(self, policy: str = "color,translation,cutout", translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5):
        super().__init__()
        self.ops = parse_policy(policy)
        if not 0 <= translation_ratio <= 1 or not 0 < cutout_ratio <= 1:
            raise ValueError(f"ratios must lie in [0, 1] (cutout > 0), got translation_ratio="
                             f"{translation_ratio}, cutout_ratio={cutout_ratio}")
        self.translation_ratio = translation_ratio
        self.cutout_ratio = cutout_ratio

    def _run_op(self, op: str, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if op == "color":
            return color(x, generator)
        if op == "translation":
            return translation(x, self.translation_ratio, generator)
        return cutout(x, self.cutout_ratio, generator)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.ops:
            return x
        _check_images(x)
        for op in self.ops:
            x = self._run_op(op, x, generator)
        return x

    def extra_repr(self) -> str:
        return (f"policy={','.join(self.ops)!r}, translation_ratio={self.translation_ratio}, "
                f"cutout_ratio={self.cutout_ratio}")
