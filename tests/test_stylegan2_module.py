"""StyleGAN2Module: a step trains, samplers, fine-tuning from a checkpoint, export (docs/methods/stylegan2.md)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lightning_modules.stylegan2 import StyleGAN2Module
from tests.helpers_gan import TINY, grouped, RandomImages, one_thread  # noqa: F401 (autouse fixture)

FIXTURE = Path(__file__).parent / "fixtures" / "rosinality_tiny.pt"


def fast_dev_run(module, datamodule, **kwargs):
    kwargs.setdefault("default_root_dir", tempfile.mkdtemp(prefix="styleshift-test-"))  # the export goes there
    trainer = pl.Trainer(accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, **kwargs)
    trainer.fit(module, datamodule)
    return trainer


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_fast_dev_run_trains_one_iteration():
    torch.manual_seed(0)
    module = StyleGAN2Module(**grouped(**TINY, seed=0))
    before = _snapshot(module)
    trainer = fast_dev_run(module, RandomImages())
    assert module.iteration == 1 and module.nimg == 4
    after = module.state_dict()
    for prefix in ("generator.", "discriminator.", "g_ema."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix
    assert {"loss/D_main", "loss/D_reg", "loss/G_main", "loss/G_reg", "kimg"} <= set(trainer.callback_metrics)


def test_fast_dev_run_on_the_toy_datamodule():
    toy = pytest.importorskip("datamodules.toy")
    torch.manual_seed(0)
    module = StyleGAN2Module(**grouped(**TINY, seed=0))
    fast_dev_run(module, toy.ToyDataModule(resolution=16, num_images=8, batch_size=4))
    assert module.nimg == 4 and torch.isfinite(module.pl_mean)


def test_diffaugment_is_what_the_discriminator_sees():
    """``diffaugment`` (shared by every GAN module) augments D inputs with the iteration's generator."""
    from models.diffaugment import DiffAugment
    torch.manual_seed(0)
    module = StyleGAN2Module(**grouped(**TINY, seed=0, diffaugment="translation,cutout")).eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    module.reseed()
    augmented = module.augment(x)
    module.reseed()
    assert torch.equal(module.augment(x), augmented) and not torch.equal(augmented, x)
    module.reseed()
    logits = module.discriminate(x)
    module.reseed()
    expected = module.discriminator(DiffAugment("translation,cutout")(x, generator=module.rng))
    assert torch.equal(logits, expected)
    plain = StyleGAN2Module(**grouped(**TINY, seed=0))
    assert torch.equal(plain.augment(x), x)
    fast_dev_run(module.train(), RandomImages())
    assert module.iteration == 1 and all(torch.isfinite(p).all() for p in module.parameters())


def test_wrong_resolution_and_missing_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="model.generator.resolution"):
        StyleGAN2Module()
    torch.manual_seed(0)
    module = StyleGAN2Module(**grouped(**TINY))
    with pytest.raises(ValueError, match="set data.resolution to 16"):
        fast_dev_run(module, RandomImages(size=32))


def test_samplers_are_deterministic_and_truncation_shrinks_variation():
    torch.manual_seed(0)
    module = StyleGAN2Module(**grouped(**TINY))
    samplers = module.samplers()
    assert list(samplers) == ["ema", "ema_trunc"]
    with torch.no_grad():
        a = samplers["ema"](6, seed=3, batch_size=4)
        b = samplers["ema"](6, seed=3, batch_size=6)
        c = samplers["ema"](6, seed=4)
        t = samplers["ema_trunc"](6, seed=3)
        # image i of a stream does not depend on the batch it is rendered in
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert a.shape == (6, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
        assert not torch.allclose(a, c)
        # psi = 0.7 pulls W toward the mean: W of the truncated stream = w_avg + 0.7 (w - w_avg)
        from models.sampler import seeded_normal

        z = seeded_normal(range(6), 3, 32)
        w = module.g_ema.style(z)
        w_avg = module.mean_w(module.g_ema)
        expected, _ = module.g_ema([w_avg + 0.7 * (w - w_avg)], input_is_latent=True, randomize_noise=False)
        torch.testing.assert_close(t, expected.clamp(-1, 1), rtol=0, atol=1e-5)


@pytest.fixture
def fixture_state():
    if not FIXTURE.exists():
        pytest.skip("rosinality fixture missing")
    pytest.importorskip("models.checkpoints")
    return torch.load(FIXTURE, map_location="cpu", weights_only=False)


def test_fine_tune_from_rosinality_checkpoint(fixture_state):
    module = StyleGAN2Module(**grouped(checkpoint=str(FIXTURE), resolution=32, style_dim=64, seed=0))
    for name, key in (("g_ema", "g_ema"), ("generator", "g"), ("discriminator", "d")):
        ours = getattr(module, name).state_dict()
        for k, v in fixture_state[key].items():
            assert torch.equal(ours[k], v), (name, k)
    assert module.generator.channels == {4: 32, 8: 32, 16: 24, 32: 16}
    assert not module.g_ema.training and module.generator.training
    fast_dev_run(module, RandomImages(size=32))
    assert module.nimg == 4


def test_fine_tune_rejects_disagreeing_architecture(fixture_state):
    with pytest.raises(ValueError, match="model.generator.style_dim=512 disagrees"):
        StyleGAN2Module(**grouped(checkpoint=str(FIXTURE), style_dim=512))
    with pytest.raises(FileNotFoundError):
        StyleGAN2Module(generator="/nonexistent/generator.pt")
    with pytest.raises(FileNotFoundError, match="put it at"):  # a registered asset not in the cache
        StyleGAN2Module(generator="stylegan2-ffhq-256")


def test_export_round_trip_and_export_at_fit_end(tmp_path):
    checkpoints = pytest.importorskip("models.checkpoints")
    torch.manual_seed(0)
    module = StyleGAN2Module(**grouped(**TINY, seed=0))
    fast_dev_run(module, RandomImages(), default_root_dir=tmp_path)
    exported = tmp_path / "generator.pt"
    assert exported.is_file()
    loaded = checkpoints.load(exported)
    z = torch.randn(3, 32)
    with torch.no_grad():
        ours = module.ema_images(z)
        theirs, _ = loaded.g_ema([z], randomize_noise=False)
    torch.testing.assert_close(theirs.clamp(-1, 1), ours, rtol=0, atol=1e-6)
    torch.testing.assert_close(loaded.latent_avg.reshape(-1), module.mean_w(module.g_ema).reshape(-1))
    # the export fine-tunes like any other checkpoint
    again = StyleGAN2Module(generator=str(exported))
    assert torch.equal(again.discriminator.final_linear[1].weight, module.discriminator.final_linear[1].weight)
