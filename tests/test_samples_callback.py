"""SampleGridCallback: files (under the Trainer's ``default_root_dir``), determinism, RNG and mode
preservation, strips, W&B."""
from __future__ import annotations

import random

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

from callbacks.samples import SampleGridCallback
from metrics.features import quantize
from lightning_modules.stylegan2 import StyleGAN2Module
from models.sampler import Sampler, latent_sampler
from tests.helpers_gan import TINY, grouped, RandomImages, one_thread  # noqa: F401 (autouse fixture)


class RandomnessHungry(pl.LightningModule):
    """Samplers that consume every global RNG and record the mode they ran in."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 4)
        self.kimg = 0.0
        self.seen_training = []

    def samplers(self):
        def render(indices, seed):
            self.seen_training.append(self.net.training)
            torch.rand(3), np.random.rand(3), random.random()
            gen = torch.Generator().manual_seed(seed)
            return torch.rand(len(indices), 3, 8, 8, generator=gen) * 2 - 1

        z = latent_sampler(lambda z: torch.tanh(z.view(-1, 3, 4, 4)), 48)
        return {"noisy": Sampler(render), "path": Sampler(render, kind="strip"), "z": z}


def test_fit_writes_grids_per_interval_and_latest(tmp_path):
    torch.manual_seed(0)
    module = StyleGAN2Module(**grouped(**TINY, seed=0))
    callback = SampleGridCallback(every_kimg=0.008, n=4, seed=7)
    pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
               callbacks=[callback]).fit(module, RandomImages(n=16))
    # start (kimg 0), after 8 and 16 images (2 and 4 batches of 4), and the end of training
    for name in ("ema", "ema_trunc"):
        files = sorted(p.name for p in (tmp_path / "samples" / name).iterdir())
        assert files == ["kimg000000.000.png", "kimg000000.008.png", "kimg000000.016.png"], files
    latest = np.asarray(Image.open(tmp_path / "samples" / "latest.png"))
    assert latest.shape == (2 * 18 + 2, 2 * 18 + 2, 3)  # 2x2 grid of 16 px images, padding 2
    assert np.array_equal(latest, np.asarray(Image.open(tmp_path / "samples" / "ema_latest.png")))
    assert np.array_equal(latest, callback.render(module)["ema"])  # written grid = current EMA samples
    assert not np.array_equal(latest, np.asarray(Image.open(tmp_path / "samples" / "ema" / "kimg000000.000.png")))
    assert (tmp_path / "samples" / "ema_trunc_latest.png").is_file()


def test_grid_is_deterministic_and_matches_sampler_pixels():
    torch.manual_seed(0)
    module = StyleGAN2Module(**grouped(**TINY))
    callback = SampleGridCallback(n=4, seed=3, nrow=4)
    first, second = callback.render(module), callback.render(module)
    assert first.keys() == {"ema", "ema_trunc"}
    assert all(np.array_equal(first[k], second[k]) for k in first)
    images = quantize(module.samplers()["ema"](4, seed=3))
    assert np.array_equal(first["ema"][2:18, 2:18], images[0].permute(1, 2, 0).numpy())
    assert np.array_equal(first["ema"][2:18, 20:36], images[1].permute(1, 2, 0).numpy())


def test_training_rng_and_modes_are_preserved():
    module = RandomnessHungry().train()
    callback = SampleGridCallback(n=4)
    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    callback.render(module)
    after = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    reference = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(after[0], reference[0]) and np.array_equal(after[1], reference[1])
    assert after[2] == reference[2]
    assert module.seen_training and not any(module.seen_training)  # rendered in eval mode
    assert module.training and module.net.training  # and train mode restored


def test_strip_samplers_are_laid_out_as_rows():
    grids = SampleGridCallback(n=4).render(RandomnessHungry())
    assert grids["noisy"].shape == (2 * 10 + 2, 2 * 10 + 2, 3)  # 2x2 grid of 8 px images
    assert grids["path"].shape == (10 + 2, 4 * 10 + 2, 3)  # one row of 4 frames
    assert SampleGridCallback(n=4, samplers=["z"]).render(RandomnessHungry()).keys() == {"z"}
    with pytest.raises(KeyError, match="unknown sampler"):
        SampleGridCallback(samplers=["nope"]).render(RandomnessHungry())


def test_file_names_state_and_validation():
    assert SampleGridCallback(every_kimg=4)._file_name(12.9) == "kimg000012.png"
    assert SampleGridCallback(every_kimg=0.5)._file_name(1.5) == "kimg000001.500.png"
    assert SampleGridCallback(every_kimg=1.5)._file_name(4.5) == "kimg000004.500.png"
    callback = SampleGridCallback(seed=1)
    callback._last_tick = 3
    resumed = SampleGridCallback(seed=2)
    resumed.load_state_dict(callback.state_dict())
    assert resumed.seed == 1 and resumed._last_tick == 3  # a resume reuses the original latents
    with pytest.raises(ValueError):
        SampleGridCallback(every_kimg=0)


def test_grids_are_logged_to_wandb_offline(tmp_path):
    from pytorch_lightning.loggers import WandbLogger

    torch.manual_seed(0)
    module = StyleGAN2Module(**grouped(**TINY, seed=0))
    logger = WandbLogger(project="styleshift-tests", offline=True, save_dir=str(tmp_path))
    pl.Trainer(accelerator="cpu", max_steps=2, logger=logger, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
               callbacks=[SampleGridCallback(every_kimg=1, n=4)]).fit(module, RandomImages(n=4))
    logger.experiment.finish()
    media = list(tmp_path.rglob("media/images/samples/*.png"))
    assert {p.name.rsplit("_", 2)[0] for p in media} == {"ema", "ema_trunc"}, media  # <key>_<step>_<hash>.png
