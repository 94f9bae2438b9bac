"""Perceptual network F of In-Domain GAN Inversion (Zhu et al., "In-Domain GAN Inversion for Real Image Editing",
ECCV 2020, Eq. 3-5): VGG16 features at ``conv4_3`` after its ReLU.

The network is torchvision's ``vgg16().features[:23]`` (output ``[B, 512, S/8, S/8]`` for an ``S x S`` input)
loaded with the Caffe-converted VGG16 weights the authors use (asset ``vgg16-caffe-idinvert``, see
``python -m models.assets list``). Those weights expect Caffe / Keras preprocessing, which
:func:`caffe_preprocess` applies to generator images in [-1, 1]: scale to [0, 255], RGB -> BGR, subtract the
per-channel BGR mean ``(103.939, 116.779, 123.68)``, no std division. Images are first resized to
``image_size`` (256) unless already that size, with PyTorch's ``"nearest"`` mode (source index
``floor(i * in / out)``, the nearest-neighbour resize of the authors' training code). Feature magnitudes are
therefore on the Caffe scale, which is what the paper's feature weight ``lambda_vgg = 5e-5`` is tuned to
(``losses.perceptual``).

``weights=None`` builds a randomly initialised VGG from a fixed seed: a stand-in for offline runs and tests
only (its ``name`` says so), never a perceptual metric.

The network is frozen (``requires_grad=False``) and stays in eval mode whatever ``train()`` is asked; a method
holds it with ``HoldsFrozen.hold`` (``models.frozen``, docs/adding_a_method.md "Frozen networks").
"""
from __future__ import annotations

import os
import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import assets
from models.frozen import HoldsFrozen, freeze

__all__ = ["CAFFE_BGR_MEAN", "CONV4_3_END", "DEFAULT_WEIGHTS", "PerceptualWeightsError", "VGG16Perceptual",
           "caffe_preprocess", "load_caffe_vgg16_state_dict", "map_official_vgg16_keys"]

DEFAULT_WEIGHTS = "vgg16-caffe-idinvert"
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # B, G, R means on the [0, 255] scale
CONV4_3_END = 23  # features[:23] ends with the ReLU after conv4_3
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # conv layers in vgg16().features
_OFFICIAL_KEY = re.compile(r"^layer(\d+)\.(weight|bias)$")


class PerceptualWeightsError(ValueError):
    """A VGG16 weight file does not have the expected layout; the message names the file."""


def caffe_preprocess(images: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    """Images ``[B, 3, H, W]`` RGB in ``[min_val, max_val]`` -> Caffe VGG input: [0, 255], BGR, minus the BGR mean."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
    x = (images - min_val) * (255.0 / (max_val - min_val))
    x = x.flip(1)  # RGB -> BGR
    mean = torch.tensor(CAFFE_BGR_MEAN, device=x.device, dtype=x.dtype)
    return x - mean.view(1, 3, 1, 1)


def map_official_vgg16_keys(state_dict: Mapping[str, Tensor], source: str = "<state dict>",
                            end: int = CONV4_3_END) -> dict[str, Tensor]:
    """Rename the authors' VGG16 layout (``layer{i}.weight`` / ``layer{i}.bias``, ``i`` the index in the
    VGG16 conv stack, the same as torchvision's) to ``features.{i}.*`` for the layers below ``end``.

    Strict: every conv below ``end`` must be present, the only other keys allowed are the remaining VGG16
    convs (conv5_x, dropped); anything else raises :class:`PerceptualWeightsError` naming ``source``.
    """
    keys = list(state_dict)
    if keys and all(k.startswith(("features.", "classifier.")) for k in keys):
        raise PerceptualWeightsError(
            f"{source}: this looks like a torchvision VGG16 state dict (features.* keys), which expects "
            f"ImageNet-normalised RGB in [0, 1]; the perceptual network needs the Caffe-converted weights of "
            f"asset '{DEFAULT_WEIGHTS}' (layer0.weight, layer0.bias, ...)")
    mapped: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key in keys:
        match = _OFFICIAL_KEY.match(key)
        index = int(match.group(1)) if match else -1
        if index not in VGG16_CONV_INDICES:
            unexpected.append(key)
        elif index < end:
            mapped[f"features.{index}.{match.group(2)}"] = state_dict[key]
    needed = [f"features.{i}.{p}" for i in VGG16_CONV_INDICES if i < end for p in ("weight", "bias")]
    missing = [f"layer{k.split('.')[1]}.{k.split('.')[2]}" for k in needed if k not in mapped]
    if missing or unexpected:
        raise PerceptualWeightsError(
            f"{source}: not the expected VGG16 layout (layer{{i}}.weight/bias for the conv layers "
            f"{list(VGG16_CONV_INDICES)}): missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    return mapped


def load_caffe_vgg16_state_dict(path: str | os.PathLike, end: int = CONV4_3_END) -> dict[str, Tensor]:
    """Read the authors' ``vgg16.pth`` (a plain state dict, loaded with ``weights_only=True``) as ``features.*``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file (truncated, an HTML page, a pickle) gets one clear message
        raise PerceptualWeightsError(f"{path}: cannot read a VGG16 state dict ({type(err).__name__}: {err}); "
                                     f"re-download asset '{DEFAULT_WEIGHTS}'") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PerceptualWeightsError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return map_official_vgg16_keys(state, source=str(path), end=end)


def _vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features[:23]`` with uninitialised CPU weights; the model is built on the meta
    device, so the discarded classifier (~120 M parameters) is never allocated or initialised."""
    from torchvision.models import vgg16

    with torch.device("meta"):
        features = vgg16(weights=None).features[:CONV4_3_END]
    return features.to_empty(device="cpu")


def _init_like_torchvision(features: nn.Module) -> None:
    """The initialisation torchvision's VGG applies to its convs (Kaiming normal, fan-out, ReLU; zero bias)."""
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)


class VGG16Perceptual(HoldsFrozen):
    """Frozen VGG16 ``conv4_3`` (after ReLU) feature extractor F for images in [-1, 1].

    Args:
        weights: an asset name or a path to the authors' Caffe-converted ``vgg16.pth`` (default
            ``"vgg16-caffe-idinvert"``, resolved offline through ``models.assets``; missing ->
            ``AssetMissingError`` with download instructions), or ``None`` for a seeded random stand-in.
        image_size: inputs are resized (nearest) to ``image_size x image_size`` first; ``None`` keeps their size.
        seed: seed of the random stand-in (``weights=None``); the global RNG is left untouched.

    Attributes: ``features`` (torchvision ``vgg16().features[:23]``), ``name`` (the asset name or file, or
    ``"vgg16-random-standin(seed=N)"``), ``pretrained`` (bool), ``image_size``.
    """

    always_eval = True

    def __init__(self, weights: str | os.PathLike | None = DEFAULT_WEIGHTS, image_size: int | None = 256,
                 seed: int = 0):
        super().__init__()
        self.image_size = None if image_size is None else int(image_size)
        if weights is None:
            self.features = _vgg16_features()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                _init_like_torchvision(self.features)
            self.name = f"vgg16-random-standin(seed={seed})"
            self.pretrained = False
        else:
            path = assets.resolve(weights)
            state = load_caffe_vgg16_state_dict(path)
            self.features = _vgg16_features()
            try:
                self.load_state_dict(state, strict=True)
            except RuntimeError as err:  # shape mismatches
                raise PerceptualWeightsError(f"{path}: does not fit VGG16 conv1_1..conv4_3: {err}") from err
            self.name = os.fspath(weights)
            self.pretrained = True
        freeze(self)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, pretrained={self.pretrained}, image_size={self.image_size}"

    def preprocess(self, images: Tensor) -> Tensor:
        """Nearest resize to ``image_size`` (skipped when equal), then :func:`caffe_preprocess`."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
        size = self.image_size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="nearest")
        return caffe_preprocess(images)

    def forward(self, images: Tensor) -> Tensor:
        """``F(x)``: ``[B, 512, S/8, S/8]`` conv4_3 features (Caffe scale); gradients flow to ``images``."""
        dtype = self.features[0].weight.dtype
        x = self.preprocess(images.to(dtype))
        return self.features(x)
