"""Restricted unpickler for NVIDIA network pickles (spec stylegan2_backbone.md §4.2–§4.4).

NVIDIA's own loader ``exec``s the ``module_src`` stored in every ``persistent_class`` object and needs
``dnnlib`` / ``torch_utils`` on the path. This unpickler needs neither and runs nothing from the file:

* ``torch_utils.persistence._reconstruct_persistent_obj`` -> :class:`PersistentStub` (class name, state and
  the source text, which is kept as a string and never executed);
* ``dnnlib.*.EasyDict`` -> a plain ``dict`` subclass; ``dnnlib.tflib.network.Network`` -> :class:`TFNetworkStub`;
* tensors, parameters, ``OrderedDict``, numpy arrays/scalars/dtypes: a short allow-list;
* every embedded storage blob (``torch.storage._load_from_bytes``) is read with ``torch.load(weights_only=True)``
  instead of torch's own unrestricted loader;
* any other global raises :class:`UnsafeCheckpointError` before anything is constructed.
"""
from __future__ import annotations

import collections
import copyreg
import io
import pickle
import warnings
from typing import Any, BinaryIO, Mapping

import numpy as np
import torch

from .errors import CheckpointError, UnsafeCheckpointError

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a legacy (non-zip) torch.save file


class PersistentStub:
    """An NVIDIA ``persistent_class`` object kept as data: ``class_name``, ``state`` (the module ``__dict__``)
    and ``module_src`` (source text, never executed)."""

    def __init__(self, meta: Mapping[str, Any]):
        self.class_name = str(meta.get("class_name"))
        self.version = meta.get("version")
        self.module_src = meta.get("module_src")
        self.state = meta.get("state")

    def __repr__(self) -> str:
        return f"PersistentStub({self.class_name})"


class TFNetworkStub:
    """A ``dnnlib.tflib.network.Network`` kept as its pickled state dict (TF pickles, §4.3)."""

    state: dict

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"TF network state is a {type(state).__name__}, expected a dict")
        self.state = state

    def __repr__(self) -> str:
        return f"TFNetworkStub({self.state.get('name') if hasattr(self, 'state') else '?'})"


class EasyDictStub(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""


def _reconstruct_persistent_obj(meta: Any) -> PersistentStub:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise CheckpointError("malformed NVIDIA persistent object (expected meta type 'class' with a state dict)")
    return PersistentStub(meta)


def _load_storage_bytes(blob: bytes) -> Any:
    """Replacement for ``torch.storage._load_from_bytes``: the blob is a legacy ``torch.save`` of one storage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation
            return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"an embedded tensor storage holds more than tensor data: {err}") from None


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise UnsafeCheckpointError(f"tensor subclass {new_type!r} is not on the allow-list")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _allowed() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray

    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "object"): object,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("torch", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch", "Size"): torch.Size,
        ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.tflib.network", "Network"): TFNetworkStub,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = multiarray._reconstruct
        table[(mod, "scalar")] = multiarray.scalar
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only hands out data constructors (spec §4.4)."""

    _ALLOWED: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _allowed()
        found = RestrictedUnpickler._ALLOWED.get((module, name))
        if found is not None:
            return found
        if module.split(".")[0] == "dnnlib" and name == "EasyDict":
            return EasyDictStub
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            cls = getattr(np.dtypes, name, None)
            if isinstance(cls, type) and issubclass(cls, np.dtype):
                return cls
        raise UnsafeCheckpointError(
            f"the pickle asks for '{module}.{name}', which is not on the allow-list of data types "
            "(spec stylegan2_backbone.md §4.4); it was refused and nothing from the file was executed")


def restricted_load(stream: BinaryIO) -> Any:
    """Unpickle one object from ``stream`` with :class:`RestrictedUnpickler`; corrupt data -> CheckpointError."""
    try:
        return RestrictedUnpickler(stream).load()
    except CheckpointError:
        raise
    except EOFError:
        raise CheckpointError("the pickle ends early: the file is truncated") from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RuntimeError, MemoryError, OverflowError, UnicodeDecodeError) as err:
        raise CheckpointError(f"corrupt pickle data ({type(err).__name__}: {err})") from None


def plain(value: Any) -> Any:
    """``EasyDictStub``/``OrderedDict`` -> ``dict`` recursively (kwargs trees)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def flatten_stub(stub: PersistentStub, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a stub tree: ``_parameters`` and persistent ``_buffers``, recursing ``_modules``."""
    state = stub.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} in {stub.class_name} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentStub):
            raise CheckpointError(f"sub-module {prefix}{name} of {stub.class_name} is not an NVIDIA network object")
        out.update(flatten_stub(child, f"{prefix}{name}."))
    return out


def init_kwargs(stub: PersistentStub) -> dict[str, Any]:
    """The constructor kwargs NVIDIA stores in every persistent object (``_init_kwargs``)."""
    return plain(stub.state.get("_init_kwargs") or {})


def collect_tf_variables(net: TFNetworkStub, prefix: str = "") -> dict[str, np.ndarray]:
    """Variables of a TF network and its components, named ``component/var`` (ADA ``legacy.py`` naming)."""
    out: dict[str, np.ndarray] = {}
    for name, value in net.state.get("variables") or []:
        out[prefix + str(name)] = np.asarray(value)
    for name, comp in (net.state.get("components") or {}).items():
        if not isinstance(comp, TFNetworkStub):
            raise CheckpointError(f"TF component {prefix}{name} is not a network")
        out.update(collect_tf_variables(comp, f"{prefix}{name}/"))
    return out
