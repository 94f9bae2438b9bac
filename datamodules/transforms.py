"""Decoding and preprocessing of dataset images.

Every image that enters training or a metric reference set goes through :func:`decode_image`, so the
preprocessing is one recorded recipe (:func:`preprocessing_description`):

1. decode with PIL (truncated or unidentifiable files raise :class:`UnreadableImage`);
2. apply the EXIF orientation (photos taken sideways come out upright);
3. convert to 8-bit RGB: grayscale and CMYK through PIL, 16-bit grayscale scaled by 255/65535,
   palette and alpha images **composited on white** (transparent pixels of logos, sprites and Pokémon
   datasets are white, not whatever colour the encoder left under alpha = 0);
4. ``crop="center"``: take the largest centred square; ``crop="none"``: require a square image;
5. resize to ``resolution`` x ``resolution`` with the named PIL filter (skipped when already that size).

The filter matters for FID (box vs Lanczos explains a published gap, docs/metrics.md, "Quantization"), which is why
it is part of the description hashed into every reference set.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

RESIZE_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
}
CROP_MODES = ("center", "none")

#: Version of the recipe below; bump it when the pixels it produces change.
PREPROCESSING_VERSION = 1


class UnreadableImage(Exception):
    """An image file that PIL cannot decode (corrupt, truncated, not an image)."""


@dataclass
class DecodeNote:
    """What :func:`decode_image` had to do to an image, for the loader's summary line."""

    converted: str | None = None  # "grayscale", "palette", "alpha", "cmyk", "16-bit", ... or None
    cropped: bool = False
    upsampled: bool = False


def _reason(exc: BaseException) -> str:
    """A short reason for an unreadable file (PIL's messages embed object reprs for unknown formats)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    return f"{type(exc).__name__}: {exc}"


def check_options(resolution: int, resize_filter: str, crop: str) -> None:
    """Validate preprocessing options; raise ``ValueError`` naming the allowed values."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter={resize_filter!r} is not one of {sorted(RESIZE_FILTERS)}")
    if crop not in CROP_MODES:
        raise ValueError(f"crop={crop!r} is not one of {list(CROP_MODES)}")


def preprocessing_description(resolution: int, resize_filter: str, crop: str) -> dict:
    """The recipe that turns a file into training pixels; hashed into reference-set identities."""
    return {
        "version": PREPROCESSING_VERSION,
        "resolution": resolution,
        "resize_filter": resize_filter,
        "crop": crop,
        "color": "rgb8; alpha composited on white; 16-bit scaled 255/65535; exif orientation applied",
    }


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert any PIL mode to 8-bit RGB; return the image and the kind of conversion done (or None)."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale PNG/TIFF data: scale the full 16-bit range to 8 bits (PIL's own convert clips).
        a = np.asarray(img).astype(np.float64)
        a8 = np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB"), "16-bit"
    if mode == "F":
        raise UnreadableImage("floating-point ('F' mode) images are not supported")
    if mode == "P":
        has_alpha = "transparency" in img.info or img.palette.mode == "RGBA"
        if not has_alpha:
            return img.convert("RGB"), "palette"
        img = img.convert("RGBA")
        mode = "RGBA"
        kind = "palette"
    else:
        kind = None
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode in ("L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), kind or "alpha"
    if mode in ("L", "1"):
        return img.convert("RGB"), "grayscale"
    if mode == "CMYK":
        return img.convert("RGB"), "cmyk"
    return img.convert("RGB"), mode.lower()


def center_crop_square(img: Image.Image) -> Image.Image:
    """The largest centred square of ``img`` (NVIDIA ``dataset_tool --transform=center-crop`` geometry)."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def decode_image(data: bytes, name: str, resolution: int, resize_filter: str = "lanczos",
                 crop: str = "center") -> tuple[np.ndarray, DecodeNote]:
    """Decode file bytes into uint8 ``[3, resolution, resolution]`` with the recipe above.

    Raises :class:`UnreadableImage` for files PIL cannot decode, and ``ValueError`` for a non-square
    image under ``crop="none"`` (a configuration problem, not a corrupt file).
    """
    note = DecodeNote()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            img = ImageOps.exif_transpose(im)
            img, note.converted = to_rgb(img)
    except UnreadableImage:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(_reason(exc)) from exc
    w, h = img.size
    if w != h:
        if crop == "none":
            raise ValueError(f"{name} is {w}x{h} but crop='none' needs square images; "
                             f"use crop='center' or crop the files beforehand")
        img = center_crop_square(img)
        note.cropped = True
    if img.size != (resolution, resolution):
        note.upsampled = img.size[0] < resolution
        img = img.resize((resolution, resolution), RESIZE_FILTERS[resize_filter])
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)), note


def probe_image(fp: BinaryIO) -> tuple[int, int]:
    """Header-only check of an open binary file: its ``(width, height)``, or :class:`UnreadableImage`."""
    try:
        with Image.open(fp) as im:
            return im.size
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(_reason(exc)) from exc
