"""Latent-code optimisation shared by methods that move W / W+ codes through a generator.

StyleGAN-NADA's layer selection takes a few SGD steps on W+ codes to see which codes a loss wants to move;
GAN inversion and destylization optimise codes against reconstruction losses. The code is a leaf tensor,
the generator's weights receive no gradient (``torch.autograd.grad`` with respect to the code only).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def w_plus_sgd(synthesize: Callable[[Tensor], Tensor], loss_fn: Callable[[Tensor], Tensor], w_plus_init: Tensor,
               lr: float = 0.01, iters: int = 1) -> Tensor:
    """``iters`` SGD steps ``w+ <- w+ - lr * dL/dw+`` on ``L = loss_fn(synthesize(w+))``.

    ``synthesize`` maps W+ ``[B, n_latent, D]`` to images; gradients are taken with respect to ``w+`` only.
    Returns the moved, detached ``w+``.
    """
    w_plus = w_plus_init.detach().clone()
    with torch.enable_grad():  # validation/inference contexts may wrap the optimisation
        for _ in range(int(iters)):
            leaf = w_plus.requires_grad_(True)
            loss = loss_fn(synthesize(leaf))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"latent optimisation loss is not finite: {loss.item()}")
            (grad,) = torch.autograd.grad(loss, [leaf])
            w_plus = (leaf - lr * grad).detach()
    return w_plus


__all__ = ["w_plus_sgd"]
