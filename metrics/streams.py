"""Streaming images from samplers and reference sets through a feature extractor (docs/metrics.md).

Generated side: rank ``r`` renders exactly the indices ``ddp.shard(num_gen)`` of the sampler's seeded
stream (no padding, no duplicates), quantizes them like NVIDIA, embeds them and the float64 sums are
reduced over ranks (:class:`metrics.stats.FeatureStats`). Reference side: uint8 batches of a
:class:`metrics.reference.ReferenceSet` go through the very same extractor (no quantization needed).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from metrics import ddp
from metrics.features import FeatureExtractor, quantize
from metrics.reference import ReferenceSet
from metrics.stats import FeatureStats


def progress(iterable: Iterable, total: int | None, desc: str, enabled: bool = True) -> Iterable:
    """tqdm on rank zero only."""
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not (enabled and ddp.is_rank_zero()),
                dynamic_ncols=True)


def shard_batches(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), batch_size):
        yield list(indices[start:start + batch_size])


def render_uint8(sampler, indices: Sequence[int], seed: int) -> torch.Tensor:
    """Render ``indices`` of stream ``seed`` and quantize to uint8 ``[B, 3, H, W]``."""
    images = sampler.render(list(indices), seed)
    if images.ndim != 4 or images.shape[0] != len(indices) or images.shape[1] != 3:
        raise ValueError(f"sampler returned {tuple(images.shape)} for {len(indices)} indices; expected [B, 3, H, W]")
    return quantize(images)


@torch.no_grad()
def generated_stats(sampler, extractor: FeatureExtractor, num_gen: int, seed: int, batch_size: int = 16,
                    capture_all: bool = False, desc: str = "features", show_progress: bool = True) -> FeatureStats:
    """Features of images ``0 .. num_gen-1`` of ``sampler``'s stream ``seed``, reduced over all ranks."""
    indices = ddp.shard(num_gen)
    stats = FeatureStats(capture_all=capture_all)
    batches = list(shard_batches(indices, batch_size))
    for idx in progress(batches, len(batches), desc, show_progress):
        stats.append(extractor(render_uint8(sampler, idx, seed)), idx)
    return stats.reduce()


@torch.no_grad()
def reference_stats_direct(reference: ReferenceSet, extractor: FeatureExtractor, batch_size: int = 64,
                           capture_all: bool = False, show_progress: bool = True) -> FeatureStats:
    """Features of every image of ``reference`` in this process (no caching, no sharding)."""
    stats = FeatureStats(capture_all=capture_all)
    total = -(-len(reference) // batch_size) if len(reference) else None
    seen = 0
    for batch in progress(reference.batches(batch_size), total, f"reference {reference.name}", show_progress):
        if batch.dtype != torch.uint8:
            raise TypeError(f"reference set {reference.name!r} yielded {batch.dtype}; ReferenceSet batches are uint8")
        stats.append(extractor(batch))
        seen += batch.shape[0]
    if seen != len(reference):
        raise ValueError(f"reference set {reference.name!r} declares {len(reference)} images but yielded {seen}")
    stats.reduced = True
    return stats
