"""Per-checkpoint StyleGAN2 configuration and its inference from weights.

The configuration that matters to build a network that loads a checkpoint strictly is: resolution,
``style_dim``, ``n_mlp`` and the channel table; NVIDIA files add ``conv_clamp``, the discriminator's
minibatch-stddev group size and the fp16 resolutions. Shapes give the first four; the others cannot
be read from weights and come from ``init_kwargs`` / ``static_kwargs`` or default to rosinality's values.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .errors import CheckpointError, UnsupportedModelError

SOURCE_FORMATS = ("rosinality", "pSp", "nvidia-pkl", "nvidia-tf-pkl", "styleshift")
STANDARD_CHANNEL_MULTIPLIERS = (2, 1, 4)  # tried in this order; 2 is rosinality's default


def rosinality_channel_table(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """rosinality's table restricted to ``4..size``: 512 up to 32 px, then ``16384 / res * cm``."""
    table = {}
    for log_res in range(2, int(math.log2(size)) + 1):
        res = 2 ** log_res
        table[res] = 512 if res <= 32 else int(16384 // res * channel_multiplier)
    return table


def detect_channel_multiplier(channels: Mapping[int, int], size: int) -> int | None:
    """The standard multiplier whose table equals ``channels`` on ``4..size``, else None.

    Up to 32 px every multiplier gives the same table; 2 (rosinality's default) is reported then.
    """
    wanted = {int(k): int(v) for k, v in channels.items() if int(k) <= size}
    for cm in STANDARD_CHANNEL_MULTIPLIERS:
        if rosinality_channel_table(size, cm) == wanted:
            return cm
    return None


@dataclass
class StyleGANConfig:
    """What is needed to rebuild the networks of a checkpoint.

    ``channels`` maps resolution -> channels for ``4..size`` (G, and D unless ``d_channels`` is set).
    ``channel_multiplier`` is set when ``channels`` is one of rosinality's standard tables, else None.
    ``mbstd_group_size=None`` means the whole batch is one group (NVIDIA's TF-converted discriminators).
    ``num_fp16_res`` is informational: our networks run in the caller's precision.
    """

    size: int
    style_dim: int | None = 512
    n_mlp: int | None = 8
    channels: dict[int, int] = field(default_factory=dict)
    channel_multiplier: int | None = 2
    conv_clamp: float | None = None
    mbstd_group_size: int | None = 4
    source_format: str = "styleshift"
    lr_mlp: float = 0.01
    num_fp16_res: int = 0
    d_channels: dict[int, int] | None = None

    def __post_init__(self) -> None:
        if self.size < 4 or self.size & (self.size - 1):
            raise CheckpointError(f"StyleGANConfig.size must be a power of two >= 4, got {self.size}")
        if self.source_format not in SOURCE_FORMATS:
            raise CheckpointError(f"unknown source_format {self.source_format!r}; expected one of {SOURCE_FORMATS}")
        if not self.channels:
            self.channels = rosinality_channel_table(self.size, self.channel_multiplier or 2)
        self.channels = self._table(self.channels, "channels")
        if self.d_channels is not None:
            self.d_channels = self._table(self.d_channels, "d_channels")

    def _table(self, table: Mapping[Any, Any], name: str) -> dict[int, int]:
        """Integer keys (YAML/JSON give strings), restricted to ``4..size``; every resolution present."""
        out = {int(k): int(v) for k, v in table.items() if int(k) <= self.size}
        missing = [r for r in rosinality_channel_table(self.size) if r not in out]
        if missing:
            raise CheckpointError(f"StyleGANConfig.{name} lacks resolutions {missing} (size {self.size})")
        return dict(sorted(out.items()))

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """Number of W+ rows, ``2 log2(size) - 2``."""
        return self.log_size * 2 - 2

    def generator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``models.stylegan2.Generator`` for this checkpoint."""
        if self.style_dim is None or self.n_mlp is None:
            raise CheckpointError("this checkpoint has no generator configuration (style_dim / n_mlp unknown)")
        standard = self.channel_multiplier is not None
        return dict(size=self.size, style_dim=self.style_dim, n_mlp=self.n_mlp,
                    channel_multiplier=self.channel_multiplier if standard else 2,
                    channels=None if standard else dict(self.channels),
                    lr_mlp=self.lr_mlp, conv_clamp=self.conv_clamp)

    def discriminator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``models.stylegan2.Discriminator`` for this checkpoint."""
        table = self.d_channels if self.d_channels is not None else self.channels
        cm = detect_channel_multiplier(table, self.size)
        return dict(size=self.size, channel_multiplier=cm if cm is not None else 2,
                    channels=None if cm is not None else dict(table),
                    mbstd_group_size=self.mbstd_group_size, conv_clamp=self.conv_clamp)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (loadable with ``torch.load(weights_only=True)``)."""
        out = dataclasses.asdict(self)
        out["channels"] = {int(k): int(v) for k, v in self.channels.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StyleGANConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown StyleGANConfig key(s) {unknown}; known keys: {sorted(known)}")
        if "size" not in data:
            raise CheckpointError("StyleGANConfig needs 'size'")
        return cls(**dict(data))


def _shape(sd: Mapping[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in sd:
        sample = ", ".join(list(sd)[:6])
        raise CheckpointError(f"not a rosinality {what} state dict: key {key!r} is missing (first keys: {sample})")
    return tuple(sd[key].shape)


def infer_generator(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``size, style_dim, n_mlp, channels`` of a rosinality Generator state dict."""
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    if n_mlp == 0:
        _shape(sd, "style.1.weight", "Generator")
    out_f, in_f = _shape(sd, "style.1.weight", "Generator")
    if in_f != out_f:
        raise UnsupportedModelError(
            f"style.1.weight has shape [{out_f}, {in_f}]: the mapping input is wider than W, i.e. a conditional "
            "model (c_dim > 0) or z_dim != w_dim; StyleGAN2 in rosinality layout supports neither")
    n_rgb = 0
    while f"to_rgbs.{n_rgb}.conv.weight" in sd:
        n_rgb += 1
    size = 2 ** (n_rgb + 2)
    channels = {4: _shape(sd, "input.input", "Generator")[1]}
    for k in range(n_rgb):
        channels[2 ** (k + 3)] = _shape(sd, f"convs.{2 * k}.conv.weight", "Generator")[1]
    last_noise = f"noises.noise_{2 * n_rgb}"
    if last_noise in sd and tuple(sd[last_noise].shape[-2:]) != (size, size):
        raise CheckpointError(f"{last_noise} has shape {tuple(sd[last_noise].shape)}, inconsistent with size {size}")
    return dict(size=size, style_dim=out_f, n_mlp=n_mlp, channels=channels)


def infer_discriminator(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``size, channels`` of a rosinality (resnet) Discriminator state dict."""
    n_blocks = 0
    while f"convs.{n_blocks + 1}.conv1.0.weight" in sd:
        n_blocks += 1
    size = 2 ** (n_blocks + 2)
    channels = {size: _shape(sd, "convs.0.0.weight", "Discriminator")[0]}
    for k in range(1, n_blocks + 1):
        res = size // 2 ** (k - 1)
        channels[res // 2] = _shape(sd, f"convs.{k}.conv2.1.weight", "Discriminator")[0]
    final = _shape(sd, "final_conv.0.weight", "Discriminator")
    if final[1] != channels[4] + 1:
        raise UnsupportedModelError(
            f"final_conv.0.weight has {final[1]} input channels, expected {channels[4]} + 1 minibatch-stddev "
            "channel (mbstd_num_channels != 1 is not supported)")
    return dict(size=size, channels=channels)


def infer_config(g_sd: Mapping[str, torch.Tensor] | None = None, d_sd: Mapping[str, torch.Tensor] | None = None,
                 source_format: str = "rosinality", **known: Any) -> StyleGANConfig:
    """Build a :class:`StyleGANConfig` from rosinality state dicts; ``known`` adds what weights cannot tell
    (``conv_clamp``, ``mbstd_group_size``, ``num_fp16_res``, ``lr_mlp``)."""
    if g_sd is None and d_sd is None:
        raise CheckpointError("the checkpoint holds neither a generator nor a discriminator")
    g = infer_generator(g_sd) if g_sd is not None else None
    d = infer_discriminator(d_sd) if d_sd is not None else None
    if g is not None and d is not None and g["size"] != d["size"]:
        raise CheckpointError(f"generator size {g['size']} and discriminator size {d['size']} differ")
    base = g if g is not None else dict(d, style_dim=None, n_mlp=None)
    d_channels = None
    if g is not None and d is not None and d["channels"] != g["channels"]:
        d_channels = d["channels"]
    cm = detect_channel_multiplier(base["channels"], base["size"])
    return StyleGANConfig(size=base["size"], style_dim=base["style_dim"], n_mlp=base["n_mlp"],
                          channels=base["channels"], channel_multiplier=cm, d_channels=d_channels,
                          source_format=source_format, **known)
