"""Parity with the reference rosinality networks through ``models.checkpoints.load``
(tests/fixtures/README.md; docs/checkpoints.md, "Conversion rules")."""
import pytest
import torch

from models.checkpoints import load
from models.stylegan2 import Discriminator, Generator
from tests.helpers_checkpoints import FIXTURES, fixture_checkpoint, fixture_reference

TOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return fixture_reference()


@pytest.fixture(scope="module")
def ckpt():
    return load(FIXTURES / "rosinality_tiny.pt")


def close(a, b):
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= TOL, f"max abs diff {err}"


def test_strict_state_dict_load_with_reference_config(ref):
    raw = fixture_checkpoint()
    cfg = ref["config"]
    g = Generator(cfg["size"], style_dim=cfg["style_dim"], n_mlp=cfg["n_mlp"], channels=cfg["channels"])
    g.load_state_dict(raw["g_ema"], strict=True)
    d = Discriminator(cfg["size"], channels=cfg["channels"])
    d.load_state_dict(raw["d"], strict=True)


def test_config_inferred_from_weights(ckpt, ref):
    cfg = ref["config"]
    assert (ckpt.config.size, ckpt.config.style_dim, ckpt.config.n_mlp) == (cfg["size"], cfg["style_dim"], cfg["n_mlp"])
    assert ckpt.config.channels == {r: c for r, c in cfg["channels"].items() if r <= cfg["size"]}
    assert ckpt.config.channel_multiplier is None  # not a standard table
    assert not ckpt.g_ema.training and not ckpt.d.training


@torch.no_grad()
def test_generator_outputs_match_reference(ckpt, ref):
    g, z, z2 = ckpt.g_ema, ref["z"], ref["z2"]
    close(g.style(z), ref["w"])
    img, latent = g([z], return_latents=True, randomize_noise=False)
    close(img, ref["img"])
    close(latent, ref["latent"])
    close(ckpt.latent_avg, ref["latent_avg"])
    img_t, _ = g([z], truncation=0.5, truncation_latent=ckpt.latent_avg[None], randomize_noise=False)
    close(img_t, ref["img_trunc"])
    img_m, latent_m = g([z, z2], inject_index=3, return_latents=True, randomize_noise=False)
    close(img_m, ref["img_mix"])
    close(latent_m, ref["latent_mix"])
    img_w, _ = g([ref["wplus"]], input_is_latent=True, randomize_noise=False)
    close(img_w, ref["img_wplus"])
    img_g, _ = ckpt.g([z], randomize_noise=False)
    close(img_g, ref["img_g"])
    assert (img_g - img).abs().max() > 1e-2  # g and g_ema really are different networks


@torch.no_grad()
def test_discriminator_logits_match_reference(ckpt, ref):
    close(ckpt.d(ref["img"]), ref["d_logits_img"])
    close(ckpt.d(ref["d_input"]), ref["d_logits"])
