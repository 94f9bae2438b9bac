"""Shared pieces of the GAN-module tests: the tiny architecture, random image data, one intra-op thread."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

TINY = {"resolution": 16, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16}}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread avoids oversubscription on a 2-core machine.
    Importing this fixture into a test module turns it on for that module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RandomImages(pl.LightningDataModule):
    """``n`` fixed random images in [-1, 1] (from ``seed``), served in order in batches of ``batch_size``."""

    def __init__(self, n: int = 8, batch_size: int = 4, size: int = 16, seed: int = 1):
        super().__init__()
        self.images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.images, batch_size=self.batch_size, shuffle=False, drop_last=True)


class SaveState(pl.Callback):
    """Writes each rank's final state dict to ``folder/rank{r}.pt`` (DDP equality tests)."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                   self.folder / f"rank{trainer.global_rank}.pt")


def grouped(**flat) -> dict:
    """Constructor keywords of a GAN method from flat ones: architecture keys into the ``generator`` group,
    adversarial settings into ``gan``, the rest (method and base keys) unchanged."""
    from lightning_modules.config_groups import GANSettings, GeneratorSpec, group_fields

    out: dict = {}
    for key, value in flat.items():
        group = ("generator" if key in group_fields(GeneratorSpec) else
                 "gan" if key in group_fields(GANSettings) else None)
        if group is None:
            out[key] = value
        else:
            out.setdefault(group, {})[key] = value
    return out
