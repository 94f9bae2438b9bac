"""What every format reader returns: rosinality-layout state dicts plus config."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import StyleGANConfig
from .limits import MAX_DEPTH

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


def is_plain(value: Any, _memo: dict[int, bool] | None = None, _depth: int = 0) -> bool:
    """True for data ``torch.load(weights_only=True)`` reads back: tensors, numbers, strings, containers of them.

    Each distinct container is checked once; cycles and nesting deeper than ``MAX_DEPTH`` are not plain.
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor)):
        return True
    if not isinstance(value, (list, tuple, dict)) or _depth > MAX_DEPTH:
        return False
    memo = {} if _memo is None else _memo
    if id(value) in memo:
        return memo[id(value)]
    memo[id(value)] = False  # while in progress: a cycle is not plain
    if isinstance(value, dict):
        ok = all(isinstance(k, (str, int)) and is_plain(v, memo, _depth + 1) for k, v in value.items())
    else:
        ok = all(is_plain(v, memo, _depth + 1) for v in value)
    memo[id(value)] = ok
    return ok


_NOT_PLAIN = object()


def to_plain(value: Any, _memo: dict[int, Any] | None = None, _depth: int = 0) -> Any:
    """Best-effort conversion to plain data (``Namespace`` -> dict, numpy -> Python/tensors); None if impossible.

    Each distinct container is converted once (shared inputs give shared outputs, so a structure of shared
    references stays as small as it is in the file); cycles and nesting deeper than ``MAX_DEPTH`` give None.
    """
    memo: dict[int, Any] = {} if _memo is None else _memo
    key = id(value)
    if key in memo:
        found = memo[key][1]
        return None if found is _NOT_PLAIN else found
    if _depth > MAX_DEPTH:
        return None
    source = value
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (dict, list, tuple)):
        memo[key] = (source, _NOT_PLAIN)  # while in progress: a cycle is not plain
        if isinstance(value, dict):  # entries that cannot be converted become None
            out: Any = {k: to_plain(v, memo, _depth + 1) for k, v in value.items()}
            if not all(isinstance(k, (str, int)) for k in out):
                out = None
        else:
            out = type(value)(to_plain(v, memo, _depth + 1) for v in value)
        memo[key] = (source, out if out is not None else _NOT_PLAIN)
        return out
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
