"""MixDL distance losses (Kong et al., ECCV 2022), vectorized.

docs/methods/mixdl.md, "Distance losses" ("G side" and "D side"). Both losses compare the
*similarity profile* of each mixed sample to the anchors with the softmax of its mixing
coefficients:

    s_ij = cos(f(mix_i), f(anchor_j))            (no temperature)
    p_i  = softmax_j(s_ij)
    q_i  = softmax_j(alpha_ij)                    (softmax of the coefficients, not alpha itself)
    L    = KLDiv(log p, q)                        (PyTorch ``kl_div``: sum_ij q_ij (log q_ij - log p_ij) / N)

The released code uses ``nn.KLDivLoss()`` with its default ``reduction='mean'``, i.e. the sum is
divided by the number of *entries* M*B, not by the number of rows M ('batchmean'). The weights
``G_KL_WEIGHT = 1000`` and ``D_KL_WEIGHT = 1`` were tuned for that reduction (docs/methods/mixdl.md, "KL reduction"), so
``'mean'`` is the default here; ``'batchmean'`` multiplies the effective weight by B.

The released script loops over all B x B pairs in Python; here each distinct feature layer costs
one normalised matrix product.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

G_KL_WEIGHT = 1000.0
"""``kl_wt`` of the released ``train_mixdl.py``."""
D_KL_WEIGHT = 1.0
"""``d_kl_wt`` of the released ``train_mixdl.py``."""

REDUCTIONS = ("mean", "batchmean", "sum")
_COS_EPS = 1e-8


def _check_coeffs(coeffs: torch.Tensor, n_mix: int, n_anchor: int) -> None:
    if coeffs.dim() != 2 or coeffs.shape != (n_mix, n_anchor):
        raise ValueError(f"coeffs must have shape [num_mixes, num_anchors] = [{n_mix}, {n_anchor}], "
                         f"got {tuple(coeffs.shape)}")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def cosine_similarity_matrix(mix: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``s_ij = cos(flatten(mix_i), flatten(anchors_j))``; mix [M, ...], anchors [B, ...] -> [M, B].

    Every sample is flattened over all of its non-batch dimensions (the full C*H*W tensor, as the released code).
    """
    if mix.shape[1:] != anchors.shape[1:]:
        raise ValueError(f"mix and anchor features must share their per-sample shape, got "
                         f"{tuple(mix.shape)} and {tuple(anchors.shape)}")
    m = F.normalize(mix.flatten(1), dim=1, eps=_COS_EPS)
    a = F.normalize(anchors.flatten(1), dim=1, eps=_COS_EPS)
    return m @ a.t()


def similarity_kl(similarities: torch.Tensor, coeffs: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``KLDiv(log_softmax(similarities), softmax(coeffs))`` with PyTorch ``kl_div`` reductions.

    ``similarities`` and ``coeffs`` are [M, B] (row i: mix i against the B anchors). ``'mean'`` divides
    the summed KL by M*B (the released code's semantics), ``'batchmean'`` by M, ``'sum'`` not at all.
    """
    _check_reduction(reduction)
    _check_coeffs(coeffs, *similarities.shape)
    log_p = F.log_softmax(similarities, dim=1)
    q = F.softmax(coeffs.to(similarities.dtype), dim=1)
    # Pointwise terms, reduced here: PyTorch warns that kl_div's own 'mean' will change meaning.
    pointwise = F.kl_div(log_p, q, reduction="none")
    if reduction == "mean":
        return pointwise.mean()
    if reduction == "batchmean":
        return pointwise.sum() / similarities.shape[0]
    return pointwise.sum()


def sample_feature_layers(num_rows: int, num_layers: int, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> torch.Tensor:
    """Per-row generator layer indices ``l_i ~ U{1, ..., num_layers - 2}`` (docs/methods/mixdl.md, "G side").

    ``num_layers`` is the length of the generator's feature list (13 at 256 px), so the 4x4 layer
    (index 0) and the last full-resolution conv are never chosen, as in the released code.
    """
    if num_layers < 3:
        raise ValueError(f"need at least 3 generator feature layers to pick from 1..num_layers-2, got {num_layers}")
    gen_device = generator.device if generator is not None else device
    layers = torch.randint(1, num_layers - 1, (num_rows,), generator=generator, device=gen_device)
    return layers.to(device) if device is not None else layers


def g_distance_loss(mix_feats: Sequence[torch.Tensor], anchor_feats: Sequence[torch.Tensor],
                    coeffs: torch.Tensor, layers: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """G-side distance loss (docs/methods/mixdl.md, "G side"; unweighted; multiply by ``G_KL_WEIGHT``).

    Args:
        mix_feats: generator features of the M mixed latents, one tensor [M, C_l, H_l, W_l] per layer
            (``Generator(..., return_feats=True)`` order).
        anchor_feats: the same layers for the B anchor latents, [B, C_l, H_l, W_l].
        coeffs: mixing coefficients alpha [M, B] (row i produced mix i).
        layers: [M] integer layer index per row: row i compares mix i with every anchor at layer
            ``layers[i]`` (draw it with :func:`sample_feature_layers`).
        reduction: ``'mean'`` (released code), ``'batchmean'`` or ``'sum'``.

    Neither branch is detached: gradients reach the generator through mixes and anchors, as in the released code.
    """
    if len(mix_feats) != len(anchor_feats):
        raise ValueError(f"got {len(mix_feats)} mix feature layers but {len(anchor_feats)} anchor layers")
    n_mix, n_anchor = mix_feats[0].shape[0], anchor_feats[0].shape[0]
    _check_coeffs(coeffs, n_mix, n_anchor)
    layers = torch.as_tensor(layers)
    if layers.shape != (n_mix,) or layers.dtype.is_floating_point or layers.dtype == torch.bool:
        raise ValueError(f"layers must be an integer tensor of shape [{n_mix}], got "
                         f"{tuple(layers.shape)} {layers.dtype}")
    layer_list = layers.tolist()
    bad = [l for l in layer_list if not 0 <= l < len(mix_feats)]
    if bad:
        raise ValueError(f"layer indices {bad} out of range for {len(mix_feats)} feature layers")

    # One matmul per distinct layer; rows are scattered back into their original order.
    blocks, rows_all = [], []
    for layer in sorted(set(layer_list)):
        rows = [i for i, l in enumerate(layer_list) if l == layer]
        rows_t = torch.tensor(rows, device=mix_feats[layer].device)
        blocks.append(cosine_similarity_matrix(mix_feats[layer].index_select(0, rows_t), anchor_feats[layer]))
        rows_all.extend(rows)
    stacked = torch.cat(blocks, dim=0)
    order = torch.empty(n_mix, dtype=torch.long, device=stacked.device)
    order[torch.tensor(rows_all, device=stacked.device)] = torch.arange(n_mix, device=stacked.device)
    similarities = stacked.index_select(0, order)
    return similarity_kl(similarities, coeffs, reduction)


def d_distance_loss(mix_proj: torch.Tensor, anchor_proj: torch.Tensor, coeffs: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """D-side distance loss (docs/methods/mixdl.md, "D side"; unweighted; multiply by ``D_KL_WEIGHT``).

    ``mix_proj`` [M, F] and ``anchor_proj`` [B, F] are the projection-head outputs
    ``u = sim_linear(h)`` of the discriminator's penultimate feature h for mixes and anchors
    (in the reference both come from one D pass over ``cat[anchors, mixes]``). ``coeffs`` is [M, B].
    """
    if mix_proj.dim() != 2 or anchor_proj.dim() != 2:
        raise ValueError(f"projections must be [N, F], got {tuple(mix_proj.shape)} and {tuple(anchor_proj.shape)}")
    _check_coeffs(coeffs, mix_proj.shape[0], anchor_proj.shape[0])
    return similarity_kl(cosine_similarity_matrix(mix_proj, anchor_proj), coeffs, reduction)
