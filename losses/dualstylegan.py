"""Stage III (style transfer on the target domain) loss terms of DualStyleGAN that are plain formulas.

Yang et al., "Pastiche Master", CVPR 2022; docs/methods/dualstylegan.md. phi_j are VGG19 feature maps of the
generated image Y and the style exemplar S (relu2_1 and relu3_1 on 256-px inputs in the official code), mu the
global average over positions:

* L_FM  = sum_j mean_(b,c) (mu phi_j(Y) - mu phi_j(S))^2      (channel means only, not Gram matrices)
* L_perc = sum_j a_j mean |phi_j(Y) - phi_j(S)|               (paired steps; a = (0.5, 1.0) for relu2_1, relu3_1)
* L_reg = sum_p ||p||_2                                       (unsquared Frobenius norms)

The official L_reg runs over every parameter of ``res``: the ModRes blocks *and* the colour transforms T_c (the
paper describes a ModRes weight regulariser); pass ``DualStyleGAN.res.parameters()`` for the official term.
The contextual loss is in ``losses.contextual``, the identity loss in ``losses.identity``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["feature_matching_loss", "perceptual_l1_loss", "l2_regularization", "STAGE3_PERCEPTUAL_WEIGHTS",
           "LAMBDA_FM", "LAMBDA_CX", "LAMBDA_PERC", "LAMBDA_ID", "LAMBDA_REG"]

STAGE3_PERCEPTUAL_WEIGHTS = (0.5, 1.0)
"""Layer weights of L_perc for (relu2_1, relu3_1)."""
LAMBDA_FM = 0.25
LAMBDA_CX = 0.25
LAMBDA_PERC = 1.0
LAMBDA_ID = 1.0
LAMBDA_REG = 0.01
"""Official parser default; its README command uses 0.015 (tune per style)."""


def _pairs(feats_x: Sequence[Tensor], feats_y: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    if len(feats_x) != len(feats_y) or not feats_x:
        raise ValueError(f"need the same non-zero number of feature maps, got {len(feats_x)} and {len(feats_y)}")
    for a, b in zip(feats_x, feats_y):
        if a.shape != b.shape:
            raise ValueError(f"feature shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return list(zip(feats_x, feats_y))


def feature_matching_loss(feats_x: Sequence[Tensor], feats_y: Sequence[Tensor]) -> Tensor:
    """L_FM: ``sum_j MSE(mean_hw phi_j(x), mean_hw phi_j(y))`` over feature maps [N, C, H, W]."""
    return sum(((a.mean(dim=(2, 3)) - b.mean(dim=(2, 3))) ** 2).mean() for a, b in _pairs(feats_x, feats_y))


def perceptual_l1_loss(feats_x: Sequence[Tensor], feats_y: Sequence[Tensor],
                       weights: Sequence[float] = STAGE3_PERCEPTUAL_WEIGHTS) -> Tensor:
    """L_perc: ``sum_j weights_j mean|phi_j(x) - phi_j(y)|``."""
    pairs = _pairs(feats_x, feats_y)
    if len(weights) != len(pairs):
        raise ValueError(f"{len(weights)} weights for {len(pairs)} feature maps")
    return sum(wt * (a - b).abs().mean() for wt, (a, b) in zip(weights, pairs))


def l2_regularization(parameters: Iterable[Tensor]) -> Tensor:
    """L_reg: ``sum_p ||p||_2``, the unsquared Frobenius norm of each parameter."""
    norms = [p.norm(p=2) for p in parameters]
    if not norms:
        raise ValueError("l2_regularization got no parameters")
    return torch.stack(norms).sum()
