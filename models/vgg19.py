"""Frozen VGG19 feature extractor: ReLU outputs ``relu1_1`` ... ``relu5_1`` of torchvision's ImageNet VGG19.

DualStyleGAN (Yang et al., "Pastiche Master", CVPR 2022; docs/methods/dualstylegan.md) reads VGG19 features for
its contextual loss (``relu3_1``), its Stage II/III perceptual loss (``relu1_1`` .. ``relu3_1``) and its feature
matching loss (channel means of ``relu2_1`` / ``relu3_1``). Inputs are generator images in [-1, 1]; they are
mapped to ImageNet normalisation, ``(x - (2 mean - 1)) / (2 std)``, which equals torchvision's
``((x + 1) / 2 - mean) / std``.

Weights: torchvision's ``vgg19`` ImageNet file through the asset registry (asset ``vgg19``, ``python -m
models.assets fetch vgg19``); ``weights=None`` builds a seeded random stand-in for tests and offline smoke runs
(its ``name`` says so; never a perceptual loss of record). Only the convolutions up to the deepest requested
layer are built. The module is frozen and always in eval mode (``models.frozen``).
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from models import assets
from models.frozen import HoldsFrozen, freeze

__all__ = ["VGG19Features", "VGG19_LAYERS", "VGG19WeightsError", "IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_WEIGHTS"]

DEFAULT_WEIGHTS = "vgg19"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_LAYERS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
"""Index of each ReLU output in torchvision's ``vgg19().features``."""


class VGG19WeightsError(ValueError):
    """A VGG19 weight file is unreadable or not torchvision's layout; the message names the file."""


def _features(end: int) -> nn.Sequential:
    """``vgg19().features[:end]`` built on the meta device (the 120 M-parameter classifier is never allocated)."""
    from torchvision.models import vgg19

    with torch.device("meta"):
        features = vgg19(weights=None).features[:end]
    return features.to_empty(device="cpu")


def _load_state(path: os.PathLike | str, end: int) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets one message
        raise VGG19WeightsError(f"{path}: cannot read a VGG19 state dict ({type(err).__name__}: {err}); "
                                f"re-download asset '{DEFAULT_WEIGHTS}'") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise VGG19WeightsError(f"{path}: expected a torchvision VGG19 state dict, got {type(state).__name__}")
    picked = {}
    for key, value in state.items():
        parts = str(key).split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[1].isdigit() and int(parts[1]) < end:
            picked[f"{parts[1]}.{parts[2]}"] = value
    return picked


class VGG19Features(HoldsFrozen):
    """Frozen VGG19 returning the ReLU maps named in ``layers`` (in that order) for images in [-1, 1].

    Args:
        layers: names out of :data:`VGG19_LAYERS` (default ``relu1_1``, ``relu2_1``, ``relu3_1``).
        weights: an asset name or a torchvision ``vgg19`` state-dict file (default the asset ``vgg19``; missing ->
            ``AssetMissingError`` saying how to get it), or ``None`` for a seeded random stand-in.
        seed: seed of the stand-in; the global RNG is left untouched.
    """

    always_eval = True

    def __init__(self, layers: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1"),
                 weights: str | os.PathLike | None = DEFAULT_WEIGHTS, seed: int = 0):
        super().__init__()
        layers = tuple(layers)
        unknown = [n for n in layers if n not in VGG19_LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG19 layers {unknown or '(none given)'}; choose from {list(VGG19_LAYERS)}")
        self.layers = layers
        end = max(VGG19_LAYERS[n] for n in layers) + 1
        self.features = _features(end)
        if weights is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for module in self.features.modules():
                    if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
                        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                        nn.init.zeros_(module.bias)
            self.name, self.pretrained = f"vgg19-random-standin(seed={seed})", False
        else:
            path = assets.resolve(weights)
            state = _load_state(path, end)
            try:
                self.features.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise VGG19WeightsError(f"{path}: does not fit torchvision's VGG19 features[:{end}]: {err}") from None
            self.name, self.pretrained = os.fspath(weights), True
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 2 - 1, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 2, persistent=False)
        freeze(self)

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}, name={self.name!r}, pretrained={self.pretrained}"

    def forward(self, images: Tensor) -> list[Tensor]:
        """ReLU maps ``[B, C_l, H_l, W_l]`` of images ``[B, 3, H, W]`` in [-1, 1]; gradients flow to ``images``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        wanted = {VGG19_LAYERS[n]: n for n in self.layers}
        found: dict[str, Tensor] = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                found[wanted[index]] = x
        return [found[n] for n in self.layers]
