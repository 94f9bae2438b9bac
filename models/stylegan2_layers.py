"""StyleGAN2 building blocks with rosinality's names and state-dict layout (docs/methods/stylegan2.md).

Every weight is stored unscaled and multiplied by its equalized-learning-rate gain at run time
(docs/methods/stylegan2.md, "Equalized learning rate"). Parameter and buffer names match
rosinality/stylegan2-pytorch ``model.py`` so its checkpoints load with ``strict=True``; the arithmetic uses
the fast equivalent forms of docs/methods/stylegan2.md, "Fast paths".
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.stylegan2_ops import (SQRT2, blur, downsample2d, fused_leaky_relu, leaky_relu_, make_kernel,
                                  upsample2d)

#: ``fused`` argument of the modulated convolutions that picks the formulation per layer from its shape
AUTO = "auto"


class PixelNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + 1e-8)`` over the feature axis (docs/methods/stylegan2.md, "Mapping network")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU(0.2) * sqrt(2), optional clamp (``activate.bias`` in rosinality)."""

    def __init__(self, channel: int, bias: bool = True, clamp: float | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, clamp=self.clamp)


class EqualLinear(nn.Module):
    """Linear layer with runtime gain ``lr_mul / sqrt(in)`` and bias scaled by ``lr_mul`` (equalized learning rate)."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # lrelu(a) * sqrt(2) == lrelu(sqrt(2) a): the activation gain is folded into the weight and bias
        gain = SQRT2 if self.activation else 1.0
        bias = self.bias * (self.lr_mul * gain) if self.bias is not None else None
        out = F.linear(x, self.weight * (self.scale * gain), bias=bias)
        return leaky_relu_(out) if self.activation else out


class EqualConv2d(nn.Module):
    """Conv with runtime gain ``1 / sqrt(in * k * k)`` (equalized learning rate)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x: torch.Tensor, stride: int | None = None) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias,
                        stride=self.stride if stride is None else stride, padding=self.padding)


class Blur(nn.Module):
    """FIR filter buffer ``kernel`` (×``upsample_factor²``) applied with padding ``pad``
    (docs/methods/stylegan2.md, "Resampling")."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor ** 2
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur(x, self.kernel, self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling of the ToRGB skip path, ``upfirdn2d(up=2, pad=(2, 1))``
    (docs/methods/stylegan2.md, "Resampling")."""

    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return upsample2d(x, self.kernel, bias=bias)


class ModulatedConv2d(nn.Module):
    """Modulated (and demodulated) conv, optionally 2x upsampling (docs/methods/stylegan2.md, "Modulated convolution").

    Two exact formulations: *fused* (per-sample weights, grouped conv with groups=batch, as
    rosinality) and *non-fused* (scale activations by the style, shared-weight conv, scale outputs
    by the demodulation coefficients computed with one matmul, as NVIDIA in training).
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1),
                             upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def demodulation(self, s: torch.Tensor) -> torch.Tensor:
        """``d[b,o] = rsqrt(sum_i s[b,i]^2 * scale^2 * sum_k w[o,i,k]^2 + eps)``, at least fp32 (one matrix product)."""
        dtype = torch.promote_types(s.dtype, torch.float32)  # fp32 at least, float64 kept
        with torch.autocast(s.device.type, enabled=False):
            w = self.weight[0].to(dtype).flatten(2)
            # the same op with and without gradients (bit-equal outputs in both modes); a norm would divide
            # by zero in its backward for an all-zero filter
            wsq = torch.linalg.vecdot(w, w) * self.scale ** 2  # [O, I]
            return torch.rsqrt(s.to(dtype).pow(2) @ wsq.t() + self.eps)

    def forward(self, x: torch.Tensor, style: torch.Tensor, fused: bool | str = True) -> torch.Tensor:
        return self.modulated(x, self.modulation(style), fused)

    def use_fused(self, fused: bool | str, x: torch.Tensor) -> bool:
        """Resolve ``fused``: ``True``/``False`` as given, ``"auto"`` from this layer's shape
        (:func:`fused_policy`)."""
        if fused != AUTO:
            return bool(fused)
        return fused_policy(x.shape[0], self.in_channel, self.out_channel, x.shape[-1], self.kernel_size,
                            self.upsample, x.device.type, torch.is_grad_enabled())

    def modulated(self, x: torch.Tensor, s: torch.Tensor, fused: bool | str = True, gain: float = 1.0,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
        """``gain * (modconv(x; s) [demodulated] [2x up + blur]) + bias`` from the styles ``s`` [B, I].

        The constant ``gain`` rides on the (small) weight or demodulation factors and ``bias`` [O] on a
        convolution that runs anyway, so neither costs a pass over the output."""
        if self.use_fused(fused, x):
            return self._fused(x, s, gain, bias)
        return self._nonfused(x, s, gain, bias)

    def _fused(self, x: torch.Tensor, s: torch.Tensor, gain: float = 1.0,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        b, i, h, w = x.shape
        k, o = self.kernel_size, self.out_channel
        # every per-sample factor is folded into one small [B, O|1, I] tensor: one pass over the weight
        factor = s.to(torch.promote_types(s.dtype, torch.float32)).view(b, 1, i, 1, 1) * (self.scale * gain)
        if self.demodulate:
            factor = factor * self.demodulation(s).view(b, o, 1, 1, 1)
        weight = (self.weight * factor).to(x.dtype)
        x = x.reshape(1, b * i, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * i, o, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=b)
            return blur(out.view(b, o, *out.shape[2:]), self.blur.kernel, self.blur.pad, bias=bias)
        conv_bias = None if bias is None else bias.to(x.dtype).repeat(b)
        weight = weight.reshape(b * o, i, k, k)
        out = F.conv2d(x, weight, bias=conv_bias, padding=self.padding, groups=b)
        return out.view(b, o, *out.shape[2:])

    def _nonfused(self, x: torch.Tensor, s: torch.Tensor, gain: float = 1.0,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x * s.to(x.dtype)[:, :, None, None]
        weight = (self.weight[0] * (self.scale if self.demodulate else self.scale * gain)).to(x.dtype)
        if self.upsample:
            out = blur(F.conv_transpose2d(x, weight.transpose(0, 1), padding=0, stride=2),
                       self.blur.kernel, self.blur.pad)  # the blur commutes with the per-channel d
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if not self.demodulate:
            return out if bias is None else out + bias.to(out.dtype).view(1, -1, 1, 1)
        scale = (self.demodulation(s).to(out.dtype) * gain)[:, :, None, None]
        if bias is None:
            return out * scale
        return torch.addcmul(bias.to(out.dtype).view(1, -1, 1, 1), out, scale)  # one pass: b + out * d


def fused_policy(batch: int, in_channel: int, out_channel: int, size: int, kernel_size: int, upsample: bool,
                 device: str, grad: bool) -> bool:
    """``fused_modconv="auto"``: whether a modulated conv of this shape uses the grouped (fused) form.

    CUDA: grouped convs for inference, the shared-weight form while gradients are recorded (NVIDIA's policy).
    CPU: chosen per layer from ``bench/modconv_policy.py`` (docs/methods/stylegan2.md, "Modulation policy"):
    the fused form pays for modulating the weight (``B*O*I*k*k``) instead of two passes over the activations
    (``B*I*H*W`` for ``x*s`` and ``B*O*H'*W'`` for ``out*d``), and a grouped conv per sample. The choice does
    not depend on ``grad`` on CPU, so a network and its frozen copy give bit-equal outputs.
    """
    if device != "cpu":
        return not grad
    out_size = size * 2 if upsample else size
    activations = in_channel * size * size + out_channel * out_size * out_size
    weight = out_channel * in_channel * kernel_size * kernel_size
    ratio = activations / weight
    if upsample and batch > 1:  # grouped transposed convs lose unless the activations dominate by far
        return ratio > 8
    return ratio > 1


class NoiseInjection(nn.Module):
    """``x + weight * noise`` with a learned scalar strength initialised to 0 (docs/methods/stylegan2.md, "Noise")."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            b, _, h, w = image.shape
            noise = image.new_empty(b, 1, h, w).normal_()
        return image + self.weight.to(image.dtype) * noise.to(image.dtype)


class ConstantInput(nn.Module):
    """Learned 4x4 input ``input`` [1, C, 4, 4], repeated over the batch."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.input.repeat(latent.shape[0], 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv + noise + bias/lrelu (``convs[i]`` / ``conv1``; docs/methods/stylegan2.md,
    "Modulated convolution")."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1),
                 demodulate: bool = True, conv_clamp: float | None = None):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    upsample=upsample, blur_kernel=blur_kernel, demodulate=demodulate)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel, clamp=conv_clamp)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None,
                noise_mode: str = "random", fused: bool | str = True) -> torch.Tensor:
        # lrelu(y + n + b) * sqrt(2) == lrelu(sqrt(2) y + sqrt(2) n + sqrt(2) b): the gain rides on the
        # modulation weights / demodulation factors, the bias on the convolution (docs/methods/stylegan2.md,
        # "Fast paths"); what is left is one noise add and the activation, in place on the fresh output.
        conv, act = self.conv, self.activate
        bias = act.bias * SQRT2 if act.bias is not None else None
        out = conv.modulated(x, conv.modulation(style), fused, gain=SQRT2, bias=bias)
        if noise_mode != "none":
            if noise is None:
                b, _, h, w = out.shape
                noise = out.new_empty(b, 1, h, w).normal_()
            strength = self.noise.weight.to(out.dtype) * SQRT2
            out = out.add_(strength * noise.to(out.dtype))  # [B|1, 1, H, W] broadcast over channels
        return leaky_relu_(out, clamp=act.clamp)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) + bias, plus the upsampled skip
    (docs/methods/stylegan2.md, "ToRGB and skips").

    Computed as one batched matmul with the style folded into the [3, I] weight, the bias and the
    upsampled skip as its added term (docs/methods/stylegan2.md, "Fast paths").
    """

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, style: torch.Tensor,
                skip: torch.Tensor | None = None) -> torch.Tensor:
        conv = self.conv
        s = conv.modulation(style)
        b, i, h, w = x.shape
        # the style rides on the [3, I] weight, so the activations are read once, by one batched matmul
        weight = ((conv.weight[0, :, :, 0, 0] * conv.scale)[None] * s[:, None, :]).to(x.dtype)  # [B, 3, I]
        x = x.reshape(b, i, h * w)
        if skip is not None and self.conv_clamp is None:
            base = self.upsample(skip, bias=self.bias.view(-1)).to(x.dtype)  # skip + bias in one conv
            return torch.baddbmm(base.reshape(b, 3, h * w), weight, x).view(b, 3, h, w)
        out = torch.baddbmm(self.bias.to(x.dtype).view(1, 3, 1), weight, x).view(b, 3, h, w)
        if self.conv_clamp is not None:
            out = out.clamp(-self.conv_clamp, self.conv_clamp)
        if skip is not None:
            out = out + self.upsample(skip).to(out.dtype)
        return out


class ConvLayer(nn.Sequential):
    """Discriminator conv: [Blur] + EqualConv2d + [FusedLeakyReLU] (rosinality ``ConvLayer``;
    docs/methods/stylegan2.md, "Discriminator").

    With ``downsample`` the filter runs at full resolution before the stride-2 conv; for 1x1 convs
    the blur is fused with the subsampling and the conv runs at half resolution (docs/methods/stylegan2.md,
    "Fast paths").
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), bias: bool = True,
                 activate: bool = True, conv_clamp: float | None = None):
        layers: list[nn.Module] = []
        if downsample:
            factor = 2
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding,
                                  stride=stride, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias, clamp=conv_clamp))
        super().__init__(*layers)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """The layer's output times ``gain`` (> 0; ``ResBlock`` folds its ``1/sqrt(2)`` in here).

        The blur pads through its convolution's ``padding``; the activation gain ``sqrt(2)`` and ``gain``
        are folded into the conv weight and bias, so the bias add and the gains cost no pass."""
        modules = list(self)
        if self.downsample:
            blur_mod, conv = modules[0], modules[1]
            if conv.weight.shape[-1] == 1:
                x, stride = downsample2d(x, blur_mod.kernel, blur_mod.pad), 1
            else:
                x, stride = blur_mod(x), conv.stride
            act = modules[2] if len(modules) > 2 else None
        else:
            conv, stride = modules[0], modules[0].stride
            act = modules[1] if len(modules) > 1 else None
        g = gain * (SQRT2 if act is not None else 1.0)
        if act is not None and act.bias is not None:
            bias = act.bias * g
        else:
            bias = conv.bias * g if conv.bias is not None else None
        out = F.conv2d(x, conv.weight * (conv.scale * g), bias=bias, stride=stride, padding=conv.padding)
        if act is None:
            return out
        return leaky_relu_(out, clamp=None if act.clamp is None else act.clamp * gain)


class ResBlock(nn.Module):
    """Residual D block: ``(conv2(conv1(x)) + skip(x)) / sqrt(2)`` (docs/methods/stylegan2.md, "Discriminator")."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = None):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, conv_clamp=conv_clamp)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel,
                               conv_clamp=conv_clamp)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False,
                              blur_kernel=blur_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = 1 / math.sqrt(2)  # folded into both branches' weights
        out = self.conv2(self.conv1(x), gain=g)
        return out.add_(self.skip(x, gain=g))
