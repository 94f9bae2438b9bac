"""Tiny open_clip model for offline tests: same CLIP class and tokenizer as ViT-B-32,
3.4 M random parameters, 64 px input, 64-d embeddings."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip
import torch

TINY_CLIP = "StyleShift-Tiny-CLIP"
TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_clip() -> str:
    """Register the tiny config with open_clip once per process; returns its architecture name."""
    if TINY_CLIP not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="tiny_clip_"))
        path = folder / f"{TINY_CLIP}.json"
        path.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(path)
    return TINY_CLIP


def make_tiny_clip(seed: int = 0, **kwargs):
    """A :class:`models.clip.CLIPModel` with random tiny weights drawn from ``torch.manual_seed(seed)``."""
    from models.clip import CLIPModel

    name = register_tiny_clip()
    torch.manual_seed(seed)
    return CLIPModel(name=name, pretrained=None, **kwargs)
