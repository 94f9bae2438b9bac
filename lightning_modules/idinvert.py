"""In-Domain GAN Inversion, stage 1: the domain-guided encoder (Zhu et al., "In-Domain GAN Inversion for Real
Image Editing", ECCV 2020; docs/methods/idinvert.md).

The generator G is trained and frozen (its EMA weights, fixed noise). The encoder E maps a real image to W+
and is supervised only in image space, through G, with a discriminator D initialised from the GAN's own D
and trained with it. One iteration on a real batch x::

    x_E, x_D = mirror(x), mirror(x)                     independent random horizontal flips (mirror: true)
    E step   x' = G(E(x_E))
             L_E = mean (x' - x_E)^2 + lambda_vgg * mean (F(x') - F(x_E))^2 + lambda_adv * mean softplus(-D(x'))
    D step   x' = G(E(x_D))                             a fresh E pass, no gradient to E
             L_D = mean softplus(D(x')) + mean softplus(-D(x_D)) + r1_gamma / 2 * E ||dD(x_D)/dx_D||^2
    lr       lr_0 * lr_decay ** (kimg / lr_decay_kimg)  for both Adams (betas 0.9, 0.99)

``F`` is VGG16 conv4_3 on Caffe-preprocessed images (``models.perceptual``); ``lambda_vgg = 5e-5`` is tuned to
that feature scale. R1 runs every iteration (not lazily). Defaults are the official ``train_encoder.py``:
``lambda_adv`` 0.08 (the paper and the loss function's default: 0.1), ``r1_gamma`` 10, Adam 1e-4.

Samplers: ``reconstruction`` (``G(E(x_i))`` of the datamodule's held-out images, a *paired* sampler) and
``real`` (``x_i`` themselves), so the metrics callback computes reconstruction MSE/PSNR/SSIM/LPIPS and the
FID of reconstructions. The trained encoder is exported to ``<run dir>/encoder.pt`` (``models.encoders``);
stage 2, domain-regularized optimization, is ``models.inversion`` (``python invert.py``).

Deviations, each a switch: the learning-rate decay ticks once per iteration (the official TF counter ticks
twice, once per E and once per D update: ``lr_decay_kimg`` at half the value reproduces it); BatchNorm is
per device (``SyncBatchNorm`` under DDP with ``sync_batchnorm: true``, as the official 8-GPU runs).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.base import MethodModule
from lightning_modules.config_groups import GeneratorSpec, coerce_group
from losses.adversarial import d_logistic_loss, g_nonsaturating_loss, r1_penalty
from losses.perceptual import perceptual_loss
from models.encoders import encoder_for, save_encoder
from models.frozen import trainable
from models.perceptual import DEFAULT_WEIGHTS, VGG16Perceptual
from models.sampler import Sampler

SUPPORTED_PRECISIONS = ("32-true", "32", "bf16-mixed")


class IDInvertModule(MethodModule):
    """The domain-guided encoder (see the module docstring).

    Args:
        generator: the ``model.generator`` group: the GAN to invert (its ``g_ema`` is frozen; its ``d``, when
            the file has one, initialises D). A new random generator only for offline tests.
        encoder: ``"B"`` (the official TF HEAD architecture, default) or ``"A"`` (the released PyTorch
            weights' architecture); ``encoder_widths``: ``{stem_channels, max_channels}`` for small encoders.
        perceptual: VGG16 weights (asset name or file) of the perceptual loss; null: a seeded random VGG
            (an offline stand-in; ``lambda_vgg`` then means nothing). ``perceptual_size``: images are resized
            (nearest) to this size for VGG (256, the official setting; null: their own size).
        lambda_vgg, lambda_adv: loss weights (5e-5; 0.08 official launcher, 0.1 paper).
        r1_gamma: R1 weight of D, applied every iteration (10).
        lr, betas, lr_decay, lr_decay_kimg: Adam of E and D (1e-4, (0.9, 0.99)), decayed by ``lr_decay`` every
            ``lr_decay_kimg`` (default ``total_kimg / 4``; no decay without ``total_kimg``).
        mirror: random horizontal flips of the real batch, drawn independently for the E and the D step.
        holdout: the datamodule reference set the samplers reconstruct (``"holdout"``: its held-out images).
        **base: ``seed``, ``nan_policy``, ``total_kimg``, ``grad_reset``.
    """

    product_file = "encoder.pt"
    supported_precisions = SUPPORTED_PRECISIONS
    precision_note = "the gradient penalty and the perceptual features run in fp32"

    def __init__(self, generator: GeneratorSpec | Mapping[str, Any] | str | None = None, *,
                 encoder: Literal["A", "B"] = "B", encoder_widths: Mapping[str, int] | None = None,
                 perceptual: str | None = DEFAULT_WEIGHTS, perceptual_size: int | None = 256,
                 lambda_vgg: float = 5e-5, lambda_adv: float = 0.08,
                 r1_gamma: float = 10.0, lr: float = 1e-4, betas: Sequence[float] = (0.9, 0.99),
                 lr_decay: float = 0.8, lr_decay_kimg: float | None = None, mirror: bool = True,
                 holdout: str = "holdout", **base: Any):
        super().__init__(**base)
        self.save_hyperparameters()
        for key, value in (("lambda_vgg", lambda_vgg), ("lambda_adv", lambda_adv), ("r1_gamma", r1_gamma)):
            if not 0.0 <= float(value) < math.inf:
                raise ValueError(f"{key} must be finite and >= 0, got {value}")
        if not 0.0 < lr_decay <= 1.0:
            raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
        if lr_decay_kimg is not None and not lr_decay_kimg > 0:
            raise ValueError(f"lr_decay_kimg must be > 0 or null, got {lr_decay_kimg}")
        spec = coerce_group(GeneratorSpec, generator, "model.generator")
        g_train, discriminator, g_ema = spec.gan()
        g = g_ema if g_ema is not None else g_train  # a new generator has no EMA copy: its only copy
        self.hold("g", g)  # frozen G: EMA weights, used with its stored (fixed) noise
        self.discriminator = discriminator.train()
        self.encoder_variant, self.encoder_widths = encoder, dict(encoder_widths or {})
        self.encoder = encoder_for(g, encoder, **self.encoder_widths)
        self.hold("vgg", VGG16Perceptual(perceptual, image_size=perceptual_size), dtype=torch.float32)
        self.lambda_vgg, self.lambda_adv, self.r1_gamma = float(lambda_vgg), float(lambda_adv), float(r1_gamma)
        self.lr, self.betas, self.lr_decay = float(lr), tuple(float(b) for b in betas), float(lr_decay)
        self.lr_decay_kimg = lr_decay_kimg
        self.mirror, self.holdout = bool(mirror), holdout
        self._holdout_images: Tensor | None = None

    # ------------------------------------------------------------------------------ building blocks
    def synthesize(self, w_plus: Tensor) -> Tensor:
        """``G(w+)`` with the generator's fixed noise."""
        return self.g([w_plus], input_is_latent=True, randomize_noise=False)[0]

    def reconstruct(self, images: Tensor) -> Tensor:
        """``G(E(x))``."""
        return self.synthesize(self.encoder(images))

    def features(self, images: Tensor) -> Tensor:
        """VGG16 conv4_3 features in fp32 (autocast off)."""
        with torch.autocast(images.device.type, enabled=False):
            return self.vgg(images.float())

    def flip(self, images: Tensor) -> Tensor:
        """Each image mirrored with probability 1/2 (from the iteration's generator)."""
        if not self.mirror:
            return images
        flips = torch.rand(images.shape[0], device=self.device, generator=self.rng) < 0.5
        return torch.where(flips.view(-1, 1, 1, 1), images.flip(3), images)

    # ------------------------------------------------------------------------------ losses
    def encoder_loss(self, x: Tensor) -> tuple[Tensor, dict]:
        """``L_E``: pixel MSE + lambda_vgg * VGG feature MSE + lambda_adv * non-saturating adversarial."""
        x_rec = self.reconstruct(x)
        pixel = F.mse_loss(x_rec.float(), x.float())
        feature = (perceptual_loss(self.features(x_rec), self.features(x)) if self.lambda_vgg > 0
                   else pixel.new_zeros(()))  # no VGG pass for a term that weighs nothing
        adversarial = g_nonsaturating_loss(self.discriminator(x_rec).float())
        loss = pixel + self.lambda_vgg * feature + self.lambda_adv * adversarial
        return loss, {"loss/E": loss, "loss/E_pixel": pixel, "loss/E_vgg": feature, "loss/E_adv": adversarial}

    def discriminator_loss(self, x: Tensor) -> tuple[Tensor, dict]:
        """``L_D``: logistic loss on a fresh reconstruction and the reals + R1 at the reals (every step, fp32)."""
        with torch.no_grad():
            x_rec = self.reconstruct(x)
        fake_logits = self.discriminator(x_rec).float()
        with torch.autocast(self.device.type, enabled=False):
            real = x.detach().float().requires_grad_(True)
            real_logits = self.discriminator(real)
            penalty = r1_penalty(real_logits, real)
        adversarial = d_logistic_loss(real_logits.float(), fake_logits)
        loss = adversarial + self.r1_gamma / 2 * penalty
        return loss, {"loss/D": loss, "loss/D_adv": adversarial, "reg/r1_penalty": penalty,
                      "D/real_logits": real_logits.float().mean(), "D/fake_logits": fake_logits.mean()}

    # ------------------------------------------------------------------------------ training
    def current_lr(self) -> float:
        """``lr * lr_decay ** (kimg / lr_decay_kimg)``."""
        decay_kimg = self.lr_decay_kimg
        if decay_kimg is None and self.total_kimg is not None:
            decay_kimg = self.total_kimg / 4
        return self.lr if decay_kimg is None else self.lr * self.lr_decay ** (self.kimg / decay_kimg)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[-2:]) != (self.g.size, self.g.size):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected real images [B, 3, {self.g.size}, {self.g.size}] (set data.resolution to "
                             f"{self.g.size}), got {shape}")
        self.reseed()
        opt_e, opt_d = self.optimizers()
        lr = self.current_lr()
        for opt in (opt_e, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        logs: dict[str, Tensor] = {"lr": torch.tensor(lr)}
        x_e, x_d = self.flip(x), self.flip(x)
        with trainable([self.encoder], [self.discriminator]):
            self.step(opt_e, "E", self.encoder_loss, logs, x_e)
        with trainable([self.discriminator], [self.encoder]):
            self.step(opt_d, "D", self.discriminator_loss, logs, x_d)
        self.end_iteration(x.shape[0], logs)

    def configure_optimizers(self):
        opt_e = torch.optim.Adam(self.encoder.parameters(), lr=self.lr, betas=self.betas, eps=1e-8)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas, eps=1e-8)
        return [opt_e, opt_d]

    # ------------------------------------------------------------------------------ samplers
    def holdout_images(self, indices: Sequence[int]) -> Tensor:
        """Held-out real images ``indices`` in [-1, 1] (the datamodule's ``holdout`` reference set)."""
        if self._holdout_images is None:
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            if datamodule is None or not hasattr(datamodule, "reference_set"):
                raise RuntimeError("the reconstruction samplers read the datamodule's held-out images: run them "
                                   "inside trainer.fit/test with a datamodule that has data.holdout > 0")
            ref = datamodule.reference_set(self.holdout)
            self._holdout_images = torch.cat(list(ref.batches(64)))
        if max(indices, default=-1) >= len(self._holdout_images):
            raise IndexError(f"the sampler asks for held-out image {max(indices)} but there are "
                             f"{len(self._holdout_images)}: lower num_gen or raise data.holdout")
        return self._holdout_images[list(indices)].to(self.device).float() / 127.5 - 1.0

    def samplers(self) -> dict[str, Sampler]:
        """``reconstruction`` (``G(E(x_i))``, paired with held-out image ``i``) and ``real`` (``x_i``); both
        ignore the seed: image ``i`` is always held-out image ``i``."""
        return {"reconstruction": Sampler(lambda idx, seed: self.reconstruct(self.holdout_images(idx)).clamp(-1, 1),
                                          kind="paired"),
                "real": Sampler(lambda idx, seed: self.holdout_images(idx), kind="grid")}

    def metric_samplers(self) -> dict[str, list[str]]:
        return {"reconstruction": ["reconstruction"]}

    # ------------------------------------------------------------------------------ export
    def export(self, path: Path) -> Path:
        """The encoder with its architecture (``models.encoders.save_encoder``), plain data."""
        return save_encoder(path, self.encoder, variant=self.encoder_variant, widths=self.encoder_widths,
                            kimg=float(self.kimg))


__all__ = ["IDInvertModule"]
