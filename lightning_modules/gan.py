"""The shared StyleGAN2 training core (spec stylegan2_backbone.md §6, §5.9; frameworks.md §4.2).

One training step = one iteration of rosinality's ``train.py`` (spec §6), split into four named phases
that each end in their own optimizer step::

    D_main  L_D = softplus(D(G(z))) + softplus(-D(x))                          every iteration
    D_reg   R1:  gamma / 2 * E||dD(x)/dx||^2 * r1_interval                      iteration % r1_interval == 0
    G_main  L_G = softplus(-D(G(z)))                                           every iteration
    G_reg   path length: pl_weight * E(l - a)^2 * pl_interval                   iteration % pl_interval == 0
    then    G_ema <- lerp(G_ema, G, 1 - beta)

Decisions (DESIGN.md "GAN training inside Lightning"):

* **Counters.** ``nimg`` (images seen, summed over ranks: batch x world size per step), ``kimg`` and
  ``iteration`` drive the lazy intervals, EMA, ``total_kimg`` and the logging x-axis; Lightning's
  ``global_step`` counts every optimizer step (frameworks.md §2.3) and is not used.
* **Randomness.** Every random draw of a step (z, the style-mixing decision and crossover index, the
  per-layer noise maps, the path-length projection) comes from a ``torch.Generator`` re-seeded at each
  iteration from ``(seed, global_rank, iteration)``. A step is a pure function of the weights, the batch
  and these counters, so resuming reproduces an uninterrupted run exactly and ranks draw different z.
  ``seed=None`` takes ``torch.initial_seed()`` (set by ``seed_everything``) at ``setup``.
* **Lazy regularization.** Adam hyper-parameters of each network are corrected with
  ``c = interval / (interval + 1)``: ``lr * c``, ``betas ** c`` (:func:`lazy_adam_kwargs`).
* **Precision.** ``bf16-mixed`` runs the main phases in bf16 autocast; the gradient penalties (R1, path
  length) always run in fp32 with autocast disabled. fp16 precisions are refused: their loss scaler would
  be applied to the penalties' inner gradients (frameworks.md §2.4).
* **Non-finite values.** Before each optimizer step the phase loss and, after backward, the gradients are
  checked. ``nan_policy="raise"`` raises :class:`FloatingPointError` naming the phase, kimg and losses;
  ``"skip"`` drops that optimizer step with a warning and counts it (``nan_skips``, logged). Under DDP the
  loss check is agreed across ranks, so all ranks raise or skip together.
* **DDP.** Lightning wraps the whole module; each phase toggles the other network's parameters off
  (``toggled_optimizer``), so use ``strategy=ddp_find_unused_parameters_true`` (or the ``_spawn``/``_fork``
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
  ``_phase(optimizer, name, loss_fn, logs, *args)`` (finite checks, backward, step) and finishes with
  :meth:`end_iteration` (EMA, counters, logging, ``total_kimg``);
* :meth:`samplers` - named deterministic image sources (DESIGN.md contract 3).
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn
import torch
from torch import nn

from lightning_modules.ema import ema_beta, make_ema, update_ema
from lightning_modules.seeding import IterationRandomness
from losses.adversarial import (d_logistic_loss, g_nonsaturating_loss, path_length_penalty,
                                path_lengths, r1_penalty, update_pl_mean)
from models.diffaugment import DiffAugment
from models.sampler import Sampler, latent_sampler

log = logging.getLogger(__name__)

# The EMA copy (and frozen networks of method modules) are in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

NAN_POLICIES = ("raise", "skip")
SUPPORTED_PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed")
MEAN_W_SAMPLES = 4096
MEAN_W_SEED = 0


def lazy_adam_kwargs(lr: float, betas: Sequence[float], interval: int) -> dict[str, Any]:
    """Adam ``lr`` and ``betas`` corrected for lazy regularization every ``interval`` steps (spec §6).

    ``c = interval / (interval + 1)``; returns ``{"lr": lr * c, "betas": (b1 ** c, b2 ** c)}``.
    """
    if int(interval) != interval or interval < 1:
        raise ValueError(f"regularization interval must be an integer >= 1, got {interval}")
    if len(betas) != 2:
        raise ValueError(f"betas must have two entries, got {betas}")
    c = interval / (interval + 1)
    return {"lr": lr * c, "betas": (float(betas[0]) ** c, float(betas[1]) ** c)}


class StyleGAN2Core(IterationRandomness, pl.LightningModule):
    """StyleGAN2 adversarial training with lazy R1 / path-length regularization and a G EMA.

    Args:
        generator, discriminator: rosinality-compatible networks (``models.stylegan2``).
        g_ema: initial EMA copy (default: a copy of ``generator``).
        g_lr, d_lr, betas: Adam settings before the lazy-regularization correction.
        r1_gamma, r1_interval: R1 weight (0 disables) and lazy interval (D iterations).
        pl_weight, pl_interval, pl_batch_shrink, pl_decay: path-length regularization (0 disables).
        mixing_prob: probability that a batch uses two z and a random crossover index.
        ema_kimg, ema_rampup: EMA half-life in kimg and optional ramp-up (NVIDIA; None = off).
        total_kimg: stop training after this many thousand images (None = rely on the Trainer).
        nan_policy: ``"raise"`` or ``"skip"`` on non-finite losses/gradients.
        seed: base seed of the training randomness (None = ``torch.initial_seed()`` at setup).
        diffaugment: DiffAugment policy for every image D sees, e.g. ``"color,translation,cutout"``
            (None = off), drawn from the iteration's generator (``models.diffaugment``).
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, g_ema: nn.Module | None = None, *,
                 g_lr: float = 0.002, d_lr: float = 0.002, betas: Sequence[float] = (0.0, 0.99),
                 r1_gamma: float = 10.0, r1_interval: int = 16, pl_weight: float = 2.0,
                 pl_interval: int = 4, pl_batch_shrink: int = 2, pl_decay: float = 0.01,
                 mixing_prob: float = 0.9, ema_kimg: float = 10.0, ema_rampup: float | None = None,
                 total_kimg: float | None = None, nan_policy: str = "raise", seed: int | None = None,
                 diffaugment: str | None = None):
        super().__init__()
        self.automatic_optimization = False
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        if not 0.0 <= mixing_prob <= 1.0:
            raise ValueError(f"mixing_prob must be in [0, 1], got {mixing_prob}")
        if r1_gamma < 0 or pl_weight < 0:
            raise ValueError(f"r1_gamma and pl_weight must be >= 0, got {r1_gamma}, {pl_weight}")
        if int(pl_batch_shrink) != pl_batch_shrink or pl_batch_shrink < 1:
            raise ValueError(f"pl_batch_shrink must be an integer >= 1, got {pl_batch_shrink}")
        if total_kimg is not None and total_kimg <= 0:
            raise ValueError(f"total_kimg must be > 0 or None, got {total_kimg}")
        self.g_opt_kwargs = lazy_adam_kwargs(g_lr, betas, pl_interval)
        self.d_opt_kwargs = lazy_adam_kwargs(d_lr, betas, r1_interval)
        ema_beta(1, ema_kimg)  # validates ema_kimg

        self.generator = generator
        self.discriminator = discriminator
        self.g_ema = make_ema(generator if g_ema is None else g_ema)
        self.register_buffer("pl_mean", torch.zeros(()))

        self.r1_gamma, self.r1_interval = float(r1_gamma), int(r1_interval)
        self.pl_weight, self.pl_interval = float(pl_weight), int(pl_interval)
        self.pl_batch_shrink, self.pl_decay = int(pl_batch_shrink), float(pl_decay)
        self.mixing_prob = float(mixing_prob)
        self.ema_kimg, self.ema_rampup = float(ema_kimg), ema_rampup
        self.total_kimg = total_kimg
        self.nan_policy = nan_policy
        self.seed = seed
        self.diffaugment = DiffAugment(diffaugment) if diffaugment else None

        self.nimg = 0
        self.iteration = 0
        self.nan_skips = 0
        self.run_dir = None
        self._base_seed: int | None = seed
        self._rng: torch.Generator | None = None
        self._mean_w_cache: tuple[tuple[int, int], torch.Tensor] | None = None

    # ------------------------------------------------------------------------------ counters
    @property
    def kimg(self) -> float:
        """Thousands of images seen by the discriminator, all ranks together."""
        return self.nimg / 1000.0

    @property
    def z_dim(self) -> int:
        return int(self.generator.style_dim)

    # ------------------------------------------------------------------------------ generator inputs
    def sample_z(self, n: int) -> torch.Tensor:
        """z ~ N(0, I) [n, z_dim] from :attr:`rng`."""
        return torch.randn(n, self.z_dim, device=self.device, generator=self.rng)

    def mixing_styles(self, n: int) -> tuple[list[torch.Tensor], int | None]:
        """Style mixing (spec §2.7): with probability ``mixing_prob`` two z and a crossover index drawn
        uniformly in [1, n_latent - 1] (torch RNG, not Python's ``random``), else one z."""
        draw = torch.rand((), device=self.device, generator=self.rng)
        index = torch.randint(1, max(2, self.generator.n_latent), (), device=self.device, generator=self.rng)
        if self.mixing_prob > 0 and float(draw) < self.mixing_prob:
            return [self.sample_z(n), self.sample_z(n)], int(index)
        return [self.sample_z(n)], None

    def sample_noise(self, n: int) -> list[torch.Tensor]:
        """Per-layer noise maps [n, 1, r, r] from :attr:`rng` (the generator's random noise mode)."""
        return [torch.randn(n, 1, b.shape[-2], b.shape[-1], device=self.device, generator=self.rng)
                for b in self.generator.stored_noise()]

    def generate(self, n: int, return_latents: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``G(z)`` for ``n`` fresh samples with style mixing; returns ``(images, W+ or None)``."""
        styles, inject_index = self.mixing_styles(n)
        return self.generator(styles, inject_index=inject_index, noise=self.sample_noise(n),
                              return_latents=return_latents)

    # ------------------------------------------------------------------------------ discriminator input
    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Augmentation of every image D sees: DiffAugment with the iteration's generator, or identity."""
        if self.diffaugment is None:
            return images
        return self.diffaugment(images, generator=self.rng)

    def discriminate(self, images: torch.Tensor) -> torch.Tensor:
        """D logits [B, 1] of augmented ``images``."""
        return self.discriminator(self.augment(images))

    @contextmanager
    def fp32(self) -> Iterator[None]:
        """Autocast disabled: gradient penalties run in full precision (frameworks.md §2.4)."""
        with torch.autocast(self.device.type, enabled=False):
            yield

    @staticmethod
    def _full(x: torch.Tensor) -> torch.Tensor:
        return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x

    # ------------------------------------------------------------------------------ phase losses
    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """D_main: logistic loss on real and (detached) fake images."""
        real_logits = self.discriminate(real)
        fake_logits = self.discriminate(fake)
        loss = d_logistic_loss(real_logits.float(), fake_logits.float())
        return loss, {"loss/D_main": loss, "D/real_logits": real_logits.float().mean(),
                      "D/fake_logits": fake_logits.float().mean()}

    def discriminator_reg(self, real: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """D_reg: lazy R1, ``gamma / 2 * penalty * r1_interval`` (spec §6 step 2), in fp32."""
        with self.fp32():
            x = self._full(real.detach()).requires_grad_(True)
            logits = self.discriminate(x)
            penalty = r1_penalty(logits, x)
            loss = penalty * (self.r1_gamma / 2 * self.r1_interval) + 0 * logits[0, 0]
        return loss, {"loss/D_reg": loss, "reg/r1_penalty": penalty}

    def generator_loss(self, real: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """G_main: non-saturating loss on a fresh batch as large as ``real``."""
        fake, _ = self.generate(real.shape[0])
        loss = g_nonsaturating_loss(self.discriminate(fake).float())
        return loss, {"loss/G_main": loss}

    def generator_reg(self, real: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """G_reg: lazy path-length regularization (spec §6 step 4), in fp32.

        The running mean is updated from the batch mean averaged over ranks, and only when finite.
        """
        n = max(1, real.shape[0] // self.pl_batch_shrink)
        with self.fp32():
            images, latents = self.generate(n, return_latents=True)
            lengths = path_lengths(images, latents, generator=self.rng)
            batch_mean = lengths.mean().detach()
            if self._world_size() > 1:
                batch_mean = self.trainer.strategy.reduce(batch_mean, reduce_op="mean")
            new_mean = update_pl_mean(self.pl_mean, batch_mean, self.pl_decay)
            penalty = path_length_penalty(lengths, new_mean)
            loss = penalty * (self.pl_weight * self.pl_interval) + 0 * images[0, 0, 0, 0]
        with torch.no_grad():
            self.pl_mean.copy_(torch.where(torch.isfinite(new_mean), new_mean, self.pl_mean))
        return loss, {"loss/G_reg": loss, "reg/pl_penalty": penalty, "reg/pl_mean": self.pl_mean,
                      "reg/path_length": batch_mean}

    # ------------------------------------------------------------------------------ training step
    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self.prepare_batch(batch)
        opt_g, opt_d = self.optimizers()
        self.reseed()
        logs: dict[str, torch.Tensor] = {}

        with self.toggled_optimizer(opt_d):
            with torch.no_grad():
                fake, _ = self.generate(real.shape[0])
            self._phase(opt_d, "D_main", self.discriminator_loss, logs, real, fake)
            if self.r1_gamma > 0 and self.iteration % self.r1_interval == 0:
                self._phase(opt_d, "D_reg", self.discriminator_reg, logs, real)
        with self.toggled_optimizer(opt_g):
            self._phase(opt_g, "G_main", self.generator_loss, logs, real)
            if self.pl_weight > 0 and self.iteration % self.pl_interval == 0:
                self._phase(opt_g, "G_reg", self.generator_reg, logs, real)

        self.end_iteration(real, logs)

    def end_iteration(self, real: torch.Tensor, logs: dict[str, torch.Tensor]) -> None:
        """After the phases: EMA update, counters, :meth:`on_iteration_end`, logging, ``total_kimg`` stop."""
        batch_total = real.shape[0] * self._world_size()
        update_ema(self.g_ema, self.generator,
                   ema_beta(batch_total, self.ema_kimg, self.nimg, self.ema_rampup))
        self.nimg += batch_total
        self.iteration += 1
        self.on_iteration_end()

        if self.nan_skips:
            logs["nan_skips"] = torch.tensor(float(self.nan_skips))
        self.log_dict({k: v.detach().float() for k, v in logs.items()}, on_step=True, on_epoch=False,
                      batch_size=real.shape[0])
        self.log("kimg", self.kimg, prog_bar=True, on_step=True, on_epoch=False, batch_size=real.shape[0])
        if self.total_kimg is not None and self.kimg >= self.total_kimg:
            self.trainer.should_stop = True

    def prepare_batch(self, batch: Any) -> torch.Tensor:
        """The real images [B, 3, H, W] in [-1, 1] of a batch (datamodules yield the tensor itself)."""
        if isinstance(batch, (list, tuple)) and len(batch) == 1:
            batch = batch[0]
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise TypeError(f"expected an image batch tensor [B, 3, H, W], got {shape}")
        size = getattr(self.generator, "size", None)
        if size is not None and tuple(batch.shape[-2:]) != (size, size):
            raise ValueError(f"batch images are {tuple(batch.shape[-2:])} but the generator makes "
                             f"{size}x{size}: set data.resolution to {size}")
        return batch

    def on_iteration_end(self) -> None:
        """Called after every iteration's EMA update and counter increment (no-op)."""

    def _phase(self, opt, phase: str, loss_fn, logs: dict, *args) -> None:
        loss, phase_logs = loss_fn(*args)
        logs.update(phase_logs)
        if not self._agreed_finite(loss):
            self._non_finite(phase, "loss", phase_logs)
            return
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            opt.zero_grad(set_to_none=True)
            self._non_finite(phase, "gradients", phase_logs)
            return
        opt.step()

    def _agreed_finite(self, loss: torch.Tensor) -> bool:
        bad = (~torch.isfinite(loss.detach())).any().float()
        if self._world_size() > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return float(bad) == 0.0

    def _non_finite(self, phase: str, what: str, phase_logs: dict) -> None:
        values = {k: float(v.detach()) for k, v in phase_logs.items()}
        message = (f"non-finite {what} in phase {phase} at kimg {self.kimg:.3f} "
                   f"(iteration {self.iteration}): {values}")
        if self.nan_policy == "raise":
            raise FloatingPointError(message + " - set nan_policy='skip' to skip such steps")
        self.nan_skips += 1
        rank_zero_warn(f"{message}; optimizer step skipped ({self.nan_skips} so far)", category=RuntimeWarning)

    # ------------------------------------------------------------------------------ Lightning hooks
    def configure_optimizers(self):
        opt_g = torch.optim.Adam(self.generator.parameters(), **self.g_opt_kwargs)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), **self.d_opt_kwargs)
        return [opt_g, opt_d]

    def setup(self, stage: str) -> None:
        if stage == "fit":
            precision = str(self.trainer.precision)
            if precision not in SUPPORTED_PRECISIONS:
                raise ValueError(
                    f"precision {precision!r} is not supported for StyleGAN2 training: use bf16-mixed "
                    f"(fp16 loss scaling would be applied to the R1/path-length gradients); "
                    f"supported: {', '.join(SUPPORTED_PRECISIONS)}")
        if self._base_seed is None:
            self._base_seed = int(torch.initial_seed())

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            log.info("%s: training from kimg %.3f (iteration %d); G %d, D %d parameters; total_kimg %s",
                     type(self).__name__, self.kimg, self.iteration, count_parameters(self.generator),
                     count_parameters(self.discriminator), self.total_kimg)
        for logger in self.loggers:
            if isinstance(logger, WandbLogger) and self.trainer.is_global_zero:
                experiment = logger.experiment
                experiment.define_metric("kimg")
                for prefix in ("loss/*", "reg/*", "D/*", "nan_skips", "samples/*"):
                    experiment.define_metric(prefix, step_metric="kimg")

    def train(self, mode: bool = True):
        """Training mode for G and D; the EMA copy stays in eval mode."""
        super().train(mode)
        if getattr(self, "g_ema", None) is not None:
            self.g_ema.eval()
        return self

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """No-op: metric callbacks evaluate the samplers."""

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """No-op: metric callbacks evaluate the samplers."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gan_core"] = {"nimg": self.nimg, "iteration": self.iteration,
                                  "nan_skips": self.nan_skips, "base_seed": self._base_seed}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("gan_core")
        if state is None:
            raise KeyError("checkpoint has no 'gan_core' state (kimg counters, seed): it was not written "
                           "by a StyleGAN2Core module")
        self.nimg, self.iteration = int(state["nimg"]), int(state["iteration"])
        self.nan_skips, self._base_seed = int(state["nan_skips"]), state["base_seed"]
        self._mean_w_cache = None

    def load_state_dict(self, *args, **kwargs):
        self._mean_w_cache = None
        return super().load_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def mean_w(self) -> torch.Tensor:
        """Mean of ``g_ema``'s W over 4096 fixed z (seed 0) [1, style_dim], cached per iteration.

        rosinality's ``mean_latent(4096)`` with a fixed seed, so truncated samples are deterministic.
        """
        key = (self.nimg, self.iteration)
        if self._mean_w_cache is None or self._mean_w_cache[0] != key:
            gen = torch.Generator().manual_seed(MEAN_W_SEED)
            z = torch.randn(MEAN_W_SAMPLES, self.z_dim, generator=gen).to(self.device)
            self._mean_w_cache = (key, self.g_ema.style(z).mean(0, keepdim=True))
        return self._mean_w_cache[1]

    def ema_images(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """``g_ema`` images for z, stored noise, optional truncation toward :meth:`mean_w`, in [-1, 1]."""
        kwargs = {"truncation": truncation, "truncation_latent": self.mean_w()} if truncation < 1 else {}
        images, _ = self.g_ema([z.to(self.device)], randomize_noise=False, **kwargs)
        return images.clamp(-1, 1)

    def samplers(self) -> dict[str, Sampler]:
        """``ema`` (EMA generator, stored noise) and ``ema_trunc`` (the same, psi = 0.7)."""
        device = lambda: self.device  # noqa: E731 - follows the module across devices
        return {
            "ema": latent_sampler(self.ema_images, self.z_dim, device),
            "ema_trunc": latent_sampler(lambda z: self.ema_images(z, truncation=0.7), self.z_dim, device),
        }


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (for summaries)."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["StyleGAN2Core", "lazy_adam_kwargs", "count_parameters"]
