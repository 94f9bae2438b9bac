"""Networks of the StyleGAN-NADA latent mapper ("mining"), spec nada_expansion.md §A8.

* :class:`LevelsMapper` (default) / :class:`SingleMapper`: StyleCLIP's latent mapper, an edit
  ``w' = w + scale · M(w)`` on W+ codes. A sub-mapper is PixelNorm followed by 4 EqualLinear layers
  (lr_mul 0.01, fused leaky ReLU), applied to every code on its own; ``LevelsMapper`` has one sub-mapper for
  the coarse codes 0-3, one for the medium codes 4-7 and one for the fine codes 8+. Attribute names follow
  StyleCLIP's checkpoints (``course_mapping`` - sic -, ``medium_mapping``, ``fine_mapping``).
The identity network of the mapper's identity loss lives in :mod:`models.identity`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.stylegan2_layers import EqualLinear, PixelNorm

#: W+ index ranges of the levels (coarse, medium, fine), as in StyleCLIP
LEVELS = {"coarse": (0, 4), "medium": (4, 8), "fine": (8, None)}


class SubMapper(nn.Module):
    """PixelNorm + ``n_layers`` x EqualLinear(dim, dim, lr_mul, fused leaky ReLU), per code."""

    def __init__(self, dim: int = 512, n_layers: int = 4, lr_mul: float = 0.01):
        super().__init__()
        layers: list[nn.Module] = [PixelNorm()]
        layers += [EqualLinear(dim, dim, lr_mul=lr_mul, activation="fused_lrelu") for _ in range(n_layers)]
        self.mapping = nn.Sequential(*layers)

    def forward(self, codes: Tensor) -> Tensor:
        """``codes`` ``[B, k, dim]`` -> ``[B, k, dim]``; every code is normalized and mapped independently."""
        b, k, d = codes.shape
        return self.mapping(codes.reshape(b * k, d)).reshape(b, k, d)


class LevelsMapper(nn.Module):
    """Three independent sub-mappers for the coarse / medium / fine W+ codes (§A8 "Model").

    ``coarse``/``medium``/``fine`` False zero that level's output (StyleCLIP's ``--no_*_mapper``).
    """

    def __init__(self, style_dim: int = 512, n_latent: int = 18, n_layers: int = 4, lr_mul: float = 0.01,
                 coarse: bool = True, medium: bool = True, fine: bool = True):
        super().__init__()
        self.style_dim, self.n_latent = style_dim, n_latent
        self.enabled = {"coarse": coarse, "medium": medium, "fine": fine}
        if not any(self.enabled.values()):
            raise ValueError("LevelsMapper needs at least one of coarse / medium / fine")
        self.course_mapping = SubMapper(style_dim, n_layers, lr_mul) if coarse else None
        self.medium_mapping = SubMapper(style_dim, n_layers, lr_mul) if medium else None
        self.fine_mapping = SubMapper(style_dim, n_layers, lr_mul) if fine else None

    def forward(self, w_plus: Tensor) -> Tensor:
        """``M(w+)`` ``[B, n_latent, D]`` (zeros for disabled levels and for levels beyond ``n_latent``)."""
        if w_plus.dim() != 3 or w_plus.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(f"expected W+ [B, {self.n_latent}, {self.style_dim}], got {tuple(w_plus.shape)}")
        parts = []
        for (_level, (start, stop)), mapper in zip(LEVELS.items(), (self.course_mapping, self.medium_mapping,
                                                                    self.fine_mapping)):
            codes = w_plus[:, start:stop]
            if codes.shape[1] == 0:
                continue
            parts.append(mapper(codes) if mapper is not None else torch.zeros_like(codes))
        return torch.cat(parts, dim=1)


class SingleMapper(nn.Module):
    """One sub-mapper shared by every W+ code (StyleCLIP's ``SingleMapper``)."""

    def __init__(self, style_dim: int = 512, n_latent: int = 18, n_layers: int = 4, lr_mul: float = 0.01):
        super().__init__()
        self.style_dim, self.n_latent = style_dim, n_latent
        self.mapping = SubMapper(style_dim, n_layers, lr_mul)

    def forward(self, w_plus: Tensor) -> Tensor:
        if w_plus.dim() != 3 or w_plus.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(f"expected W+ [B, {self.n_latent}, {self.style_dim}], got {tuple(w_plus.shape)}")
        return self.mapping(w_plus)


def build_mapper(kind: str, style_dim: int, n_latent: int, **levels: bool) -> nn.Module:
    """``"levels"`` (default of the reference) or ``"single"``."""
    if kind == "levels":
        return LevelsMapper(style_dim, n_latent, **levels)
    if kind == "single":
        if not all(levels.values()):
            raise ValueError("coarse/medium/fine switches apply to the 'levels' mapper only")
        return SingleMapper(style_dim, n_latent)
    raise ValueError(f"mapper must be 'levels' or 'single', got {kind!r}")


__all__ = ["LevelsMapper", "SingleMapper", "SubMapper", "build_mapper", "LEVELS"]
