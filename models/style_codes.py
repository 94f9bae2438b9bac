"""DualStyleGAN's code tables: one intrinsic and one extrinsic W+ code per style image, keyed by file name.

Facial destylization (docs/methods/dualstylegan.md, "Facial destylization") turns each style image S into an
*extrinsic* code e (the encoder's code of S: its structure and colour) and an *intrinsic* code i (the code
of the realistic face behind S, re-embedded from the destylized image). Stage III, the refinement of the
extrinsic codes and inference read them back by file name, never by directory order.

Both codes are W+ ``[N, n_latent, style_dim]`` (the official code keeps Z+ codes and maps them with the
frozen mapping; a W+ encoder makes every code W+, see the method page).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["StyleCodes", "StyleCodesError", "FORMAT"]

FORMAT = "styleshift-style-codes/1"


class StyleCodesError(ValueError):
    """A code table that cannot be read or does not fit (names the file)."""


@dataclass
class StyleCodes:
    """``names[k]`` (a style image's file name) -> ``intrinsic[k]``, ``extrinsic[k]`` (W+ codes)."""

    names: list[str]
    intrinsic: Tensor
    extrinsic: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        n = len(self.names)
        if len(set(self.names)) != n:
            dup = sorted({x for x in self.names if self.names.count(x) > 1})
            raise StyleCodesError(f"style code table: file names {dup} appear more than once")
        for key in ("intrinsic", "extrinsic"):
            value = getattr(self, key)
            if not isinstance(value, Tensor) or value.dim() != 3 or value.shape[0] != n:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise StyleCodesError(f"style code table: {key} must be [{n}, n_latent, style_dim], got {shape}")
        if self.intrinsic.shape != self.extrinsic.shape:
            raise StyleCodesError(f"style code table: intrinsic {tuple(self.intrinsic.shape)} and extrinsic "
                                  f"{tuple(self.extrinsic.shape)} codes differ in shape")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def n_latent(self) -> int:
        return int(self.extrinsic.shape[1])

    @property
    def style_dim(self) -> int:
        return int(self.extrinsic.shape[2])

    def index(self, key: str | int) -> int:
        """Row of an exemplar given by file name, stem or index."""
        if isinstance(key, int) and not isinstance(key, bool):
            if not -len(self) <= key < len(self):
                raise StyleCodesError(f"style index {key} is out of range: the table has {len(self)} styles")
            return key % len(self)
        key = str(key)
        if key in self.names:
            return self.names.index(key)
        stems = [Path(n).stem for n in self.names]
        if stems.count(key) == 1:
            return stems.index(key)
        shown = ", ".join(self.names[:8]) + (", ..." if len(self) > 8 else "")
        raise StyleCodesError(f"style {key!r} is not in the table ({len(self)} styles: {shown})")

    def subset(self, keys: Sequence[str | int]) -> "StyleCodes":
        rows = [self.index(k) for k in keys]
        return StyleCodes([self.names[r] for r in rows], self.intrinsic[rows], self.extrinsic[rows], dict(self.meta))

    def check(self, n_latent: int, style_dim: int, where: str = "style codes") -> None:
        """Raise unless the codes fit a generator with ``n_latent`` W+ rows of width ``style_dim``."""
        if (self.n_latent, self.style_dim) != (n_latent, style_dim):
            raise StyleCodesError(f"{where}: codes are W+ [{self.n_latent}, {self.style_dim}], the generator needs "
                                  f"[{n_latent}, {style_dim}]")

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"format": FORMAT, "names": list(self.names), "intrinsic": self.intrinsic.detach().cpu().float(),
                    "extrinsic": self.extrinsic.detach().cpu().float(), "meta": dict(self.meta)}, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StyleCodes":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"style code table {path} does not exist (facial destylization writes it)")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing error
            raise StyleCodesError(f"{path}: not a readable style code table ({type(err).__name__}: {err})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StyleCodesError(f"{path}: not a style code table (no '{FORMAT}' format tag)")
        try:
            return cls(list(data["names"]), data["intrinsic"].float(), data["extrinsic"].float(),
                       dict(data.get("meta") or {}))
        except (KeyError, AttributeError) as err:
            raise StyleCodesError(f"{path}: incomplete style code table ({err})") from None
        except StyleCodesError as err:
            raise StyleCodesError(f"{path}: {err}") from None
