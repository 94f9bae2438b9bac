"""MixDL discriminator heads: patch-level heads and the distance projection head.

Described in docs/methods/mixdl.md, "Patch heads (from CDC)" and "D side".

* Patch level (CDC's ``Extra``): four candidate intermediate D maps, the activations *inside* the
  residual blocks (``conv1`` output and ``conv2`` output) whose spatial size is 32 or 16, in forward
  order. At 256 px these are block(64->32).conv2 [32^2], block(32->16).conv1 [32^2],
  block(32->16).conv2 [16^2] and block(16->8).conv1 [16^2]. Each map has its own head
  ``ConvLayer(C -> 1, 3x3)``; like the reference, the head ends with a FusedLeakyReLU, so the patch
  "logits" are leaky-ReLU'd (``leaky_logits=True``). A training step draws one map index per D call.
  The released code also requires 512 channels; with the standard channel tables that holds for every
  selected map, so only the resolution is used here, which keeps custom (tiny) channel tables working.
  These maps are not block outputs, so they are not in ``Discriminator(..., return_feats=True)``;
  :func:`patch_features` walks the blocks' ``conv1``/``conv2``/``skip`` sub-modules instead and stops
  at the last map it needs.
* Image level distance head (``sim_linear``): an equalized-lr linear map 512 -> 512 with bias and no
  activation on the penultimate D feature ``h = final_linear[0](flatten(final_conv output))``.
  In the released code it lives inside D and is trained by D's optimizer; here it is a separate module
  that the method adds to D's optimizer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from models.stylegan2_layers import ConvLayer, EqualLinear

PATCH_RESOLUTIONS = (32, 16)
NUM_PATCH_MAPS = 4


@dataclass(frozen=True)
class PatchMap:
    """Where a patch map comes from: ``discriminator.convs[block].<stage>`` output."""

    block: int
    stage: str  # "conv1" or "conv2"
    resolution: int
    channels: int


def patch_map_layout(discriminator: nn.Module, resolutions: Sequence[int] = PATCH_RESOLUTIONS,
                     num_maps: int = NUM_PATCH_MAPS) -> list[PatchMap]:
    """The first ``num_maps`` intra-block maps (forward order) whose size is in ``resolutions``.

    Uses the discriminator's ``size`` and ``channels`` table: block k (k >= 1) runs at
    ``size / 2**(k-1)``; its ``conv1`` keeps resolution and channels, its ``conv2`` halves the
    resolution and outputs ``channels[res / 2]`` (docs/methods/stylegan2.md, "Discriminator").
    """
    size, channels = discriminator.size, discriminator.channels
    candidates = []
    for k in range(1, len(discriminator.convs)):
        res = size // 2 ** (k - 1)
        candidates.append(PatchMap(k, "conv1", res, channels[res]))
        candidates.append(PatchMap(k, "conv2", res // 2, channels[res // 2]))
    layout = [m for m in candidates if m.resolution in tuple(resolutions)][:num_maps]
    if len(layout) < num_maps:
        raise ValueError(f"a {size}px discriminator has only {len(layout)} intra-block maps at resolutions "
                         f"{tuple(resolutions)}, need {num_maps}; pick resolutions from "
                         f"{sorted({m.resolution for m in candidates}, reverse=True)}")
    return layout


def patch_features(discriminator: nn.Module, x: torch.Tensor, resolutions: Sequence[int] = PATCH_RESOLUTIONS,
                   num_maps: int = NUM_PATCH_MAPS, upto: int | None = None) -> list[torch.Tensor]:
    """The patch maps of ``x`` (see :func:`patch_map_layout`); only the first ``upto + 1`` when given.

    The residual blocks are evaluated as ``(conv2(conv1(h)) + skip(h)) / sqrt(2)`` and the
    walk stops right after the last requested map.
    """
    layout = patch_map_layout(discriminator, resolutions, num_maps)
    if upto is not None:
        if not 0 <= upto < num_maps:
            raise ValueError(f"patch map index {upto} out of range [0, {num_maps})")
        layout = layout[:upto + 1]
    wanted = {(m.block, m.stage) for m in layout}
    feats: list[torch.Tensor] = []
    h = discriminator.convs[0](x)
    for k in range(1, layout[-1].block + 1):
        block = discriminator.convs[k]
        t1 = block.conv1(h)
        if (k, "conv1") in wanted:
            feats.append(t1)
            if len(feats) == len(layout):
                break
        t2 = block.conv2(t1)
        if (k, "conv2") in wanted:
            feats.append(t2)
            if len(feats) == len(layout):
                break
        h = (t2 + block.skip(h)) / math.sqrt(2)
    return feats


class PatchHeads(nn.Module):
    """CDC/MixDL ``Extra``: one ``ConvLayer(C_k -> 1, 3x3)`` per patch map (docs/methods/mixdl.md,
    "Patch heads (from CDC)").

    ``forward(feat, index)`` returns patch logits [B, 1, H, W] of map ``index``. They are trained with
    their own optimizer (same lr/betas as D) and must be saved with the checkpoint (the released code
    forgets them).
    """

    def __init__(self, in_channels: Sequence[int], leaky_logits: bool = True):
        super().__init__()
        if not in_channels:
            raise ValueError("PatchHeads needs at least one input map")
        self.in_channels = tuple(int(c) for c in in_channels)
        self.leaky_logits = leaky_logits
        self.heads = nn.ModuleList(ConvLayer(c, 1, 3, activate=leaky_logits) for c in self.in_channels)

    @classmethod
    def for_discriminator(cls, discriminator: nn.Module, resolutions: Sequence[int] = PATCH_RESOLUTIONS,
                          num_maps: int = NUM_PATCH_MAPS, leaky_logits: bool = True) -> "PatchHeads":
        layout = patch_map_layout(discriminator, resolutions, num_maps)
        return cls([m.channels for m in layout], leaky_logits=leaky_logits)

    def __len__(self) -> int:
        return len(self.heads)

    def forward(self, feat: torch.Tensor, index: int) -> torch.Tensor:
        if not 0 <= index < len(self.heads):
            raise ValueError(f"patch head index {index} out of range [0, {len(self.heads)})")
        if feat.dim() != 4 or feat.shape[1] != self.in_channels[index]:
            raise ValueError(f"patch head {index} expects [B, {self.in_channels[index]}, H, W], "
                             f"got {tuple(feat.shape)}")
        return self.heads[index](feat)


def patch_logits(discriminator: nn.Module, heads: PatchHeads, x: torch.Tensor, index: int,
                 resolutions: Sequence[int] = PATCH_RESOLUTIONS) -> torch.Tensor:
    """Patch-level D output [B, 1, H, W] of images ``x`` through map and head ``index``."""
    feat = patch_features(discriminator, x, resolutions, len(heads), upto=index)[index]
    return heads(feat, index)


class DistanceProjectionHead(nn.Module):
    """MixDL ``sim_linear``: EqualLinear(dim -> dim) with bias, no activation (docs/methods/mixdl.md,
    "D side")."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.sim_linear = EqualLinear(dim, dim, bias=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() != 2 or h.shape[1] != self.sim_linear.weight.shape[1]:
            raise ValueError(f"projection head expects [N, {self.sim_linear.weight.shape[1]}], got {tuple(h.shape)}")
        return self.sim_linear(h)


def penultimate_features(discriminator: nn.Module, final_feat: torch.Tensor) -> torch.Tensor:
    """``h = final_linear[0](flatten(final_conv output))`` [N, C_4], D's penultimate layer.

    ``final_feat`` is the last entry of ``Discriminator(x, return_feats=True)[1]``.
    """
    return discriminator.final_linear[0](final_feat.reshape(final_feat.shape[0], -1))
