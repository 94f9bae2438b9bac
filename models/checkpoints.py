"""Load, convert and export StyleGAN2 checkpoints (spec stylegan2_backbone.md §0, §3, §4, §5, §10;
DESIGN.md contract 2).

``load(path)`` reads every supported format into one :class:`LoadedCheckpoint` with constructed
``models.stylegan2`` networks (weights loaded strictly, eval mode):

=================  ===========================================================================================
``rosinality``     ``torch.save`` dicts with ``g_ema`` / ``g`` / ``d`` / ``latent_avg`` (training snapshots with
                   ``args`` included) or a bare generator state dict
``pSp``            pSp / e4e files: ``state_dict`` with ``decoder.*`` keys, plus ``latent_avg``
``nvidia-pkl``     stylegan2-ada-pytorch / stylegan3 "StyleGAN2" network pickles (restricted unpickler, §4.4)
``nvidia-tf-pkl``  TF StyleGAN2 / StyleGAN2-ADA pickles (``Conv0_up`` flip and ``mod_bias + 1``, §4.5)
``styleshift``     our export (:func:`save`): rosinality-compatible, plus ``styleshift_config``
=================  ===========================================================================================

Loading never executes code from the file. CLI::

    python -m models.checkpoints info FILE
    python -m models.checkpoints convert SRC DST
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from models import assets
from models.checkpoint_formats.config import StyleGANConfig, infer_config, rosinality_channel_table
from models.checkpoint_formats.convert import from_nvidia_state_dict, to_nvidia_state_dict
from models.checkpoint_formats.convert_tf import from_tf_variables
from models.checkpoint_formats.errors import CheckpointError, UnsafeCheckpointError, UnsupportedModelError
from models.checkpoint_formats.nvidia import read_nvidia
from models.checkpoint_formats.raw import RawCheckpoint, is_plain
from models.checkpoint_formats.safe_unpickle import TORCH_LEGACY_MAGIC, restricted_load
from models.checkpoint_formats.torch_files import NETWORK_KEYS, STYLESHIFT_KEY, read_torch_object, torch_load

__all__ = ["LoadedCheckpoint", "StyleGANConfig", "CheckpointError", "UnsafeCheckpointError", "UnsupportedModelError",
           "load", "load_generator", "read", "save", "build_generator", "build_discriminator", "to_nvidia_state_dict",
           "from_nvidia_state_dict", "from_tf_variables", "infer_config", "rosinality_channel_table"]

_ZIP_MAGIC = b"PK\x03\x04"
log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    """Networks of one checkpoint; any of ``g_ema``, ``g``, ``d`` is None when the file lacks it (or it was not
    requested). ``extra`` holds the file's other plain entries (training args, kimg, ...), not optimizer states."""

    g_ema: nn.Module | None
    g: nn.Module | None
    d: nn.Module | None
    latent_avg: torch.Tensor | None
    config: StyleGANConfig
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def source_format(self) -> str:
        return self.config.source_format


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _locate(path: str | os.PathLike) -> Path:
    """A file path, or the cached file of a registered asset name (missing -> ``AssetMissingError``)."""
    if not os.path.exists(path) and os.fspath(path) in assets.ASSETS:
        return assets.resolve(os.fspath(path))
    return Path(path)


def read(path: str | os.PathLike, map_location: Any = "cpu") -> RawCheckpoint:
    """Read a checkpoint into rosinality-layout state dicts without building networks.

    ``path`` may also be a registered asset name (``models.assets``), e.g. ``"stylegan2-ffhq-1024"``.
    """
    path = _locate(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    head = _head(path)
    if not head:
        raise CheckpointError(f"{path} is empty")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint (zip archive without its central "
                                  "directory)")
        return read_torch_object(torch_load(path, map_location), path)
    if head[:1] != b"\x80":
        raise CheckpointError(f"{path}: unknown file format (starts with {head[:8]!r}); expected a torch checkpoint "
                              "(.pt) or an NVIDIA network pickle (.pkl)")
    with open(path, "rb") as fh:
        try:
            first = restricted_load(fh)
        except CheckpointError as err:
            raise type(err)(f"{path}: {err}") from None
    if isinstance(first, int) and first == TORCH_LEGACY_MAGIC:  # legacy (pre-1.6, non-zip) torch.save file
        return read_torch_object(torch_load(path, map_location), path)
    try:
        return read_nvidia(first)
    except CheckpointError as err:
        raise type(err)(f"{path}: {err}") from None


def _load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], name: str) -> None:
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{name}: weights do not fit the network built from the config: "
                              f"{str(err).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise CheckpointError(f"{name}: state dict does not match the network: missing {list(missing)[:6]}, "
                              f"unexpected {list(unexpected)[:6]}")


def build_generator(config: StyleGANConfig, state_dict: Mapping[str, torch.Tensor] | None = None,
                    name: str = "generator") -> nn.Module:
    """``models.stylegan2.Generator`` for ``config``; loads ``state_dict`` strictly when given. Eval mode."""
    from models.stylegan2 import Generator

    g = Generator(**config.generator_kwargs())
    if state_dict is not None:
        _load_strict(g, state_dict, name)
    return g.eval()


def build_discriminator(config: StyleGANConfig, state_dict: Mapping[str, torch.Tensor] | None = None,
                        name: str = "discriminator") -> nn.Module:
    """``models.stylegan2.Discriminator`` for ``config``; loads ``state_dict`` strictly when given. Eval mode."""
    from models.stylegan2 import Discriminator

    d = Discriminator(**config.discriminator_kwargs())
    if state_dict is not None:
        _load_strict(d, state_dict, name)
    return d.eval()


def load(path: str | os.PathLike, map_location: Any = "cpu",
         networks: Iterable[str] = NETWORK_KEYS) -> LoadedCheckpoint:
    """Read any supported checkpoint (a file or a registered asset name) and build its networks;
    ``networks`` picks which of g_ema/g/d to build."""
    wanted = set(networks)
    unknown = wanted - set(NETWORK_KEYS)
    if unknown:
        raise ValueError(f"unknown network name(s) {sorted(unknown)}; choose from {NETWORK_KEYS}")
    path = _locate(path)
    raw = read(path, map_location)
    device = torch.device(map_location) if isinstance(map_location, (str, torch.device)) else None
    built: dict[str, nn.Module | None] = {}
    for key in NETWORK_KEYS:
        sd = getattr(raw, key)
        if key not in wanted or sd is None:
            built[key] = None
            continue
        builder = build_discriminator if key == "d" else build_generator
        module = builder(raw.config, sd, name=f"{Path(path).name}:{key}")
        built[key] = module.to(device) if device is not None else module
    latent_avg = raw.latent_avg
    if latent_avg is not None:
        latent_avg = latent_avg.detach().float()
        latent_avg = latent_avg.to(device) if device is not None else latent_avg
    return LoadedCheckpoint(latent_avg=latent_avg, config=raw.config, extra=raw.extra, path=Path(path), **built)


GENERATOR_KEYS = ("g_ema", "g")


def load_generator(name_or_path: str | os.PathLike, which: str = "g_ema", map_location: Any = "cpu") -> nn.Module:
    """The one pretrained generator of a checkpoint (a file or a registered asset name), in eval mode.

    ``which="g_ema"`` (the usual product of training) falls back to ``g`` when the file has no EMA copy, and
    ``which="g"`` to ``g_ema``; the fallback is logged. A file without any generator is a ``CheckpointError``.
    """
    if which not in GENERATOR_KEYS:
        raise ValueError(f"which must be one of {GENERATOR_KEYS}, got {which!r}")
    other = GENERATOR_KEYS[1 - GENERATOR_KEYS.index(which)]
    loaded = load(name_or_path, map_location, networks=GENERATOR_KEYS)
    generator = getattr(loaded, which)
    if generator is None:
        generator = getattr(loaded, other)
        if generator is None:
            raise CheckpointError(f"{name_or_path}: the checkpoint holds no generator (neither g_ema nor g)")
        log.warning("%s has no %r generator: using %r", name_or_path, which, other)
    return generator.eval()


# ----------------------------------------------------------------------------------------------------------
# export


def _as_state_dict(value: nn.Module | Mapping[str, torch.Tensor] | None, name: str) -> dict[str, torch.Tensor] | None:
    if value is None:
        return None
    sd = value.state_dict() if isinstance(value, nn.Module) else value
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise TypeError(f"{name} must be an nn.Module or a state dict of tensors")
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def _module_known(*modules: Any) -> dict[str, Any]:
    """conv_clamp / mbstd_group_size read from constructed networks when they expose them."""
    known: dict[str, Any] = {}
    for module in modules:
        if isinstance(module, nn.Module):
            if getattr(module, "conv_clamp", None) is not None:
                known.setdefault("conv_clamp", float(module.conv_clamp))
            if hasattr(module, "stddev_group"):  # models.stylegan2.Discriminator's name for it
                known["mbstd_group_size"] = module.stddev_group
    return known


def save(path: str | os.PathLike, g_ema: nn.Module | Mapping | None = None, g: nn.Module | Mapping | None = None,
         d: nn.Module | Mapping | None = None, latent_avg: torch.Tensor | None = None,
         config: StyleGANConfig | Mapping | None = None, **extra: Any) -> Path:
    """Write a rosinality-compatible ``.pt`` (top-level ``g_ema``, ``g``, ``d``, ``latent_avg``) plus our config
    under ``styleshift_config``; plain types only, readable with ``torch.load(weights_only=True)``.

    The write is atomic (temporary file in the same folder, then ``os.replace``).
    """
    path = Path(path)
    sds = {"g_ema": _as_state_dict(g_ema, "g_ema"), "g": _as_state_dict(g, "g"), "d": _as_state_dict(d, "d")}
    if all(v is None for v in sds.values()):
        raise ValueError("save() needs at least one of g_ema, g, d")
    clash = set(extra) & (set(NETWORK_KEYS) | {"latent_avg", STYLESHIFT_KEY})
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} are reserved")
    bad = [k for k, v in extra.items() if not is_plain(v)]
    if bad:
        raise TypeError(f"extra entries {bad} are not plain data (tensors, numbers, strings, lists/dicts of them)")
    if config is None:
        g_sd = sds["g_ema"] if sds["g_ema"] is not None else sds["g"]
        config = infer_config(g_sd, sds["d"], source_format="styleshift", **_module_known(g_ema, g, d))
    elif isinstance(config, Mapping):
        config = StyleGANConfig.from_dict(config)
    payload: dict[str, Any] = {k: v for k, v in sds.items() if v is not None}
    if latent_avg is not None:
        payload["latent_avg"] = latent_avg.detach().cpu().float().clone()
    payload[STYLESHIFT_KEY] = config.to_dict()
    payload.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ----------------------------------------------------------------------------------------------------------
# CLI


def _count(module: nn.Module | None) -> str:
    if module is None:
        return "-"
    return f"{sum(p.numel() for p in module.parameters()):,} parameters, {len(module.state_dict())} state-dict keys"


def describe(ckpt: LoadedCheckpoint) -> str:
    """Human-readable summary used by ``info``."""
    cfg = ckpt.config
    lines = [f"file:               {ckpt.path}", f"format:             {cfg.source_format}"]
    for key, value in cfg.to_dict().items():
        if key != "source_format" and not (key == "d_channels" and value is None):
            lines.append(f"{key + ':':<20}{value}")
    for key in NETWORK_KEYS:
        lines.append(f"{key + ':':<20}{_count(getattr(ckpt, key))}")
    avg = ckpt.latent_avg
    lines.append(f"{'latent_avg:':<20}{list(avg.shape) if avg is not None else '-'}")
    lines.append(f"{'extra:':<20}{sorted(ckpt.extra) or '-'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.checkpoints", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="format, config and parameter counts of a checkpoint")
    p_info.add_argument("file")
    p_conv = sub.add_parser("convert", help="any readable format -> our rosinality-compatible .pt export")
    p_conv.add_argument("src")
    p_conv.add_argument("dst")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(describe(load(args.file)))
            return 0
        ckpt = load(args.src)  # builds the networks: the export is known to load strictly
        out = save(args.dst, g_ema=ckpt.g_ema, g=ckpt.g, d=ckpt.d, latent_avg=ckpt.latent_avg, config=ckpt.config,
                   **ckpt.extra)
        print(f"wrote {out} ({ckpt.source_format} -> styleshift; "
              f"networks: {[k for k in NETWORK_KEYS if getattr(ckpt, k) is not None]})")
        return 0
    except (CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
