"""Reading single RGB images as tensors in [-1, 1] (photos to invert or stylise, style exemplars, few-shot
targets): one place for the PIL decoding, the centre square crop and the resize."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_image"]


def read_image(path: str | os.PathLike, size: int | None = None) -> Tensor:
    """``[3, H, W]`` in [-1, 1]. With ``size``: a centre square crop of a non-square image, then a Lanczos resize
    to ``size`` when it is not that size. An unreadable file raises ``ValueError`` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None:
                w, h = img.size
                if w != h:
                    s = min(w, h)
                    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                if img.size != (size, size):
                    img = img.resize((size, size), Image.LANCZOS)
            arr = np.asarray(img, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path} ({type(err).__name__}: {err})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0
