"""Reference image sets for metrics (docs/metrics.md, "Reference statistics cache").

A :class:`ReferenceSet` is what a datamodule hands to the metric layer: a name, a content hash that
identifies exactly which images (and which preprocessing) it holds, and a way to stream them as
uint8 tensors ``[B, 3, H, W]``. Reference statistics are cached by ``content_hash``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch


@dataclass
class ReferenceSet:
    """Real images for a metric: ``batches(batch_size)`` yields uint8 ``[B, 3, H, W]`` tensors."""

    name: str
    content_hash: str
    length: int
    batches_fn: Callable[[int], Iterator[torch.Tensor]]
    resolution: int | None = None
    xflip: bool = False
    info: dict = field(default_factory=dict)

    def batches(self, batch_size: int = 64) -> Iterator[torch.Tensor]:
        return self.batches_fn(batch_size)

    def __len__(self) -> int:
        return self.length
