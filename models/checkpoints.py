"""Load, convert and export StyleGAN2 checkpoints.

``load(path)`` reads every supported format into one :class:`LoadedCheckpoint` with constructed
``models.stylegan2`` networks (weights loaded strictly, eval mode):

=================  ===========================================================================================
``rosinality``     ``torch.save`` dicts with ``g_ema`` / ``g`` / ``d`` / ``latent_avg`` (training snapshots with
                   ``args`` included) or a bare generator state dict
``pSp``            pSp / e4e files: ``state_dict`` with ``decoder.*`` keys, plus ``latent_avg``
``nvidia-pkl``     stylegan2-ada-pytorch / stylegan3 "StyleGAN2" network pickles (restricted unpickler)
``nvidia-tf-pkl``  TF StyleGAN2 / StyleGAN2-ADA pickles (``Conv0_up`` flip and ``mod_bias + 1``)
``styleshift``     our export (:func:`save`): rosinality-compatible, plus ``styleshift_config``
=================  ===========================================================================================

Files from the internet are untrusted. Loading never executes code from the file, and never lets it hang the
process, exhaust its memory or end in a bare traceback:

* declared sizes are checked **before** anything is allocated: all storages and arrays must fit in the data
  the file actually holds and in a total cap of 8 GiB. A legitimately larger model is read with
  ``load(path, max_bytes=N)`` / ``read(path, max_bytes=N)`` or the environment variable
  ``STYLESHIFT_CHECKPOINT_MAX_BYTES=N`` (bytes, or e.g. ``32G``); the CLIs take ``--max-bytes N``;
* compressed zip records are refused (``torch.save`` never compresses), CRC-32 mismatches are reported as
  corruption, constructors on the allow-list never receive an unchecked size;
* the loaded structure is walked once, linearly: cycles, nesting deeper than 100 levels and shared-reference
  structures expanding to more than a million entries are refused;
* every failure is a :class:`CheckpointError` subclass (:class:`UnsafeCheckpointError`,
  :class:`CorruptCheckpointError`, :class:`CheckpointLimitError`, :class:`UnsupportedModelError`) whose
  message says what is wrong with the file and that nothing from it was executed. A missing file is a
  ``FileNotFoundError``.

CLI (prints the error and exits with status 1 on a bad file)::

    python -m models.checkpoints info FILE [--max-bytes N]
    python -m models.checkpoints convert SRC DST [--max-bytes N]
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
from models.checkpoint_formats.errors import (NOTHING_RAN, CheckpointError, CheckpointLimitError,
                                              CorruptCheckpointError, UnsafeCheckpointError, UnsupportedModelError)
from models.checkpoint_formats.limits import DEFAULT_MAX_BYTES, MAX_BYTES_ENV, BoundedReader, Budget, check_structure
from models.checkpoint_formats.nvidia import read_nvidia
from models.checkpoint_formats.raw import RawCheckpoint, is_plain
from models.checkpoint_formats.safe_unpickle import TORCH_LEGACY_MAGIC, restricted_load
from models.checkpoint_formats.torch_files import NETWORK_KEYS, STYLESHIFT_KEY, read_torch_object, torch_load

__all__ = ["LoadedCheckpoint", "StyleGANConfig", "CheckpointError", "UnsafeCheckpointError", "UnsupportedModelError",
           "CorruptCheckpointError", "CheckpointLimitError", "DEFAULT_MAX_BYTES", "MAX_BYTES_ENV",
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


_MAX_MESSAGE = 2000
_DEVICE_OOM = getattr(torch, "OutOfMemoryError", MemoryError)


def _explained(err: CheckpointError, path: Path) -> CheckpointError:
    """The same error type, its message prefixed with the file, kept short and ending with "nothing from the
    file was executed"."""
    text, where = str(err), str(path)
    if not text.startswith(where):
        text = f"{where}: {text}"
    if len(text) > _MAX_MESSAGE:
        text = f"{text[:_MAX_MESSAGE - 400]} [...] {text[-300:]}"
    if NOTHING_RAN not in text:
        text = f"{text.rstrip('. ')}; {NOTHING_RAN}"
    return type(err)(text)


def _unexpected(err: BaseException) -> CorruptCheckpointError:
    first = str(err).splitlines()[0][:300] if str(err) else ""
    return CorruptCheckpointError(f"cannot be interpreted as a StyleGAN2 checkpoint ({type(err).__name__}: {first})")


def _read(path: Path, map_location: Any, budget: Budget) -> RawCheckpoint:
    head = _head(path)
    if not head:
        raise CorruptCheckpointError(f"{path} is empty")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CorruptCheckpointError(f"{path}: truncated or corrupt torch checkpoint (zip archive without its "
                                         "central directory)")
        obj = torch_load(path, map_location, budget)
        check_structure(obj, "the checkpoint")
        return read_torch_object(obj, path)
    if head[:1] != b"\x80":
        raise CheckpointError(f"{path}: unknown file format (starts with {head[:8]!r}); expected a torch checkpoint "
                              "(.pt) or an NVIDIA network pickle (.pkl)")
    with open(path, "rb") as fh:
        first = restricted_load(BoundedReader(fh), budget)
    if isinstance(first, int) and first == TORCH_LEGACY_MAGIC:  # legacy (pre-1.6, non-zip) torch.save file
        obj = torch_load(path, map_location, budget)
        check_structure(obj, "the checkpoint")
        return read_torch_object(obj, path)
    check_structure(first, "the pickle")
    return read_nvidia(first)


def read(path: str | os.PathLike, map_location: Any = "cpu", max_bytes: int | str | None = None) -> RawCheckpoint:
    """Read a checkpoint into rosinality-layout state dicts without building networks.

    ``path`` may also be a registered asset name (``models.assets``), e.g. ``"stylegan2-ffhq-1024"``.
    ``max_bytes`` raises (or lowers) the cap on the tensor/array data the file may make the loader allocate
    (default ``$STYLESHIFT_CHECKPOINT_MAX_BYTES`` or 8 GiB). Every problem with the file's content is a
    :class:`CheckpointError` subclass; a missing file is a ``FileNotFoundError``.
    """
    path = _locate(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    budget = Budget(path.stat().st_size, max_bytes)
    try:
        return _read(path, map_location, budget)
    except CheckpointError as err:
        raise _explained(err, path) from None
    except OSError:
        raise
    except MemoryError:
        raise _explained(CheckpointLimitError("reading it ran out of memory"), path) from None
    except Exception as err:  # a reader tripped on content it does not expect: still the file's fault
        raise _explained(_unexpected(err), path) from None


def _load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], name: str) -> None:
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{name}: weights do not fit the network built from the config: "
                              f"{str(err).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise CheckpointError(f"{name}: state dict does not match the network: missing {list(missing)[:6]}, "
                              f"unexpected {list(unexpected)[:6]}")


def _check_shapes(network: type, kwargs: Mapping[str, Any], sd: Mapping[str, torch.Tensor], name: str) -> None:
    """Compare ``sd`` with the network ``kwargs`` describe, built on the meta device (no memory): only a state
    dict that fits exactly makes us allocate the real network."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in network(**kwargs).state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{name}: state dict does not match the network: missing {missing[:6]}, "
                              f"unexpected {[str(k)[:60] for k in unexpected[:6]]}")
    wrong = [k for k in expected if tuple(sd[k].shape) != expected[k]]
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise CheckpointError(f"{name}: weights do not fit the network built from the config: {wrong[0]} has shape "
                              f"{list(sd[wrong[0]].shape)}, the network expects {list(expected[wrong[0]])}{more}")


def build_generator(config: StyleGANConfig, state_dict: Mapping[str, torch.Tensor] | None = None,
                    name: str = "generator") -> nn.Module:
    """``models.stylegan2.Generator`` for ``config``; loads ``state_dict`` strictly when given (its keys and shapes
    are checked before the network is allocated). Eval mode."""
    from models.stylegan2 import Generator

    kwargs = config.generator_kwargs()
    if state_dict is not None:
        _check_shapes(Generator, kwargs, state_dict, name)
    g = Generator(**kwargs)
    if state_dict is not None:
        _load_strict(g, state_dict, name)
    return g.eval()


def build_discriminator(config: StyleGANConfig, state_dict: Mapping[str, torch.Tensor] | None = None,
                        name: str = "discriminator") -> nn.Module:
    """``models.stylegan2.Discriminator`` for ``config``; loads ``state_dict`` strictly when given (keys and shapes
    checked first). Eval mode."""
    from models.stylegan2 import Discriminator

    kwargs = config.discriminator_kwargs()
    if state_dict is not None:
        _check_shapes(Discriminator, kwargs, state_dict, name)
    d = Discriminator(**kwargs)
    if state_dict is not None:
        _load_strict(d, state_dict, name)
    return d.eval()


def load(path: str | os.PathLike, map_location: Any = "cpu", networks: Iterable[str] = NETWORK_KEYS,
         max_bytes: int | str | None = None) -> LoadedCheckpoint:
    """Read any supported checkpoint (a file or a registered asset name) and build its networks;
    ``networks`` picks which of g_ema/g/d to build. ``max_bytes``: see :func:`read`."""
    wanted = set(networks)
    unknown = wanted - set(NETWORK_KEYS)
    if unknown:
        raise ValueError(f"unknown network name(s) {sorted(unknown)}; choose from {NETWORK_KEYS}")
    path = _locate(path)
    raw = read(path, map_location, max_bytes)
    try:
        return _build(raw, path, map_location, wanted)
    except CheckpointError as err:
        raise _explained(err, path) from None
    except (MemoryError, _DEVICE_OOM):  # the checked sizes fit the file: this is the machine, not the file
        raise
    except Exception as err:
        raise _explained(_unexpected(err), path) from None


def _build(raw: RawCheckpoint, path: Path, map_location: Any, wanted: set[str]) -> LoadedCheckpoint:
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


def load_generator(name_or_path: str | os.PathLike, which: str = "g_ema", map_location: Any = "cpu",
                   max_bytes: int | str | None = None) -> nn.Module:
    """The one pretrained generator of a checkpoint (a file or a registered asset name), in eval mode.

    ``which="g_ema"`` (the usual product of training) falls back to ``g`` when the file has no EMA copy, and
    ``which="g"`` to ``g_ema``; the fallback is logged. A file without any generator is a ``CheckpointError``.
    """
    if which not in GENERATOR_KEYS:
        raise ValueError(f"which must be one of {GENERATOR_KEYS}, got {which!r}")
    other = GENERATOR_KEYS[1 - GENERATOR_KEYS.index(which)]
    loaded = load(name_or_path, map_location, networks=GENERATOR_KEYS, max_bytes=max_bytes)
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
    if not ckpt.extra:
        lines.append(f"{'extra:':<20}-")
    for key in sorted(ckpt.extra):
        lines.append(f"{'extra.' + str(key) + ':':<20}{_short(ckpt.extra[key])}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    """A value of the extras for ``info``: scalars and strings as they are, tensors by shape, containers by size."""
    if isinstance(value, torch.Tensor):
        return f"tensor {list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {_short(v)}" for k, v in list(value.items())[:8])
        return "{" + inner + (", ..." if len(value) > 8 else "") + "}"
    if isinstance(value, (list, tuple)):
        return f"list of {len(value)}" if len(value) > 8 else str([_short(v) for v in value])
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def main(argv: list[str] | None = None) -> int:
    """``info`` / ``convert``; a file that cannot be read prints one ``error:`` line and returns 1."""
    parser = argparse.ArgumentParser(prog="python -m models.checkpoints", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="format, config and parameter counts of a checkpoint")
    p_info.add_argument("file")
    p_conv = sub.add_parser("convert", help="any readable format -> our rosinality-compatible .pt export")
    p_conv.add_argument("src")
    p_conv.add_argument("dst")
    p_conv.add_argument("--force", action="store_true", help="overwrite an existing DST")
    for p in (p_info, p_conv):
        p.add_argument("--max-bytes", default=None, metavar="N",
                       help=f"cap on the tensor data a file may make the loader allocate (bytes or e.g. 32G; "
                            f"default ${MAX_BYTES_ENV} or 8G)")
    args = parser.parse_args(argv)
    source = args.file if args.command == "info" else args.src
    if str(source).endswith(".ckpt"):
        print(f"error: {source} looks like a Lightning training checkpoint of a run: inspect or export it with "
              f"`python -m launch.ckpt_tools {args.command} {source}{'' if args.command == 'info' else ' DST'}`",
              file=sys.stderr)
        return 2
    if args.command == "convert" and Path(args.dst).exists() and not args.force:
        print(f"error: {args.dst} exists: pass --force to overwrite it", file=sys.stderr)
        return 2
    try:
        if args.command == "info":
            print(describe(load(args.file, max_bytes=args.max_bytes)))
            return 0
        ckpt = load(args.src, max_bytes=args.max_bytes)  # builds the networks: the export is known to load strictly
        out = save(args.dst, g_ema=ckpt.g_ema, g=ckpt.g, d=ckpt.d, latent_avg=ckpt.latent_avg, config=ckpt.config,
                   **ckpt.extra)
        print(f"wrote {out} ({ckpt.source_format} -> styleshift; "
              f"networks: {[k for k in NETWORK_KEYS if getattr(ckpt, k) is not None]})")
        return 0
    except (CheckpointError, OSError, ValueError) as err:  # OSError: missing file, unwritable target
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # never a traceback for a file from the internet
        print(f"error: unexpected {type(err).__name__} while handling the checkpoint: {str(err)[:500]}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
