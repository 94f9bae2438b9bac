"""The StyleGAN2 adversarial algorithm, reusable by every method that trains a discriminator.

Built on :class:`lightning_modules.base.MethodModule` (counters, randomness, NaN policy, checkpoint state,
export); its settings are the ``model.gan`` config group (:class:`lightning_modules.config_groups.GANSettings`).

One training step = one iteration of rosinality's ``train.py``, split into four named phases
that each end in their own optimizer step::

    D_main  L_D = softplus(D(G(z))) + softplus(-D(x))                          every iteration
    D_reg   R1:  gamma / 2 * E||dD(x)/dx||^2 * r1_interval                      iteration % r1_interval == 0
    G_main  L_G = softplus(-D(G(z)))                                           every iteration
    G_reg   path length: pl_weight * E(l - a)^2 * pl_interval                   iteration % pl_interval == 0
    then    G_ema <- lerp(G_ema, G, 1 - beta)

Decisions (counters, per-iteration randomness and the NaN policy are the base module's):

* **Lazy regularization.** Adam hyper-parameters of each network are corrected with
  ``c = interval / (interval + 1)``: ``lr * c``, ``betas ** c`` (:func:`lazy_adam_kwargs`).
* **Precision.** ``bf16-mixed`` runs the main phases in bf16 autocast; the gradient penalties (R1, path
  length) always run in fp32 with autocast disabled. fp16 precisions are refused: their loss scaler would
  be applied to the penalties' inner gradients.
* **DDP.** Lightning wraps the whole module; each phase toggles the other network's parameters off
  (``models.frozen.trainable``), so use ``strategy=ddp_find_unused_parameters_true`` (or the ``_spawn``/``_fork``
  variants). Gradients are averaged by DDP, the EMA is updated identically on every rank, and the
  path-length running mean is updated from the all-reduced batch mean, so every rank ends each step with
  identical parameters and buffers. (rosinality and NVIDIA keep a per-rank running mean; DDP's buffer
  broadcast would silently replace it with rank 0's, so we average it explicitly.)
* **EMA.** ``g_ema`` is a frozen copy of the generator (not in any optimizer, always in eval mode, saved
  in the state dict, used by the samplers); see :mod:`lightning_modules.ema` for the formula.

Extension points for method modules (MixDL, NADA, ...), each small and overridable:

* :meth:`sample_z`, :meth:`mixing_styles`, :meth:`sample_noise`, :meth:`generate` - what G is fed;
* :meth:`augment` (identity; e.g. DiffAugment) and :meth:`discriminate` - what D sees;
* :meth:`discriminator_loss`, :meth:`discriminator_reg`, :meth:`generator_loss`, :meth:`generator_reg` -
  each returns ``(loss, logs)``; the core steps, checks and logs them;
* :meth:`on_iteration_end` - after the EMA update (schedules, extra bookkeeping);
* a subclass with its own ``training_step`` (e.g. more optimizers) runs each phase through
  ``self.step(optimizer, name, loss_fn, logs, *args)`` (finite checks, backward, step) and finishes with
  :meth:`end_iteration` (EMA, counters, logging, ``total_kimg``); :meth:`r1_due` / :meth:`pl_due` and
  :meth:`lazy_r1` give the lazy-regularization schedule and the scaled R1 of any D output;
* :meth:`samplers` - named deterministic image sources (docs/adding_a_method.md).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_modules.base import MethodModule, count_parameters
from lightning_modules.config_groups import GANSettings, coerce_group
from lightning_modules.ema import ema_beta, make_ema, update_ema
from losses.adversarial import (d_logistic_loss, g_nonsaturating_loss, path_length_penalty,
                                path_lengths, r1_penalty, update_pl_mean)
from models.diffaugment import DiffAugment
from models.frozen import trainable
from models.sampler import Sampler, latent_sampler

log = logging.getLogger(__name__)

SUPPORTED_PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed")


def lazy_adam_kwargs(lr: float, betas: Sequence[float], interval: int) -> dict[str, Any]:
    """Adam ``lr`` and ``betas`` corrected for lazy regularization every ``interval`` steps.

    ``c = interval / (interval + 1)``; returns ``{"lr": lr * c, "betas": (b1 ** c, b2 ** c)}``.
    """
    if int(interval) != interval or interval < 1:
        raise ValueError(f"regularization interval must be an integer >= 1, got {interval}")
    if len(betas) != 2:
        raise ValueError(f"betas must have two entries, got {betas}")
    c = interval / (interval + 1)
    return {"lr": lr * c, "betas": (float(betas[0]) ** c, float(betas[1]) ** c)}


class StyleGAN2Core(MethodModule):
    """StyleGAN2 adversarial training with lazy R1 / path-length regularization and a G EMA.

    Args:
        gan: the ``model.gan`` group (:class:`~lightning_modules.config_groups.GANSettings`; a mapping is
            merged over :attr:`gan_defaults`).
        **base: ``seed``, ``nan_policy``, ``total_kimg`` (:class:`~lightning_modules.base.MethodModule`).

    A subclass builds its networks and hands them over with :meth:`set_networks` before its ``__init__``
    returns.
    """

    #: the method's defaults of the ``gan`` group (a subclass may change some, e.g. MixDL's EMA half-life)
    gan_defaults = GANSettings()
    supported_precisions = SUPPORTED_PRECISIONS
    precision_note = "fp16 loss scaling would be applied to the R1/path-length gradients: use bf16-mixed"

    def __init__(self, gan: GANSettings | Mapping[str, Any] | None = None, **base: Any):
        super().__init__(**base)
        self.gan = coerce_group(GANSettings, gan, "model.gan", self.gan_defaults)
        ema_beta(1, self.gan.ema_kimg)  # validates ema_kimg
        self.g_opt_kwargs = lazy_adam_kwargs(self.gan.g_lr, self.gan.betas, self.gan.pl_interval)
        self.d_opt_kwargs = lazy_adam_kwargs(self.gan.d_lr, self.gan.betas, self.gan.r1_interval)
        self.diffaugment = DiffAugment(self.gan.diffaugment) if self.gan.diffaugment else None
        self.register_buffer("pl_mean", torch.zeros(()))

    def set_networks(self, generator: nn.Module, discriminator: nn.Module, g_ema: nn.Module | None = None) -> None:
        """The trained G and D, and the initial EMA copy (default: a copy of ``generator``)."""
        self.generator = generator
        self.discriminator = discriminator
        self.g_ema = make_ema(generator if g_ema is None else g_ema)

    # ------------------------------------------------------------------------------ generator inputs
    @property
    def z_dim(self) -> int:
        return int(self.generator.style_dim)

    def sample_z(self, n: int) -> Tensor:
        """z ~ N(0, I) [n, z_dim] from :attr:`rng`."""
        return torch.randn(n, self.z_dim, device=self.device, generator=self.rng)

    def mixing_styles(self, n: int) -> tuple[list[Tensor], int | None]:
        """Style mixing: with probability ``mixing_prob`` two z and a crossover index drawn uniformly in
        [1, n_latent - 1] (torch RNG, not Python's ``random``), else one z."""
        draw = torch.rand((), device=self.device, generator=self.rng)
        index = torch.randint(1, max(2, self.generator.n_latent), (), device=self.device, generator=self.rng)
        if self.gan.mixing_prob > 0 and float(draw) < self.gan.mixing_prob:
            return [self.sample_z(n), self.sample_z(n)], int(index)
        return [self.sample_z(n)], None

    def sample_noise(self, n: int) -> list[Tensor]:
        """Per-layer noise maps [n, 1, r, r] from :attr:`rng` (the generator's random noise mode)."""
        return [torch.randn(n, 1, b.shape[-2], b.shape[-1], device=self.device, generator=self.rng)
                for b in self.generator.stored_noise()]

    def generate(self, n: int, return_latents: bool = False) -> tuple[Tensor, Tensor | None]:
        """``G(z)`` for ``n`` fresh samples with style mixing; returns ``(images, W+ or None)``."""
        styles, inject_index = self.mixing_styles(n)
        return self.generator(styles, inject_index=inject_index, noise=self.sample_noise(n),
                              return_latents=return_latents)

    # ------------------------------------------------------------------------------ discriminator input
    def augment(self, images: Tensor) -> Tensor:
        """Augmentation of every image D sees: DiffAugment with the iteration's generator, or identity."""
        if self.diffaugment is None:
            return images
        return self.diffaugment(images, generator=self.rng)

    def discriminate(self, images: Tensor) -> Tensor:
        """D logits [B, 1] of augmented ``images``."""
        return self.discriminator(self.augment(images))

    @contextmanager
    def fp32(self) -> Iterator[None]:
        """Autocast disabled: gradient penalties run in full precision."""
        with torch.autocast(self.device.type, enabled=False):
            yield

    @staticmethod
    def _full(x: Tensor) -> Tensor:
        return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x

    # ------------------------------------------------------------------------------ lazy regularization
    def r1_due(self) -> bool:
        """R1 runs this iteration: ``r1_gamma > 0`` and ``iteration % r1_interval == 0``."""
        return self.gan.r1_gamma > 0 and self.iteration % self.gan.r1_interval == 0

    def pl_due(self) -> bool:
        """Path-length regularization runs this iteration."""
        return self.gan.pl_weight > 0 and self.iteration % self.gan.pl_interval == 0

    def lazy_r1(self, logits_of: Callable[[Tensor], Tensor], real: Tensor) -> tuple[Tensor, dict]:
        """Lazy R1 of ``logits_of(x)`` [B, 1] at the real images: ``gamma / 2 * penalty * r1_interval``, fp32."""
        with self.fp32():
            x = self._full(real.detach()).requires_grad_(True)
            logits = logits_of(x)
            penalty = r1_penalty(logits, x)
            loss = penalty * (self.gan.r1_gamma / 2 * self.gan.r1_interval) + 0 * logits[0, 0]
        return loss, {"loss/D_reg": loss, "reg/r1_penalty": penalty}

    # ------------------------------------------------------------------------------ phase losses
    def discriminator_loss(self, real: Tensor, fake: Tensor) -> tuple[Tensor, dict]:
        """D_main: logistic loss on real and (detached) fake images."""
        real_logits = self.discriminate(real)
        fake_logits = self.discriminate(fake)
        loss = d_logistic_loss(real_logits.float(), fake_logits.float())
        return loss, {"loss/D_main": loss, "D/real_logits": real_logits.float().mean(),
                      "D/fake_logits": fake_logits.float().mean()}

    def discriminator_reg(self, real: Tensor) -> tuple[Tensor, dict]:
        """D_reg: lazy R1 of D's logits."""
        return self.lazy_r1(self.discriminate, real)

    def generator_loss(self, real: Tensor) -> tuple[Tensor, dict]:
        """G_main: non-saturating loss on a fresh batch as large as ``real``."""
        fake, _ = self.generate(real.shape[0])
        loss = g_nonsaturating_loss(self.discriminate(fake).float())
        return loss, {"loss/G_main": loss}

    def generator_reg(self, real: Tensor) -> tuple[Tensor, dict]:
        """G_reg: lazy path-length regularization, in fp32.

        The running mean is updated from the batch mean averaged over ranks, and only when finite.
        """
        n = max(1, real.shape[0] // self.gan.pl_batch_shrink)
        with self.fp32():
            images, latents = self.generate(n, return_latents=True)
            lengths = path_lengths(images, latents, generator=self.rng)
            batch_mean = lengths.mean().detach()
            if self._world_size() > 1:
                batch_mean = self.trainer.strategy.reduce(batch_mean, reduce_op="mean")
            new_mean = update_pl_mean(self.pl_mean, batch_mean, self.gan.pl_decay)
            penalty = path_length_penalty(lengths, new_mean)
            loss = penalty * (self.gan.pl_weight * self.gan.pl_interval) + 0 * images[0, 0, 0, 0]
        with torch.no_grad():
            self.pl_mean.copy_(torch.where(torch.isfinite(new_mean), new_mean, self.pl_mean))
        return loss, {"loss/G_reg": loss, "reg/pl_penalty": penalty, "reg/pl_mean": self.pl_mean,
                      "reg/path_length": batch_mean}

    # ------------------------------------------------------------------------------ training step
    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self.prepare_batch(batch)
        opt_g, opt_d = self.optimizers()
        self.reseed()
        logs: dict[str, Tensor] = {}

        with trainable([self.discriminator], [self.generator]):
            with torch.no_grad():
                fake, _ = self.generate(real.shape[0])
            self.step(opt_d, "D_main", self.discriminator_loss, logs, real, fake)
            if self.r1_due():
                self.step(opt_d, "D_reg", self.discriminator_reg, logs, real)
        with trainable([self.generator], [self.discriminator]):
            self.step(opt_g, "G_main", self.generator_loss, logs, real)
            if self.pl_due():
                self.step(opt_g, "G_reg", self.generator_reg, logs, real)

        self.end_iteration(real.shape[0], logs)

    def end_iteration(self, batch_size: int, logs: dict[str, Tensor]) -> None:
        """G_ema <- lerp(G_ema, G, 1 - beta) for this iteration's images, then the base's bookkeeping."""
        batch_total = int(batch_size) * self._world_size()
        update_ema(self.g_ema, self.generator,
                   ema_beta(batch_total, self.gan.ema_kimg, self.nimg, self.gan.ema_rampup))
        super().end_iteration(batch_size, logs)

    def prepare_batch(self, batch: Any) -> Tensor:
        """The real images [B, 3, H, W] in [-1, 1] of a batch (datamodules yield the tensor itself)."""
        if isinstance(batch, (list, tuple)) and len(batch) == 1:
            batch = batch[0]
        if not isinstance(batch, Tensor) or batch.dim() != 4:
            shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise TypeError(f"expected an image batch tensor [B, 3, H, W], got {shape}")
        size = getattr(self.generator, "size", None)
        if size is not None and tuple(batch.shape[-2:]) != (size, size):
            raise ValueError(f"batch images are {tuple(batch.shape[-2:])} but the generator makes "
                             f"{size}x{size}: set data.resolution to {size}")
        return batch

    # ------------------------------------------------------------------------------ Lightning hooks
    def configure_optimizers(self):
        opt_g = torch.optim.Adam(self.generator.parameters(), **self.g_opt_kwargs)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), **self.d_opt_kwargs)
        return [opt_g, opt_d]

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            log.info("%s: training from kimg %.3f (iteration %d); G %d, D %d parameters; total_kimg %s",
                     type(self).__name__, self.kimg, self.iteration, count_parameters(self.generator),
                     count_parameters(self.discriminator), self.total_kimg)

    def train(self, mode: bool = True):
        """Training mode for G and D; the EMA copy stays in eval mode."""
        super().train(mode)
        if getattr(self, "g_ema", None) is not None:
            self.g_ema.eval()
        return self

    # ------------------------------------------------------------------------------ sampling
    def ema_images(self, z: Tensor, truncation: float = 1.0) -> Tensor:
        """``g_ema`` images for z, stored noise, optional truncation toward the mean W, in [-1, 1]."""
        kwargs = ({"truncation": truncation, "truncation_latent": self.mean_w(self.g_ema)}
                  if truncation < 1 else {})
        images, _ = self.g_ema([z.to(self.device)], randomize_noise=False, **kwargs)
        return images.clamp(-1, 1)

    def samplers(self) -> dict[str, Sampler]:
        """``ema`` (EMA generator, stored noise) and ``ema_trunc`` (the same, psi = 0.7)."""
        device = lambda: self.device  # noqa: E731 - follows the module across devices
        return {
            "ema": latent_sampler(self.ema_images, self.z_dim, device, truncation=1.0),
            "ema_trunc": latent_sampler(lambda z: self.ema_images(z, truncation=0.7), self.z_dim, device,
                                        truncation=0.7),
        }


__all__ = ["StyleGAN2Core", "lazy_adam_kwargs", "count_parameters", "SUPPORTED_PRECISIONS"]
