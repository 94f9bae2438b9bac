"""Held-out test images (``holdout``): never trained on, served as the ``holdout`` reference set."""
from __future__ import annotations

import pytest
import torch

from datamodules.images import ImageDataModule
from datamodules.toy import ToyDataModule, render_toy, write_toy_folder


def test_toy_holdout_follows_the_training_images_and_is_never_trained_on():
    dm = ToyDataModule(resolution=16, num_images=12, batch_size=4, holdout=5)
    dm.setup()
    expected, factors = render_toy(range(17), 16)
    assert torch.equal(dm.images, expected[:12]) and torch.equal(dm.holdout_images, expected[12:])
    assert all(torch.equal(dm.holdout_factors[k], v[12:]) for k, v in factors.items())
    held = torch.cat(list(dm.reference_set("holdout").batches(2)))
    assert torch.equal(held, expected[12:]) and len(dm.reference_set("full")) == 12
    seen = torch.cat(list(dm.train_dataloader()))
    assert seen.shape[0] == 12
    with pytest.raises(ValueError, match="data.holdout"):
        ToyDataModule(resolution=16, num_images=4).reference_set("holdout")


def test_image_folder_holdout_is_the_last_sorted_files(tmp_path):
    write_toy_folder(tmp_path / "imgs", 10, resolution=16)
    dm = ImageDataModule(str(tmp_path / "imgs"), resolution=16, batch_size=2, xflip=False, holdout=3)
    dm.setup()
    names = sorted(p.relative_to(tmp_path / "imgs").as_posix() for p in (tmp_path / "imgs").rglob("*.png"))
    assert dm.manifest_names == names[:7]
    held = dm.reference_set("holdout")
    assert len(held) == 3 and len(dm.reference_set("full")) == 7
    full = ImageDataModule(str(tmp_path / "imgs"), resolution=16, batch_size=2, xflip=False)
    full.setup()
    everything = torch.cat(list(full.reference_set("full").batches(4)))
    assert torch.equal(torch.cat(list(held.batches(2))), everything[7:])
    with pytest.raises(ValueError, match="leaves no training image"):
        ImageDataModule(str(tmp_path / "imgs"), resolution=16, holdout=10).setup()
