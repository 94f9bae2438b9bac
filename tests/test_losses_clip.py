"""losses/clip.py against the formulas of docs/methods/nada.md ("Directional CLIP loss", "Image-guided directions")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from losses.clip import (CLIPLossEnsemble, DirectionalCLIPLoss, directional_loss, global_clip_loss,
                         image_guided_direction, load_target_images, manifold_angle_loss, patch_directional_loss,
                         patch_text_directions, random_patches, texture_loss)
from models.clip_templates import PART_TEMPLATES
from tests.helpers_clip import make_tiny_clip

FEW = ("a photo of a {}.", "a drawing of the {}.")  # short template lists: keep text encoding cheap
ONE = ("a photo of a {}.",)


@pytest.fixture(scope="module")
def clip():
    return make_tiny_clip(seed=0)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def images(seed, n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def test_directional_loss_formula_on_fixed_embeddings():
    rng = np.random.RandomState(0)
    src, tgt, text = unit(rng.randn(5, 8)), unit(rng.randn(5, 8)), unit(rng.randn(1, 8))
    expected = np.mean([1 - unit(tgt[b] - src[b]) @ text[0] for b in range(5)])
    got = directional_loss(torch.tensor(src), torch.tensor(tgt), torch.tensor(text))
    assert got.item() == pytest.approx(expected, abs=1e-12)
    flat_direction = directional_loss(torch.tensor(src), torch.tensor(tgt), torch.tensor(text[0]))
    assert flat_direction.item() == pytest.approx(expected)
    same = torch.tensor(src).clone()
    same[2] = torch.tensor(tgt[2])
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        directional_loss(same, torch.tensor(tgt), torch.tensor(text))


def test_global_manifold_patch_and_texture_formulas():
    rng = np.random.RandomState(1)
    img, txt = unit(rng.randn(4, 8)), unit(rng.randn(1, 8))
    assert global_clip_loss(torch.tensor(img), torch.tensor(txt)).item() == pytest.approx(np.mean(1 - img @ txt[0]))
    src, tgt, t_src, t_tgt = unit(rng.randn(4, 8)), unit(rng.randn(4, 8)), unit(rng.randn(1, 8)), unit(rng.randn(1, 8))
    expected = np.mean(np.abs(np.clip(np.sum(src * tgt, -1), -1, 1) - t_src[0] @ t_tgt[0]))
    got = manifold_angle_loss(*map(torch.tensor, (src, tgt, t_src, t_tgt)))
    assert got.item() == pytest.approx(expected)
    dirs = unit(rng.randn(15, 8))
    d = unit(tgt - src)
    logits = d @ dirs.T
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = np.mean((1 - d @ dirs.T) * weights)
    assert patch_directional_loss(*map(torch.tensor, (src, tgt, dirs))).item() == pytest.approx(expected)
    raw_a, raw_b = rng.randn(1, 8), rng.randn(4, 8)
    assert texture_loss(torch.tensor(raw_a), torch.tensor(raw_b)).item() == pytest.approx(np.mean((raw_b - raw_a) ** 2))


def test_random_patches_take_the_same_window_from_both_images():
    src, tgt = images(1, n=3, size=24), images(2, n=3, size=24)
    gen = torch.Generator().manual_seed(0)
    ps, pt = random_patches(src, tgt, 10, gen)
    assert ps.shape == pt.shape == (3, 3, 10, 10)
    for b in range(3):
        hits = [(t, l) for t in range(15) for l in range(15) if torch.equal(src[b, :, t:t + 10, l:l + 10], ps[b])]
        assert len(hits) == 1
        t, l = hits[0]
        assert torch.equal(tgt[b, :, t:t + 10, l:l + 10], pt[b])
    with pytest.raises(ValueError, match="exceeds"):
        random_patches(src, tgt, 25)


def test_module_directional_term_equals_formula_and_trains_only_the_images(clip):
    loss = DirectionalCLIPLoss(clip, "photo", "sketch", templates=FEW)
    x_src, x_tgt = images(3), images(4).requires_grad_()
    value = loss(x_src, x_tgt)
    expected = directional_loss(clip.encode_images(x_src), clip.encode_images(x_tgt),
                                clip.text_direction("photo", "sketch", FEW))
    torch.testing.assert_close(value, expected)
    value.backward()
    assert x_tgt.grad.abs().sum() > 0 and all(p.grad is None for p in clip.model.parameters())


def test_degenerate_case_guard_perturbs_the_target(clip):
    loss = DirectionalCLIPLoss(clip, "photo", "sketch", templates=FEW)
    x = images(5)
    src, shifted = clip.encode_images(x), clip.encode_images(x + 1e-6)
    assert ((shifted - src) != 0).any(dim=-1).all()
    torch.testing.assert_close(loss.directional(x, x.clone()), directional_loss(src, shifted, loss.direction))


def test_weighted_sum_of_all_terms(clip):
    lambdas = dict(lambda_direction=1.0, lambda_global=0.5, lambda_patch=2.0, lambda_manifold=0.25, lambda_texture=3.0)
    loss = DirectionalCLIPLoss(clip, "photo", "sketch", patch_size=16, templates=ONE, **lambdas)
    x_src, x_tgt, texture = images(6), images(7), images(8, n=1)
    total = loss(x_src, x_tgt, texture, generator=torch.Generator().manual_seed(3))
    e_src, e_tgt = clip.encode_images(x_src), clip.encode_images(x_tgt)
    p_src, p_tgt = random_patches(x_src, x_tgt, 16, torch.Generator().manual_seed(3))
    dirs = torch.cat([clip.text_direction(p.format("photo"), p.format("sketch"), ONE) for p in PART_TEMPLATES])
    torch.testing.assert_close(patch_text_directions(clip, "photo", "sketch", ONE), dirs)
    expected = (1.0 * directional_loss(e_src, e_tgt, clip.text_direction("photo", "sketch", ONE))
                + 0.5 * global_clip_loss(e_tgt, clip.encode_text(["a sketch"], templates=False))
                + 2.0 * patch_directional_loss(clip.encode_images(p_src), clip.encode_images(p_tgt), dirs)
                + 0.25 * manifold_angle_loss(e_src, e_tgt, clip.encode_text(["photo"], ONE),
                                             clip.encode_text(["sketch"], ONE))
                + 3.0 * F.mse_loss(clip.encode_images(x_tgt, normalize=False),
                                   clip.encode_images(texture, normalize=False).expand(2, -1)))
    torch.testing.assert_close(total, expected)
    assert set(loss.terms(x_src, x_tgt)) == {"direction", "global", "patch", "manifold"}  # no texture image
    with pytest.raises(ValueError, match="finite"):
        DirectionalCLIPLoss(clip, "photo", "sketch", lambda_global=float("nan"))


def write_targets(folder, sizes=((40, 56), (64, 48), (30, 30))):
    folder.mkdir()
    rng = np.random.RandomState(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"t{i}.png")
    return folder


def test_image_guided_direction_formula(clip, tmp_path):
    folder = write_targets(tmp_path / "targets")
    x_src = images(9, n=4)
    from open_clip import image_transform
    transform = image_transform(64, is_train=False)  # CLIP's standard PIL pipeline at the model's input size
    with torch.no_grad():
        tgt = F.normalize(clip.model.encode_image(torch.stack([transform(Image.open(p)) for p in
                                                               sorted(folder.iterdir())])), dim=-1).mean(0)
        src = F.normalize(clip.model.encode_image(clip.preprocess(x_src)), dim=-1).mean(0)
    expected = ((tgt - src) / (tgt - src).norm()).unsqueeze(0)
    torch.testing.assert_close(image_guided_direction(clip, x_src, folder), expected, rtol=0, atol=1e-6)
    loss = DirectionalCLIPLoss(clip, "ignored", "ignored", templates=FEW)
    loss.set_direction(expected)
    a, b = images(10), images(11)
    torch.testing.assert_close(loss(a, b), directional_loss(clip.encode_images(a), clip.encode_images(b), expected))


def test_target_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_target_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png"):
        load_target_images(tmp_path / "empty")
    folder = write_targets(tmp_path / "targets", sizes=((8, 8),))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_target_images(folder)


def test_ensemble_is_the_weighted_sum_and_skips_zero_weights(monkeypatch):
    clips = [make_tiny_clip(seed=s) for s in (1, 2, 3)]
    losses = [DirectionalCLIPLoss(c, "photo", "sketch", templates=FEW) for c in clips]
    ensemble = CLIPLossEnsemble(losses, [1.0, 0.5, 0.0])
    monkeypatch.setattr(losses[2], "forward", lambda *a, **k: pytest.fail("weight-0 model evaluated"))
    x_src, x_tgt = images(12), images(13)
    torch.testing.assert_close(ensemble(x_src, x_tgt), 1.0 * losses[0](x_src, x_tgt) + 0.5 * losses[1](x_src, x_tgt))
    expected_global = sum(w * global_clip_loss(c.encode_images(x_tgt), c.encode_text(["sketch"], templates=False))
                          for w, c in zip((1.0, 0.5), clips))
    torch.testing.assert_close(ensemble.global_loss(x_tgt, "sketch"), expected_global)
    with pytest.raises(ValueError, match="one weight per"):
        CLIPLossEnsemble(losses, [1.0])
    with pytest.raises(ValueError, match="finite"):
        CLIPLossEnsemble(losses[:1], [float("nan")])


def test_ensemble_image_target_sets_a_direction_per_model(tmp_path):
    folder = write_targets(tmp_path / "targets")
    clips = [make_tiny_clip(seed=s) for s in (4, 5)]
    ensemble = CLIPLossEnsemble([DirectionalCLIPLoss(c, "a", "b", templates=FEW) for c in clips], [1.0, 1.0])
    x_src = images(14, n=3)
    ensemble.set_image_target(x_src, folder)
    for loss, c in zip(ensemble.losses, clips):
        torch.testing.assert_close(loss.direction, image_guided_direction(c, x_src, folder))
    assert (ensemble.losses[0].direction - ensemble.losses[1].direction).abs().max() > 1e-3
