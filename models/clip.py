"""Frozen CLIP encoders for CLIP-guided losses (docs/methods/nada.md, "CLIP preprocessing and loading").

:class:`CLIPModel` wraps an open_clip model that is

* loaded from a local file through the asset registry (``models.assets``), never downloaded; OpenAI weights
  get the QuickGELU activation they were trained with;
* frozen (``requires_grad_(False)``) and always in eval mode, whatever its owner's ``train()`` asks;
* structurally outside its owner: the open_clip model sits in a plain attribute container, so it is not a
  submodule. Its parameters never appear in the owner's ``parameters()`` (hence in no optimizer) nor in its
  ``state_dict()`` (hence in no checkpoint), like the reference, which keeps its CLIP models in a plain
  ``dict``. Device moves of the owner (``.to()``, ``.cuda()``) are forwarded by :meth:`CLIPModel._apply`;
  the model keeps its own dtype (fp32 by default).

Generated images in [-1, 1] are encoded with the reference preprocessing P: ``(x + 1) / 2`` without a
clamp, bicubic resize of the shorter side to the model's input size **without antialiasing** (the
reference's torchvision 0.8 tensor resize), center crop, CLIP mean/std. ``preprocessing="antialias"`` is the
same with an antialiased resize. Real images (image-guided targets) use open_clip's standard PIL pipeline.
Every encoder call runs with autocast disabled, in the model's dtype: under ``bf16-mixed`` on CPU a frozen
CLIP in bf16 is 5-6x slower than fp32.
"""
from __future__ import annotations

import difflib
import functools
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from models.clip_templates import IMAGENET_TEMPLATES, fill
from models.frozen import HoldsFrozen

PREPROCESSING = ("reference", "antialias")

# Registered OpenAI CLIP assets -> the open_clip architecture their weights belong to. OpenAI trained
# with QuickGELU, which open_clip's plain "ViT-B-32" / "ViT-B-16" configs do not use.
OPENAI_ASSETS = {"clip-vit-b-32-openai": "ViT-B-32", "clip-vit-b-16-openai": "ViT-B-16"}

# Integer entries of an OpenAI TorchScript archive's state dict that are not open_clip parameters.
_OPENAI_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def direction_from_template_embeddings(source: Tensor, target: Tensor) -> Tensor:
    """Text direction ``ΔT = n(mean_k(e_tgt,k - e_src,k))`` from per-template normalized text embeddings
    ``[K, D]`` (normalized per template *before* averaging; docs/methods/nada.md, "Directional CLIP loss").
    Returns ``[1, D]``."""
    if source.shape != target.shape or source.dim() != 2:
        raise ValueError(f"expected two [K, D] embedding tensors, got {tuple(source.shape)} and {tuple(target.shape)}")
    direction = (target - source).mean(dim=0, keepdim=True)
    norm = direction.norm(dim=-1, keepdim=True)
    if not torch.all(norm > 0):
        raise ValueError("source and target texts have identical CLIP embeddings: the text direction is zero")
    return direction / norm


def resolve_weights(pretrained: str | os.PathLike) -> Path:
    """Local file for an asset name or an existing path (never downloads; docs/architecture.md,
    "Assets, offline first").

    Raises ``models.assets.AssetMissingError`` (a ``FileNotFoundError``) naming the file, its URL and where to
    put it.
    """
    from models.assets import resolve  # imported lazily: the registry is only needed when weights are loaded

    return Path(resolve(pretrained))


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI distributes CLIP as TorchScript archives (zip files with a ``code/`` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


class _DropRandomInitWarning(logging.Filter):
    """Silences open_clip's "initialized randomly" warning while weights are loaded right after creation."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def load_open_clip(name: str, pretrained: str | os.PathLike | None, quick_gelu: bool | None = None) -> nn.Module:
    """Build open_clip architecture ``name`` and load ``pretrained`` (asset name, file path, or ``None`` for
    random weights). ``quick_gelu=None`` means: on for the registered OpenAI assets, else as configured."""
    arch = name.replace("/", "-")
    known = open_clip.list_models()
    if arch not in known:
        hint = difflib.get_close_matches(arch, known, n=3)
        raise ValueError(f"unknown open_clip architecture {name!r}" + (f"; did you mean {hint}?" if hint else ""))
    expected = OPENAI_ASSETS.get(pretrained) if isinstance(pretrained, str) else None
    if expected is not None and arch.removesuffix("-quickgelu") != expected:
        raise ValueError(f"CLIP asset {pretrained!r} holds {expected} weights, not {name!r}")
    if quick_gelu is None:
        quick_gelu = expected is not None
    if pretrained is None:
        return open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)

    path = resolve_weights(pretrained)
    try:
        if not _is_torchscript_archive(path):
            return open_clip.create_model(arch, pretrained=str(path), force_quick_gelu=quick_gelu)
        root = logging.getLogger()
        quiet = _DropRandomInitWarning()
        root.addFilter(quiet)
        try:
            model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)
        finally:
            root.removeFilter(quiet)
        with warnings.catch_warnings():  # torch deprecates TorchScript, the format OpenAI ships CLIP in
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        transient = {key for key, _ in model.named_buffers()} - set(model.state_dict())  # e.g. attn_mask
        for key in (*_OPENAI_ARCHIVE_EXTRAS, *transient):
            state.pop(key, None)
        model.load_state_dict(state, strict=True)
        return model
    except Exception as err:  # corrupt file, wrong architecture, unknown format: say which file and model
        raise ValueError(
            f"cannot load CLIP weights {pretrained!r} ({path}) into open_clip architecture {arch!r}: "
            f"{type(err).__name__}: {err}"
        ) from err


@functools.lru_cache(maxsize=None)
def tokenizer_for(arch: str):
    """open_clip's tokenizer for ``arch``, built once per process (reading the BPE vocabulary takes ~0.3 s)."""
    return open_clip.get_tokenizer(arch)


class CLIPModel(HoldsFrozen):
    """A frozen open_clip model with NADA's image and text encoding (docs/methods/nada.md).

    Args:
        name: open_clip architecture (``"ViT-B-32"``, ``"ViT-B-16"``, a registered test config, ...).
        pretrained: asset name (``"clip-vit-b-32-openai"``), path of a weights file (plain / ``state_dict``
            / safetensors checkpoint or an OpenAI TorchScript archive), or ``None`` for random weights.
            Random weights depend on the torch seed: seed identically on every DDP rank.
        device: where the model lives; it then follows its owner's ``.to()``.
        preprocessing: ``"reference"`` (bicubic resize without antialiasing, as the reference) or
            ``"antialias"`` (same with an antialiased resize).
        quick_gelu: force QuickGELU; ``None`` enables it for the registered OpenAI assets.
        dtype: parameter dtype the encoders run in (fp32 by default; fp16 on GPU matches the reference's
            numerics).
    """

    def __init__(
        self,
        name: str = "ViT-B-32",
        pretrained: str | os.PathLike | None = "clip-vit-b-32-openai",
        device: str | torch.device = "cpu",
        preprocessing: str = "reference",
        quick_gelu: bool | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if preprocessing not in PREPROCESSING:
            raise ValueError(f"preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}")
        model = load_open_clip(name, pretrained, quick_gelu)
        self.hold("model", model.to(device=device), dtype=dtype)  # the open_clip model, frozen (models.frozen)
        self.name, self.pretrained, self.preprocessing, self.dtype = name, pretrained, preprocessing, dtype
        self.tokenizer = tokenizer_for(name.replace("/", "-"))
        size = model.visual.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size[0] != size[1]:
            raise ValueError(f"CLIP model {name!r} has a non-square input {size}; only square inputs are supported")
        self.image_size: int = int(size[0])
        self.embed_dim: int = int(model.visual.output_dim)
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self._pil_transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False) if cfg else None
        self._text_cache: dict[tuple, Tensor] = {}
        self.eval()

    # -- frozen, outside the owner -------------------------------------------------------------------
    always_eval = True  # a frozen network itself: ``trainer.fit`` calls ``train()`` on the owner

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _apply(self, fn, recurse: bool = True):
        """Device moves also move the cached text embeddings (the held model moves with the base class)."""
        super()._apply(fn, recurse)
        self._text_cache = {k: fn(v).float() for k, v in self._text_cache.items()}
        return self

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, pretrained={self.pretrained!r}, preprocessing={self.preprocessing!r}, "
                f"image_size={self.image_size}, embed_dim={self.embed_dim}")

    # -- images --------------------------------------------------------------------------------------
    def preprocess(self, images: Tensor) -> Tensor:
        """Reference preprocessing P of generator images in [-1, 1] -> CLIP input (docs/methods/nada.md,
        "CLIP preprocessing and loading").

        ``(x + 1) / 2`` (no clamp), bicubic resize of the shorter side to ``image_size``
        (``align_corners=False``; antialias only with ``preprocessing="antialias"``), center crop, CLIP
        mean/std. Runs in fp32 and is differentiable.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"expected float images in [-1, 1], got dtype {images.dtype}")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or Inf")
        x = (images.float() + 1.0) / 2.0
        x = TF.resize(x, self.image_size, interpolation=InterpolationMode.BICUBIC,
                      antialias=self.preprocessing == "antialias")
        x = TF.center_crop(x, [self.image_size, self.image_size])
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def _encode_pixels(self, pixels: Tensor, normalize: bool) -> Tensor:
        features = self.model.encode_image(pixels.to(device=self.device, dtype=self.dtype)).float()
        return F.normalize(features, dim=-1) if normalize else features

    def encode_images(self, images: Tensor, normalize: bool = True) -> Tensor:
        """``n(E_I(P(x)))`` for generator images ``x`` in [-1, 1] -> fp32 ``[B, D]``; gradients flow to ``x``."""
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self._encode_pixels(self.preprocess(images.to(self.device)), normalize)

    def preprocess_pil(self, images: Sequence) -> Tensor:
        """open_clip's standard PIL pipeline (bicubic shorter side, center crop, RGB, ToTensor, mean/std),
        used for real target images (image-guided mode)."""
        if self._pil_transform is None:
            raise RuntimeError(f"open_clip model {self.name!r} carries no preprocessing config")
        return torch.stack([self._pil_transform(image) for image in images])

    def encode_pil_images(self, images: Sequence, normalize: bool = True) -> Tensor:
        """Embeddings ``[N, D]`` (fp32) of real PIL images."""
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            return self._encode_pixels(self.preprocess_pil(images), normalize)

    # -- text ----------------------------------------------------------------------------------------
    def _encode_prompts(self, prompts: list[str]) -> Tensor:
        """Raw text embeddings ``[N, D]`` (detached, fp32)."""
        tokens = self.tokenizer(prompts).to(self.device)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            return self.model.encode_text(tokens).float()

    @staticmethod
    def _templates(templates: bool | Sequence[str]) -> tuple[str, ...]:
        if templates is True:
            return IMAGENET_TEMPLATES
        if templates is False:
            return ("{}",)
        templates = tuple(templates)
        bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
        if not templates or bad:
            raise ValueError(f"templates must be strings with exactly one '{{}}'; got {bad or 'none'}")
        return templates

    def template_embeddings(self, text: str, templates: bool | Sequence[str] = True) -> Tensor:
        """``[K, D]``: ``n(E_T(t_k(text)))`` for every template ``t_k`` (normalized per template)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        return F.normalize(self._encode_prompts(fill(self._templates(templates), text)), dim=-1)

    def encode_text(self, texts: str | Sequence[str], templates: bool | Sequence[str] = True,
                    normalize: bool = True) -> Tensor:
        """Text embeddings ``[N, D]`` (detached, fp32).

        ``templates=False``: ``E_T(text)``, normalized if ``normalize``. Otherwise (``True`` = the 79
        ImageNet templates, or a list of templates): every templated prompt is normalized, the K embeddings
        are averaged, and the mean is re-normalized if ``normalize`` (the reference's class text features).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if templates is False:
            features = self._encode_prompts(texts)
        else:
            features = torch.stack([self.template_embeddings(t, templates).mean(dim=0) for t in texts])
        return F.normalize(features, dim=-1) if normalize else features

    def class_embedding(self, text: str, templates: bool | Sequence[str] = True) -> Tensor:
        """Cached ``encode_text([text], templates)`` (normalized), shape ``[1, D]``: the reference's class text
        features of the global and manifold losses."""
        key = ("class", text, self._templates(templates))
        if key not in self._text_cache:
            self._text_cache[key] = self.encode_text([text], templates)
        return self._text_cache[key]

    def text_direction(self, source: str, target: str, templates: bool | Sequence[str] = True) -> Tensor:
        """Cached ``ΔT = n(mean_k(n(E_T(t_k(target))) - n(E_T(t_k(source)))))``, shape ``[1, D]``
        (docs/methods/nada.md, "Directional CLIP loss")."""
        key = ("direction", source, target, self._templates(templates))
        if key not in self._text_cache:
            self._text_cache[key] = direction_from_template_embeddings(
                self.template_embeddings(source, templates), self.template_embeddings(target, templates))
        return self._text_cache[key]
