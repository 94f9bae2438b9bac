"""Procedural toy images: cartoon faces or coloured shapes, generated in code (no files).

The toy data is what the offline demo and the training tests learn: a handful of smooth factors with
strong structure, so a tiny StyleGAN2 picks it up in minutes of CPU. Image ``i`` depends only on
``(seed, i, resolution, kind)``: its factors come from ``numpy.random.default_rng([seed, i, kind])``, so it
is the same whatever ``num_images`` is.

Shapes are drawn from signed distance functions (coordinates in [-1, 1], y pointing down) with analytic
anti-aliasing: a pixel's coverage is ``clamp(0.5 - sdf / pixel_size, 0, 1)``, which gives the edge quality
of supersampling at the cost of one evaluation per pixel (2,048 faces at 32 px render in a fraction of a
second). The same faces render at every resolution.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datamodules.base import GANDataModule, UInt8ImageDataset, check_subset_args, fewshot_order, log_info
from metrics.reference import ReferenceSet

KINDS = ("faces", "shapes")
#: Version of the renderer below; bump it when the pixels it produces change.
TOY_VERSION = 1
_CHUNK = 512  # images rendered per vectorised call

FACE_FACTORS = ("bg_hue", "bg_value", "face_x", "face_y", "face_size", "face_aspect", "skin_tone",
                "hair_color", "hairline", "eye_spacing", "eye_size", "eye_height", "gaze",
                "mouth_curve", "mouth_width")
_SHAPE_FIELDS = ("type", "hue", "x", "y", "size", "angle")
SHAPE_FACTORS = ("bg_hue", "bg_value") + tuple(f"shape{k}_{f}" for k in range(2) for f in _SHAPE_FIELDS)

_SKIN_LIGHT = torch.tensor([0.98, 0.86, 0.74])
_SKIN_DARK = torch.tensor([0.50, 0.33, 0.22])
_HAIR = torch.tensor([[0.10, 0.08, 0.07],   # black
                      [0.45, 0.27, 0.14],   # brown
                      [0.92, 0.76, 0.40],   # blond
                      [0.72, 0.28, 0.12]])  # red
_EYE_WHITE = torch.tensor([0.97, 0.97, 0.97])
_PUPIL = torch.tensor([0.08, 0.10, 0.20])
_MOUTH = torch.tensor([0.50, 0.10, 0.14])


# ---------------------------------------------------------------------------------------- factors


def toy_factors(indices, seed: int, kind: str) -> dict[str, torch.Tensor]:
    """Factors of the given image indices: name -> float tensor ``[len(indices)]``."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {list(KINDS)}")
    names = FACE_FACTORS if kind == "faces" else SHAPE_FACTORS
    u = np.stack([np.random.default_rng([int(seed), int(i), KINDS.index(kind)]).random(len(names))
                  for i in indices]) if len(indices) else np.zeros((0, len(names)))
    u = torch.from_numpy(u).float()
    raw = {name: u[:, k] for k, name in enumerate(names)}
    return _scale_faces(raw) if kind == "faces" else _scale_shapes(raw)


def _lin(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * u


def _scale_faces(u: dict) -> dict[str, torch.Tensor]:
    return {
        "bg_hue": u["bg_hue"], "bg_value": _lin(u["bg_value"], 0.70, 0.95),
        "face_x": _lin(u["face_x"], -0.12, 0.12), "face_y": _lin(u["face_y"], 0.0, 0.15),
        "face_size": _lin(u["face_size"], 0.45, 0.60), "face_aspect": _lin(u["face_aspect"], 1.05, 1.25),
        "skin_tone": u["skin_tone"], "hair_color": _lin(u["hair_color"], 0.0, 3.0),
        "hairline": _lin(u["hairline"], 0.35, 0.70), "eye_spacing": _lin(u["eye_spacing"], 0.32, 0.45),
        "eye_size": _lin(u["eye_size"], 0.13, 0.21), "eye_height": _lin(u["eye_height"], 0.02, 0.20),
        "gaze": _lin(u["gaze"], -1.0, 1.0), "mouth_curve": _lin(u["mouth_curve"], -1.0, 1.0),
        "mouth_width": _lin(u["mouth_width"], 0.25, 0.45),
    }


def _scale_shapes(u: dict) -> dict[str, torch.Tensor]:
    out = {"bg_hue": u["bg_hue"], "bg_value": _lin(u["bg_value"], 0.25, 0.95)}
    for k in range(2):
        p = f"shape{k}_"
        out[p + "type"] = torch.floor(u[p + "type"] * 3).clamp(max=2)  # 0 circle, 1 square, 2 triangle
        out[p + "hue"] = u[p + "hue"]
        out[p + "x"], out[p + "y"] = _lin(u[p + "x"], -0.45, 0.45), _lin(u[p + "y"], -0.45, 0.45)
        out[p + "size"] = _lin(u[p + "size"], 0.22, 0.45)
        out[p + "angle"] = _lin(u[p + "angle"], 0.0, 2 * np.pi)
    return out


# ---------------------------------------------------------------------------------------- drawing


def _col(t: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, 1, 1] for broadcasting against [N, C, H, W]."""
    return t.view(-1, 1, 1, 1)


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Vectorised HSV -> RGB; inputs [N] in [0, 1], output [N, 3]."""
    n = torch.tensor([5.0, 3.0, 1.0])
    k = torch.remainder(n + h[:, None] * 6.0, 6.0)
    ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return v[:, None] - v[:, None] * s[:, None] * ramp


def _paint(canvas: torch.Tensor, sdf: torch.Tensor, color: torch.Tensor) -> None:
    """Composite ``color`` ([N,3] or [3]) over ``canvas`` [N,3,H,W] with coverage from ``sdf`` (in pixels)."""
    alpha = torch.clamp_(0.5 - sdf, 0.0, 1.0)
    canvas.addcmul_(color.view(-1, 3, 1, 1) - canvas, alpha)


def _ellipse(x, y, cx, cy, rx, ry):
    """Approximate signed distance to an axis-aligned ellipse (first order: f / |grad f|).

    The x- and y-dependent terms are formed on the small ``[N,1,1,W]`` / ``[N,1,H,1]`` tensors; only four
    operations run at full image size.
    """
    nx, ny = (x - cx) / rx, (y - cy) / ry
    grad_x, grad_y = 4.0 * (nx / rx) ** 2, 4.0 * (ny / ry) ** 2 + 1e-12
    return (nx * nx + (ny * ny - 1.0)) / torch.sqrt(grad_x + grad_y)


def _mouth(x, y, cx, cy, half_width, bend, half_thickness):
    """Distance to the arc ``y = cy + bend (1 - (dx / half_width)^2)``, |dx| <= half_width, minus thickness.

    ``bend > 0`` lowers the middle (a smile, with y pointing down); ends are rounded.
    """
    dx = x - cx
    t = torch.clamp(dx / half_width, -1.0, 1.0)
    on_curve = (dx / half_width).abs() <= 1.0
    y_curve = cy + bend * (1.0 - t * t)
    slope = -2.0 * bend * t / half_width
    d_curve = (y - y_curve).abs() * torch.rsqrt(1.0 + slope * slope)
    end_x = cx + torch.sign(dx) * half_width
    d_end = torch.sqrt((x - end_x) ** 2 + (y - cy) ** 2)
    return torch.where(on_curve, d_curve, d_end) - half_thickness


def _polygon(x, y, cx, cy, radius, angle, sides: int):
    """Signed distance (exact on edges) to a regular polygon with inradius ``radius``, rotated by ``angle``.

    Per-image trigonometry runs in float64 so pixels do not depend on how a batch is vectorised.
    """
    px, py = x - cx, y - cy
    d = None
    for k in range(sides):
        a = angle.double() + 2.0 * np.pi * k / sides
        e = px * torch.cos(a).float() + (py * torch.sin(a).float() - radius)
        d = e if d is None else torch.maximum(d, e)
    return d


def _grid(resolution: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Pixel-centre coordinates in pixel units (origin at the image centre) and pixels per unit length."""
    c = torch.arange(resolution, dtype=torch.float32) + (0.5 - resolution / 2.0)
    return c.view(1, 1, 1, -1), c.view(1, 1, -1, 1), resolution / 2.0  # x along width, y down


def _background(hue: torch.Tensor, saturation: float, value: torch.Tensor, resolution: int) -> torch.Tensor:
    n = len(hue)
    bg = hsv_to_rgb(hue, torch.full((n,), saturation), value)
    return bg.view(n, 3, 1, 1).expand(n, 3, resolution, resolution).clone()


def _draw_faces(f: dict, resolution: int, colours: dict | None = None) -> torch.Tensor:
    """Faces of factors ``f``; ``colours`` (optional ``"bg"``, ``"skin"``, ``"hair"``: ``[N, 3]`` RGB in [0, 1])
    replaces the colours the factors would give (the toy styles' palette)."""
    colours = colours or {}
    x, y, s = _grid(resolution)
    if "bg" in colours:
        canvas = colours["bg"].view(-1, 3, 1, 1).expand(-1, 3, resolution, resolution).clone()
    else:
        canvas = _background(f["bg_hue"], 0.35, f["bg_value"], resolution)
    cx, cy = _col(f["face_x"]) * s, _col(f["face_y"]) * s
    rx = _col(f["face_size"]) * s
    ry = rx * _col(f["face_aspect"])
    h = f["hair_color"]
    lo = torch.floor(h).long().clamp(max=2)
    hair = _HAIR[lo] + (_HAIR[lo + 1] - _HAIR[lo]) * (h - lo)[:, None]
    skin = _SKIN_LIGHT[None] + (_SKIN_DARK - _SKIN_LIGHT)[None] * f["skin_tone"][:, None]
    hair, skin = colours.get("hair", hair), colours.get("skin", skin)

    hair_cy = cy - 0.22 * ry
    hair_sdf = _ellipse(x, y, cx, hair_cy, 1.10 * rx, 1.00 * ry)
    _paint(canvas, hair_sdf, hair)                                                        # hair behind
    _paint(canvas, _ellipse(x, y, cx, cy, rx, ry), skin)                                  # face
    _paint(canvas, torch.maximum(hair_sdf, y - (cy - _col(f["hairline"]) * ry)), hair)    # fringe
    eye_r = _col(f["eye_size"]) * rx
    ey = cy - _col(f["eye_height"]) * ry
    for side in (-1.0, 1.0):
        ex = cx + side * _col(f["eye_spacing"]) * rx
        _paint(canvas, _ellipse(x, y, ex, ey, eye_r, 1.15 * eye_r), _EYE_WHITE)
        pupil_x = ex + 0.35 * eye_r * _col(f["gaze"])
        _paint(canvas, _ellipse(x, y, pupil_x, ey, 0.55 * eye_r, 0.6 * eye_r), _PUPIL)
    mouth = _mouth(x, y, cx, cy + 0.50 * ry, _col(f["mouth_width"]) * rx,
                   0.14 * rx * _col(f["mouth_curve"]), max(0.045 * s, 0.6))
    _paint(canvas, mouth, _MOUTH)
    return canvas


def _draw_shapes(f: dict, resolution: int) -> torch.Tensor:
    x, y, s = _grid(resolution)
    canvas = _background(f["bg_hue"], 0.25, f["bg_value"], resolution)
    n = len(f["bg_hue"])
    for k in range(2):
        p = f"shape{k}_"
        cx, cy, r = (_col(f[p + q]) * s for q in ("x", "y", "size"))
        a, kind = _col(f[p + "angle"]), _col(f[p + "type"])
        circle = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r
        square = _polygon(x, y, cx, cy, 0.85 * r, a, 4)
        triangle = _polygon(x, y, cx, cy, 0.6 * r, a, 3)
        sdf = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))
        color = hsv_to_rgb(f[p + "hue"], torch.full((n,), 0.85), torch.full((n,), 0.9))
        _paint(canvas, sdf, color)
    return canvas


def render_toy(indices, resolution: int, kind: str = "faces", seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Images ``uint8 [N, 3, R, R]`` and factors (name -> ``[N]``) of the given indices."""
    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")
    indices = list(indices)
    factors = toy_factors(indices, seed, kind)
    draw = _draw_faces if kind == "faces" else _draw_shapes
    chunks = []
    for start in range(0, len(indices), _CHUNK):
        part = {k: v[start:start + _CHUNK] for k, v in factors.items()}
        img = draw(part, resolution)
        chunks.append(torch.round(img.clamp_(0.0, 1.0) * 255.0).to(torch.uint8))
    images = torch.cat(chunks) if chunks else torch.zeros(0, 3, resolution, resolution, dtype=torch.uint8)
    return images, factors


def toy_name(index: int) -> str:
    """File name of toy image ``index`` (used by :func:`write_toy_folder` and manifests)."""
    return f"{index:06d}.png"


def write_toy_folder(path: str | os.PathLike, n: int, resolution: int = 32, kind: str = "faces",
                     seed: int = 0) -> Path:
    """Write toy images ``0..n-1`` as PNG files ``000000.png ...`` under ``path``; return the folder."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    images, _ = render_toy(range(n), resolution, kind, seed)
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / toy_name(i))
    return root


# ---------------------------------------------------------------------------------------- toy styles
#: The toy styles' "cartoon" palette: skin, hair and background colours no plain toy face has.
_STYLE_SKIN = torch.tensor([[0.55, 0.85, 0.45],   # green
                            [0.55, 0.75, 0.98],   # sky blue
                            [0.80, 0.62, 0.98],   # lavender
                            [0.98, 0.55, 0.20]])  # orange
_STYLE_HAIR = torch.tensor([[0.95, 0.10, 0.65],   # magenta
                            [0.05, 0.85, 0.90],   # cyan
                            [0.60, 0.95, 0.05],   # lime
                            [0.35, 0.05, 0.75]])  # purple
STYLE_EYE_SCALE = (1.2, 2.0)
STYLE_ASPECT_SCALE = (0.8, 1.25)
STYLE_ASPECT_RANGE = (0.85, 1.5)
STYLE_BG_SATURATION, STYLE_BG_VALUE = 0.85, 0.9
#: Factors :func:`render_toy_styles` adds to FACE_FACTORS: the structure multipliers (effective, after the
#: eye size and face aspect are kept in range) and the palette's own parameters.
STYLE_FACTORS = ("eye_scale", "aspect_scale", "style_skin", "style_hair", "style_bg_hue")


def _palette(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear colour of ``t`` in [0, len(table) - 1] along the rows of ``table``: [N, 3]."""
    lo = torch.floor(t).long().clamp(max=len(table) - 2)
    return table[lo] + (table[lo + 1] - table[lo]) * (t - lo)[:, None]


def toy_style_factors(indices, seed: int = 0) -> dict[str, torch.Tensor]:
    """Factors of toy style exemplars ``indices``: the plain toy face of the same index (:func:`toy_factors`)
    with bigger eyes (``eye_size`` x U(1.2, 2.0), at most 0.95 ``eye_spacing`` so the eyes never overlap), a
    rescaled face (``face_aspect`` x U(0.8, 1.25), kept in [0.85, 1.5]) and a cartoon palette; ``eye_scale`` /
    ``aspect_scale`` are the multipliers actually applied, ``style_skin`` / ``style_hair`` in [0, 3] index
    the palettes, ``style_bg_hue`` the saturated background's hue."""
    indices = list(indices)
    f = toy_factors(indices, seed, "faces")
    u = np.stack([np.random.default_rng([int(seed), int(i), len(KINDS), 1]).random(5) for i in indices]) \
        if indices else np.zeros((0, 5))
    u = torch.from_numpy(u).float()
    eye = torch.minimum(f["eye_size"] * _lin(u[:, 0], *STYLE_EYE_SCALE), 0.95 * f["eye_spacing"])
    aspect = (f["face_aspect"] * _lin(u[:, 1], *STYLE_ASPECT_SCALE)).clamp(*STYLE_ASPECT_RANGE)
    out = dict(f)
    out.update(eye_size=eye, face_aspect=aspect, eye_scale=eye / f["eye_size"],
               aspect_scale=aspect / f["face_aspect"], style_skin=3.0 * u[:, 2], style_hair=3.0 * u[:, 3],
               style_bg_hue=u[:, 4])
    return out


def style_colours(factors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RGB ``[N, 3]`` of the toy styles' skin, hair and background (``"skin"``, ``"hair"``, ``"bg"``)."""
    n = len(factors["style_bg_hue"])
    return {"skin": _palette(_STYLE_SKIN, factors["style_skin"]), "hair": _palette(_STYLE_HAIR, factors["style_hair"]),
            "bg": hsv_to_rgb(factors["style_bg_hue"], torch.full((n,), STYLE_BG_SATURATION),
                             torch.full((n,), STYLE_BG_VALUE))}


def render_toy_styles(indices, resolution: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Toy *style* exemplars (DualStyleGAN's style images on the toy faces; docs/methods/dualstylegan.md): images
    ``uint8 [N, 3, R, R]`` and factors (FACE_FACTORS with the changed ``eye_size`` / ``face_aspect``, plus
    STYLE_FACTORS) of the given indices. Exemplar ``i`` is the plain toy face ``i`` of :func:`render_toy` with
    its *structure* changed (bigger eyes, another face aspect) and its *palette* replaced (cartoon skin, hair
    and a saturated background); a pure function of ``(seed, i, resolution)``."""
    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")
    indices = list(indices)
    factors = toy_style_factors(indices, seed)
    chunks = []
    for start in range(0, len(indices), _CHUNK):
        part = {k: v[start:start + _CHUNK] for k, v in factors.items()}
        img = _draw_faces(part, resolution, style_colours(part))
        chunks.append(torch.round(img.clamp_(0.0, 1.0) * 255.0).to(torch.uint8))
    images = torch.cat(chunks) if chunks else torch.zeros(0, 3, resolution, resolution, dtype=torch.uint8)
    return images, factors


def toy_style_name(index: int) -> str:
    """File name of toy style exemplar ``index`` (a code table keys its rows by it)."""
    return f"style_{index:06d}.png"


def write_toy_style_folder(path: str | os.PathLike, n: int, resolution: int = 32, seed: int = 0,
                           start: int = 0) -> Path:
    """Write toy style exemplars ``start..start+n-1`` as ``style_000000.png ...`` (:func:`toy_style_name`) under
    ``path`` and their factors as ``factors.json`` (name -> factor -> value); return the folder."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    indices = range(start, start + n)
    images, factors = render_toy_styles(indices, resolution, seed)
    for i, img in zip(indices, images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / toy_style_name(i))
    table = {toy_style_name(i): {k: float(v[j]) for k, v in factors.items()} for j, i in enumerate(indices)}
    (root / "factors.json").write_text(json.dumps(table, indent=1))
    return root


# ---------------------------------------------------------------------------------------- datamodule


class ToyDataModule(GANDataModule):
    """Procedural faces or shapes as a datamodule (same loaders and reference sets as ImageDataModule).

    Args:
        resolution: image size (16-64 px is the intended range).
        num_images: size of the "full" set (images ``0..num_images-1``).
        batch_size, seed, num_workers: training loader (``seed`` also seeds the image content).
        kind: ``"faces"`` or ``"shapes"``.
        fewshot, fewshot_seed: train on N images chosen like ImageDataModule (seeded permutation).
        xflip: add mirrored copies of every image.
        holdout: N further images (indices ``num_images..num_images+N-1``), never trained on: the
            ``"holdout"`` reference set (test images of an inversion method).
    """

    def __init__(self, resolution: int = 32, num_images: int = 2048, batch_size: int = 16, seed: int = 0,
                 kind: str = "faces", fewshot: int | None = None, fewshot_seed: int = 0,
                 xflip: bool = False, num_workers: int = 0, holdout: int = 0) -> None:
        super().__init__()
        if not isinstance(holdout, int) or isinstance(holdout, bool) or holdout < 0:
            raise ValueError(f"holdout must be an integer >= 0, got {holdout!r}")
        self.holdout = holdout
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {list(KINDS)}")
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        check_subset_args(fewshot, None, None)
        if fewshot is not None and fewshot > num_images:
            raise ValueError(f"fewshot={fewshot} exceeds num_images={num_images}")
        self.save_hyperparameters(logger=False)  # the run config is logged by train.py; avoids key clashes
        self.resolution, self.num_images, self.batch_size, self.seed = resolution, num_images, batch_size, seed
        self.kind, self.fewshot, self.fewshot_seed = kind, fewshot, fewshot_seed
        self.xflip, self.num_workers = xflip, num_workers
        self.preprocessing = {"toy_version": TOY_VERSION, "kind": kind, "seed": seed, "resolution": resolution}
        self.images: torch.Tensor | None = None
        #: Factors of every image: name -> tensor [num_images] (see FACE_FACTORS / SHAPE_FACTORS).
        self.factors: dict[str, torch.Tensor] = {}
        self.train_indices: list[int] = []

    def setup(self, stage: str | None = None) -> None:
        if self._is_setup:
            return
        total = self.num_images + self.holdout
        images, factors = render_toy(range(total), self.resolution, self.kind, self.seed)
        self.images, self.factors = images[:self.num_images], {k: v[:self.num_images] for k, v in factors.items()}
        #: the held-out images and their factors
        self.holdout_images = images[self.num_images:]
        self.holdout_factors = {k: v[self.num_images:] for k, v in factors.items()}
        names = [toy_name(i) for i in range(self.num_images)]
        if self.fewshot is not None:
            names = sorted(fewshot_order(names, self.fewshot_seed)[:self.fewshot])
        self.manifest_names = names
        self.train_indices = [int(n.split(".")[0]) for n in names]
        self._is_setup = True
        log_info("ToyDataModule: %d %s images at %dpx, %d for training", self.num_images, self.kind,
                 self.resolution, len(self.train_indices))

    def manifest_header(self) -> str:
        return (f"toy {self.kind} seed={self.seed} num_images={self.num_images} "
                f"fewshot={self.fewshot} fewshot_seed={self.fewshot_seed}")

    def train_dataloader(self):
        self._ensure_setup()
        dataset = UInt8ImageDataset(self.images[self.train_indices], xflip=self.xflip)
        return self.train_loader(dataset, self.batch_size, self.seed, True, self.num_workers)

    def reference_set(self, which: str = "full") -> ReferenceSet:
        """Unflipped uint8 toy images: ``"full"`` (all ``num_images``), ``"train"`` (the few-shot subset) or
        ``"holdout"`` (the ``holdout`` images after them)."""
        self._ensure_setup()
        if which == "full":
            images = self.images
        elif which == "train":
            images = self.images[self.train_indices]
        elif which == "holdout":
            if not self.holdout:
                raise ValueError("no held-out images: set data.holdout to the number of images to hold out")
            images = self.holdout_images
        else:
            raise ValueError(f"which={which!r}: expected 'full', 'train' or 'holdout'")
        h = hashlib.sha256(json.dumps({"which": which, **self.preprocessing}, sort_keys=True).encode())
        h.update(images.contiguous().numpy().tobytes())

        def batches(batch_size: int):
            for start in range(0, len(images), batch_size):
                yield images[start:start + batch_size]

        return ReferenceSet(name=f"toy-{self.kind}:{which}", content_hash=h.hexdigest(), length=len(images),
                            batches_fn=batches, resolution=self.resolution, xflip=False,
                            info={"which": which, **self.preprocessing, "num_images": self.num_images})
