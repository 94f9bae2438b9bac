"""StyleGAN2 generator and discriminator, rosinality-compatible (Karras et al., CVPR 2020).

The math, the options and the fast paths: docs/methods/stylegan2.md.

Module names, child registration order (``style, input, conv1, to_rgb1, convs, upsamples, to_rgbs,
noises``), state-dict keys and the ``forward`` signature mirror rosinality/stylegan2-pytorch, so its
checkpoints load with ``strict=True`` and code that indexes ``children()``/``convs[i]`` keeps working
(docs/architecture.md, "Backbone"). Additions are keyword options with neutral defaults: ``return_feats``,
``noise_mode``, a configurable channel table, NVIDIA's ``conv_clamp`` and minibatch-stddev group size.
"""
from __future__ import annotations

import math
import random
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from models.stylegan2_layers import (ConstantInput, ConvLayer, EqualLinear, PixelNorm, ResBlock,
                                     StyledConv, ToRGB)

NOISE_MODES = ("random", "const", "none")

_COMPILED: dict[str, Callable] = {}


def _compiled(name: str, fn: Callable) -> Callable:
    """One ``torch.compile`` of the plain function ``fn`` per name, built on first use; the module is an
    argument (not captured), so copies (EMA) and pickles of the module carry nothing compiled."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn)
    return _COMPILED[name]


def _should_compile(module: nn.Module) -> bool:
    return bool(getattr(module, "use_compile", False)) and not torch.compiler.is_compiling()


def default_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """rosinality's channel table: 512 up to 32 px, then ``16384 / res * cm``
    (docs/methods/stylegan2.md, "Synthesis network and W indices")."""
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm,
            512: 32 * cm, 1024: 16 * cm}


def resolve_channels(size: int, channel_multiplier: int,
                     channels: Mapping[int, int] | None) -> dict[int, int]:
    """The channel table to use, checked to cover every resolution from 4 to ``size``."""
    if size < 4 or size & (size - 1):
        raise ValueError(f"StyleGAN2 size must be a power of two >= 4, got {size}")
    table = default_channels(channel_multiplier) if channels is None else \
        {int(k): int(v) for k, v in channels.items()}
    needed = [2 ** i for i in range(2, int(math.log2(size)) + 1)]
    missing = [r for r in needed if r not in table]
    if missing:
        raise ValueError(f"channel table {table} lacks resolutions {missing} (needed: {needed})")
    return {r: table[r] for r in needed}


class _Noises(nn.Module):
    """Holder of the stored per-layer noise buffers ``noise_{i}`` [1, 1, r, r]."""


class Generator(nn.Module):
    """StyleGAN2 "skip" generator (docs/methods/stylegan2.md, "Generator").

    ``fused_modconv`` selects the modulated-conv formulation: ``True`` (grouped conv), ``False``
    (shared-weight conv with activation scaling) or ``"auto"``. Both are exact (docs/methods/stylegan2.md,
    "Fast paths"). ``"auto"`` lets every layer choose from its shape (``fused_policy``): on CPU from the
    measured table of docs/methods/stylegan2.md, "Modulation policy"; elsewhere grouped convs for inference
    and the shared-weight form while gradients are recorded (NVIDIA's policy).

    ``compile=True`` (attribute ``use_compile``) runs the synthesis network through ``torch.compile``
    (opt-in; the first call compiles, same outputs).
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), lr_mlp: float = 0.01,
                 channels: Mapping[int, int] | None = None, conv_clamp: float | None = None,
                 compile: bool = False):
        super().__init__()
        self.use_compile = compile
        self.size = size
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.lr_mlp = lr_mlp
        self.blur_kernel = tuple(blur_kernel)
        self.channel_multiplier = channel_multiplier
        self.conv_clamp = conv_clamp
        self.fused_modconv: bool | str = "auto"
        layers: list[nn.Module] = [PixelNorm()]
        for _ in range(n_mlp):
            layers.append(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu"))
        self.style = nn.Sequential(*layers)

        self.channels = resolve_channels(size, channel_multiplier, channels)
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim,
                                blur_kernel=blur_kernel, conv_clamp=conv_clamp)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False, conv_clamp=conv_clamp)

        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = _Noises()
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, res, res))
        in_channel = self.channels[4]
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2 ** i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                                         blur_kernel=blur_kernel, conv_clamp=conv_clamp))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim,
                                         blur_kernel=blur_kernel, conv_clamp=conv_clamp))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel,
                                      conv_clamp=conv_clamp))
            in_channel = out_channel
        self.n_latent = self.log_size * 2 - 2

    # ----------------------------------------------------------------------------------- helpers
    def make_noise(self) -> list[torch.Tensor]:
        """Fresh N(0, 1) noise maps in layer order, [1, 1, r, r] each."""
        device = self.input.input.device
        noises = [torch.randn(1, 1, 4, 4, device=device)]
        for i in range(3, self.log_size + 1):
            for _ in range(2):
                noises.append(torch.randn(1, 1, 2 ** i, 2 ** i, device=device))
        return noises

    def mean_latent(self, n_latent: int) -> torch.Tensor:
        """Mean of ``style(z)`` over ``n_latent`` fresh z (consumes torch RNG), shape [1, style_dim]."""
        z = torch.randn(n_latent, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)

    def get_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Mapping network only: z [B, style_dim] -> w [B, style_dim]."""
        return self.style(z)

    def stored_noise(self) -> list[torch.Tensor]:
        """The stored ``noises.noise_{i}`` buffers (``randomize_noise=False`` / NVIDIA ``const``)."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def _use_fused(self) -> bool | str:
        """The ``fused`` argument for the layers: ``True``/``False`` when forced, ``"auto"`` to let every
        modulated conv pick its formulation from its shape (``models.stylegan2_layers.fused_policy``)."""
        if self.fused_modconv == "auto":
            return "auto"
        return bool(self.fused_modconv)

    # ----------------------------------------------------------------------------------- forward
    def styles_to_latent(self, styles: Sequence[torch.Tensor], inject_index: int | None = None,
                         truncation: float = 1, truncation_latent: torch.Tensor | float | None = None,
                         input_is_latent: bool = False) -> torch.Tensor:
        """Mapping, truncation ``w' = w_avg + psi (w - w_avg)`` and style mixing -> W+ [B, n_latent, D]."""
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. latent_avg or mean_latent(4096))")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        if len(styles) < 2:
            s = styles[0]
            return s if s.ndim == 3 else s.unsqueeze(1).repeat(1, self.n_latent, 1)
        if inject_index is None:
            inject_index = random.randint(1, self.n_latent - 1)
        first = styles[0] if styles[0].ndim == 3 else styles[0].unsqueeze(1).repeat(1, self.n_latent, 1)
        second = styles[1] if styles[1].ndim == 3 else styles[1].unsqueeze(1).repeat(1, self.n_latent, 1)
        return torch.cat([first[:, :inject_index], second[:, inject_index:]], 1)

    def synthesis(self, latent: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None,
                  noise_mode: str = "random", return_feats: bool = False):
        """Synthesis network on W+ ``latent`` [B, n_latent, D]; which row drives which layer:
        docs/methods/stylegan2.md, "Synthesis network and W indices".

        Returns the image, or ``(image, feats)`` with the activation after every StyledConv.
        """
        if _should_compile(self):
            return _compiled("Generator.synthesis", Generator._synthesis)(self, latent, noise, noise_mode,
                                                                          return_feats)
        return self._synthesis(latent, noise, noise_mode, return_feats)

    def _synthesis(self, latent: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None,
                   noise_mode: str = "random", return_feats: bool = False):
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if noise is None:
            noise = self.stored_noise() if noise_mode == "const" else [None] * self.num_layers
        elif len(noise) != self.num_layers:
            raise ValueError(f"noise list has {len(noise)} entries, the generator has {self.num_layers} layers")
        mode = "none" if noise_mode == "none" else "random"
        fused = self._use_fused()
        feats = []
        out = self.input(latent)
        out = self.conv1(out, latent[:, 0], noise=noise[0], noise_mode=mode, fused=fused)
        feats.append(out)
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2],
                                                        noise[2::2], self.to_rgbs):
            out = conv1(out, latent[:, i], noise=noise1, noise_mode=mode, fused=fused)
            feats.append(out)
            out = conv2(out, latent[:, i + 1], noise=noise2, noise_mode=mode, fused=fused)
            feats.append(out)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return (skip, feats) if return_feats else skip

    def forward(self, styles: Sequence[torch.Tensor], return_latents: bool = False,
                inject_index: int | None = None, truncation: float = 1,
                truncation_latent: torch.Tensor | float | None = None, input_is_latent: bool = False,
                noise: Sequence[torch.Tensor | None] | None = None, randomize_noise: bool = True,
                return_feats: bool = False, noise_mode: str | None = None):
        """rosinality's forward (docs/architecture.md, "Backbone"). ``noise_mode`` (``random``/``const``/``none``)
        overrides ``randomize_noise`` when given; an explicit ``noise`` list overrides both.

        Returns ``(image, latent or None)``, plus the StyledConv activations with ``return_feats``.
        """
        if isinstance(styles, torch.Tensor):
            styles = [styles]
        latent = self.styles_to_latent(styles, inject_index, truncation, truncation_latent,
                                       input_is_latent)
        if noise_mode is None:
            noise_mode = "random" if randomize_noise else "const"
        result = self.synthesis(latent, noise=noise, noise_mode=noise_mode, return_feats=return_feats)
        image, feats = result if return_feats else (result, None)
        latent_out = latent if return_latents else None
        return (image, latent_out, feats) if return_feats else (image, latent_out)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with minibatch stddev (docs/methods/stylegan2.md, "Discriminator").

    ``mbstd_group_size=None`` uses the whole batch as one group (TF-converted NVIDIA models).
    ``compile=True`` (attribute ``use_compile``) runs ``forward`` through ``torch.compile`` (opt-in).
    """

    def __init__(self, size: int, channel_multiplier: int = 2, channels: Mapping[int, int] | None = None,
                 mbstd_group_size: int | None = 4, conv_clamp: float | None = None,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), compile: bool = False):
        super().__init__()
        self.use_compile = compile
        self.size = size
        self.channels = resolve_channels(size, channel_multiplier, channels)
        self.conv_clamp = conv_clamp
        log_size = int(math.log2(size))
        convs: list[nn.Module] = [ConvLayer(3, self.channels[size], 1, conv_clamp=conv_clamp)]
        in_channel = self.channels[size]
        for i in range(log_size, 2, -1):
            out_channel = self.channels[2 ** (i - 1)]
            convs.append(ResBlock(in_channel, out_channel, blur_kernel, conv_clamp=conv_clamp))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)
        self.stddev_group = mbstd_group_size
        self.stddev_feat = 1
        self.final_conv = ConvLayer(in_channel + 1, self.channels[4], 3, conv_clamp=conv_clamp)
        self.final_linear = nn.Sequential(
            EqualLinear(self.channels[4] * 4 * 4, self.channels[4], activation="fused_lrelu"),
            EqualLinear(self.channels[4], 1),
        )

    def minibatch_stddev(self, out: torch.Tensor) -> torch.Tensor:
        """Append the group standard deviation as one extra channel (docs/methods/stylegan2.md, "Discriminator")."""
        batch, channel, height, width = out.shape
        group = batch if self.stddev_group is None else min(batch, self.stddev_group)
        if batch % group:
            raise ValueError(f"batch size {batch} is not divisible by the minibatch-stddev group {group}")
        f = self.stddev_feat
        stddev = out.view(group, -1, f, channel // f, height, width)
        stddev = torch.sqrt(stddev.float().var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2).to(out.dtype)
        stddev = stddev.repeat(group, 1, height, width)
        return torch.cat([out, stddev], 1)

    def forward(self, x: torch.Tensor, return_feats: bool = False):
        """Logits [B, 1]; with ``return_feats`` also the output of every ``convs`` block and of
        ``final_conv`` (the last entry is the penultimate feature map)."""
        if _should_compile(self):
            return _compiled("Discriminator.forward", Discriminator._forward)(self, x, return_feats)
        return self._forward(x, return_feats)

    def _forward(self, x: torch.Tensor, return_feats: bool = False):
        feats = []
        out = x
        for block in self.convs:
            out = block(out)
            feats.append(out)
        out = self.final_conv(self.minibatch_stddev(out))
        feats.append(out)
        logits = self.final_linear(out.reshape(out.shape[0], -1))
        return (logits, feats) if return_feats else logits
