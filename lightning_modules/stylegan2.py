"""Plain StyleGAN2 training, from scratch or fine-tuned from a checkpoint (spec stylegan2_backbone.md §6).

``StyleGAN2Module`` is :class:`lightning_modules.gan.StyleGAN2Core` with networks built from a few
plain arguments (so they can be set from YAML), or loaded with ``models.checkpoints.load`` from a file or
a registered asset name (``checkpoint=stylegan2-ffhq-256``). With a checkpoint the architecture comes
from the file; an architecture argument that is also given must agree with it.

Samplers (DESIGN.md contract 3): ``ema`` (EMA generator, stored noise buffers, psi = 1) and
``ema_trunc`` (psi = 0.7 toward the mean W of 4096 fixed z); both deterministic in ``(indices, seed)``.
At the end of ``fit`` the generator is exported to ``run_dir/generator.pt`` (rosinality-compatible).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytorch_lightning.utilities import rank_zero_only

from lightning_modules.gan import StyleGAN2Core, count_parameters
from models.stylegan2 import Discriminator, Generator

log = logging.getLogger(__name__)

#: defaults of the architecture arguments when training from scratch
SCRATCH_DEFAULTS = {"style_dim": 512, "n_mlp": 8, "channel_multiplier": 2}


def _channel_table(channels: Mapping[Any, Any] | None) -> dict[int, int] | None:
    """``{resolution: channels}`` with integer keys (YAML may give strings)."""
    if channels is None:
        return None
    try:
        return {int(k): int(v) for k, v in dict(channels).items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"channels must map resolutions to channel counts, got {channels!r}") from err


class StyleGAN2Module(StyleGAN2Core):
    """StyleGAN2 (rosinality ``train.py`` defaults, spec §0.5 and §6) as a LightningModule.

    Architecture: ``resolution``, ``style_dim`` (512), ``n_mlp`` (8), ``channel_multiplier`` (2),
    ``channels`` (``{res: ch}`` table replacing the default one), ``lr_mlp``, ``conv_clamp`` and
    ``mbstd_group_size`` - or ``checkpoint`` (path or asset name) to fine-tune a pretrained model.
    The batch size is the datamodule's (per device); EMA and kimg use ``batch x world_size``.
    Training arguments: see :class:`StyleGAN2Core`.
    """

    def __init__(self, resolution: int | None = None, style_dim: int | None = None,
                 n_mlp: int | None = None, channel_multiplier: int | None = None,
                 channels: Mapping[int, int] | None = None, lr_mlp: float = 0.01,
                 conv_clamp: float | None = None, mbstd_group_size: int | None = 4,
                 checkpoint: str | None = None,
                 g_lr: float = 0.002, d_lr: float = 0.002, betas: Sequence[float] = (0.0, 0.99),
                 r1_gamma: float = 10.0, r1_interval: int = 16, pl_weight: float = 2.0,
                 pl_interval: int = 4, pl_batch_shrink: int = 2, pl_decay: float = 0.01,
                 mixing_prob: float = 0.9, ema_kimg: float = 10.0, ema_rampup: float | None = None,
                 total_kimg: float | None = None, nan_policy: str = "raise", seed: int | None = None,
                 diffaugment: str | None = None):
        arch = {"resolution": resolution, "style_dim": style_dim, "n_mlp": n_mlp,
                "channel_multiplier": channel_multiplier, "channels": _channel_table(channels)}
        if checkpoint is None:
            generator, discriminator, g_ema = self._build(arch, lr_mlp, conv_clamp, mbstd_group_size)
        else:
            generator, discriminator, g_ema = self._load(checkpoint, arch)
        super().__init__(generator, discriminator, g_ema, g_lr=g_lr, d_lr=d_lr, betas=tuple(betas),
                         r1_gamma=r1_gamma, r1_interval=r1_interval, pl_weight=pl_weight,
                         pl_interval=pl_interval, pl_batch_shrink=pl_batch_shrink, pl_decay=pl_decay,
                         mixing_prob=mixing_prob, ema_kimg=ema_kimg, ema_rampup=ema_rampup,
                         total_kimg=total_kimg, nan_policy=nan_policy, seed=seed, diffaugment=diffaugment)
        self.save_hyperparameters()

    # ------------------------------------------------------------------------------ construction
    @staticmethod
    def _build(arch: dict, lr_mlp: float, conv_clamp: float | None, mbstd_group_size: int | None):
        if arch["resolution"] is None:
            raise ValueError("StyleGAN2Module needs model.resolution (or model.checkpoint to fine-tune)")
        kw = {k: (SCRATCH_DEFAULTS[k] if arch[k] is None else arch[k]) for k in SCRATCH_DEFAULTS}
        generator = Generator(arch["resolution"], style_dim=kw["style_dim"], n_mlp=kw["n_mlp"],
                              channel_multiplier=kw["channel_multiplier"], lr_mlp=lr_mlp,
                              channels=arch["channels"], conv_clamp=conv_clamp)
        discriminator = Discriminator(arch["resolution"], channel_multiplier=kw["channel_multiplier"],
                                      channels=arch["channels"], mbstd_group_size=mbstd_group_size,
                                      conv_clamp=conv_clamp)
        return generator, discriminator, None

    @staticmethod
    def _load(checkpoint: str, arch: dict):
        from models import assets, checkpoints  # imported only when fine-tuning

        loaded = checkpoints.load(assets.resolve(checkpoint))
        if loaded.g_ema is None and loaded.g is None:
            raise ValueError(f"checkpoint {checkpoint!r} holds no generator")
        config = loaded.config
        file_arch = {"resolution": config.size, "style_dim": config.style_dim, "n_mlp": config.n_mlp,
                     "channel_multiplier": config.channel_multiplier,
                     "channels": {int(k): int(v) for k, v in config.channels.items()}}
        for key, value in arch.items():
            if value is not None and value != file_arch[key]:
                raise ValueError(f"model.{key}={value!r} disagrees with checkpoint {checkpoint!r} "
                                 f"({key}={file_arch[key]!r}); drop it or use a matching file")
        g_ema = loaded.g_ema if loaded.g_ema is not None else loaded.g
        generator = loaded.g if loaded.g is not None else g_ema
        if loaded.g is None:
            log.warning("checkpoint %s has no trained generator 'g': fine-tuning starts from 'g_ema'",
                        checkpoint)
        generator = copy.deepcopy(generator).train()
        discriminator = loaded.d
        if discriminator is None:
            log.warning("checkpoint %s has no discriminator: D starts from random weights", checkpoint)
            discriminator = Discriminator(config.size, channels=file_arch["channels"],
                                          mbstd_group_size=config.mbstd_group_size,
                                          conv_clamp=config.conv_clamp)
        discriminator.train()
        return generator, discriminator, g_ema

    # ------------------------------------------------------------------------------ export
    def export_generator(self, path: str | Path) -> Path:
        """Write g_ema, g, d and the mean W (:meth:`mean_w`) as a rosinality-compatible ``.pt``
        (``models.checkpoints.save``; the config is recorded from the networks) plus ``kimg``."""
        from models import checkpoints

        return checkpoints.save(Path(path), g_ema=self.g_ema, g=self.generator, d=self.discriminator,
                                latent_avg=self.mean_w().squeeze(0).detach().cpu(), kimg=float(self.kimg))

    @rank_zero_only
    def on_fit_end(self) -> None:
        if self.run_dir is None:
            return
        path = self.export_generator(Path(self.run_dir) / "generator.pt")
        log.info("trained %.1f kimg (%d iterations, G %d params); generator exported to %s",
                 self.kimg, self.iteration, count_parameters(self.generator), path)
