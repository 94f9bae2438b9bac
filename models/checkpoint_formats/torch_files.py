"""``torch.save`` checkpoints: rosinality, pSp/e4e and our own export.

Every file is first audited (:mod:`.torch_audit`: archive structure, CRCs, declared sizes against the data
the file holds and the budget, globals against the allow-list), then read with
``torch.load(weights_only=True)``; the only classes added to torch's allow-list are ``argparse.Namespace``
(rosinality training snapshots store their ``args``) and numpy scalars/arrays/dtypes. A file that asks for
anything else is refused before any of its objects is built.
"""
from __future__ import annotations

import argparse
import pickle
import re
import reprlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .config import StyleGANConfig, infer_config
from .convert import from_nvidia_state_dict
from .errors import CheckpointError, CheckpointLimitError, CorruptCheckpointError, UnsafeCheckpointError
from .limits import Budget
from .raw import RawCheckpoint, plain_extras
from .torch_audit import audit_torch_file

STYLESHIFT_KEY = "styleshift_config"
NETWORK_KEYS = ("g_ema", "g", "d")


def _safe_globals() -> list[Any]:
    from numpy._core import multiarray

    out: list[Any] = [argparse.Namespace, np.dtype, np.ndarray, multiarray._reconstruct, multiarray.scalar]
    out += [(multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy.core.multiarray.scalar")]
    out += [cls for name in dir(np.dtypes) if isinstance(cls := getattr(np.dtypes, name), type)
            and issubclass(cls, np.dtype)]
    return out


_KEYS = reprlib.Repr()
_KEYS.maxlist, _KEYS.maxstring, _KEYS.maxother, _KEYS.maxlevel = 12, 60, 60, 2


def keys_preview(mapping: Mapping[Any, Any], n: int = 12) -> str:
    """Up to ``n`` keys of a file-provided mapping, each shortened (error messages)."""
    return _KEYS.repr(sorted((str(k)[:60] if isinstance(k, str) else _KEYS.repr(k) for k in mapping))[:n])


def torch_load(path: Path, map_location: Any = "cpu", budget: Budget | None = None) -> Any:
    """Audit, then ``torch.load(weights_only=True)`` with our allow-list; unsafe or corrupt files -> clear errors.

    ``budget`` defaults to one for this file's size and the default cap.
    """
    path = Path(path)
    audit_torch_file(path, budget if budget is not None else Budget(path.stat().st_size))
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported operand" in text:
            raise CorruptCheckpointError(f"{path}: its pickle uses opcodes torch's weights-only loader does not read "
                                         f"({re.search(r'Unsupported operand [0-9]+', text).group(0)})") from None
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f"'{found.group(1)}'" if found else "an object outside the allow-list"
            raise UnsafeCheckpointError(
                f"{path}: refused, the file asks for {what}, which is not plain tensor data; nothing from the file "
                "was executed. Only load such a file with torch.load(weights_only=False) if you fully trust it, "
                "then re-save its state dicts with models.checkpoints.save") from None
        raise CorruptCheckpointError(f"{path}: corrupt torch checkpoint ({str(err)[:300]})") from None
    except MemoryError:
        raise CheckpointLimitError(f"{path}: reading it ran out of memory") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise CorruptCheckpointError(f"{path}: truncated or corrupt torch checkpoint ({type(err).__name__}: "
                                     f"{str(err).splitlines()[0][:300] if str(err) else ''})") from None


def _state_dict(value: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise CheckpointError(f"{where} is not a state dict of tensors")
    if not all(isinstance(k, str) for k in value):
        raise CheckpointError(f"{where} is not a state dict: its keys are not all strings")
    return dict(value)


def _check_rosinality_keys(sd: dict[str, torch.Tensor], where: str, marker: str) -> None:
    """Explain prefixed layouts (DualStyleGAN ``generator.*``, DDP ``module.*``) instead of failing later."""
    if marker in sd:
        return
    prefixes = sorted({k[: -len(marker)] for k in sd if k.endswith(marker)})
    if prefixes:
        raise CheckpointError(f"{where} keys carry the prefix {prefixes[0]!r} ({prefixes[0]}{marker}); "
                              "it is not a plain rosinality state dict (e.g. a DualStyleGAN or DDP-wrapped model)")
    raise CheckpointError(f"{where} is not a rosinality state dict: no {marker!r} (first keys: "
                          f"{[k[:60] for k in list(sd)[:5]]})")


def _rosinality(obj: dict[str, Any], source_format: str) -> RawCheckpoint:
    nets = {k: _state_dict(obj[k], f"'{k}'") if obj.get(k) is not None else None for k in NETWORK_KEYS}
    for key in ("g_ema", "g"):
        if nets[key] is not None:
            _check_rosinality_keys(nets[key], f"'{key}'", "style.1.weight")
    if nets["d"] is not None:
        _check_rosinality_keys(nets["d"], "'d'", "final_conv.0.weight")
    g_sd = nets["g_ema"] if nets["g_ema"] is not None else nets["g"]
    known: dict[str, Any] = {}
    if source_format == "styleshift":
        if not isinstance(obj[STYLESHIFT_KEY], Mapping):
            raise CheckpointError(f"'{STYLESHIFT_KEY}' is a {type(obj[STYLESHIFT_KEY]).__name__}, not a dict")
        stored = dict(obj[STYLESHIFT_KEY])
        stored.pop("source_format", None)
        known = StyleGANConfig.from_dict(dict(stored, source_format="styleshift")).to_dict()
    config = infer_config(g_sd, nets["d"], source_format=source_format,
                          **{k: known[k] for k in ("conv_clamp", "mbstd_group_size", "lr_mlp", "num_fp16_res")
                             if k in known})
    if known:
        for field in ("size", "style_dim", "n_mlp", "channels"):
            if g_sd is not None and known[field] != getattr(config, field):
                raise CheckpointError(f"stored config {field}={known[field]} disagrees with the weights "
                                      f"({getattr(config, field)})")
    latent_avg = obj.get("latent_avg")
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor):
            raise CheckpointError(f"'latent_avg' is a {type(latent_avg).__name__}, expected a tensor")
        if config.style_dim is not None and latent_avg.shape[-1] != config.style_dim:
            raise CheckpointError(f"'latent_avg' has shape {list(latent_avg.shape)}, expected [..., "
                                  f"{config.style_dim}] (style_dim)")
        if latent_avg.ndim == 2 and bool((latent_avg == latent_avg[:1]).all()):
            latent_avg = latent_avg[0]  # pSp/e4e store W+ copies of one mean W: keep the W vector
    extra = plain_extras(obj, skip=set(NETWORK_KEYS) | {"latent_avg", STYLESHIFT_KEY})
    return RawCheckpoint(config=config, latent_avg=latent_avg, extra=extra, **nets)


def _psp(obj: dict[str, Any]) -> RawCheckpoint:
    sd = _state_dict(obj["state_dict"], "'state_dict'")
    decoder = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    raw = _rosinality({"g_ema": decoder, "latent_avg": obj.get("latent_avg")}, "pSp")
    raw.extra = plain_extras(obj, skip={"state_dict", "latent_avg"})
    return raw


def read_torch_object(obj: Any, path: Path) -> RawCheckpoint:
    """Classify a loaded ``torch.save`` object and convert it."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a dict checkpoint")
    if STYLESHIFT_KEY in obj:
        return _rosinality(obj, "styleshift")
    if isinstance(obj.get("state_dict"), Mapping) and any(isinstance(k, str) and k.startswith("decoder.")
                                                          for k in obj["state_dict"]):
        return _psp(obj)
    if any(k in obj for k in NETWORK_KEYS):
        return _rosinality(obj, "rosinality")
    if "style.1.weight" in obj and "input.input" in obj:  # a bare generator state dict
        return _rosinality({"g_ema": obj}, "rosinality")
    if "synthesis.b4.const" in obj:  # a bare NVIDIA G state dict saved with torch.save
        ros = from_nvidia_state_dict(obj, "G")
        avg = obj.get("mapping.w_avg")
        return RawCheckpoint(config=infer_config(ros, None, source_format="nvidia-pkl"), g_ema=ros, latent_avg=avg)
    raise CheckpointError(f"{path}: unknown checkpoint layout; top-level keys {keys_preview(obj)} "
                          "(expected rosinality 'g_ema'/'g'/'d', pSp 'state_dict' with 'decoder.*', or our export)")
