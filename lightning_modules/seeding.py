"""Per-iteration randomness of the training modules (exact resume; docs/adding_a_method.md).

Every random draw of a training iteration comes from ``MethodModule.rng``, a ``torch.Generator``
re-seeded from :func:`step_seed` of ``(seed, global_rank, iteration)``. A step is then a pure function of
the weights, the batch and the counters: resuming from a checkpoint reproduces an uninterrupted run
exactly, and DDP ranks draw different samples.
"""
from __future__ import annotations

import numpy as np


def step_seed(base_seed: int, rank: int, iteration: int) -> int:
    """Seed of the per-iteration generator: a hash of ``(base_seed, rank, iteration)`` < 2**63."""
    state = np.random.SeedSequence([int(base_seed) % 2**64, int(rank), int(iteration)])
    return int(state.generate_state(1, np.uint64)[0]) >> 1
