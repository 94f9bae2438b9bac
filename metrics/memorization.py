"""Nearest-training-image LPIPS: does the generator copy its few training images?
(docs/metrics.md, "Nearest-training LPIPS")

MixDL's ``nn_lpips.py``: for ``N`` generated images (1,000) take the LPIPS distance to the closest training
image and average::

    nn_lpips = mean_i min_j LPIPS(x_i, y_j)          (low = samples sit on training images)

Also reported: the std of the per-sample minimum, and the *mode count* of ``count_modes.py`` - how many
distinct training images are someone's nearest neighbour - with the released script's bug fixed (it took
``argmax``, the farthest training image). Ties go to the lowest training index.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from metrics import ddp
from metrics.streams import progress, render_uint8

DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["MemorizationResult", "nearest_training", "summarize_nearest", "nearest_training_lpips"]


@dataclass
class MemorizationResult:
    value: float
    std: float
    modes: int
    match_counts: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def nearest_training(distance: DistanceFn, images: torch.Tensor,
                     train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min distance [N] float64, argmin [N] long)`` of prepared ``images`` [N, ...] to ``train`` [K, ...]."""
    n, k = images.shape[0], train.shape[0]
    if k < 1:
        raise ValueError("nearest-training distance needs at least one training image")
    if images.shape[1:] != train.shape[1:]:
        raise ValueError(f"generated {tuple(images.shape)} and training {tuple(train.shape)} images differ in shape")
    if n == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    d = torch.as_tensor(distance(images.repeat_interleave(k, 0), train.repeat(n, *([1] * (train.dim() - 1)))),
                         dtype=torch.float64).reshape(n, k)
    arg = torch.from_numpy(np.argmin(d.cpu().numpy(), axis=1))  # first minimum on ties
    return d.gather(1, arg[:, None].to(d.device)).squeeze(1).cpu(), arg


def summarize_nearest(min_dist: np.ndarray | torch.Tensor, nearest: np.ndarray | torch.Tensor,
                      num_train: int) -> MemorizationResult:
    """Mean/std of the per-sample minimum distance and the mode count over ``num_train`` training images."""
    d = np.asarray(min_dist, dtype=np.float64).reshape(-1)
    idx = np.asarray(nearest, dtype=np.int64).reshape(-1)
    if d.size == 0 or d.shape != idx.shape:
        raise ValueError(f"need as many distances as nearest indices (>= 1), got {d.shape} and {idx.shape}")
    if not np.isfinite(d).all():
        raise ValueError("nearest-training distances contain NaN/inf")
    if idx.min() < 0 or idx.max() >= num_train:
        raise ValueError(f"nearest indices must lie in [0, {num_train}), got [{idx.min()}, {idx.max()}]")
    counts = np.bincount(idx, minlength=num_train)
    return MemorizationResult(float(d.mean()), float(d.std()), int((counts > 0).sum()), counts.tolist())


@torch.no_grad()
def nearest_training_lpips(dist, sampler, train_uint8: torch.Tensor, num_gen: int, seed: int = 0,
                           batch_size: int = 16, show_progress: bool = True) -> MemorizationResult:
    """Nearest-training LPIPS of images ``0 .. num_gen-1`` of ``sampler``'s stream ``seed``.

    ``dist`` is a :class:`metrics.lpips_family.LPIPSDistance`; ``train_uint8`` the training images
    (uint8 [K, 3, H, W], e.g. ``ReferenceSet("train")``). Indices are sharded over DDP ranks and gathered,
    so all ranks must call this together and get the single-process result.
    """
    if num_gen < 1:
        raise ValueError(f"num_gen must be >= 1, got {num_gen}")
    train = dist.prepare(train_uint8)
    mine = ddp.shard(num_gen)
    batches = [mine[s:s + batch_size] for s in range(0, len(mine), batch_size)]
    rows = []
    for idx in progress(batches, len(batches), "nearest-training LPIPS", show_progress):
        d, arg = nearest_training(dist, dist.prepare(render_uint8(sampler, idx, seed)), train)
        rows.append(torch.stack([d, arg.double()], 1))
    local = torch.cat(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)
    _, gathered = ddp.gather_by_index(torch.tensor(mine, dtype=torch.long), local)
    return summarize_nearest(gathered[:, 0].numpy(), gathered[:, 1].long().numpy(), train.shape[0])
