"""A fixed random-feature extractor for offline evaluation (docs/metrics.md, "Stand-in extractors for
offline runs").

It is **not** Inception: FID/KID computed with it are only comparable with values measured by this same
extractor. Its name and weight hash are part of every logged protocol and of the metric key
(``fid1k/ema@metrics.standin:random_features``), so such numbers never mix with Inception FID. It lets
the offline demo and CPU smoke runs exercise the whole evaluation path without any download:

    metrics:
      fid:standin: {extractor: "metrics.standin:random_features", resize: none, num_gen: 1024}
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RandomFeatures(nn.Module):
    """Three random conv layers (weights from ``torch.Generator().manual_seed(seed)``), features
    mean-pooled at two scales: float ``[B, 3, H, W]`` in [0, 255] -> ``[B, 2 * width]``."""

    def __init__(self, seed: int = 0, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width // 2, width, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2, self.conv3):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x / 127.5 - 1.0), 0.2)
        h2 = F.leaky_relu(self.conv2(h), 0.2)
        h3 = F.leaky_relu(self.conv3(h2), 0.2)
        return torch.cat([h2.mean(dim=(2, 3)), h3.mean(dim=(2, 3))], dim=1)


def random_features() -> RandomFeatures:
    """Factory named in configs as ``extractor: "metrics.standin:random_features"``."""
    return RandomFeatures().eval()
