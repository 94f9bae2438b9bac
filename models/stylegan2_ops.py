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


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """FIR filtering without resampling: ``upfirdn2d(x, kernel, pad=pad)`` as a padded depthwise conv."""
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return _depthwise(x, torch.flip(kernel, [0, 1]))


def upsample2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2x upsampling ``upfirdn2d(x, kernel, up=2, pad=(2, 1))`` for a 4x4 kernel (the ToRGB skip path).

    Computed as one depthwise stride-2 transposed convolution, which skips the
    zero-inserted samples instead of convolving them. Exact for any 4x4 kernel.
    """
    if kernel.shape != (4, 4):
        kh = kernel.shape[0]
        p = kh - 2
        return upfirdn2d(x, kernel, up=2, pad=((p + 1) // 2 + 1, p // 2))
    c = x.shape[1]
    w = kernel.to(dtype=x.dtype, device=x.device)[None, None].expand(c, 1, 4, 4)
    return F.conv_transpose2d(x, w, stride=2, padding=1, groups=c)


def downsample2d(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Blur then keep every second sample: ``upfirdn2d(x, kernel, down=2, pad=pad)``."""
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return _depthwise(x, torch.flip(kernel, [0, 1]), stride=2)
