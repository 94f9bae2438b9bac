"""Editing inverted W+ codes [B, n_latent, style_dim] (In-Domain GAN Inversion's applications, Zhu et al.,
ECCV 2020; docs/methods/idinvert.md). Codes from any inverter render through any generator of the same
architecture (``n_latent``, ``style_dim``): a NADA-adapted or fine-tuned copy shows a real photo in its domain.

* :func:`interpolate`: ``w_t = (1 - t) w_a + t w_b`` over every layer;
* :func:`manipulate`: ``w + d * n`` on a range of layers, for an InterFaceGAN-style boundary ``n`` of shape
  ``[1, n_latent, style_dim]`` (one normal per layer) or a plain ``[style_dim]`` direction;
* :func:`style_mix`: the content code with its layers from ``start`` on taken from the style code;
* :func:`paste_crop`: the stitched image of semantic diffusion (a crop of the target pasted into the
  context) and its mask; diffusion itself is ``models.inversion.Inverter.invert`` with that mask and
  ``lambda_dom = 0``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["interpolate", "manipulate", "style_mix", "load_boundary", "paste_crop"]


def _check_codes(w: Tensor, name: str = "codes") -> None:
    if w.dim() != 3:
        raise ValueError(f"{name} must be W+ codes [B, n_latent, style_dim], got shape {tuple(w.shape)}")


def interpolate(w_a: Tensor, w_b: Tensor, steps: int = 5) -> Tensor:
    """``steps`` inner points and both ends: [steps + 2, B, n_latent, style_dim], ``t = 0 .. 1``."""
    _check_codes(w_a, "w_a")
    if w_a.shape != w_b.shape:
        raise ValueError(f"codes to interpolate differ in shape: {tuple(w_a.shape)} vs {tuple(w_b.shape)}")
    t = torch.linspace(0, 1, int(steps) + 2, device=w_a.device, dtype=w_a.dtype).view(-1, 1, 1, 1)
    return torch.lerp(w_a.unsqueeze(0), w_b.unsqueeze(0), t)


def _as_per_layer(boundary: Tensor, n_latent: int, style_dim: int) -> Tensor:
    if boundary.numel() == style_dim:
        return boundary.reshape(1, 1, style_dim).expand(1, n_latent, style_dim)
    if boundary.numel() == n_latent * style_dim:
        return boundary.reshape(1, n_latent, style_dim)
    raise ValueError(f"a boundary must have {style_dim} values (one direction) or {n_latent}x{style_dim} "
                     f"(one normal per layer), got shape {tuple(boundary.shape)}")


def manipulate(w: Tensor, boundary: Tensor, distances: Sequence[float] = (-3, -2, -1, 0, 1, 2, 3),
               layers: Sequence[int] | None = None) -> Tensor:
    """``w + d * n`` for each distance ``d`` on ``layers`` (default: all) -> [len(distances), B, L, D]."""
    _check_codes(w)
    n_latent, style_dim = w.shape[1:]
    normal = _as_per_layer(boundary.to(w), n_latent, style_dim)
    mask = torch.zeros(1, n_latent, 1, device=w.device, dtype=w.dtype)
    chosen = range(n_latent) if layers is None else list(layers)
    for layer in chosen:
        if not 0 <= layer < n_latent:
            raise IndexError(f"layer {layer} out of range for {n_latent} W+ codes")
        mask[0, layer] = 1
    d = torch.as_tensor(list(distances), device=w.device, dtype=w.dtype).view(-1, 1, 1, 1)
    return w.unsqueeze(0) + d * (normal * mask).unsqueeze(0)


def style_mix(content: Tensor, style: Tensor, start: int) -> Tensor:
    """``content`` with layers ``start ..`` replaced by ``style``'s (every content x every style: [S, C, L, D])."""
    _check_codes(content, "content")
    _check_codes(style, "style")
    if not 0 <= start <= content.shape[1]:
        raise IndexError(f"start layer {start} out of range for {content.shape[1]} W+ codes")
    mixed = content.unsqueeze(0).repeat(style.shape[0], 1, 1, 1)
    mixed[:, :, start:] = style[:, None, start:]
    return mixed


def load_boundary(path: str | Path) -> tuple[Tensor, list[int] | None]:
    """A boundary file: ``.npy`` (InterFaceGAN/IDInvert, ``[1, n_latent, style_dim]`` or ``[style_dim]``) or a
    ``.pt`` tensor or ``{"boundary": tensor, "layers": [...]}`` (plain data only). Returns (tensor, layers)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boundary file {path} does not exist")
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path, allow_pickle=False)).float(), None
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict):
        layers = data.get("layers")
        return torch.as_tensor(data["boundary"]).float(), None if layers is None else [int(i) for i in layers]
    return torch.as_tensor(data).float(), None


def paste_crop(target: Tensor, context: Tensor, center: tuple[int, int], size: int) -> tuple[Tensor, Tensor]:
    """Paste the ``size`` x ``size`` crop of ``target`` around ``center = (x, y)`` into ``context``.

    Returns the stitched images [B, 3, H, W] and the crop mask [B, 1, H, W] (1 inside the crop).
    """
    if target.shape != context.shape:
        raise ValueError(f"target and context differ in shape: {tuple(target.shape)} vs {tuple(context.shape)}")
    h, w = target.shape[-2:]
    x0, y0 = int(center[0]) - size // 2, int(center[1]) - size // 2
    if x0 < 0 or y0 < 0 or x0 + size > w or y0 + size > h:
        raise ValueError(f"a {size}px crop around {center} leaves the {w}x{h} image")
    mask = torch.zeros(target.shape[0], 1, h, w, device=target.device, dtype=target.dtype)
    mask[..., y0:y0 + size, x0:x0 + size] = 1
    return context * (1 - mask) + target * mask, mask
