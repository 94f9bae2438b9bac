"""Generator exponential moving average (docs/methods/stylegan2.md, "EMA").

NVIDIA form (stylegan2-ada-pytorch): the half-life is given in thousands of images, so the decay per
step follows the real number of images per step (``batch`` summed over all ranks)::

    beta = 0.5 ** (batch / ema_nimg),  ema_nimg = ema_kimg * 1000
    ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)   # optional ramp-up

rosinality fixes ``beta = 0.5 ** (32 / 10_000)`` whatever the batch, which is the special case
``batch = 32, ema_kimg = 10``.

Parameters are averaged; buffers are *copied* (NVIDIA). rosinality averages parameters only. In our
generator the buffers are constants (the fixed ``noises.noise_i`` maps and resampling kernels), so copying
only matters after weights were loaded into the trained copy: it keeps the EMA copy's fixed noise equal to
the trained generator's.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ema_beta", "make_ema", "update_ema"]


def ema_beta(batch: int, ema_kimg: float, cur_nimg: int = 0, ema_rampup: float | None = None) -> float:
    """Decay ``beta`` for one step of ``batch`` images (all ranks) after ``cur_nimg`` images were seen."""
    if ema_kimg <= 0:
        raise ValueError(f"ema_kimg must be > 0 (half-life in thousands of images), got {ema_kimg}")
    ema_nimg = ema_kimg * 1000.0
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


def make_ema(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` in eval mode (no parameter requires grad)."""
    ema = copy.deepcopy(module).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, module: nn.Module, beta: float) -> None:
    """``p_ema <- beta p_ema + (1 - beta) p`` for parameters; buffers copied. Names must match."""
    params = dict(module.named_parameters())
    ema_params = dict(ema.named_parameters())
    if params.keys() != ema_params.keys():
        missing = sorted(set(params) ^ set(ema_params))[:5]
        raise KeyError(f"EMA copy and module have different parameters (e.g. {missing})")
    for name, p in params.items():
        ema_params[name].lerp_(p.detach().to(ema_params[name].dtype), 1.0 - beta)
    ema_buffers = dict(ema.named_buffers())
    for name, buf in module.named_buffers():
        ema_buffers[name].copy_(buf)
