"""Feature extraction for FID/KID: quantization, resize, extractors (docs/metrics.md, "FID and KID").

Pipeline for every image, real or generated (the same path for both):

1. generated images in [-1, 1] are quantized like NVIDIA (:func:`quantize`); real images already are uint8;
2. the resize of the protocol turns uint8 ``[B, 3, H, W]`` into float32 ``[B, 3, S, S]`` in [0, 255]:
   ``clean`` is clean-fid's own PIL-bicubic resize on float channels (``cleanfid.resize.make_resizer``),
   one image per task of a thread pool (PIL releases the GIL), each written into one preallocated NCHW
   output buffer; ``legacy_tensorflow`` leaves resizing to the TorchScript Inception (NVIDIA's path);
   ``none`` keeps the native size (custom extractors);
3. the extractor maps that to float features ``[B, D]``.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

INCEPTION_ASSET = "inception-2015-12-05"
RESIZE_MODES = ("clean", "legacy_tensorflow", "none")
#: CLIP model name -> asset name of its OpenAI weights (models/assets.py).
CLIP_ASSETS = {"ViT-B-32": "clip-vit-b-32-openai", "ViT-B-16": "clip-vit-b-16-openai"}

_POOL: ThreadPoolExecutor | None = None


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 exactly as NVIDIA: ``(x * 127.5 + 128).clamp(0, 255).to(uint8)``.

    The cast truncates, and after the clamp every value is >= 0, so this is ``floor(127.5 x + 128)``
    = round-half-up of ``127.5 (x + 1)`` (docs/metrics.md, "Quantization").
    Non-finite values raise instead of turning into arbitrary bytes.
    """
    if images.dtype == torch.uint8:
        return images
    if not torch.isfinite(images).all():
        raise ValueError("generated images contain NaN/inf; refusing to compute a metric on them")
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_module(module: torch.nn.Module) -> str:
    """sha256 over the module's state dict (names, dtypes, shapes and bytes, in order)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        # sized from torch's thread budget, not the machine's core count (the two share the same cores)
        _POOL = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="clean-resize")
    return _POOL


def make_resize(mode: str, size: int = 299) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 ``[B, 3, H, W]`` -> float32 ``[B, 3, S, S]`` (contiguous) in [0, 255] on CPU for resize ``mode``."""
    if mode == "clean":
        from cleanfid.resize import make_resizer

        fn = make_resizer("PIL", False, "bicubic", (size, size))  # HWC uint8 -> HWC float32

        def resize_into(out: np.ndarray, image: np.ndarray) -> None:
            out[...] = fn(image).transpose(2, 0, 1)

        def clean(images: torch.Tensor) -> torch.Tensor:
            arrays = images.detach().cpu().permute(0, 2, 3, 1).numpy()  # a view: clean-fid reads HWC
            out = np.empty((len(arrays), 3, size, size), dtype=np.float32)
            if len(arrays) == 1:
                resize_into(out[0], arrays[0])
            else:
                for _ in _pool().map(resize_into, out, arrays):  # consumed: worker errors raise here
                    pass
            return torch.from_numpy(out)

        return clean
    if mode in ("legacy_tensorflow", "none"):
        return lambda images: images.detach().cpu().float()
    raise ValueError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES}")


@dataclass
class FeatureExtractor:
    """A named feature network applied after a resize: ``extractor(uint8 [B,3,H,W]) -> float [B, D]``.

    ``net`` receives float32 ``[B, 3, S, S]`` in [0, 255] on ``device`` (clean-fid's
    ``custom_feat_extractor`` convention). ``sha256`` pins the weights (file hash or state-dict hash).
    """

    name: str
    net: Callable[[torch.Tensor], torch.Tensor]
    sha256: str | None
    resize: str = "clean"
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        self._resize = make_resize(self.resize)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"extractor {self.name!r} takes uint8 images; quantize generated images first")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        x = self._resize(images).to(self.device)
        feats = self.net(x)
        if feats.ndim != 2 or feats.shape[0] != images.shape[0]:
            raise ValueError(f"extractor {self.name!r} returned shape {tuple(feats.shape)}, expected [B, D]")
        return feats


class _TorchScriptInception(torch.nn.Module):
    """NVIDIA's TorchScript Inception-2015-12-05 as clean-fid calls it (``InceptionV3W``):
    pool3 features [B, 2048] of ``(x - 128) / 128`` at 299x299, or of the raw [0, 255] image with the
    network's own resize for ``legacy_tensorflow``."""

    def __init__(self, path: Path, resize_inside: bool):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
            self.base = torch.jit.load(str(path), map_location="cpu").eval()
        self.resize_inside = resize_inside

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.resize_inside:
            return self.base(x, return_features=True).view(b, 2048)
        if x.shape[-2:] != (299, 299):
            raise ValueError(f"clean-mode Inception needs 299x299 inputs, got {tuple(x.shape[-2:])}")
        return self.base.layers.forward((x - 128) / 128).view(b, 2048)


def inception_extractor(path: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                        resize: str = "clean") -> FeatureExtractor:
    """clean-fid's Inception with its weights from the asset registry (``inception-2015-12-05``)."""
    if resize not in ("clean", "legacy_tensorflow"):
        raise ValueError("the Inception extractor supports resize 'clean' or 'legacy_tensorflow'")
    if path is None:
        from models.assets import resolve

        path = resolve(INCEPTION_ASSET)
    net = _TorchScriptInception(Path(path), resize_inside=resize == "legacy_tensorflow").to(device)
    return FeatureExtractor(INCEPTION_ASSET, net, sha256_file(path), resize, device)


def custom_extractor(net: Callable[[torch.Tensor], torch.Tensor], name: str, resize: str = "clean",
                     sha256: str | None = None, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Any callable ``float [B,3,S,S] in [0,255] -> [B, D]`` (clean-fid's ``custom_feat_extractor``)."""
    if isinstance(net, torch.nn.Module):
        net = net.to(device).eval()
        sha256 = sha256 or sha256_module(net)
    return FeatureExtractor(name, net, sha256, resize, device)


def clip_extractor(clip, name: str, device: torch.device | str = "cpu", sha256: str | None = None) -> FeatureExtractor:
    """Normalized CLIP image embeddings as features, through the project's one CLIP wrapper
    (``models.clip.CLIPModel.encode_images`` takes [-1, 1] and does CLIP's own preprocessing)."""

    def net(x: torch.Tensor) -> torch.Tensor:
        return clip.encode_images(x / 127.5 - 1.0).float()

    return FeatureExtractor(name, net, sha256, "none", device)


def parse_clip_spec(spec: str) -> tuple[str, str]:
    """``clip:<model>[@<asset name or weights path>]`` -> ``(model, weights)``; the OpenAI asset by default."""
    body = spec.split(":", 1)[1]
    model, _, weights = body.partition("@")
    if not weights:
        if model not in CLIP_ASSETS:
            raise ValueError(f"no default weights for CLIP model {model!r}; write 'clip:{model}@<asset or path>' "
                             f"(registered: {sorted(CLIP_ASSETS)})")
        weights = CLIP_ASSETS[model]
    return model, weights


def required_assets(spec: str) -> list[str]:
    """Asset names (or files) an extractor spec needs; checked when a run starts, before any training."""
    if spec in ("inception", INCEPTION_ASSET):
        return [INCEPTION_ASSET]
    if spec.startswith("clip:"):
        return [parse_clip_spec(spec)[1]]
    return []


def build_extractor(spec: str, device: torch.device | str = "cpu", resize: str | None = None) -> FeatureExtractor:
    """Extractor from a config string: ``inception`` (clean-fid Inception), ``clip:<open_clip model>``
    (e.g. ``clip:ViT-B-32``, OpenAI weights via the asset registry; ``clip:<model>@<asset|path>``) or
    ``package.module:factory`` (a callable returning an ``nn.Module`` or a :class:`FeatureExtractor`)."""
    if spec in ("inception", INCEPTION_ASSET):
        return inception_extractor(device=device, resize=resize or "clean")
    if spec.startswith("clip:"):
        from models.clip import CLIPModel

        model, weights = parse_clip_spec(spec)
        from models.assets import resolve

        sha = sha256_file(resolve(weights))
        clip = CLIPModel(model, pretrained=weights, device=device)
        return clip_extractor(clip, spec, device, sha256=sha)
    if ":" in spec:
        mod_name, attr = spec.split(":", 1)
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot import feature extractor {spec!r}: {e}") from e
        made = factory()
        if isinstance(made, FeatureExtractor):
            return made
        return custom_extractor(made, spec, resize=resize or "clean", device=device)
    raise ValueError(f"unknown feature extractor {spec!r}: use 'inception', 'clip:<model>' or 'module:factory'")
