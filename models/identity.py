"""The IR-SE50 face-identity network (asset ``identity-arcface-ir-se50``; docs/methods/nada.md, "Mapper loss").

Laid out like the ``model_ir_se50.pth`` weights used by pSp, StyleCLIP and StyleGAN-NADA's mapper
identity loss, with the pSp crop/pool preprocessing in :meth:`ArcFaceIRSE50.embed`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class _UnitIRSE(nn.Module):
    """Improved-residual unit with squeeze-excitation: BN, conv3x3, PReLU, conv3x3(stride), BN, SE."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        if c_in == c_out:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.res_layer = nn.Sequential(nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
                                       nn.PReLU(c_out), nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False),
                                       nn.BatchNorm2d(c_out), _SqueezeExcite(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class ArcFaceIRSE50(nn.Module):
    """IR-SE50 on 112x112 faces -> unit 512-d identity embeddings (the network of ``model_ir_se50.pth``).

    :meth:`embed` applies the pSp identity-loss preprocessing to generator images in [-1, 1] (no value
    normalization): average-pool to 256x256, crop rows 35:223 and columns 32:220, average-pool to 112x112.
    ``stages``/``width`` shrink the network for tests; the defaults are the real IR-SE50.
    """

    STAGES = ((64, 3), (128, 4), (256, 14), (512, 3))

    def __init__(self, stages: tuple[tuple[int, int], ...] = STAGES, embed_dim: int = 512):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units, c_in = [], 64
        for c_out, count in stages:
            units.append(_UnitIRSE(c_in, c_out, 2))
            units += [_UnitIRSE(c_out, c_out, 1) for _ in range(count - 1)]
            c_in = c_out
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(c_in), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(c_in * 7 * 7, embed_dim), nn.BatchNorm1d(embed_dim))

    def forward(self, faces: Tensor) -> Tensor:
        """Aligned faces ``[B, 3, 112, 112]`` -> unit embeddings ``[B, embed_dim]``."""
        return F.normalize(self.output_layer(self.body(self.input_layer(faces))), dim=-1)

    def embed(self, images: Tensor) -> Tensor:
        """Generator images in [-1, 1] (FFHQ-aligned) -> unit identity embeddings."""
        if images.shape[-2:] != (256, 256):
            images = F.adaptive_avg_pool2d(images, (256, 256))
        return self(F.adaptive_avg_pool2d(images[:, :, 35:223, 32:220], (112, 112)))


def load_arcface(path, map_location="cpu", stages=ArcFaceIRSE50.STAGES) -> ArcFaceIRSE50:
    """IR-SE50 from a ``model_ir_se50.pth`` state dict (loaded with ``weights_only=True``), frozen, eval mode."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        net = ArcFaceIRSE50(stages)
        net.load_state_dict({k.removeprefix("module.").removeprefix("facenet."): v for k, v in state.items()})
    except Exception as err:
        raise ValueError(f"cannot load the IR-SE50 identity network from {path}: {type(err).__name__}: {err}") from err
    return net.requires_grad_(False).eval()


__all__ = ["ArcFaceIRSE50", "load_arcface"]
