"""Networks of the StyleGAN-NADA latent mapper ("mining"): StyleCLIP's latent mapper.

* :class:`LevelsMapper` (default) / :class:`SingleMapper`: an edit ``w' = w + scale · M(w)`` on W+ codes.
  A sub-mapper is a PixelNorm followed by 4 EqualLinear layers (lr_mul 0.01, fused leaky ReLU);
  ``LevelsMapper`` has one sub-mapper for the coarse codes 0-3, one for the medium codes 4-7 and one for the
  fine codes 8+, ``SingleMapper`` one sub-mapper for all codes. Attribute names follow StyleCLIP's
  checkpoints (``course_mapping`` - sic -, ``medium_mapping``, ``fine_mapping``; ``mapping.1`` ... ``mapping.4``
  are the EqualLinear layers).
* PixelNorm (``norm``): the reference hands the sub-mapper the ``[B, k, 512]`` tensor of its group's k codes
  and normalizes it along dim 1, i.e. **across the k codes, channel by channel**:
  ``x / sqrt(mean_k x^2 + 1e-8)`` (``norm="group"``, the default). With a W code broadcast to W+ (the NADA
  mapper's latents) the k codes of a group are equal, so this gives ``w / sqrt(w^2 + 1e-8)`` per channel:
  ``sign(w)`` except for channels with ``|w|`` near 1e-4 or below. ``norm="code"`` normalizes every code on
  its own over its channels (the StyleGAN mapping network's PixelNorm): a deviation switch, not the
  reference. The EqualLinear stack acts on every code independently in both cases.

The identity network of the mapper's identity loss lives in :mod:`models.identity`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.stylegan2_layers import EqualLinear, PixelNorm

#: W+ index ranges of the levels (coarse, medium, fine), as in StyleCLIP
LEVELS = {"coarse": (0, 4), "medium": (4, 8), "fine": (8, None)}
#: PixelNorm placements: ``group`` (reference: across the codes of a group) or ``code`` (over each code's channels)
NORMS = ("group", "code")


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"mapper norm must be one of {NORMS}, got {norm!r}")
    return norm


class SubMapper(nn.Module):
    """PixelNorm + ``n_layers`` x EqualLinear(dim, dim, lr_mul, fused leaky ReLU) on a group of codes.

    ``norm="group"`` (reference): PixelNorm across the group's codes, per channel; ``"code"``: over each code's
    channels. The linear layers then map every code independently.
    """

    def __init__(self, dim: int = 512, n_layers: int = 4, lr_mul: float = 0.01, norm: str = "group"):
        super().__init__()
        self.norm = _check_norm(norm)
        layers: list[nn.Module] = [PixelNorm()]
        layers += [EqualLinear(dim, dim, lr_mul=lr_mul, activation="fused_lrelu") for _ in range(n_layers)]
        self.mapping = nn.Sequential(*layers)

    def forward(self, codes: Tensor) -> Tensor:
        """``codes`` ``[B, k, dim]`` -> ``[B, k, dim]``."""
        b, k, d = codes.shape
        pixel_norm, linears = self.mapping[0], self.mapping[1:]
        if self.norm == "group":  # PixelNorm normalizes dim 1: here the k codes
            x = pixel_norm(codes).reshape(b * k, d)
        else:  # dim 1 of [B*k, dim]: the channels of each code
            x = pixel_norm(codes.reshape(b * k, d))
        return linears(x).reshape(b, k, d)


class LevelsMapper(nn.Module):
    """Three independent sub-mappers for the coarse / medium / fine W+ codes.

    ``coarse``/``medium``/``fine`` False zero that level's output (StyleCLIP's ``--no_*_mapper``). ``norm``: see
    :class:`SubMapper` (each level normalizes across its own codes).
    """

    def __init__(self, style_dim: int = 512, n_latent: int = 18, n_layers: int = 4, lr_mul: float = 0.01,
                 coarse: bool = True, medium: bool = True, fine: bool = True, norm: str = "group"):
        super().__init__()
        self.style_dim, self.n_latent = style_dim, n_latent
        self.enabled = {"coarse": coarse, "medium": medium, "fine": fine}
        if not any(self.enabled.values()):
            raise ValueError("LevelsMapper needs at least one of coarse / medium / fine")
        _check_norm(norm)
        self.course_mapping = SubMapper(style_dim, n_layers, lr_mul, norm) if coarse else None
        self.medium_mapping = SubMapper(style_dim, n_layers, lr_mul, norm) if medium else None
        self.fine_mapping = SubMapper(style_dim, n_layers, lr_mul, norm) if fine else None

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
    """One sub-mapper for all W+ codes (StyleCLIP's ``SingleMapper``); with ``norm="group"`` its PixelNorm
    normalizes across all ``n_latent`` codes."""

    def __init__(self, style_dim: int = 512, n_latent: int = 18, n_layers: int = 4, lr_mul: float = 0.01,
                 norm: str = "group"):
        super().__init__()
        self.style_dim, self.n_latent = style_dim, n_latent
        self.mapping = SubMapper(style_dim, n_layers, lr_mul, norm)

    def forward(self, w_plus: Tensor) -> Tensor:
        if w_plus.dim() != 3 or w_plus.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(f"expected W+ [B, {self.n_latent}, {self.style_dim}], got {tuple(w_plus.shape)}")
        return self.mapping(w_plus)


def build_mapper(kind: str, style_dim: int, n_latent: int, norm: str = "group", **levels: bool) -> nn.Module:
    """``kind`` ``"levels"`` (default of the reference) or ``"single"``; ``norm`` ``"group"`` or ``"code"``."""
    if kind == "levels":
        return LevelsMapper(style_dim, n_latent, norm=norm, **levels)
    if kind == "single":
        if not all(levels.values()):
            raise ValueError("coarse/medium/fine switches apply to the 'levels' mapper only")
        return SingleMapper(style_dim, n_latent, norm=norm)
    raise ValueError(f"mapper must be 'levels' or 'single', got {kind!r}")


__all__ = ["LevelsMapper", "SingleMapper", "SubMapper", "build_mapper", "LEVELS", "NORMS"]
