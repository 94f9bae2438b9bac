"""Per-iteration randomness shared by the training modules (frameworks.md §2.5: exact resume).

Every random draw of a training iteration comes from :attr:`IterationRandomness.rng`, a
``torch.Generator`` re-seeded from ``(seed, global_rank, iteration)``. A step is then a pure function of
the weights, the batch and the counters: resuming from a checkpoint reproduces an uninterrupted run
exactly, and DDP ranks draw different samples.
"""
from __future__ import annotations

import numpy as np
import torch


def step_seed(base_seed: int, rank: int, iteration: int) -> int:
    """Seed of the per-iteration generator: a hash of ``(base_seed, rank, iteration)`` < 2**63."""
    state = np.random.SeedSequence([int(base_seed) % 2**64, int(rank), int(iteration)])
    return int(state.generate_state(1, np.uint64)[0]) >> 1


class IterationRandomness:
    """Mixin for LightningModules with ``iteration``, ``_base_seed`` (None = ``torch.initial_seed()``
    when first needed) and ``_rng`` attributes."""

    iteration: int
    _base_seed: int | None
    _rng: torch.Generator | None

    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def _global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def rng(self) -> torch.Generator:
        """The generator of the current iteration."""
        if self._rng is None or self._rng.device != self.device:
            self.reseed()
        return self._rng

    def reseed(self) -> None:
        """Seed :attr:`rng` from ``(seed, global_rank, iteration)``."""
        if self._base_seed is None:
            self._base_seed = int(torch.initial_seed())
        if self._rng is None or self._rng.device != self.device:
            self._rng = torch.Generator(device=self.device)
        self._rng.manual_seed(step_seed(self._base_seed, self._global_rank(), self.iteration))
