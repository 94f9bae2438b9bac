"""StyleGAN2 adversarial losses and gradient penalties (docs/methods/stylegan2.md, "Training algorithm").

Pure functions of tensors: no Lightning, no module state. The training core
(``lightning_modules/gan.py``) applies the lazy-regularization gains (``gamma / 2 * interval`` for R1,
``weight * interval`` for path length) and decides in which precision the penalties run.

* non-saturating logistic loss (Goodfellow et al. 2014; StyleGAN2 default):
  ``L_D = E[softplus(D(fake))] + E[softplus(-D(real))]`` and ``L_G = E[softplus(-D(G(z)))]``;
* R1 penalty (Mescheder et al. 2018): ``E_b ||d sum D(real) / d real_b||^2`` with the squared norm over
  C, H, W of each sample;
* path-length regularization (Karras et al. 2020): with ``y ~ N(0, 1) / sqrt(H W)`` and
  ``g = d sum(img * y) / d W+``, ``l_b = sqrt(mean_rows sum_dim g^2)``; the running mean
  ``a <- a + decay (mean_b l_b - a)`` and ``penalty = mean_b (l_b - a)^2`` with the *updated* ``a``
  (as both rosinality and NVIDIA do).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "d_logistic_loss",
    "g_nonsaturating_loss",
    "r1_penalty",
    "path_lengths",
    "update_pl_mean",
    "path_length_penalty",
]


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator logistic loss ``mean softplus(D(fake)) + mean softplus(-D(real))`` (phase D_main)."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator non-saturating loss ``mean softplus(-D(G(z)))`` (phase G_main)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 penalty ``E_b ||d(sum D(real))/d real_b||^2`` (phase D_reg), differentiable (create_graph).

    ``real_images`` must require grad and ``real_logits`` must have been computed from it.
    """
    if not real_images.requires_grad:
        raise ValueError("r1_penalty: real_images must require grad (call real.requires_grad_() before D)")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def path_lengths(images: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample Jacobian path lengths ``l_b`` [B] (phase G_reg), differentiable (create_graph).

    ``latents`` is the W+ tensor [B, n_latent, dim] the generator synthesized ``images`` [B, C, H, W]
    from (``return_latents=True``). ``noise`` defaults to ``N(0, 1) / sqrt(H W)`` drawn from
    ``generator``; pass it explicitly to reproduce a value.
    """
    if latents.dim() != 3:
        raise ValueError(f"path_lengths: latents must be W+ [B, n_latent, dim], got shape {tuple(latents.shape)}")
    if noise is None:
        noise = torch.randn(images.shape, device=images.device, dtype=images.dtype, generator=generator)
        noise = noise / math.sqrt(images.shape[2] * images.shape[3])
    (grad,) = torch.autograd.grad((images * noise).sum(), latents, create_graph=True)
    return grad.pow(2).sum(2).mean(1).sqrt()


def update_pl_mean(pl_mean: torch.Tensor, batch_mean: torch.Tensor, decay: float) -> torch.Tensor:
    """Running mean of path lengths ``a + decay (batch_mean - a)`` (detached)."""
    return (pl_mean + decay * (batch_mean.detach() - pl_mean)).detach()


def path_length_penalty(lengths: torch.Tensor, pl_mean: torch.Tensor) -> torch.Tensor:
    """``mean_b (l_b - a)^2`` for path lengths ``lengths`` [B] and the (updated) running mean ``a``."""
    return (lengths - pl_mean.detach()).pow(2).mean()
