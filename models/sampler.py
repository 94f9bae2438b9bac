"""The sampler contract (DESIGN.md contract 3): named, deterministic image sources.

A :class:`Sampler` renders image ``i`` of a stream identified by ``seed`` the same way on every
machine and every rank: the latent of image ``i`` is drawn from ``numpy.random.RandomState(seed + i)``
(NVIDIA's ``generate.py`` convention), so a metric that splits indices across DDP ranks sees exactly
the images a single process would see.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

RenderFn = Callable[[Sequence[int], int], torch.Tensor]


def seeded_normal(indices: Sequence[int], seed: int, dim: int) -> torch.Tensor:
    """Latents ``z_i ~ N(0, I_dim)`` with ``z_i`` drawn from ``RandomState(seed + i)``; shape [len(indices), dim]."""
    rows = [np.random.RandomState((seed + int(i)) % 2**32).randn(dim) for i in indices]
    return torch.from_numpy(np.stack(rows)).float()


@dataclass
class Sampler:
    """A named image source: ``render(indices, seed) -> images [B, 3, H, W] in [-1, 1]``.

    ``render`` must be a pure function of ``(indices, seed)`` and the current weights; callers put the
    networks in eval mode and run it under ``torch.no_grad()``. ``kind`` tells dashboards how to show it
    (``"grid"`` for independent samples, ``"strip"`` for ordered paths such as interpolations).
    """

    render: RenderFn
    kind: str = "grid"

    def batches(self, n: int, seed: int, batch_size: int = 16,
                indices: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        """Yield the images of ``indices`` (default ``range(n)``) in batches of ``batch_size``."""
        idx = list(range(n)) if indices is None else list(indices)
        for start in range(0, len(idx), batch_size):
            yield self.render(idx[start:start + batch_size], seed)

    def __call__(self, n: int, seed: int, batch_size: int = 16) -> torch.Tensor:
        """All ``n`` images of stream ``seed`` concatenated on the batch axis."""
        return torch.cat(list(self.batches(n, seed, batch_size)), dim=0)


def latent_sampler(generate: Callable[[torch.Tensor], torch.Tensor], z_dim: int,
                   device: torch.device | str | Callable[[], torch.device] = "cpu",
                   kind: str = "grid") -> Sampler:
    """A sampler that feeds seeded ``z`` [B, z_dim] to ``generate(z) -> images``.

    ``device`` may be a callable so the sampler follows a module moved between devices after creation.
    """

    def render(indices: Sequence[int], seed: int) -> torch.Tensor:
        dev = device() if callable(device) else device
        z = seeded_normal(indices, seed, z_dim).to(dev)
        return generate(z)

    return Sampler(render=render, kind=kind)
