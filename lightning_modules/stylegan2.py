"""Plain StyleGAN2 training, from scratch or fine-tuned from a checkpoint (Karras et al., CVPR 2020).

``StyleGAN2Module`` is the adversarial core (:class:`lightning_modules.gan.StyleGAN2Core`) with networks
from the ``model.generator`` group: a new architecture (``{resolution: 256}``), or a pretrained file in any
format ``models.checkpoints.load`` reads, or a registered asset name (``generator: stylegan2-ffhq-256``), in
which case G, D and G_ema come from the file and architecture keys given as well must agree with it.

Samplers: ``ema`` (EMA generator, stored noise buffers, psi = 1) and ``ema_trunc`` (psi = 0.7 toward the
mean W of 4096 fixed z); both deterministic in ``(indices, seed)``. At the end of ``fit`` the generator is
exported to ``<run dir>/generator.pt`` (rosinality-compatible).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lightning_modules.config_groups import GANSettings, GeneratorSpec, coerce_group
from lightning_modules.gan import StyleGAN2Core


class StyleGAN2Module(StyleGAN2Core):
    """StyleGAN2 (rosinality ``train.py`` defaults) as a LightningModule.

    Args:
        generator: the ``model.generator`` group (:class:`~lightning_modules.config_groups.GeneratorSpec`).
        gan: the ``model.gan`` group (:class:`~lightning_modules.config_groups.GANSettings`).
        **base: ``seed``, ``nan_policy``, ``total_kimg``.

    The batch size is the datamodule's (per device); EMA and kimg use ``batch x world_size``.
    """

    product_file = "generator.pt"
    #: the method's defaults of the ``generator`` group
    generator_defaults = GeneratorSpec()

    def __init__(self, generator: GeneratorSpec | Mapping[str, Any] | str | None = None,
                 gan: GANSettings | Mapping[str, Any] | None = None, **base: Any):
        super().__init__(gan=gan, **base)
        self.generator_spec = coerce_group(GeneratorSpec, generator, "model.generator", self.generator_defaults)
        self.set_networks(*self.generator_spec.gan())
        self.save_hyperparameters()

    def export(self, path: Path) -> Path:
        """g_ema, g, d and the mean W as a rosinality-compatible ``.pt`` (``models.checkpoints.save``; the
        config is recorded from the networks) plus ``kimg``."""
        from models import checkpoints

        return checkpoints.save(Path(path), g_ema=self.g_ema, g=self.generator, d=self.discriminator,
                                latent_avg=self.mean_w(self.g_ema).squeeze(0).detach().cpu(), kimg=float(self.kimg))


__all__ = ["StyleGAN2Module"]
