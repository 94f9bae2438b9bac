"""In-Domain GAN Inversion: the encoder module's losses, schedule, frozen networks, samplers, export, resume and
DDP; domain-regularized optimization; the editing applications; the inversion command."""
from __future__ import annotations

import csv
import json
import tempfile

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from datamodules.toy import ToyDataModule, write_toy_folder
from lightning_modules.idinvert import IDInvertModule
from models import checkpoints
from models.editing import interpolate, load_boundary, manipulate, paste_crop, style_mix
from models.encoders import load_encoder
from models.inversion import PRESETS, Inverter, InversionSettings, settings_from
from tests.helpers_gan import RandomImages, SaveState, assert_resume_matches, one_thread  # noqa: F401 (autouse fixture)

GEN = {"resolution": 16, "style_dim": 16, "n_mlp": 2, "channels": {4: 16, 8: 16, 16: 16}, "init_seed": 0}
WIDTHS = {"stem_channels": 8, "max_channels": 16}


def tiny(**kwargs) -> IDInvertModule:
    torch.manual_seed(0)
    options = dict(generator=GEN, encoder_widths=WIDTHS, perceptual=None, perceptual_size=None, seed=0)
    return IDInvertModule(**{**options, **kwargs})


def toy(batch_size: int = 4, holdout: int = 8) -> ToyDataModule:
    return ToyDataModule(resolution=16, num_images=16, batch_size=batch_size, holdout=holdout)


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tempfile.mkdtemp(prefix="styleshift-test-"))
    return pl.Trainer(**{**defaults, **kwargs})


# ---------------------------------------------------------------------------------------------- losses
def test_encoder_and_discriminator_losses_equal_their_formulas():
    module = tiny(lambda_vgg=0.5, lambda_adv=0.3, r1_gamma=4.0)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    loss, logs = module.encoder_loss(x)
    with torch.no_grad():
        x_rec = module.g([module.encoder(x)], input_is_latent=True, randomize_noise=False)[0]
        pixel = ((x_rec - x) ** 2).mean()
        feature = ((module.vgg(x_rec) - module.vgg(x)) ** 2).mean()
        adversarial = F.softplus(-module.discriminator(x_rec)).mean()
    torch.testing.assert_close(logs["loss/E_pixel"], pixel)
    torch.testing.assert_close(logs["loss/E_vgg"], feature)
    torch.testing.assert_close(loss, pixel + 0.5 * feature + 0.3 * adversarial)
    d_loss, d_logs = module.discriminator_loss(x)
    real = x.clone().requires_grad_(True)
    logits = module.discriminator(real)
    (grad,) = torch.autograd.grad(logits.sum(), real)
    r1 = grad.pow(2).sum(dim=(1, 2, 3)).mean()
    with torch.no_grad():
        fake = module.discriminator(module.g([module.encoder(x)], input_is_latent=True, randomize_noise=False)[0])
    expected = F.softplus(fake).mean() + F.softplus(-logits).mean() + 2.0 * r1
    torch.testing.assert_close(d_loss, expected.detach(), rtol=1e-5, atol=1e-6)


def test_a_zero_vgg_weight_skips_the_vgg_pass(monkeypatch):
    module = tiny(lambda_vgg=0.0, lambda_adv=0.3)
    monkeypatch.setattr(type(module), "features", lambda self, x: pytest.fail("VGG ran for lambda_vgg = 0"))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    loss, logs = module.encoder_loss(x)
    assert float(logs["loss/E_vgg"]) == 0.0
    torch.testing.assert_close(loss, logs["loss/E_pixel"] + 0.3 * logs["loss/E_adv"])


def test_lr_decays_exponentially_in_kimg():
    module = tiny(total_kimg=8.0)
    assert module.current_lr() == pytest.approx(1e-4)
    module.nimg = 4000
    assert module.current_lr() == pytest.approx(1e-4 * 0.8 ** 2)  # decays by 0.8 every total_kimg / 4
    assert tiny(lr_decay_kimg=1.0).current_lr() == pytest.approx(1e-4)
    explicit = tiny(lr_decay_kimg=1.0)
    explicit.nimg = 3000
    assert explicit.current_lr() == pytest.approx(1e-4 * 0.8 ** 3)
    assert tiny().current_lr() == 1e-4  # no total_kimg, no decay


def test_e_and_d_steps_see_independently_mirrored_batches(monkeypatch):
    module = tiny(total_kimg=0.008)
    calls = []
    original = module.flip

    def record(x):
        out = original(x)
        calls.append((x.detach().clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(module, "flip", record)
    trainer().fit(module, toy())
    assert len(calls) == 4  # two iterations, one flip for the E step and one for the D step
    flipped = []
    for x, out in calls:  # every image is the real one or its mirror
        same = [torch.equal(a, r) for a, r in zip(out, x)]
        assert all(s or torch.equal(a, r.flip(2)) for s, a, r in zip(same, out, x))
        flipped.append([not s for s in same])
    assert flipped[0] != flipped[1] or flipped[2] != flipped[3]  # independent draws for the two steps
    assert any(any(f) for f in flipped) and not all(all(f) for f in flipped)
    x = calls[0][0]
    assert torch.equal(tiny(mirror=False).flip(x), x)


# ---------------------------------------------------------------------------------------------- training
def test_training_updates_encoder_and_d_only_and_exports_the_encoder(tmp_path):
    module = tiny(total_kimg=0.012)
    g_before = {k: v.clone() for k, v in module.g.state_dict().items()}
    e_before = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    d_before = {k: v.clone() for k, v in module.discriminator.state_dict().items()}
    trainer(default_root_dir=tmp_path).fit(module, toy())
    assert module.iteration == 3
    assert all(torch.equal(v, module.g.state_dict()[k]) for k, v in g_before.items())
    assert any(not torch.equal(v, module.encoder.state_dict()[k]) for k, v in e_before.items())
    assert any(not torch.equal(v, module.discriminator.state_dict()[k]) for k, v in d_before.items())
    keys = {k.split(".")[0] for k in module.state_dict()}
    assert keys == {"encoder", "discriminator"}  # G and VGG are frozen networks: not saved
    assert not module.g.training and not module.vgg.training
    encoder, config = load_encoder(tmp_path / "encoder.pt")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    module.encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x), module.encoder(x), rtol=0, atol=0)
    assert config["variant"] == "B" and (config["n_latent"], config["style_dim"]) == (6, 16)


def test_samplers_reconstruct_the_held_out_images(tmp_path):
    module = tiny(total_kimg=0.004)
    dm = toy()
    t = trainer(default_root_dir=tmp_path)
    t.fit(module, dm)
    module.eval()
    samplers = module.samplers()
    assert samplers["reconstruction"].kind == "paired" and module.metric_samplers() == {
        "reconstruction": ["reconstruction"]}
    held = dm.holdout_images[[1, 5]].float() / 127.5 - 1
    with torch.no_grad():
        torch.testing.assert_close(samplers["real"].render([1, 5], 0), held)
        expected = module.g([module.encoder(held)], input_is_latent=True, randomize_noise=False)[0].clamp(-1, 1)
        torch.testing.assert_close(samplers["reconstruction"].render([1, 5], 3), expected)
    with pytest.raises(IndexError, match="data.holdout"):
        samplers["real"].render([8], 0)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    # an unshuffled loader: resuming mid-run restarts the data order at an epoch boundary
    # the lr schedule depends on total_kimg: the same in both runs
    full, _ = assert_resume_matches(lambda: tiny(total_kimg=0.032), lambda: RandomImages(n=16, batch_size=4, size=16),
                                    tmp_path)
    assert full.iteration == 8


def test_ddp_ranks_end_with_identical_parameters(tmp_path):
    """Parameters are identical on both ranks. BatchNorm running statistics are per rank (DDP broadcasts rank
    0's at each forward; ``trainer.sync_batchnorm`` on GPUs computes them over the global batch)."""
    module = tiny()
    params = {name for name, _ in module.named_parameters()}
    t = trainer(devices=2, strategy="ddp_fork_find_unused_parameters_true", max_epochs=1,
                callbacks=[SaveState(tmp_path)])
    t.fit(module, toy(batch_size=2))
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert params and params <= set(rank0)
    for key in params:
        assert torch.equal(rank0[key], rank1[key]), key


# ---------------------------------------------------------------------------------------------- inversion
@pytest.fixture
def networks():
    module = tiny()
    module.eval()
    return module.g, module.encoder.eval(), module.vgg


def test_in_domain_objective_equals_its_formula(networks):
    g, e, f = networks
    inverter = Inverter(g, e, f)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    w = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(4))
    settings = InversionSettings(lambda_vgg=0.1, lambda_dom=2.0)
    with torch.no_grad():
        terms = inverter.losses(w, x, settings, f(x))
        rec = g([w], input_is_latent=True, randomize_noise=False)[0]
        expected = ((rec - x) ** 2).mean(dim=(1, 2, 3)) + 0.1 * ((f(rec) - f(x)) ** 2).mean(dim=(1, 2, 3)) \
            + 2.0 * ((w - e(rec)) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(terms["total"], expected)


def test_inversion_is_independent_of_the_batch_and_reduces_its_loss(networks):
    g, e, f = networks
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    settings = InversionSettings(steps=5, lambda_vgg=0.01)
    together = Inverter(g, e, f).invert(x, settings)
    alone = Inverter(g, e, f).invert(x[1:2], settings)
    torch.testing.assert_close(together.codes[1:2], alone.codes, rtol=1e-5, atol=1e-6)
    start = Inverter(g, e, f).invert(x, InversionSettings(steps=0, lambda_vgg=0.01))
    assert (together.losses["total"] < start.losses["total"]).all()
    with torch.no_grad():
        torch.testing.assert_close(start.codes, e(x))  # encoder init
    # the TF behaviour: one Adam carried across batches gives another result for the second batch
    carry = Inverter(g, e, f)
    carry.invert(x[:1], InversionSettings(steps=5, lambda_vgg=0.01, carry_optimizer=True))
    second = carry.invert(x[1:2], InversionSettings(steps=5, lambda_vgg=0.01, carry_optimizer=True))
    assert not torch.allclose(second.codes, alone.codes)


def test_presets_and_mean_initialisation(networks):
    g, e, f = networks
    assert PRESETS["in_domain"].lambda_dom == 2.0 and PRESETS["in_domain"].steps == 100
    assert PRESETS["mse_from_mean"].init == "mean" and PRESETS["mse_from_mean"].lambda_dom == 0
    mean_w = torch.randn(16)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    result = Inverter(g, None, None, mean_w).invert(x, settings_from("mse_from_mean", steps=0))
    assert torch.equal(result.codes, mean_w.expand(2, 6, 16))
    with pytest.raises(ValueError, match="needs an encoder"):
        Inverter(g, None, f).invert(x, settings_from("in_domain", steps=1))
    with pytest.raises(ValueError, match="unknown inversion preset"):
        settings_from("fast")


def test_masked_inversion_ignores_pixels_outside_the_mask(networks):
    g, e, f = networks
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    y = x.clone()
    y[..., :8] = 1.0  # differs only outside the mask
    target, mask = paste_crop(x, y, center=(12, 8), size=8)
    assert mask[..., 4:12, 8:16].all() and mask.sum() == 64  # the 8 x 8 crop around x = 12, y = 8
    assert torch.equal(target[..., 4:12, 8:16], x[..., 4:12, 8:16]) and torch.equal(target[..., :8], y[..., :8])
    settings = InversionSettings(steps=0, lambda_vgg=0.0, lambda_dom=0.0)
    inverter = Inverter(g, e, f)
    w = torch.zeros(1, 6, 16)
    a = inverter.losses(w, x, settings, None, mask)["pixel"]
    b = inverter.losses(w, target, settings, None, mask)["pixel"]
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------- editing
def test_interpolation_manipulation_and_style_mixing():
    w_a, w_b = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    path = interpolate(w_a, w_b, steps=3)
    assert path.shape == (5, 2, 6, 4) and torch.equal(path[0], w_a) and torch.allclose(path[-1], w_b)
    torch.testing.assert_close(path[2], (w_a + w_b) / 2)
    normal = torch.randn(1, 6, 4)
    moved = manipulate(w_a, normal, distances=(-1, 2), layers=[1, 2])
    torch.testing.assert_close(moved[1][:, 1:3], w_a[:, 1:3] + 2 * normal[:, 1:3])
    assert torch.equal(moved[1][:, [0, 3, 4, 5]], w_a[:, [0, 3, 4, 5]])
    direction = torch.randn(4)
    torch.testing.assert_close(manipulate(w_a, direction, (1.0,))[0], w_a + direction)
    mixed = style_mix(w_a, w_b, start=4)
    assert mixed.shape == (2, 2, 6, 4)
    assert torch.equal(mixed[1, 0, :4], w_a[0, :4]) and torch.equal(mixed[1, 0, 4:], w_b[1, 4:])
    with pytest.raises(ValueError, match="one normal per layer"):
        manipulate(w_a, torch.randn(5), (1.0,))


def test_boundary_files(tmp_path):
    import numpy as np

    np.save(tmp_path / "age.npy", np.ones((1, 6, 4), dtype=np.float32))
    boundary, layers = load_boundary(tmp_path / "age.npy")
    assert boundary.shape == (1, 6, 4) and layers is None
    torch.save({"boundary": torch.zeros(4), "layers": [0, 1]}, tmp_path / "pose.pt")
    assert load_boundary(tmp_path / "pose.pt")[1] == [0, 1]
    with pytest.raises(FileNotFoundError):
        load_boundary(tmp_path / "none.npy")


# ---------------------------------------------------------------------------------------------- the command
def test_invert_command_writes_codes_reconstructions_and_a_table(tmp_path):
    from launch.invert import main

    module = tiny(total_kimg=0.004)
    trainer(default_root_dir=tmp_path / "run").fit(module, toy())
    checkpoints.save(tmp_path / "g.pt", g_ema=module.g)
    write_toy_folder(tmp_path / "faces", 3, resolution=16)
    out = tmp_path / "out"
    code = main(["--generator", str(tmp_path / "g.pt"), "--encoder", str(tmp_path / "run" / "encoder.pt"),
                 "--images", str(tmp_path / "faces"), "--outdir", str(out), "--steps", "2", "--perceptual",
                 "random", "--lpips", "none", "--batch-size", "2", "--render-with", str(tmp_path / "g.pt"),
                 "--device", "cpu"])
    assert code == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 3 and {"mse", "psnr", "ssim", "seconds"} <= set(rows[0])
    assert len(list((out / "codes").glob("*.pt"))) == 3 and len(list((out / "reconstructions").glob("*.png"))) == 3
    assert len(list((out / "rendered" / "g").glob("*.png"))) == 3 and (out / "grid.png").is_file()
    assert torch.load(next((out / "codes").glob("*.pt"))).shape == (6, 16)
    assert json.loads((out / "summary.json").read_text())["images"] == 3
    # a code of the table reproduces its reconstruction through the generator
    name = sorted((out / "codes").glob("*.pt"))[0]
    with torch.no_grad():
        img = module.g([torch.load(name)[None]], input_is_latent=True, randomize_noise=False)[0]
    assert img.shape == (1, 3, 16, 16)
    assert main(["--generator", str(tmp_path / "g.pt"), "--images", str(tmp_path / "faces"), "--outdir",
                 str(out), "--perceptual", "random"]) == 2  # in_domain needs an encoder: a clear error
