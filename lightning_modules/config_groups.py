"""Config groups shared by methods: keys several methods take, defined once.

A method's constructor takes its own keys plus named groups it shares with other methods, so no method
copies another's signature:

* ``generator`` (:class:`GeneratorSpec`): the generator to start from - a checkpoint (path or registered
  asset name; a bare string is shorthand for ``{checkpoint: ...}``) or the architecture of a new one;
* ``gan`` (:class:`GANSettings`): the adversarial training settings of the StyleGAN2 core.

In YAML::

    model:
      generator: {resolution: 32, style_dim: 64, n_mlp: 2}     # or: generator: stylegan2-ffhq-256
      gan: {r1_gamma: 0.05, pl_weight: 0, ema_kimg: 0.5}
      total_kimg: 16

A group is a dataclass; :func:`coerce_group` builds it from a mapping over a method's defaults
(``dataclasses.replace``), with the same did-you-mean errors as the launcher. The launcher validates
every group's keys and value types before anything is built.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeVar

from torch import nn

from lightning_modules.config_check import group_fields, group_value_errors, is_config_group

log = logging.getLogger(__name__)

G = TypeVar("G")

#: architecture defaults of a new generator (rosinality's ``train.py``)
SCRATCH_DEFAULTS = {"style_dim": 512, "n_mlp": 8, "channel_multiplier": 2}


def coerce_group(cls: type[G], value: Any, where: str, defaults: G | None = None) -> G:
    """``value`` (an instance, a mapping, ``None`` or the group's string shorthand) as a ``cls`` instance.

    Mapping keys override ``defaults`` (else the dataclass defaults). Unknown keys and values of the wrong
    type raise one ``ValueError`` that names each offending key from ``where`` (``model.gan.r1_gamma``),
    with the closest valid keys - the checks the launcher runs on a config (:func:`group_value_errors`).
    """
    if isinstance(value, cls):
        return value
    base = copy.deepcopy(defaults) if defaults is not None else cls()
    if value is None:
        return base
    errors = group_value_errors(cls, value, where)
    if errors:
        raise ValueError("; ".join(errors))
    if isinstance(value, str):
        value = {cls.shorthand: value}
    return dataclasses.replace(base, **dict(value))


def _channel_table(channels: Mapping[Any, Any] | None) -> dict[int, int] | None:
    """``{resolution: channels}`` with integer keys (YAML may give strings)."""
    if channels is None:
        return None
    try:
        return {int(k): int(v) for k, v in dict(channels).items()}
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"channels must map resolutions to channel counts, got {channels!r}") from err


@dataclass
class GeneratorSpec:
    """The generator a method starts from: ``checkpoint`` (pretrained), or a new one of this architecture.

    Attributes:
        checkpoint: a file ``models.checkpoints.load`` reads (rosinality ``.pt``, NVIDIA ``.pkl``, an exported
            ``generator.pt``) or a registered asset name. Architecture keys that are also given must agree.
        which: the generator of the file single-generator methods use: ``g_ema`` (default) or ``g``.
        resolution, style_dim (512), n_mlp (8), channel_multiplier (2), channels (``{res: ch}`` table),
            lr_mlp, conv_clamp: architecture of a new generator; ``mbstd_group_size`` of a new discriminator.
        init_seed: seed of a new generator's random weights (None: the global torch RNG).
    """

    shorthand = "checkpoint"

    checkpoint: str | None = None
    which: str = "g_ema"
    resolution: int | None = None
    style_dim: int | None = None
    n_mlp: int | None = None
    channel_multiplier: int | None = None
    channels: dict[int, int] | None = None
    lr_mlp: float = 0.01
    conv_clamp: float | None = None
    mbstd_group_size: int | None = 4
    init_seed: int | None = None

    def __post_init__(self) -> None:
        self.channels = _channel_table(self.channels)
        if self.which not in ("g_ema", "g"):
            raise ValueError(f"generator.which must be 'g_ema' or 'g', got {self.which!r}")

    ARCHITECTURE = ("resolution", "style_dim", "n_mlp", "channel_multiplier", "channels")

    # -------------------------------------------------------------------------------- new networks
    def architecture(self) -> dict[str, Any]:
        """Keyword arguments of a new ``models.stylegan2.Generator`` (defaults filled in)."""
        if self.resolution is None:
            raise ValueError("a new generator needs model.generator.resolution (or model.generator.checkpoint "
                             "to start from a pretrained one)")
        kw = {k: SCRATCH_DEFAULTS[k] if getattr(self, k) is None else getattr(self, k) for k in SCRATCH_DEFAULTS}
        return dict(size=self.resolution, **kw, lr_mlp=self.lr_mlp, channels=self.channels,
                    conv_clamp=self.conv_clamp)

    def _new(self, build):
        import torch

        if self.init_seed is None:
            return build()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.init_seed))
            return build()

    def new_networks(self) -> tuple[nn.Module, nn.Module]:
        """A new generator and discriminator of this architecture (weights from the RNG, see ``init_seed``)."""
        from models.stylegan2 import Discriminator, Generator

        arch = self.architecture()

        def build():
            g = Generator(**arch)
            d = Discriminator(self.resolution, channel_multiplier=arch["channel_multiplier"],
                              channels=self.channels, mbstd_group_size=self.mbstd_group_size,
                              conv_clamp=self.conv_clamp)
            return g, d

        return self._new(build)

    # -------------------------------------------------------------------------------- pretrained
    def check_against(self, config) -> None:
        """Architecture keys given alongside ``checkpoint`` must agree with the file's (a ``StyleGANConfig``)."""
        found = {"resolution": config.size, "style_dim": config.style_dim, "n_mlp": config.n_mlp,
                 "channel_multiplier": config.channel_multiplier,
                 "channels": {int(k): int(v) for k, v in config.channels.items()}}
        for key in self.ARCHITECTURE:
            value = getattr(self, key)
            if value is not None and value != found[key]:
                raise ValueError(f"model.generator.{key}={value!r} disagrees with checkpoint {self.checkpoint!r} "
                                 f"({key}={found[key]!r}); drop it or use a matching file")

    def generator(self) -> nn.Module:
        """The one generator (eval mode): ``which`` of ``checkpoint`` (``models.checkpoints.load_generator``),
        or a new generator of this architecture."""
        if self.checkpoint is None:
            from models.stylegan2 import Generator

            arch = self.architecture()
            return self._new(lambda: Generator(**arch)).eval()
        from models import checkpoints

        generator = checkpoints.load_generator(self.checkpoint, self.which)
        self.check_against(generator.config if hasattr(generator, "config") else _config_of(generator))
        return generator

    def gan(self) -> tuple[nn.Module, nn.Module, nn.Module | None]:
        """``(G, D, G_ema or None)`` to train: from ``checkpoint`` (G = ``g`` else a copy of ``g_ema``; D new
        when the file has none, with a warning), or new networks (G_ema None: a copy of G)."""
        if self.checkpoint is None:
            g, d = self.new_networks()
            return g, d, None
        from models import checkpoints
        from models.stylegan2 import Discriminator

        loaded = checkpoints.load(self.checkpoint)
        if loaded.g_ema is None and loaded.g is None:
            raise ValueError(f"checkpoint {self.checkpoint!r} holds no generator")
        self.check_against(loaded.config)
        g_ema = loaded.g_ema if loaded.g_ema is not None else loaded.g
        if loaded.g is None:
            log.warning("checkpoint %s has no trained generator 'g': fine-tuning starts from 'g_ema'",
                        self.checkpoint)
        generator = copy.deepcopy(loaded.g if loaded.g is not None else g_ema).train()
        discriminator = loaded.d
        if discriminator is None:
            log.warning("checkpoint %s has no discriminator: D starts from random weights", self.checkpoint)
            config = loaded.config
            discriminator = Discriminator(config.size, channels={int(k): int(v) for k, v in config.channels.items()},
                                          mbstd_group_size=config.mbstd_group_size, conv_clamp=config.conv_clamp)
        return generator, discriminator.train(), g_ema


def _config_of(generator: nn.Module):
    """A ``StyleGANConfig``-like view of a generator's architecture (for :meth:`GeneratorSpec.check_against`)."""
    return _Arch(generator.size, generator.style_dim, generator.n_mlp, generator.channel_multiplier,
                 generator.channels)


@dataclass
class _Arch:
    size: int
    style_dim: int
    n_mlp: int
    channel_multiplier: int
    channels: Mapping[int, int]


@dataclass
class GANSettings:
    """Adversarial training settings of the StyleGAN2 core (rosinality ``train.py`` defaults).

    Attributes:
        g_lr, d_lr, betas: Adam settings before the lazy-regularization correction.
        r1_gamma, r1_interval: R1 weight (0 disables) and lazy interval (iterations).
        pl_weight, pl_interval, pl_batch_shrink, pl_decay: path-length regularization (0 disables).
        mixing_prob: probability that a batch uses two z and a random crossover index.
        ema_kimg, ema_rampup: EMA half-life in kimg and optional ramp-up (NVIDIA; None = off).
        diffaugment: DiffAugment policy for every image D sees, e.g. ``"color,translation,cutout"`` (None = off).
    """

    shorthand = None

    g_lr: float = 0.002
    d_lr: float = 0.002
    betas: Sequence[float] = (0.0, 0.99)
    r1_gamma: float = 10.0
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    mixing_prob: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: float | None = None
    diffaugment: str | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2:
            raise ValueError(f"gan.betas must have two entries, got {self.betas}")
        if not 0.0 <= self.mixing_prob <= 1.0:
            raise ValueError(f"gan.mixing_prob must be in [0, 1], got {self.mixing_prob}")
        if self.r1_gamma < 0 or self.pl_weight < 0:
            raise ValueError(f"gan.r1_gamma and gan.pl_weight must be >= 0, got {self.r1_gamma}, {self.pl_weight}")
        for key in ("r1_interval", "pl_interval", "pl_batch_shrink"):
            value = getattr(self, key)
            if int(value) != value or value < 1:
                raise ValueError(f"gan.{key} must be an integer >= 1, got {value}")


__all__ = ["GeneratorSpec", "GANSettings", "coerce_group", "group_fields", "is_config_group", "SCRATCH_DEFAULTS"]
