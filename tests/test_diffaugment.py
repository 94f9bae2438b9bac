"""DiffAugment color / translation / cutout (Zhao et al. 2020)."""
from __future__ import annotations

import pytest
import torch

from models.diffaugment import (DiffAugment, adjust_brightness, adjust_contrast, adjust_saturation, apply_color,
                                color, cutout, cutout_size, max_translation, sample_color, sample_cutout,
                                sample_translation, translate, translation)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def images():
    return torch.rand(8, 3, 32, 32, generator=_gen(0)) * 2 - 1


def test_empty_policy_is_identity(images):
    assert DiffAugment("")(images) is images
    assert DiffAugment(None)(images) is images


def test_unknown_policy_and_bad_input_raise(images):
    with pytest.raises(ValueError, match="translaton"):
        DiffAugment("color,translaton")
    with pytest.raises(ValueError, match="float images"):
        DiffAugment("color")(images[0])
    with pytest.raises(ValueError, match="float images"):
        DiffAugment("cutout")(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_gradients_flow_through_every_op(images):
    for policy in ("color", "translation", "cutout", "color,translation,cutout"):
        x = images.clone().requires_grad_()
        (DiffAugment(policy)(x, generator=_gen(1)) * torch.randn(x.shape, generator=_gen(2))).sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, policy


def test_seeded_generator_is_deterministic(images):
    aug = DiffAugment("color,translation,cutout")
    a, b, c = aug(images, _gen(5)), aug(images, _gen(5)), aug(images, _gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_policy_ops_run_in_order(images):
    g1, g2 = _gen(3), _gen(3)
    want = cutout(translation(color(images, g2), 0.125, g2), 0.5, g2)
    assert torch.equal(DiffAugment("color,translation,cutout")(images, g1), want)


# --- translation ---------------------------------------------------------------------------------

def test_translation_moves_a_pixel_by_the_sampled_shift():
    x = torch.zeros(64, 1, 32, 32)
    x[:, 0, 10, 12] = 1.0
    shifts = sample_translation(x, generator=_gen(7))
    out = translation(x, generator=_gen(7))
    assert max_translation(32) == 4
    assert shifts.min().item() == -4 and shifts.max().item() == 4  # both ends of [-1/8, 1/8] of the size
    for b in range(64):
        dy, dx = shifts[b].tolist()
        expected = torch.zeros(32, 32)
        expected[10 + dy, 12 + dx] = 1.0
        assert torch.equal(out[b, 0], expected)


def test_translation_pads_with_zeros_and_matches_a_loop():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    shifts = torch.tensor([[1, -1], [-1, 0]])
    out = translate(x, shifts)
    for b in range(2):
        dy, dx = shifts[b].tolist()
        for y in range(8):
            for xx in range(8):
                sy, sx = y - dy, xx - dx
                want = x[b, :, sy, sx] if 0 <= sy < 8 and 0 <= sx < 8 else torch.zeros(3)
                assert torch.equal(out[b, :, y, xx], want)


# --- cutout --------------------------------------------------------------------------------------

def test_cutout_zeroes_a_clipped_square_of_half_the_size():
    x = torch.ones(200, 3, 32, 32)
    corners = sample_cutout(x, generator=_gen(8))
    out = cutout(x, generator=_gen(8))
    side = cutout_size(32)
    assert side == 16
    inside = 0
    for b in range(200):
        top, left = corners[b].tolist()
        zero = (out[b] == 0).all(0)
        assert ((out[b] == 0) | (out[b] == 1)).all() and torch.equal(zero, (out[b] == 0).any(0))
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert rows.tolist() == list(range(max(top, 0), min(top + side, 32)))
        assert cols.tolist() == list(range(max(left, 0), min(left + side, 32)))
        assert zero.sum().item() == len(rows) * len(cols)  # a full rectangle
        if 0 <= top <= 32 - side and 0 <= left <= 32 - side:
            inside += 1
            assert zero.sum().item() == side * side
    assert inside > 0 and corners.min().item() < 0 and corners.max().item() > 32 - side  # clipped cases occur


# --- color ---------------------------------------------------------------------------------------

def test_color_parameters_stay_in_the_documented_ranges():
    p = sample_color(torch.zeros(20000, 3, 1, 1), generator=_gen(9))
    for name, lo, hi in (("brightness", -0.5, 0.5), ("saturation", 0.0, 2.0), ("contrast", 0.5, 1.5)):
        v = p[name]
        assert v.min().item() >= lo and v.max().item() < hi, name
        assert v.min().item() < lo + 0.01 and v.max().item() > hi - 0.01, name  # the whole range is used


def test_color_ops_apply_their_factor(images):
    f = torch.linspace(0.1, 1.9, 8)
    bright = adjust_brightness(images, f - 1)
    assert torch.allclose(bright - images, (f - 1).view(-1, 1, 1, 1).expand_as(images), atol=1e-6)
    sat = adjust_saturation(images, f)
    mean_c = images.mean(1, keepdim=True)
    assert torch.allclose(sat.mean(1, keepdim=True), mean_c, atol=1e-6)  # per-pixel grey level kept
    assert torch.allclose(sat - mean_c, (images - mean_c) * f.view(-1, 1, 1, 1), atol=1e-6)
    con = adjust_contrast(images, f)
    mean = images.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(con.mean((1, 2, 3), keepdim=True), mean, atol=1e-6)  # image mean kept
    assert torch.allclose(con - mean, (images - mean) * f.view(-1, 1, 1, 1), atol=1e-6)


def test_color_is_brightness_then_saturation_then_contrast(images):
    params = sample_color(images, generator=_gen(10))
    manual = adjust_contrast(adjust_saturation(adjust_brightness(images, params["brightness"]),
                                               params["saturation"]), params["contrast"])
    assert torch.equal(apply_color(images, params), manual)
    assert torch.equal(color(images, _gen(10)), manual)
