"""What every format reader returns: rosinality-layout state dicts plus config (spec stylegan2_backbone.md §4)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import StyleGANConfig

StateDict = dict[str, torch.Tensor]


@dataclass
class RawCheckpoint:
    """State dicts in rosinality layout (None when the file lacks that network), ``latent_avg`` and config."""

    config: StyleGANConfig
    g_ema: StateDict | None = None
    g: StateDict | None = None
    d: StateDict | None = None
    latent_avg: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_plain(value: Any) -> bool:
    """True for data ``torch.load(weights_only=True)`` reads back: tensors, numbers, strings, containers of them."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and is_plain(v) for k, v in value.items())
    return False


def to_plain(value: Any) -> Any:
    """Best-effort conversion to plain data (``Namespace`` -> dict, numpy -> Python/tensors); None if impossible."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        out = {k: to_plain(v) for k, v in value.items()}
        return dict(out) if is_plain(out) else None
    if isinstance(value, (list, tuple)):
        out = [to_plain(v) for v in value]
        return type(value)(out) if is_plain(out) else None
    return value if is_plain(value) else None


def plain_extras(entries: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    """Top-level entries worth keeping: plain data, excluding ``skip`` and optimizer states."""
    extra: dict[str, Any] = {}
    for key, value in entries.items():
        if key in skip or "optim" in str(key).lower():
            continue
        converted = to_plain(value)
        if converted is not None or value is None:
            extra[key] = converted
    return extra
