"""StyleGAN-NADA adaptive layer selection ("layer freezing"; docs/methods/nada.md, "Adaptive layer selection").

Every training iteration, before the generator step:

1. a fresh batch of W codes is broadcast to W+ and copied into a leaf tensor ``w+``;
2. ``iters`` plain SGD steps (lr 0.01) move ``w+`` down the *global* CLIP loss of the trainable generator's
   images with the raw target text (``models.latent_optim.w_plus_sgd``);
3. each W+ index ``i`` is scored by ``mean_{batch, channels} |w+_i - w+_i,init|`` (:func:`code_movement`);
4. the top-k indices are mapped to generator layers (:func:`layers_for_codes`) and only those train this
   step (``models.frozen.requires_grad``).

Gradients of step 2 are taken with respect to ``w+`` only (``torch.autograd.grad``), so the generator never
accumulates parameter gradients there (the reference un-freezes every layer and leaves gradients behind that
it must zero before the main backward): the SGD update of ``w+`` is the same, memory is lower.

Index -> layer mappings (docs/methods/nada.md, "Index mapping: reference and corrected"):

* ``reference`` (default, faithful): code 0 -> ``conv1``; code 1 -> ``to_rgb1``; code ``j >= 2`` ->
  ``convs[j - 2]``. In the rosinality forward, ``convs[j - 2]`` is modulated by code ``j - 1``, not ``j``.
* ``corrected`` (a documented deviation): code ``j`` -> the trainable layers it actually modulates: code 0 ->
  ``conv1``; code 1 -> ``to_rgb1`` and ``convs[0]``; code ``j >= 2`` -> ``convs[j - 1]``. The last code
  drives only the last ToRGB, which NADA never trains, so it is not a candidate and ``k`` is capped
  at ``n_latent - 1``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

LAYER_MAPPINGS = ("reference", "corrected")


def candidate_layers(generator: nn.Module) -> list[nn.Module]:
    """The layers selection may train, in the reference's order: ``[conv1, to_rgb1, *convs]``."""
    return [generator.conv1, generator.to_rgb1, *generator.convs]


def eligible_codes(n_latent: int, n_convs: int, mapping: str = "reference") -> list[int]:
    """W+ indices that map to at least one candidate layer under ``mapping``."""
    check_mapping(mapping)
    if mapping == "reference":
        return [j for j in range(n_latent) if j < 2 or j - 2 < n_convs]
    return [j for j in range(n_latent) if j < 2 or j - 1 < n_convs]


def check_mapping(mapping: str) -> None:
    if mapping not in LAYER_MAPPINGS:
        raise ValueError(f"layer_mapping must be one of {LAYER_MAPPINGS}, got {mapping!r}")


def layers_for_codes(generator: nn.Module, codes: Sequence[int], mapping: str = "reference") -> list[nn.Module]:
    """The generator layers selected by W+ indices ``codes`` (see the module docstring), without repeats."""
    check_mapping(mapping)
    n_latent, convs = int(generator.n_latent), generator.convs
    chosen: list[nn.Module] = []
    for j in codes:
        if not 0 <= j < n_latent:
            raise IndexError(f"W+ index {j} out of range for a generator with {n_latent} codes")
        if j == 0:
            layers = [generator.conv1]
        elif j == 1:
            layers = [generator.to_rgb1] + ([convs[0]] if mapping == "corrected" else [])
        else:
            index = j - 2 if mapping == "reference" else j - 1
            layers = [convs[index]] if index < len(convs) else []
        chosen.extend(layer for layer in layers if all(layer is not c for c in chosen))
    return chosen


def code_movement(w_plus_init: Tensor, w_plus: Tensor) -> Tensor:
    """``s_i = mean_{b, c} |w+_{b,i,c} - w+init_{b,i,c}|`` for every W+ index ``i`` -> ``[n_latent]``."""
    if w_plus.shape != w_plus_init.shape or w_plus.dim() != 3:
        raise ValueError(f"expected two W+ tensors [B, n_latent, D], got {tuple(w_plus_init.shape)} "
                         f"and {tuple(w_plus.shape)}")
    return (w_plus.detach() - w_plus_init.detach()).abs().mean(dim=(0, 2))


def top_codes(scores: Tensor, k: int, mapping: str, n_convs: int) -> list[int]:
    """The ``k`` eligible W+ indices with the largest scores, largest first."""
    if not torch.isfinite(scores).all():
        raise FloatingPointError(f"layer-selection scores are not finite: {scores.tolist()}")
    eligible = eligible_codes(scores.numel(), n_convs, mapping)
    if k < 1:
        raise ValueError(f"auto_layer_k must be >= 1, got {k}")
    k = min(k, len(eligible))
    order = torch.topk(scores[eligible], k).indices.tolist()
    return [eligible[i] for i in order]


__all__ = ["LAYER_MAPPINGS", "candidate_layers", "eligible_codes", "layers_for_codes", "code_movement",
           "top_codes"]
