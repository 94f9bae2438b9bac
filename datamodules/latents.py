"""An endless, seeded stream of latent batches ``z ~ N(0, I)`` for data-free methods (e.g. StyleGAN-NADA).

Batch ``k`` of rank ``r`` is drawn from a ``torch.Generator`` seeded with a 64-bit key derived from
``(seed, rank, k)`` by ``numpy.random.SeedSequence``. So:

* ranks get different streams, and runs with different seeds never share one (plain ``seed + rank``
  would give rank 1 of seed 0 the stream of rank 0 of seed 1);
* the stream is random-access: resuming at position ``k`` continues it at no cost. The loader is a
  torchdata ``StatefulDataLoader`` over a stateful stream, so Lightning saves the position of the batch
  last served with the fit loop of every checkpoint, and a resumed run draws exactly the batches the
  uninterrupted run would have drawn (the datamodule's own ``state_dict`` is kept for older checkpoints).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.base import GANDataModule


def latent_batch(seed: int, rank: int, index: int, batch_size: int, z_dim: int) -> torch.Tensor:
    """Batch ``index`` of the stream ``(seed, rank)``: float32 ``[batch_size, z_dim]``."""
    key = int(np.random.SeedSequence([int(seed), int(rank), int(index)]).generate_state(1, np.uint64)[0])
    generator = torch.Generator().manual_seed(key)
    return torch.randn(batch_size, z_dim, generator=generator)


class LatentStream(IterableDataset):
    """Yields ``steps_per_epoch`` batches per pass, continuing the stream from :attr:`position`."""

    def __init__(self, z_dim: int, batch_size: int, steps_per_epoch: int, seed: int, rank: int,
                 position: int = 0) -> None:
        super().__init__()
        self.z_dim, self.batch_size, self.steps_per_epoch = z_dim, batch_size, steps_per_epoch
        self.seed, self.rank, self.position = seed, rank, position

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _ in range(self.steps_per_epoch):
            batch = latent_batch(self.seed, self.rank, self.position, self.batch_size, self.z_dim)
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        """The stream position (read by ``StatefulDataLoader``, hence by Lightning's checkpoints)."""
        return {"position": self.position}

    def load_state_dict(self, state_dict: dict) -> None:
        self.position = int(state_dict["position"])


class LatentDataModule(GANDataModule):
    """Seeded latent batches ``[batch_size, z_dim]`` (DDP: one stream per rank) and dummy eval loaders.

    Args:
        z_dim: latent size.
        batch_size: per-process batch size.
        steps_per_epoch: batches per epoch (the stream itself never ends).
        seed: stream seed.
    """

    def __init__(self, z_dim: int = 512, batch_size: int = 4, steps_per_epoch: int = 1000, seed: int = 0) -> None:
        super().__init__()
        for key, value in (("z_dim", z_dim), ("batch_size", batch_size), ("steps_per_epoch", steps_per_epoch)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        self.save_hyperparameters(logger=False)  # the run config is logged by train.py; avoids key clashes
        self.z_dim, self.batch_size, self.steps_per_epoch, self.seed = z_dim, batch_size, steps_per_epoch, seed
        self._stream: LatentStream | None = None
        self._resume_position = 0

    def setup(self, stage: str | None = None) -> None:
        self._is_setup = True

    def train_dataloader(self) -> DataLoader:
        rank, _ = self.rank_and_world()
        position = self._stream.position if self._stream is not None else self._resume_position
        self._stream = LatentStream(self.z_dim, self.batch_size, self.steps_per_epoch, self.seed, rank, position)
        return StatefulDataLoader(self._stream, batch_size=None)

    @property
    def position(self) -> int:
        """Number of batches drawn so far on this rank."""
        return self._stream.position if self._stream is not None else self._resume_position

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_position = int(state_dict["position"])
        if self._stream is not None:
            self._stream.position = self._resume_position
