"""Shared pieces of the GAN-module tests: the tiny architecture, random image data, one intra-op thread, a quiet
CPU Trainer and the resume / DDP equality checks every method passes."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

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


def cpu_trainer(**kwargs) -> pl.Trainer:
    """A quiet single-CPU Trainer without logger or checkpoints, in a fresh temporary directory (exports go there)."""
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tempfile.mkdtemp(prefix="styleshift-test-"))
    return pl.Trainer(**{**defaults, **kwargs})


def assert_resume_matches(build: Callable[[], pl.LightningModule], data: Callable[[], pl.LightningDataModule],
                          tmp_path: Path, epochs: int = 2) -> tuple[pl.LightningModule, pl.LightningModule]:
    """``epochs`` uninterrupted epochs and ``epochs // 2`` + a checkpoint + a resume (from another global RNG
    state) end with bit-identical state dicts and iteration counts; returns (uninterrupted, resumed)."""
    full = build()
    cpu_trainer(max_epochs=epochs).fit(full, data())
    first = build()
    half = cpu_trainer(max_epochs=epochs // 2)
    half.fit(first, data())
    half.save_checkpoint(tmp_path / "half.ckpt")
    torch.manual_seed(5)  # the global RNG must not matter
    resumed = build()
    cpu_trainer(max_epochs=epochs).fit(resumed, data(), ckpt_path=tmp_path / "half.ckpt")
    assert resumed.iteration == full.iteration > first.iteration
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    return full, resumed


def assert_ddp_ranks_identical(module: pl.LightningModule, data: pl.LightningDataModule, tmp_path: Path) -> None:
    """A 2-process CPU DDP fit (fork) ends with identical state dicts on both ranks."""
    trainer = cpu_trainer(devices=2, strategy="ddp_fork_find_unused_parameters_true", max_epochs=1,
                          callbacks=[SaveState(tmp_path)])
    trainer.fit(module, data)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key


#: the tiny parent architecture of the method tests that start from a checkpoint (16 px, 6 W+ rows)
PARENT_ARCH = dict(size=16, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 16})


def save_parent(path: Path, arch: dict = PARENT_ARCH, seed: int = 0) -> Path:
    """A random G (noise strengths 0.1, so noise matters) and D of ``arch`` saved as G, G_ema and D."""
    from models import checkpoints
    from models.stylegan2 import Discriminator, Generator

    torch.manual_seed(seed)
    g, d = Generator(**arch), Discriminator(arch["size"], channels=arch["channels"])
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.1)
    return checkpoints.save(path, g_ema=g, g=g, d=d)
