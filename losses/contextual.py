"""Contextual loss CX with cosine distances (Mechrez et al., ECCV 2018), as DualStyleGAN's Stage III uses it.

Yang et al., "Pastiche Master", CVPR 2022; docs/methods/dualstylegan.md. For generated features x and exemplar
features y, both [N, C, H, W], with positions i of x and j of y:

    mu       = mean of y over batch and positions (dims 0, 2, 3)  -- couples the samples of a batch
    x_i, y_j = L2-normalised (x - mu), (y - mu) over channels
    d_ij     = 1 - <x_i, y_j>
    dt_ij    = d_ij / (min_j d_ij + 1e-5)
    w_ij     = exp((1 - dt_ij) / h)
    cx_ij    = w_ij / sum_j w_ij
    CX       = mean_j max_i cx_ij                      (per sample)
    loss     = mean_batch -log(CX + 1e-5),   h = 0.2

The min and the sum run over the exemplar positions j for each generated position i, so the work splits over
chunks of rows i exactly; ``chunk_size`` bounds the memory to O(chunk HW) per sample (under autograd each chunk
is recomputed in the backward pass instead of keeping its [chunk, HW] intermediates).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["contextual_loss", "DEFAULT_BAND_WIDTH"]

DEFAULT_BAND_WIDTH = 0.2
EPS = 1e-5


def _max_cx(x_rows: Tensor, y_cols: Tensor, band_width: float) -> Tensor:
    """``max_i cx_ij`` over the rows i of ``x_rows`` [N, C, P] against every column j of ``y_cols`` [N, C, Q]."""
    d = 1.0 - torch.bmm(x_rows.transpose(1, 2), y_cols)  # [N, P, Q]
    d_rel = d / (d.min(dim=2, keepdim=True).values + EPS)
    w = torch.exp((1.0 - d_rel) / band_width)
    cx = w / w.sum(dim=2, keepdim=True)
    return cx.max(dim=1).values  # [N, Q]


def contextual_loss(x: Tensor, y: Tensor, band_width: float = DEFAULT_BAND_WIDTH,
                    chunk_size: int | None = None) -> Tensor:
    """CX loss (module docstring) of generated features ``x`` against exemplar features ``y`` [N, C, H, W].

    ``chunk_size``: number of positions of ``x`` per chunk (None: all at once); the value is the same up to
    floating-point rounding.
    """
    if x.ndim != 4 or y.ndim != 4 or x.shape[:2] != y.shape[:2]:
        raise ValueError(f"x and y must be [N, C, H, W] with equal N and C, got {tuple(x.shape)} and {tuple(y.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    mu = y.mean(dim=(0, 2, 3), keepdim=True)
    xn = F.normalize((x - mu).flatten(2), dim=1)
    yn = F.normalize((y - mu).flatten(2), dim=1)
    positions = xn.shape[2]
    step = positions if chunk_size is None else min(chunk_size, positions)
    recompute = step < positions and torch.is_grad_enabled() and (xn.requires_grad or yn.requires_grad)
    best: Tensor | None = None
    for start in range(0, positions, step):
        rows = xn[:, :, start:start + step]
        part = (checkpoint(_max_cx, rows, yn, band_width, use_reentrant=False) if recompute
                else _max_cx(rows, yn, band_width))
        best = part if best is None else torch.maximum(best, part)
    cx = best.mean(dim=1)
    return (-torch.log(cx + EPS)).mean()
