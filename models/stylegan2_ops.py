"""Pure-PyTorch resampling and activation ops of StyleGAN2 (docs/methods/stylegan2.md, "Resampling" and "Fast paths").

No compiled extensions: everything is expressed with ``F.pad``, depthwise ``conv2d`` and
``conv_transpose2d``, so the same code runs on CPU and CUDA, in fp32 and under bf16 autocast.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def make_kernel(k: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """2-D FIR filter from a 1-D (outer product) or 2-D spec, normalised to sum 1."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def leaky_relu_(x: torch.Tensor, negative_slope: float = 0.2, clamp: float | None = None) -> torch.Tensor:
    """``leaky_relu`` (then ``±clamp``) on a fresh intermediate: in place when no gradient is recorded."""
    inplace = not torch.is_grad_enabled()
    x = F.leaky_relu(x, negative_slope, inplace=inplace)
    if clamp is not None:
        x = x.clamp_(-clamp, clamp) if inplace else x.clamp(-clamp, clamp)
    return x


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float = 0.2,
                     scale: float = SQRT2, clamp: float | None = None) -> torch.Tensor:
    """``leaky_relu(x + b, 0.2) * sqrt(2)``, optionally clamped to ``±clamp`` (NVIDIA's ``conv_clamp``)."""
    if bias is not None:
        x = x + bias.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
    x = F.leaky_relu(x, negative_slope) * scale
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Correlate every channel with the same 2-D ``kernel`` (valid padding)."""
    c = x.shape[1]
    w = kernel.to(dtype=x.dtype, device=x.device)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, w, stride=stride, groups=c)


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Reference upfirdn2d (docs/methods/stylegan2.md, "Resampling"): zero-insert ``up``, pad (negative
    crops), true convolution with ``kernel`` (flipped correlation), keep every ``down``-th sample.

    ``pad = (p0, p1)`` is applied to both axes. Output size ``(H*up + p0 + p1 - kh + down) // down``.
    """
    b, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(b, c, h, up, w, up)
        z[:, :, :, 0, :, 0] = x
        x = z.reshape(b, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return _depthwise(x, torch.flip(kernel, [0, 1]), stride=down)


def _depthwise_padded(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int], stride: int = 1,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """Correlate every channel with ``kernel`` after zero padding ``pad`` on both axes. A symmetric pad goes
    through the convolution's own ``padding`` (no padded copy of ``x``)."""
    c = x.shape[1]
    w = kernel.to(dtype=x.dtype, device=x.device)[None, None].expand(c, 1, *kernel.shape)
    if bias is not None:
        bias = bias.to(x.dtype)
    if pad[0] == pad[1] and pad[0] >= 0:
        return F.conv2d(x, w, bias=bias, stride=stride, padding=pad[0], groups=c)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, w, bias=bias, stride=stride, groups=c)


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int],
         bias: torch.Tensor | None = None) -> torch.Tensor:
    """FIR filtering without resampling: ``upfirdn2d(x, kernel, pad=pad)`` as a padded depthwise conv,
    plus an optional per-channel ``bias`` added by that same convolution."""
    return _depthwise_padded(x, torch.flip(kernel, [0, 1]), pad, bias=bias)


def upsample2d(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """2x upsampling ``upfirdn2d(x, kernel, up=2, pad=(2, 1))`` for a 4x4 kernel (the ToRGB skip path).

    Computed as one depthwise stride-2 transposed convolution, which skips the
    zero-inserted samples instead of convolving them. Exact for any 4x4 kernel.
    """
    if kernel.shape != (4, 4):
        kh = kernel.shape[0]
        p = kh - 2
        out = upfirdn2d(x, kernel, up=2, pad=((p + 1) // 2 + 1, p // 2))
        return out if bias is None else out + bias.to(out.dtype).view(1, -1, 1, 1)
    c = x.shape[1]
    w = kernel.to(dtype=x.dtype, device=x.device)[None, None].expand(c, 1, 4, 4)
    return F.conv_transpose2d(x, w, bias=None if bias is None else bias.to(x.dtype), stride=2, padding=1,
                              groups=c)


def downsample2d(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Blur then keep every second sample: ``upfirdn2d(x, kernel, down=2, pad=pad)``."""
    return _depthwise_padded(x, torch.flip(kernel, [0, 1]), pad, stride=2)
