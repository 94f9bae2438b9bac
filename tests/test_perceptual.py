"""Perceptual network F and reconstruction losses of In-Domain GAN Inversion (models/perceptual.py,
losses/perceptual.py; Zhu et al., ECCV 2020)."""
from __future__ import annotations

import urllib.request

import pytest
import torch
from torch import nn
from torchvision.models import vgg16

from losses.perceptual import DEFAULT_LAMBDA_VGG, perceptual_loss, reconstruction_loss
from models import assets
from models.assets import AssetMissingError
from models.frozen import HoldsFrozen
from models.perceptual import (DEFAULT_WEIGHTS, PerceptualWeightsError, VGG16Perceptual, caffe_preprocess,
                               map_official_vgg16_keys)

# (index in the official Sequential "layer{i}", in channels, out channels) of every VGG16 conv
OFFICIAL_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
                  (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512),
                  (26, 512, 512), (28, 512, 512)]


@pytest.fixture(scope="module")
def standin():
    return VGG16Perceptual(weights=None, image_size=32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLESHIFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def official_state_dict(upto: int = 28, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic state dict in the authors' layout (``layer{i}.weight`` [out, in, 3, 3], ``layer{i}.bias``)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, cin, cout in OFFICIAL_CONVS:
        if index <= upto:
            state[f"layer{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * 0.01
            state[f"layer{index}.bias"] = torch.randn(cout, generator=gen)
    return state


def reference_preprocess(images: torch.Tensor) -> torch.Tensor:
    """Caffe preprocessing written out channel by channel: [0, 255], then B, G, R minus their means."""
    x255 = (images + 1.0) * 127.5
    r, g, b = x255[:, 0], x255[:, 1], x255[:, 2]
    return torch.stack([b - 103.939, g - 116.779, r - 123.68], dim=1)


def test_preprocessing_matches_direct_implementation(standin):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ref = reference_preprocess(x)
    torch.testing.assert_close(caffe_preprocess(x), ref)
    torch.testing.assert_close(standin.preprocess(x), ref)  # 32 == image_size: no resize
    # the extremes: -1 -> minus the mean, +1 -> 255 minus the mean (BGR order)
    ones = torch.ones(1, 3, 1, 1)
    torch.testing.assert_close(caffe_preprocess(-ones).flatten(), -torch.tensor([103.939, 116.779, 123.68]))
    colour = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)  # pure red
    torch.testing.assert_close(caffe_preprocess(colour).flatten(), torch.tensor([-103.939, -116.779, 255 - 123.68]))


def test_resize_is_nearest_and_skipped_at_size(standin, monkeypatch):
    big = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(standin.preprocess(big), reference_preprocess(big[..., ::2, ::2]))
    small = torch.rand(1, 3, 16, 16) * 2 - 1
    up = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(standin.preprocess(small), reference_preprocess(up))

    def boom(*args, **kwargs):
        raise AssertionError("interpolate called at the target size")

    monkeypatch.setattr(torch.nn.functional, "interpolate", boom)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    standin.preprocess(x)
    keep = VGG16Perceptual(weights=None, image_size=None)
    assert keep(torch.zeros(1, 3, 24, 24)).shape == (1, 512, 3, 3)


def test_features_are_torchvision_conv4_3(standin):
    reference = vgg16(weights=None).features[:23]
    assert [type(m) for m in standin.features] == [type(m) for m in reference]
    assert isinstance(reference[22], nn.ReLU) and isinstance(reference[21], nn.Conv2d)
    reference.load_state_dict(standin.features.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        feats = standin(x)
        assert feats.shape == (2, 512, 4, 4)
        torch.testing.assert_close(feats, reference(reference_preprocess(x)))
        assert (feats >= 0).all()  # after the ReLU
        assert standin(torch.rand(1, 3, 64, 64)).shape == (1, 512, 4, 4)  # resized to 32 first


def test_default_image_size_is_256():
    net = VGG16Perceptual(weights=None)
    assert net.image_size == 256
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 32, 32)


def test_frozen_and_eval(standin):
    assert all(not p.requires_grad for p in standin.parameters())
    assert not standin.training
    standin.train()
    assert not standin.training and not any(m.training for m in standin.modules())
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    standin(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # frozen weights, gradients still reach the input

    class Owner(HoldsFrozen):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.hold("vgg", standin)

    owner = Owner().train()
    assert not owner.vgg.training
    assert all(not k.startswith("vgg") for k in owner.state_dict())


def test_random_standin_is_seeded_and_named():
    state = torch.random.get_rng_state()
    a = VGG16Perceptual(weights=None, image_size=32, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    b = VGG16Perceptual(weights=None, image_size=32, seed=0)
    c = VGG16Perceptual(weights=None, image_size=32, seed=1)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert not a.pretrained and "random-standin" in a.name and "seed=0" in a.name
    assert a.name != DEFAULT_WEIGHTS


def test_perceptual_loss_formula():
    gen = torch.Generator().manual_seed(0)
    fx, fy = torch.randn(2, 5, 3, 3, generator=gen), torch.randn(2, 5, 3, 3, generator=gen)
    expected = sum(float(a - b) ** 2 for a, b in zip(fx.flatten(), fy.flatten())) / fx.numel()
    assert perceptual_loss(fx, fy).item() == pytest.approx(expected, rel=1e-5)
    assert perceptual_loss(fx, fx).item() == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        perceptual_loss(fx, fy[:1])


def test_reconstruction_loss_formula(standin):
    assert DEFAULT_LAMBDA_VGG == 5e-5
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    total, terms = reconstruction_loss(x, y, standin, return_terms=True)
    pixel = torch.nn.functional.mse_loss(x, y)
    feat = torch.nn.functional.mse_loss(standin(x), standin(y))
    torch.testing.assert_close(terms["pixel"], pixel)
    torch.testing.assert_close(terms["perceptual"], feat)
    torch.testing.assert_close(total, pixel + 5e-5 * feat)
    torch.testing.assert_close(reconstruction_loss(x, y, standin, lambda_vgg=1.0), pixel + feat)
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_asset_entry():
    asset = assets.get(DEFAULT_WEIGHTS)
    assert asset.filename == "vgg16.pth" and asset.kind == "perceptual"
    assert asset.url is None and "drive.google.com" in asset.instructions and "idinvert_pytorch" in asset.instructions
    assert asset.license and asset.description
    others = {a.path for a in assets.ASSETS.values() if a.name != DEFAULT_WEIGHTS}
    assert asset.path not in others


def test_missing_asset_raises_clear_error_without_download(cache, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(AssetMissingError) as info:
        VGG16Perceptual()
    message = str(info.value)
    assert DEFAULT_WEIGHTS in message and "vgg16.pth" in message
    assert str(cache / "perceptual" / "vgg16.pth") in message
    assert "python -m models.assets fetch" in message


@pytest.mark.parametrize("upto", [28, 21])  # the full conv stack as released, or cut at conv4_3
def test_official_layout_loads_strictly(cache, upto):
    state = official_state_dict(upto)
    target = assets.get(DEFAULT_WEIGHTS).path
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    net = VGG16Perceptual()
    assert net.pretrained and net.name == DEFAULT_WEIGHTS
    for index, _, _ in OFFICIAL_CONVS:
        if index < 23:
            assert torch.equal(net.features[index].weight, state[f"layer{index}.weight"])
            assert torch.equal(net.features[index].bias, state[f"layer{index}.bias"])
    assert len(net.features) == 23
    by_path = VGG16Perceptual(weights=target, image_size=32)
    assert by_path.name == str(target)
    torch.testing.assert_close(by_path.features[21].weight, state["layer21.weight"])


def test_key_mapping():
    state = official_state_dict(28)
    mapped = map_official_vgg16_keys(state)
    assert sorted(mapped) == sorted(f"features.{i}.{p}" for i, _, _ in OFFICIAL_CONVS[:10] for p in ("weight", "bias"))
    reference = vgg16(weights=None).features[:23]
    reference.load_state_dict({k.removeprefix("features."): v for k, v in mapped.items()}, strict=True)


@pytest.mark.parametrize("change,match", [
    (lambda s: s.pop("layer19.bias"), r"missing \['layer19.bias'\]"),
    (lambda s: s.__setitem__("layer1.weight", torch.zeros(1)), r"unexpected \['layer1.weight'\]"),
    (lambda s: s.__setitem__("module.layer0.weight", s["layer0.weight"]), "unexpected"),
    (lambda s: s.__setitem__("layer5.weight", torch.zeros(128, 64, 1, 1)), "does not fit"),
])
def test_mismatched_file_names_the_file(cache, change, match):
    state = official_state_dict(21)
    change(state)
    path = cache / "bad_vgg16.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    with pytest.raises(PerceptualWeightsError, match=match) as info:
        VGG16Perceptual(weights=path)
    assert str(path) in str(info.value)


def test_torchvision_layout_is_refused_with_a_hint(cache):
    path = cache / "tv.pth"
    path.parent.mkdir(parents=True)
    torch.save(map_official_vgg16_keys(official_state_dict(21)), path)  # features.{i}.weight / bias
    with pytest.raises(PerceptualWeightsError, match="torchvision") as info:
        VGG16Perceptual(weights=path)
    assert str(path) in str(info.value)


def test_unreadable_file_names_the_file(cache):
    path = cache / "page.pth"
    path.parent.mkdir(parents=True)
    path.write_text("<html>Google Drive can't scan this file for viruses</html>")
    with pytest.raises(PerceptualWeightsError, match="cannot read") as info:
        VGG16Perceptual(weights=path)
    assert str(path) in str(info.value)
