"""MixDL: few-shot generation from scratch with mixup-based distance learning (Kong et al., ECCV 2022).

docs/methods/mixdl.md has the algorithm, every option with its official value and the deviations. StyleGAN2
trained from scratch on ~10 images; every ``mixup_every``-th iteration (2 in the paper) is a *mixup
iteration*::

    D step   alpha ~ Dir(c * 1_B)  [B, B]
             w = f(z);  x_a = G(w);  x_m = G(alpha w)          G frozen, w in W [B, style_dim]
             L_D = softplus(D_patch(x_m)) + softplus(-D_patch(x))             patch heads, own p_ind per call
                 + d_kl_wt * KL(softmax(alpha) || softmax_j cos(u(x_m,i), u(x_a,j)))     u = sim_linear(h)
    G step   alpha' ~ Dir(c * 1_B), a fresh draw (``shared_alpha: true`` reuses the D step's alpha)
             L_G = softplus(-D_patch(G(alpha f(z'))))
                 + kl_wt * KL(softmax(alpha) || softmax_j cos(F_l_i(G(alpha f(z'')))_i, F_l_i(G(f(z'')))_j))
    R1 (lazy, every r1_interval iterations) on the patch head's mean logit; path length as StyleGAN2.

The other iterations are plain StyleGAN2 steps (image-level D, style mixing); the G EMA is updated
every iteration. ``D_patch`` are CDC's ``Extra`` heads on intermediate D maps (``models.mixdl_heads``).
They and the D-side projection head are trained with D - the heads by an optimizer of their own - and
both are saved in checkpoints (the released code forgets the heads).

Logged: ``loss/D_main`` and ``loss/G_main`` on plain iterations; on mixup iterations ``loss/D_mixup`` =
``loss/D_patch`` + d_kl_wt ``loss/D_distance`` and ``loss/G_mixup`` = ``loss/G_patch`` + kl_wt
``loss/G_distance`` (the distance values unweighted); ``loss/D_reg`` and ``loss/G_reg`` as the core.

Deviations from the released ``train_mixdl.py``, each noted where it happens:

* mixing is done on single W vectors [B, style_dim] (the released script mixes the broadcast W+ and
  crashes at iteration 0);
* anchors and mixes are rendered in one generator call of 2B images (same distribution: independent
  random noise per image);
* the G-side loss is vectorized (one matrix product per distinct layer) instead of a B x B loop;
* all randomness (z, alpha, patch indices, feature layers, noise, DiffAugment) comes from the core's
  per-iteration generator, so a resumed run reproduces the uninterrupted one.

Ablation switches: ``coefficients`` (``dirichlet`` with ``concentration`` = 1 / ``dir_div``,
``gaussian``, ``uniform``), ``g_distance`` / ``d_distance``, ``mixup_every`` (0 = never: plain
StyleGAN2 with the same D heads), ``diffaugment`` (e.g. ``"color,translation,cutout"``), ``kl_reduction``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from lightning_modules.base import OptimizerGroup
from lightning_modules.config_groups import GANSettings, GeneratorSpec
from lightning_modules.stylegan2 import StyleGAN2Module
from losses.adversarial import d_logistic_loss, g_nonsaturating_loss
from losses.mixdl import (D_KL_WEIGHT, G_KL_WEIGHT, REDUCTIONS, d_distance_loss, g_distance_loss,
                          sample_feature_layers)
from models.mixdl_heads import DistanceProjectionHead, PatchHeads, patch_logits, penultimate_features
from models.frozen import trainable
from models.mixup import make_coefficient_sampler, mix_latents
from models.sampler import Sampler, latent_sampler, w_interpolation_sampler

#: rosinality's fixed EMA decay 0.5 ** (32 / 10_000) per step, expressed for batch 4.
MIXDL_EMA_KIMG = 10.0 * 4 / 32


class MixDLModule(StyleGAN2Module):
    """MixDL on the shared StyleGAN2 core.

    ``generator`` and ``gan`` groups: see :class:`StyleGAN2Module`; the defaults are the released
    ``train_mixdl.py``: 256 px config-f, Adam 0.002 with lazy-regularization correction, R1 10 every 16,
    path length 2 every 4, style mixing 0.9 on plain iterations, EMA 0.5 ** (32 / 10k) per step at batch 4.

    MixDL arguments:
        mixup_every: a mixup iteration when ``iteration % mixup_every == 0`` (2; 0 = never).
        coefficients: ``"dirichlet"``, ``"gaussian"`` (softmax of N(0, 1)) or ``"uniform"`` (row-normalised U(0, 1)).
        concentration: Dirichlet concentration (``1 / dir_div`` of the released code; 1 = uniform on the simplex).
        g_distance, d_distance: G-side and D-side distance losses on / off.
        g_kl_weight, d_kl_weight: their weights (``kl_wt = 1000``, ``d_kl_wt = 1``).
        kl_reduction: ``"mean"`` (released ``nn.KLDivLoss()``: sum / B^2), ``"batchmean"`` or ``"sum"``.
        patch_resolutions: sizes of the intermediate D maps the 4 patch heads read ((32, 16) at 256 px;
            tiny 16-32 px networks use (16, 8) or (16, 8, 4)).
        interpolation_steps: segments per path of the ``interpolation`` sampler (10: step 0.1 as MixDL's
            ``ppl_uniformity.py``).
        shared_alpha: reuse the D step's mixing coefficients in the G step (False: a fresh draw, as the
            released ``train_mixdl.py``).
    """

    gan_defaults = GANSettings(ema_kimg=MIXDL_EMA_KIMG)
    generator_defaults = GeneratorSpec(resolution=256)

    def __init__(self, generator: GeneratorSpec | Mapping[str, Any] | str | None = None,
                 gan: GANSettings | Mapping[str, Any] | None = None, *,
                 mixup_every: int = 2, coefficients: str = "dirichlet", concentration: float = 1.0,
                 g_distance: bool = True, d_distance: bool = True, g_kl_weight: float = G_KL_WEIGHT,
                 d_kl_weight: float = D_KL_WEIGHT, kl_reduction: str = "mean",
                 patch_resolutions: Sequence[int] = (32, 16), interpolation_steps: int = 10,
                 shared_alpha: bool = False, **base: Any):
        super().__init__(generator=generator, gan=gan, **base)
        if int(mixup_every) != mixup_every or mixup_every < 0:
            raise ValueError(f"mixup_every must be an integer >= 0 (0 = never), got {mixup_every}")
        if kl_reduction not in REDUCTIONS:
            raise ValueError(f"kl_reduction must be one of {REDUCTIONS}, got {kl_reduction!r}")
        if g_kl_weight < 0 or d_kl_weight < 0:
            raise ValueError(f"KL weights must be >= 0, got {g_kl_weight}, {d_kl_weight}")
        for name, flag in (("g_distance", g_distance), ("d_distance", d_distance), ("shared_alpha", shared_alpha)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        self.mixup_every = int(mixup_every)
        self.sample_coefficients = make_coefficient_sampler(coefficients, concentration)
        self.g_distance, self.d_distance, self.shared_alpha = g_distance, d_distance, shared_alpha
        self.g_kl_weight, self.d_kl_weight = float(g_kl_weight), float(d_kl_weight)
        self.kl_reduction = kl_reduction
        self.patch_resolutions = tuple(int(r) for r in patch_resolutions)
        if int(interpolation_steps) != interpolation_steps or interpolation_steps < 1:
            raise ValueError(f"interpolation_steps must be an integer >= 1, got {interpolation_steps}")
        self.interpolation_steps = int(interpolation_steps)

        # CDC's ``Extra`` and MixDL's ``sim_linear``
        self.patch_heads = PatchHeads.for_discriminator(self.discriminator, self.patch_resolutions)
        self.distance_head = DistanceProjectionHead(self.discriminator.channels[4])
        self.save_hyperparameters()

    # ------------------------------------------------------------------------------ schedule
    def is_mixup_iteration(self, iteration: int | None = None) -> bool:
        """``which == 0`` of the released code: ``iteration % mixup_every == 0``."""
        i = self.iteration if iteration is None else iteration
        return self.mixup_every > 0 and i % self.mixup_every == 0

    # ------------------------------------------------------------------------------ building blocks
    def synthesize(self, w: torch.Tensor, return_feats: bool = False):
        """``G(w)`` for W [n, style_dim] with fresh random noise; ``(images, feats)`` or images."""
        out = self.generator([w], input_is_latent=True, noise=self.sample_noise(w.shape[0]),
                             return_feats=return_feats)
        return (out[0], out[2]) if return_feats else out[0]

    def mixing_coefficients(self, batch: int) -> torch.Tensor:
        """alpha [B, B]: row i mixes the B anchors into mix i."""
        return self.sample_coefficients(batch, batch, generator=self.rng, device=self.device)

    def anchors_and_mixes(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh anchors ``w = f(z)`` [B, style_dim] and their mixes ``alpha w``.

        Mixing single W vectors fixes the released script, which mixed the broadcast W+ and crashed.
        """
        w = self.generator.get_latent(self.sample_z(coeffs.shape[1]))
        return w, mix_latents(w, coeffs)

    def patch_logits(self, images: torch.Tensor, augment: bool = True) -> torch.Tensor:
        """Patch-level D output [B, 1, H, W] through a patch head drawn for this call, of the
        augmented ``images`` (``augment=False``: as given)."""
        index = int(torch.randint(len(self.patch_heads), (), generator=self.rng, device=self.rng.device))
        x = self.augment(images) if augment else images
        return patch_logits(self.discriminator, self.patch_heads, x, index, self.patch_resolutions)

    # ------------------------------------------------------------------------------ mixup phases
    def mixup_discriminator_loss(self, real: torch.Tensor, coeffs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """D step of a mixup iteration (docs/methods/mixdl.md, "Algorithm" and "D side")."""
        n = real.shape[0]
        with torch.no_grad():
            w, w_mix = self.anchors_and_mixes(coeffs)
            # anchors and mixes in one G call of 2B images (the released code makes two calls of B)
            images = self.synthesize(torch.cat([w, w_mix]))
        real_patch = self.patch_logits(real)
        # one augmented copy of anchors and mixes serves the patch and the similarity pass (released code)
        augmented = self.augment(images)
        mix_patch = self.patch_logits(augmented[n:], augment=False)
        adversarial = d_logistic_loss(real_patch.float(), mix_patch.float())
        loss = adversarial
        logs = {"loss/D_patch": adversarial, "D/real_patch_logits": real_patch.float().mean(),
                "D/mix_patch_logits": mix_patch.float().mean()}
        if self.d_distance:
            _, feats = self.discriminator(augmented, return_feats=True)
            u = self.distance_head(penultimate_features(self.discriminator, feats[-1])).float()
            distance = d_distance_loss(u[n:], u[:n], coeffs, self.kl_reduction)
            loss = loss + self.d_kl_weight * distance
            logs["loss/D_distance"] = distance
        logs["loss/D_mixup"] = loss
        return loss, logs

    def mixup_discriminator_reg(self, real: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Lazy R1 on the mean patch logit of a random head at the un-augmented reals (released code)."""
        return self.lazy_r1(lambda x: self.patch_logits(x, augment=False).flatten(1).mean(1, keepdim=True), real)

    def mixup_generator_loss(self, real: torch.Tensor, coeffs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """G step of a mixup iteration: patch-level adversarial loss on mixes + G-side distance
        (docs/methods/mixdl.md, "G side")."""
        n = real.shape[0]
        _, w_mix = self.anchors_and_mixes(coeffs)
        adversarial = g_nonsaturating_loss(self.patch_logits(self.synthesize(w_mix)).float())
        loss = adversarial
        logs = {"loss/G_patch": adversarial}
        if self.g_distance:
            w2, w2_mix = self.anchors_and_mixes(coeffs)  # another fresh z, the same alpha
            _, feats = self.synthesize(torch.cat([w2, w2_mix]), return_feats=True)
            layers = sample_feature_layers(n, len(feats), generator=self.rng, device=self.device)
            distance = g_distance_loss([f[n:].float() for f in feats], [f[:n].float() for f in feats],
                                       coeffs, layers, self.kl_reduction)
            loss = loss + self.g_kl_weight * distance
            logs["loss/G_distance"] = distance
        logs["loss/G_mixup"] = loss
        return loss, logs

    # ------------------------------------------------------------------------------ training step
    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self.prepare_batch(batch)
        opt_g, opt_d, opt_patch = self.optimizers()
        d_side = [self.discriminator, self.distance_head, self.patch_heads]
        self.reseed()
        logs: dict[str, torch.Tensor] = {}
        mixup = self.is_mixup_iteration()
        r1_now, pl_now = self.r1_due(), self.pl_due()

        with trainable(d_side, [self.generator]):
            if mixup:
                coeffs = self.mixing_coefficients(real.shape[0])
                d_opts = OptimizerGroup(opt_d, opt_patch)
                self.step(d_opts, "D_main", self.mixup_discriminator_loss, logs, real, coeffs)
                if r1_now:
                    self.step(d_opts, "D_reg", self.mixup_discriminator_reg, logs, real)
            else:
                with torch.no_grad():
                    fake, _ = self.generate(real.shape[0])
                self.step(opt_d, "D_main", self.discriminator_loss, logs, real, fake)
                if r1_now:
                    self.step(opt_d, "D_reg", self.discriminator_reg, logs, real)
        with trainable([self.generator], d_side):
            if mixup:
                if not self.shared_alpha:  # the released G step draws its own alpha
                    coeffs = self.mixing_coefficients(real.shape[0])
                self.step(opt_g, "G_main", self.mixup_generator_loss, logs, real, coeffs)
            else:
                self.step(opt_g, "G_main", self.generator_loss, logs, real)
            if pl_now:
                self.step(opt_g, "G_reg", self.generator_reg, logs, real)
        self.end_iteration(real.shape[0], logs)

    # ------------------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        """G; D with the projection head (``sim_linear`` sits inside D in the released code); the patch
        heads with their own Adam of D's settings (the released ``e_optim``)."""
        opt_g = torch.optim.Adam(self.generator.parameters(), **self.g_opt_kwargs)
        opt_d = torch.optim.Adam([*self.discriminator.parameters(), *self.distance_head.parameters()],
                                 **self.d_opt_kwargs)
        opt_patch = torch.optim.Adam(self.patch_heads.parameters(), **self.d_opt_kwargs)
        return [opt_g, opt_d, opt_patch]

    # ------------------------------------------------------------------------------ sampling
    def metric_samplers(self) -> dict[str, list[str]]:
        """Latent smoothness runs on the W paths of ``interpolation``."""
        return {"latent_smoothness": ["interpolation"]}

    def samplers(self) -> dict[str, Sampler]:
        """``ema`` (EMA generator, random z, stored noise) and ``interpolation`` (W paths, strips)."""
        device = lambda: self.device  # noqa: E731 - follows the module across devices
        return {"ema": latent_sampler(self.ema_images, self.z_dim, device, truncation=1.0),
                "interpolation": w_interpolation_sampler(self.g_ema, self.interpolation_steps, device)}


__all__ = ["MixDLModule", "MIXDL_EMA_KIMG"]
