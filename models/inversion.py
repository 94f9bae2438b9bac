"""In-Domain GAN Inversion, stage 2: domain-regularized optimization of W+ codes (Zhu et al., ECCV 2020;
docs/methods/idinvert.md).

For images ``x`` (a batch, each image on its own)::

    w_0 = E(x)                                    (or the mean W broadcast to W+: ``init="mean"``)
    w*  = argmin_w  mean (x - G(w))^2 + lambda_vgg * mean (F(x) - F(G(w)))^2 + lambda_dom * mean (w - E(G(w)))^2

Adam over ``w`` only (lr 0.01, 100 steps), G with fixed noise, E in eval mode; gradients flow through the
frozen G and E into ``w``. Every mean is taken per image and the per-image losses are summed, so an image's
result does not depend on the other images of its batch; a fresh Adam per batch (the official PyTorch port)
keeps it independent of the batch order too (``carry_optimizer=True``: one Adam for every batch, as the TF
inverter). ``mask`` restricts the pixel and feature terms to a region (semantic diffusion, ``lambda_dom`` 0).

Presets for comparison tables (:data:`PRESETS`): ``in_domain`` (the paper), ``encoder`` (E(x), no
optimization), ``mse_from_mean`` (Image2StyleGAN-style: from the mean W, pixel loss only, no domain term),
``from_encoder`` (from E(x) without the domain term).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["InversionSettings", "PRESETS", "Inverter", "InversionResult"]


@dataclass
class InversionSettings:
    """One inversion recipe. ``init``: ``"encoder"`` or ``"mean"``; ``steps`` 0 = the initial code."""

    steps: int = 100
    lr: float = 0.01
    lambda_vgg: float = 5e-5
    lambda_dom: float = 2.0
    init: str = "encoder"
    carry_optimizer: bool = False

    def __post_init__(self) -> None:
        if self.init not in ("encoder", "mean"):
            raise ValueError(f"init must be 'encoder' or 'mean', got {self.init!r}")
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps}")
        for key in ("lr", "lambda_vgg", "lambda_dom"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")


PRESETS = {
    "in_domain": InversionSettings(),
    "encoder": InversionSettings(steps=0),
    "mse_from_mean": InversionSettings(init="mean", lambda_vgg=0.0, lambda_dom=0.0),
    "from_encoder": InversionSettings(lambda_dom=0.0),
}


@dataclass
class InversionResult:
    """W+ codes [B, n_latent, style_dim], their images in [-1, 1], per-image final losses and seconds."""

    codes: Tensor
    images: Tensor
    losses: dict[str, Tensor]
    seconds: float


def _per_image_mse(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared difference of each image's elements [B] (within ``mask`` when given)."""
    diff = (a - b).pow(2)
    if mask is None:
        return diff.flatten(1).mean(1)
    mask = mask.expand_as(diff)
    return (diff * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


class Inverter:
    """Domain-regularized optimization with a frozen generator ``G``, encoder ``E`` and perceptual net ``F``.

    ``G`` is called with W+ codes and its stored noise; ``E`` maps images to W+; ``F`` maps images in
    [-1, 1] to features (``models.perceptual.VGG16Perceptual``). All three are put in eval mode and frozen.
    ``F`` may be None when ``lambda_vgg`` is 0, ``E`` when only ``init="mean"`` without a domain term is used.
    """

    def __init__(self, generator: nn.Module, encoder: nn.Module | None = None, perceptual: nn.Module | None = None,
                 mean_w: Tensor | None = None):
        self.g, self.e, self.f = generator, encoder, perceptual
        for net in (self.g, self.e, self.f):
            if net is not None:
                net.eval().requires_grad_(False)
        self.mean_w = mean_w
        self._carried: tuple[Tensor, torch.optim.Optimizer] | None = None

    def synthesize(self, w_plus: Tensor) -> Tensor:
        return self.g([w_plus], input_is_latent=True, randomize_noise=False)[0]

    def initial_codes(self, images: Tensor, settings: InversionSettings) -> Tensor:
        if settings.init == "encoder":
            if self.e is None:
                raise ValueError("init='encoder' needs an encoder")
            with torch.no_grad():
                return self.e(images)
        if self.mean_w is None:
            raise ValueError("init='mean' needs the generator's mean W")
        n_latent = int(self.g.n_latent)
        return self.mean_w.reshape(1, 1, -1).expand(images.shape[0], n_latent, -1).clone()

    def losses(self, w: Tensor, images: Tensor, settings: InversionSettings, target_features: Tensor | None,
               mask: Tensor | None = None) -> dict[str, Tensor]:
        """Per-image loss terms [B] of codes ``w`` against ``images`` (``total`` is the weighted sum)."""
        x = self.synthesize(w)
        terms = {"pixel": _per_image_mse(x, images, mask)}
        if settings.lambda_vgg > 0:
            feats = self.f(x)
            feat_mask = None if mask is None else nn.functional.interpolate(mask, size=feats.shape[-2:], mode="nearest")
            terms["vgg"] = _per_image_mse(feats, target_features, feat_mask)
        if settings.lambda_dom > 0:
            terms["domain"] = (w - self.e(x)).pow(2).flatten(1).mean(1)
        terms["total"] = (terms["pixel"] + settings.lambda_vgg * terms.get("vgg", 0.0)
                          + settings.lambda_dom * terms.get("domain", 0.0))
        return terms

    def invert(self, images: Tensor, settings: InversionSettings | None = None, mask: Tensor | None = None,
               init: Tensor | None = None) -> InversionResult:
        """Invert one batch of images [B, 3, H, W] in [-1, 1]; ``init`` overrides the initial codes."""
        settings = settings or InversionSettings()
        if settings.lambda_vgg > 0 and self.f is None:
            raise ValueError("lambda_vgg > 0 needs a perceptual network")
        if settings.lambda_dom > 0 and self.e is None:
            raise ValueError("lambda_dom > 0 needs an encoder")
        start = time.perf_counter()
        with torch.no_grad():
            target = self.f(images) if settings.lambda_vgg > 0 else None
            w0 = self.initial_codes(images, settings) if init is None else init.detach().clone()
        carried = self._carried
        if settings.carry_optimizer and carried is not None and carried[0].shape == w0.shape:
            w, optimizer = carried  # the TF inverter: one code variable and one Adam, state carried on
            with torch.no_grad():
                w.copy_(w0)
        else:
            w = w0.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=settings.lr)
            self._carried = (w, optimizer) if settings.carry_optimizer else None
        with torch.enable_grad():
            for _ in range(int(settings.steps)):
                optimizer.zero_grad(set_to_none=True)
                total = self.losses(w, images, settings, target, mask)["total"]
                if not torch.isfinite(total).all():
                    raise FloatingPointError(f"inversion loss is not finite: {total.tolist()}")
                total.sum().backward()
                optimizer.step()
        with torch.no_grad():
            final = self.losses(w, images, settings, target, mask)
            result_images = self.synthesize(w).clamp(-1, 1)
        return InversionResult(w.detach().clone(), result_images, {k: v.detach() for k, v in final.items()},
                               time.perf_counter() - start)

    def invert_batches(self, batches: Iterable[Tensor], settings: InversionSettings | None = None
                       ) -> Iterator[InversionResult]:
        for images in batches:
            yield self.invert(images, settings)


def settings_from(preset: str = "in_domain", **overrides) -> InversionSettings:
    """A preset of :data:`PRESETS` with some fields replaced."""
    if preset not in PRESETS:
        raise ValueError(f"unknown inversion preset {preset!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
