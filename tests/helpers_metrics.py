"""Stand-ins for the metric tests: a fixed random feature network, tiny image folders and samplers."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metrics.features import FeatureExtractor, custom_extractor
from metrics.reference import ReferenceSet
from models.sampler import latent_sampler


class StandInNet(torch.nn.Module):
    """Small fixed random conv net: float [B, 3, H, W] in [0, 255] -> [B, 16] (clean-fid's custom extractor
    convention). Weights come from ``torch.Generator().manual_seed(seed)``, independent of global RNG."""

    def __init__(self, seed: int = 0, dim: int = 16):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.conv2 = torch.nn.Conv2d(8, dim, 3, stride=2)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = torch.tanh(self.conv1(x / 127.5 - 1.0))
        return torch.tanh(self.conv2(h)).mean(dim=(2, 3)) * 3.0


def standin_extractor(resize: str = "clean", seed: int = 0) -> FeatureExtractor:
    return custom_extractor(StandInNet(seed), "standin", resize=resize)


def write_folder(folder: Path, n: int, seed: int, shift: int = 0, size: int = 32) -> Path:
    """``n`` random RGB PNGs (values shifted by ``shift``) named 000.png, 001.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(seed)
    for i in range(n):
        img = (rs.rand(size, size, 3) * 200 + shift).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


def tensor_reference(images: torch.Tensor, name: str = "ref", which: str = "full") -> ReferenceSet:
    """A ReferenceSet over uint8 ``images`` whose content hash is the sha256 of their bytes."""
    h = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()

    def batches(bs: int):
        for s in range(0, len(images), bs):
            yield images[s:s + bs]

    return ReferenceSet(name, h, len(images), batches, resolution=images.shape[-1], info={"which": which})


def folder_reference(folder: Path) -> ReferenceSet:
    files = sorted(folder.glob("*.png"))
    arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return tensor_reference(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), folder.name)


class TinyRenderer(torch.nn.Module):
    """z [B, 8] -> images [B, 3, size, size] in [-1, 1] through a fixed random linear map."""

    def __init__(self, seed: int = 0, size: int = 32, z_dim: int = 8, offset: float = 0.0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.size, self.z_dim, self.offset = size, z_dim, offset
        self.register_buffer("w", torch.randn(z_dim, 3 * 8 * 8, generator=gen))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = (z @ self.w).view(-1, 3, 8, 8)
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.tanh(0.7 * x + self.offset)


def tiny_sampler(seed: int = 0, size: int = 32, offset: float = 0.0):
    net = TinyRenderer(seed, size, offset=offset)
    return latent_sampler(net, net.z_dim)


def standin_native() -> FeatureExtractor:
    """The stand-in at the images' native size (no 299 resize): fast for callback tests."""
    return standin_extractor(resize="none")
