"""Domain-guided encoder E of In-Domain GAN Inversion (Zhu et al., "In-Domain GAN Inversion for Real Image
Editing", ECCV 2020, Sec. 3.1 and the supplementary architecture description).

E maps images ``[B, 3, R, R]`` in ``[-1, 1]`` to W+ codes ``[B, n_latent, style_dim]`` of a StyleGAN2
generator (``models.stylegan2.Generator``: ``size``, ``n_latent``, ``style_dim``). It is a residual CNN that
halves the resolution ``log2(R / 4)`` times down to a 4x4 map, then a dense layer + batch norm emits all
``n_latent * style_dim`` numbers at once. Two variants of the authors' releases are built:

* **Variant B** (default) -- the authors' TensorFlow training code: 5x5 stem conv (+bias) -> LeakyReLU(0.2)
  -> BN; each residual block (after 2x2 average pooling) is two ``conv3x3(+bias) -> LReLU -> BN`` with a
  ``conv1x1 -> BN`` shortcut when the width changes; widths 64, 128, 256, 512 capped at ``max_channels=512``;
  head ``dense(+bias) -> BN`` with learned scale and shift.
* **Variant A** -- the layout of the authors' released PyTorch encoder weights: 3x3 stem conv (no bias) ->
  BN -> LReLU; residual blocks ``conv3x3(+bias) -> BN -> LReLU`` twice with a ``conv1x1 -> BN -> LReLU``
  shortcut; widths capped at ``max_channels=1024``; head an equalized-lr dense layer (no bias, weights
  N(0, 1), runtime scale ``1 / sqrt(fan_in)``) -> BN. Every BN of variant A has a fixed unit scale and a learned
  shift only (:class:`ShiftBatchNorm`).

Both use batch norm with momentum 0.1 and eps 1e-5 (the TF code's decay 0.9) and N(0, 0.02) conv / dense
initialisation with zero biases, as the TF code. At 256 px with 14 codes of 512, variant B has a 58.7 M
parameter head; variant A has ~47.8 M conv and ~117.4 M head parameters (:meth:`DomainGuidedEncoder.
parameter_counts`).

Batch norm: the TF release synchronises batch statistics across GPUs. Here every norm is a plain
``nn.BatchNorm1d/2d`` (variant A wraps one with a separate shift), so a multi-GPU run converts them with
``torch.nn.SyncBatchNorm.convert_sync_batchnorm(encoder)``; variant A's shift survives the conversion. In eval
mode the running statistics are used, so an image's code does not depend on the rest of its batch.

Files: :func:`save_encoder` writes plain data (architecture config, state dict, metadata) that
:func:`load_encoder` reads back with ``torch.load(weights_only=True)``.

Layering: plain PyTorch, no Lightning (docs/adding_a_method.md).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from models.stylegan2_layers import EqualLinear

__all__ = ["VARIANTS", "DomainGuidedEncoder", "EncoderFileError", "EncoderResBlock", "ShiftBatchNorm", "build_encoder",
           "encoder_config", "encoder_for", "load_encoder", "save_encoder"]

VARIANTS = ("A", "B")
DEFAULT_MAX_CHANNELS = {"A": 1024, "B": 512}
BN_MOMENTUM = 0.1  # TF decay 0.9
BN_EPS = 1e-5
LRELU_SLOPE = 0.2
INIT_STD = 0.02
MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024


class ShiftBatchNorm(nn.Module):
    """Batch norm with a fixed unit scale and a learned shift ``bias`` (variant A's norm layer).

    The statistics live in an inner ``nn.BatchNorm{1,2}d(affine=False)`` named ``norm``, so
    ``SyncBatchNorm.convert_sync_batchnorm`` replaces it and leaves the shift in place.
    """

    def __init__(self, num_features: int, dims: int = 2, momentum: float = BN_MOMENTUM, eps: float = BN_EPS):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 (features [B, C]) or 2 (maps [B, C, H, W]), got {dims}")
        norm_cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.norm = norm_cls(num_features, eps=eps, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return self.norm(x) + self.bias.view(shape)


def _batch_norm(variant: str, channels: int, dims: int = 2) -> nn.Module:
    if variant == "A":
        return ShiftBatchNorm(channels, dims=dims)
    norm_cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return norm_cls(channels, eps=BN_EPS, momentum=BN_MOMENTUM, affine=True)


def _conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class EncoderResBlock(nn.Module):
    """2x2 average pooling, then a residual block ``in_channels -> out_channels`` at the pooled resolution.

    The main path has two 3x3 convs (with bias) through ``hidden = min(in, out)`` channels; the shortcut is a
    1x1 conv (no bias) + BN when the width changes, the identity otherwise; the output is the plain sum.
    Variant B orders each conv as ``conv -> LReLU -> BN`` and leaves the shortcut linear; variant A orders it
    ``conv -> BN -> LReLU`` and also activates the shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, variant: str = "B"):
        super().__init__()
        self.variant = variant
        self.in_channels, self.out_channels = in_channels, out_channels
        hidden = min(in_channels, out_channels)
        self.pool = nn.AvgPool2d(2)
        self.conv1 = _conv(in_channels, hidden, 3, bias=True)
        self.norm1 = _batch_norm(variant, hidden)
        self.conv2 = _conv(hidden, out_channels, 3, bias=True)
        self.norm2 = _batch_norm(variant, out_channels)
        if in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(_conv(in_channels, out_channels, 1, bias=False),
                                                     _batch_norm(variant, out_channels))
        else:
            self.shortcut = nn.Identity()
        self.act = nn.LeakyReLU(LRELU_SLOPE)

    def _unit(self, conv: nn.Module, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.variant == "A":
            return self.act(norm(conv(x)))
        return norm(self.act(conv(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        skip = self.shortcut(x)
        if self.variant == "A" and self.in_channels != self.out_channels:
            skip = self.act(skip)
        h = self._unit(self.conv1, self.norm1, x)
        h = self._unit(self.conv2, self.norm2, h)
        return h + skip


class DomainGuidedEncoder(nn.Module):
    """Encoder E of In-Domain GAN Inversion: images ``[B, 3, R, R]`` in [-1, 1] -> W+ ``[B, n_latent, style_dim]``.

    Args:
        resolution: input size R, a power of two in 8..1024 (``log2(R / 4)`` residual blocks, last map 4x4).
        n_latent, style_dim: the W+ shape of the generator to invert (``Generator.n_latent``, ``style_dim``).
        variant: ``"B"`` (default; the TF training code) or ``"A"`` (the released PyTorch weights' layout); see
            the module docstring.
        stem_channels: width of the stem conv (64); block ``i`` (1-based) outputs
            ``min(stem_channels * 2**i, max_channels)`` channels.
        max_channels: width cap (``None``: 512 for B, 1024 for A).
        in_channels: image channels (3).

    Submodules: ``stem``, ``blocks`` (one :class:`EncoderResBlock` per halving) and ``head`` (``fc``, ``norm``).
    Conv part = ``stem`` + ``blocks``; FC part = ``head``.
    """

    def __init__(self, resolution: int, n_latent: int, style_dim: int = 512, variant: str = "B",
                 stem_channels: int = 64, max_channels: int | None = None, in_channels: int = 3):
        super().__init__()
        variant = str(variant).upper()
        if variant not in VARIANTS:
            raise ValueError(f"unknown encoder variant {variant!r}; choose one of {VARIANTS}")
        if not (MIN_RESOLUTION <= resolution <= MAX_RESOLUTION) or resolution & (resolution - 1):
            raise ValueError(f"encoder resolution must be a power of two in {MIN_RESOLUTION}..{MAX_RESOLUTION}, "
                             f"got {resolution}")
        if n_latent < 1 or style_dim < 1 or stem_channels < 1 or in_channels < 1:
            raise ValueError(f"n_latent, style_dim, stem_channels and in_channels must be positive, got "
                             f"{n_latent}, {style_dim}, {stem_channels}, {in_channels}")
        max_channels = DEFAULT_MAX_CHANNELS[variant] if max_channels is None else int(max_channels)
        if max_channels < 1:
            raise ValueError(f"max_channels must be positive, got {max_channels}")
        self.variant = variant
        self.resolution = resolution
        self.n_latent = n_latent
        self.style_dim = style_dim
        self.in_channels = in_channels
        self.stem_channels = stem_channels
        self.max_channels = max_channels
        self.num_blocks = int(math.log2(resolution // 4))
        widths = [min(stem_channels * 2 ** i, max_channels) for i in range(self.num_blocks + 1)]
        self.channels: tuple[int, ...] = tuple(widths)  # stem output, then each block's output

        if variant == "B":
            self.stem = nn.Sequential(_conv(in_channels, widths[0], 5, bias=True), nn.LeakyReLU(LRELU_SLOPE),
                                      _batch_norm(variant, widths[0]))
        else:
            self.stem = nn.Sequential(_conv(in_channels, widths[0], 3, bias=False), _batch_norm(variant, widths[0]),
                                      nn.LeakyReLU(LRELU_SLOPE))
        self.blocks = nn.ModuleList(EncoderResBlock(widths[i], widths[i + 1], variant)
                                    for i in range(self.num_blocks))
        fc_in, fc_out = widths[-1] * 4 * 4, n_latent * style_dim
        self.head = nn.Module()
        self.head.fc = (nn.Linear(fc_in, fc_out, bias=True) if variant == "B"
                        else EqualLinear(fc_in, fc_out, bias=False))
        self.head.norm = _batch_norm(variant, fc_out, dims=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) convs (and variant B's dense layer), zero biases, BN at identity; variant A's equalized
        dense layer keeps N(0, 1) weights (its ``1 / sqrt(fan_in)`` scale is applied in ``forward``)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, EqualLinear):
                nn.init.normal_(module.weight, std=1.0)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()
            elif isinstance(module, ShiftBatchNorm):
                nn.init.zeros_(module.bias)

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, resolution={self.resolution}, n_latent={self.n_latent}, "
                f"style_dim={self.style_dim}, channels={list(self.channels)}")

    def parameter_counts(self) -> dict[str, int]:
        """Parameter numbers: ``conv`` (stem + blocks), ``fc`` (head) and ``total``."""
        conv = sum(p.numel() for m in (self.stem, self.blocks) for p in m.parameters())
        fc = sum(p.numel() for p in self.head.parameters())
        return {"conv": conv, "fc": fc, "total": conv + fc}

    def forward(self, images: torch.Tensor, return_features: bool = False):
        """W+ codes ``[B, n_latent, style_dim]``; with ``return_features`` also the list of stage outputs
        (stem at R, then each block at R/2, R/4, ..., 4)."""
        expected = (self.in_channels, self.resolution, self.resolution)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"encoder expects images [B, {expected[0]}, {expected[1]}, {expected[2]}], "
                             f"got shape {tuple(images.shape)}")
        x = self.stem(images)
        features = [x]
        for block in self.blocks:
            x = block(x)
            features.append(x)
        codes = self.head.norm(self.head.fc(x.flatten(1)))
        codes = codes.view(images.shape[0], self.n_latent, self.style_dim)
        return (codes, features) if return_features else codes


def build_encoder(variant: str = "B", resolution: int = 256, n_latent: int | None = None, style_dim: int = 512,
                  **widths: Any) -> DomainGuidedEncoder:
    """A :class:`DomainGuidedEncoder`; ``n_latent`` defaults to StyleGAN2's ``2 * log2(resolution) - 2``.

    ``widths``: ``stem_channels``, ``max_channels``, ``in_channels``.
    """
    if n_latent is None:
        n_latent = 2 * int(math.log2(resolution)) - 2
    return DomainGuidedEncoder(resolution, n_latent, style_dim, variant=variant, **widths)


def encoder_for(generator: nn.Module, variant: str = "B", **widths: Any) -> DomainGuidedEncoder:
    """An encoder sized for ``generator`` (``models.stylegan2.Generator``: ``size``, ``n_latent``, ``style_dim``)."""
    return build_encoder(variant, resolution=int(generator.size), n_latent=int(generator.n_latent),
                         style_dim=int(generator.style_dim), **widths)


# ----------------------------------------------------------------------------------------------------------
# files

ENCODER_FORMAT = "styleshift-idinvert-encoder"
ENCODER_FORMAT_VERSION = 1
_CONFIG_KEYS = ("variant", "resolution", "n_latent", "style_dim", "stem_channels", "max_channels", "in_channels")


class EncoderFileError(ValueError):
    """An encoder file is unreadable or not in the :func:`save_encoder` format; the message names the file."""


def encoder_config(encoder: DomainGuidedEncoder) -> dict[str, Any]:
    """The constructor arguments that rebuild ``encoder`` (``DomainGuidedEncoder(**config)``)."""
    return {key: getattr(encoder, key) for key in _CONFIG_KEYS}


def save_encoder(path: str | os.PathLike, encoder: DomainGuidedEncoder, variant: str | None = None,
                 widths: Mapping[str, Any] | None = None, **metadata: Any) -> Path:
    """Write ``encoder`` to ``path`` (atomically) as plain data: ``{"format", "version", "config",
    "state_dict", "metadata"}``; returns the path.

    ``variant`` / ``widths`` (optional) are checked against the encoder's own configuration; ``metadata``
    (e.g. ``kimg=...``) must be plain Python data (numbers, strings, lists, dicts).
    """
    config = encoder_config(encoder)
    if variant is not None and str(variant).upper() != config["variant"]:
        raise ValueError(f"save_encoder: variant {variant!r} given but the encoder is variant {config['variant']!r}")
    own_widths = {k: config[k] for k in ("stem_channels", "max_channels", "in_channels")}
    for key, value in dict(widths or {}).items():
        if own_widths.get(key, object()) != value:
            raise ValueError(f"save_encoder: width {key}={value!r} does not match the encoder's {own_widths}")
    payload = {"format": ENCODER_FORMAT, "version": ENCODER_FORMAT_VERSION, "config": config,
               "state_dict": {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()},
               "metadata": dict(metadata)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                 ) -> tuple[DomainGuidedEncoder, dict[str, Any]]:
    """Read a :func:`save_encoder` file: ``(encoder, config)``, the encoder in eval mode, ``config`` the
    architecture (``variant``, ``resolution``, ``n_latent``, ``style_dim``, widths) plus ``metadata``."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a missing file keeps its own error; anything unreadable gets one message
        if isinstance(err, FileNotFoundError):
            raise
        raise EncoderFileError(f"{path}: cannot read an encoder file ({type(err).__name__}: {err})") from err
    if not isinstance(payload, Mapping) or payload.get("format") != ENCODER_FORMAT:
        raise EncoderFileError(f"{path}: not an encoder file written by models.encoders.save_encoder "
                               f"(format {ENCODER_FORMAT!r})")
    if payload.get("version") != ENCODER_FORMAT_VERSION:
        raise EncoderFileError(f"{path}: encoder file version {payload.get('version')!r}, this code reads "
                               f"version {ENCODER_FORMAT_VERSION}")
    config = dict(payload["config"])
    try:
        encoder = DomainGuidedEncoder(**{k: config[k] for k in _CONFIG_KEYS})
        encoder.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise EncoderFileError(f"{path}: encoder file does not match its config {config}: {err}") from err
    config["metadata"] = dict(payload.get("metadata") or {})
    return encoder.eval(), config
