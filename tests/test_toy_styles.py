"""The toy style exemplars of DualStyleGAN's toy bench (datamodules.toy.render_toy_styles;
docs/methods/dualstylegan.md): plain toy faces with bigger eyes, another face aspect and a cartoon palette."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from datamodules.toy import (FACE_FACTORS, STYLE_ASPECT_RANGE, STYLE_ASPECT_SCALE, STYLE_EYE_SCALE, STYLE_FACTORS,
                             render_toy, render_toy_styles, toy_factors, toy_style_name, write_toy_style_folder)

N = 64


def test_factors_in_range_and_multipliers_consistent():
    _, f = render_toy_styles(range(N), 16)
    plain = toy_factors(range(N), 0, "faces")
    assert set(FACE_FACTORS) | set(STYLE_FACTORS) == set(f)
    assert torch.allclose(f["eye_size"], plain["eye_size"] * f["eye_scale"], atol=1e-6)
    assert torch.allclose(f["face_aspect"], plain["face_aspect"] * f["aspect_scale"], atol=1e-6)
    assert (f["eye_scale"] <= STYLE_EYE_SCALE[1] + 1e-6).all() and (f["eye_scale"] > 1.0).all()
    assert (f["eye_size"] <= 0.95 * f["eye_spacing"] + 1e-6).all()  # the eyes never overlap
    # the clamp to 0.95 eye_spacing binds rarely: most exemplars keep their drawn multiplier >= 1.2
    assert (f["eye_scale"] >= STYLE_EYE_SCALE[0] - 1e-6).float().mean() > 0.8
    lo, hi = STYLE_ASPECT_RANGE
    assert (f["face_aspect"] >= lo - 1e-6).all() and (f["face_aspect"] <= hi + 1e-6).all()
    assert (f["aspect_scale"] >= STYLE_ASPECT_SCALE[0] - 1e-6).all()
    assert (f["aspect_scale"] <= STYLE_ASPECT_SCALE[1] + 1e-6).all()
    assert f["aspect_scale"].std() > 0.05  # both wider and longer faces
    for key in ("style_skin", "style_hair"):
        assert (f[key] >= 0).all() and (f[key] <= 3).all()
    # everything else is the plain face of the same index
    for key in set(FACE_FACTORS) - {"eye_size", "face_aspect"}:
        assert torch.equal(f[key], plain[key]), key


def test_deterministic_and_independent_of_batch():
    a, fa = render_toy_styles(range(10), 32)
    b, fb = render_toy_styles(range(10), 32)
    c, _ = render_toy_styles([3, 7], 32)
    assert torch.equal(a, b) and all(torch.equal(fa[k], fb[k]) for k in fa)
    assert torch.equal(c, a[[3, 7]])
    d, _ = render_toy_styles(range(10), 32, seed=1)
    assert not torch.equal(a, d)


def _eye_white_pixels(images: torch.Tensor) -> torch.Tensor:
    """Pixels close to the eye white (0.97, 0.97, 0.97) per image; no palette colour is near it."""
    x = images.float() / 255
    return ((x - 0.97).abs().amax(1) < 0.06).flatten(1).sum(1).float()


def test_differs_from_plain_faces_in_structure_and_palette():
    styles, f = render_toy_styles(range(N), 64)
    plain, _ = render_toy(range(N), 64)
    # bigger eyes: more eye-white pixels, and more so for larger multipliers
    ws, wp = _eye_white_pixels(styles), _eye_white_pixels(plain)
    assert (ws > wp).float().mean() > 0.9
    ratio = ws / wp.clamp_min(1)
    scale = f["eye_scale"] ** 2
    assert torch.corrcoef(torch.stack([ratio, scale]))[0, 1] > 0.5
    # the palette: the background (corner pixels) and the mean colour differ clearly
    corners = lambda x: x.float()[:, :, :3, :3].mean((2, 3)) / 255  # noqa: E731
    assert ((corners(styles) - corners(plain)).norm(dim=1) > 0.1).float().mean() > 0.9
    # saturated backgrounds: the plain faces' backgrounds are pastel (saturation 0.35), the styles' at 0.85
    sat = lambda c: (c.amax(1) - c.amin(1)) / c.amax(1)  # noqa: E731
    assert (sat(corners(styles)) > 0.7).all() and (sat(corners(plain)) < 0.4).all()


def test_write_folder_names_and_factors(tmp_path):
    root = write_toy_style_folder(tmp_path / "styles", 5, resolution=16, start=3)
    names = sorted(p.name for p in root.glob("*.png"))
    assert names == [toy_style_name(i) for i in range(3, 8)]
    table = json.loads((root / "factors.json").read_text())
    images, f = render_toy_styles(range(3, 8), 16)
    for j, name in enumerate(names):
        assert abs(table[name]["eye_scale"] - float(f["eye_scale"][j])) < 1e-6
        arr = torch.from_numpy(np.array(Image.open(root / name))).permute(2, 0, 1)
        assert torch.equal(arr, images[j])
