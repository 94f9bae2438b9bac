"""Restricted unpickler for NVIDIA network pickles.

NVIDIA's own loader ``exec``s the ``module_src`` stored in every ``persistent_class`` object and needs
``dnnlib`` / ``torch_utils`` on the path. This unpickler needs neither and runs nothing from the file:

* ``torch_utils.persistence._reconstruct_persistent_obj`` -> :class:`PersistentStub` (class name, state and
  the source text, which is kept as a string and never executed);
* ``dnnlib.*.EasyDict`` -> a plain ``dict`` subclass; ``dnnlib.tflib.network.Network`` -> :class:`TFNetworkStub`;
* tensors, parameters, ``OrderedDict``, numpy arrays/scalars/dtypes: a short allow-list;
* every embedded storage blob (``torch.storage._load_from_bytes``) is audited (its declared sizes must fit in
  the blob) and read with ``torch.load(weights_only=True)`` instead of torch's own unrestricted loader;
* any other global raises :class:`UnsafeCheckpointError` before anything is constructed.

Nothing on the allow-list lets the file choose an allocation size unchecked: ``torch.Tensor``,
``torch.nn.Parameter`` and ``numpy.ndarray`` may be named as types but not called (:class:`TypeToken`);
``numpy``'s ``_reconstruct`` only builds the empty array numpy pickles start from; array data, scalars,
storages and tensor views are charged to a :class:`~.limits.Budget` before they are built. The unpickler is the
stdlib's pure-Python one with the bounds of :class:`~.limits.BaseUnpickler`.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import copyreg
import io
import math
import pickle
import warnings
from typing import Any, BinaryIO, Mapping

import numpy as np
import torch

from .errors import CheckpointError, CheckpointLimitError, CorruptCheckpointError, UnsafeCheckpointError
from .limits import (EMPTY_ARRAY_BYTES, MAX_DEPTH, MAX_NDIM, BaseUnpickler, Budget, check_array_state, check_view,
                     run_unpickler)
from .torch_audit import audit_legacy_stream

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a legacy (non-zip) torch.save file


class PersistentStub:
    """An NVIDIA ``persistent_class`` object kept as data: ``class_name``, ``state`` (the module ``__dict__``)
    and ``module_src`` (source text, never executed)."""

    def __init__(self, meta: Mapping[str, Any]):
        class_name = meta.get("class_name")
        if not isinstance(class_name, str):
            raise CorruptCheckpointError("malformed NVIDIA persistent object (class_name is not a string)")
        self.class_name = class_name
        self.version = meta.get("version")
        self.module_src = meta.get("module_src")
        self.state = meta.get("state")

    def walk_children(self) -> list[Any]:
        return [self.state, self.module_src, self.version]

    def __setstate__(self, state: Any) -> None:
        raise UnsafeCheckpointError("the pickle sets the state of an NVIDIA persistent object directly")

    def __repr__(self) -> str:
        return f"PersistentStub({self.class_name})"


class TFNetworkStub:
    """A ``dnnlib.tflib.network.Network`` kept as its pickled state dict (TF pickles)."""

    state: dict

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"TF network state is a {type(state).__name__}, expected a dict")
        self.state = state

    def walk_children(self) -> list[Any]:
        return [getattr(self, "state", None)]

    def __repr__(self) -> str:
        name = self.state.get("name") if isinstance(getattr(self, "state", None), dict) else "?"
        return f"TFNetworkStub({name if isinstance(name, str) else '?'})"


class EasyDictStub(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""


class TypeToken:
    """A type the pickle may name (the type of a rebuilt tensor or array) but not call: ``torch.Tensor(n)`` or
    ``numpy.ndarray(shape)`` would let the file choose how much memory is allocated."""

    def __init__(self, real: type, name: str):
        self.real, self.name = real, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafeCheckpointError(
            f"the pickle calls {self.name}(...), a constructor whose arguments choose how much memory it "
            "allocates; the allow-list only lets a file name it as a type")

    def __repr__(self) -> str:
        return f"<type {self.name}>"


# looked up in these tables, never with getattr on the module (torch imports submodules lazily by name)
_TORCH_DTYPES = {n: getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}
_NUMPY_DTYPE_CLASSES = {n: c for n in dir(np.dtypes)
                        if isinstance(c := getattr(np.dtypes, n), type) and issubclass(c, np.dtype)}

TENSOR = TypeToken(torch.Tensor, "torch.Tensor")
PARAMETER = TypeToken(torch.nn.Parameter, "torch.nn.Parameter")
NDARRAY = TypeToken(np.ndarray, "numpy.ndarray")


def _reconstruct_persistent_obj(meta: Any) -> PersistentStub:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise CheckpointError("malformed NVIDIA persistent object (expected meta type 'class' with a state dict)")
    return PersistentStub(meta)


def _no_hooks(hooks: Any) -> None:
    if hooks:
        raise UnsafeCheckpointError("a tensor carries backward hooks; only plain tensor data is on the allow-list")


class RestrictedUnpickler(BaseUnpickler):
    """Pure-Python unpickler whose ``find_class`` only hands out data constructors, each checked against
    ``budget`` before it allocates."""

    dispatch = dict(BaseUnpickler.dispatch)

    def __init__(self, stream: BinaryIO, budget: Budget | None = None):
        self.budget = budget if budget is not None else Budget(None)
        super().__init__(stream, size_limit=self.budget.file_size)

    # (module, name) -> the object handed out, or the name of the checking method that stands for it
    _TABLE: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): "_ordered_dict",
        ("builtins", "set"): "_set",
        ("builtins", "frozenset"): "_frozenset",
        ("builtins", "object"): object,
        ("copyreg", "_reconstructor"): "_reconstructor",
        ("_codecs", "encode"): "_encode",
        ("torch._utils", "_rebuild_tensor_v2"): "_rebuild_tensor_v2",
        ("torch._utils", "_rebuild_parameter"): "_rebuild_parameter",
        ("torch._utils", "_rebuild_parameter_with_state"): "_rebuild_parameter_with_state",
        ("torch._tensor", "_rebuild_from_type_v2"): "_rebuild_from_type",
        ("torch", "Tensor"): TENSOR,
        ("torch.nn.parameter", "Parameter"): PARAMETER,
        ("torch", "Size"): torch.Size,
        ("torch.storage", "_load_from_bytes"): "_load_storage_bytes",
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.tflib.network", "Network"): TFNetworkStub,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): NDARRAY,
        ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
        ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
        ("numpy.core.multiarray", "scalar"): "_scalar",
        ("numpy._core.multiarray", "scalar"): "_scalar",
        ("numpy.core.numeric", "_frombuffer"): "_frombuffer",  # arrays in pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"): "_frombuffer",
    }

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # Python 2 names in protocol 0-2 pickles, mapped as the standard unpickler does
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = self._TABLE.get((module, name))
        if isinstance(found, str):
            return getattr(self, found)
        if found is not None:
            return found
        if module.split(".")[0] == "dnnlib" and name == "EasyDict":
            return EasyDictStub
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if module == "numpy.dtypes" and name in _NUMPY_DTYPE_CLASSES:
            return _NUMPY_DTYPE_CLASSES[name]
        raise UnsafeCheckpointError(
            f"the pickle asks for '{module}.{name}', which is not on the allow-list of data types; it was "
            "refused and nothing from the file was executed")

    # -- checked constructors ---------------------------------------------------------------------------

    @property
    def _set(self) -> Any:
        return self.checked_container(set)

    @property
    def _frozenset(self) -> Any:
        return self.checked_container(frozenset)

    @property
    def _ordered_dict(self) -> Any:
        return self.checked_container(collections.OrderedDict)

    def _reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        if base is not object or cls not in (TFNetworkStub, object):
            raise UnsafeCheckpointError("copyreg._reconstructor is only allowed for plain objects")
        return copyreg._reconstructor(cls, base, state)

    def _encode(self, obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafeCheckpointError("_codecs.encode is only allowed the way pickle protocol 2 stores bytes "
                                        "(a str and 'latin1')")
        self.budget.allocate(len(obj), "a bytes object")
        return codecs.encode(obj, "latin1")

    def _rebuild_tensor_v2(self, storage: Any, storage_offset: Any, size: Any, stride: Any,
                           requires_grad: Any = False, backward_hooks: Any = None, metadata: Any = None) -> Any:
        if not isinstance(storage, torch.storage.TypedStorage):
            raise CorruptCheckpointError(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage")
        _no_hooks(backward_hooks)
        check_view(self.budget, storage.nbytes(), storage.element_size(), storage_offset, size, stride)
        extra = () if metadata is None else (metadata,)
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride),
                                               bool(requires_grad), collections.OrderedDict(), *extra)

    def _rebuild_parameter(self, data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
        if not isinstance(data, torch.Tensor):
            raise CorruptCheckpointError(f"a parameter is rebuilt from a {type(data).__name__}, not a tensor")
        _no_hooks(backward_hooks)
        return torch._utils._rebuild_parameter(data, bool(requires_grad), collections.OrderedDict())

    def _rebuild_parameter_with_state(self, data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> Any:
        if not isinstance(data, torch.Tensor):
            raise CorruptCheckpointError(f"a parameter is rebuilt from a {type(data).__name__}, not a tensor")
        _no_hooks(backward_hooks)
        return torch._utils._rebuild_parameter_with_state(data, bool(requires_grad), collections.OrderedDict(),
                                                          state)

    def _rebuild_from_type(self, func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
        real = {id(TENSOR): torch.Tensor, id(PARAMETER): torch.nn.Parameter}.get(id(new_type))
        if real is None:
            raise UnsafeCheckpointError(f"tensor subclass {new_type!r} is not on the allow-list")
        rebuilders = (RestrictedUnpickler._rebuild_tensor_v2, RestrictedUnpickler._rebuild_parameter,
                      RestrictedUnpickler._rebuild_parameter_with_state)
        if getattr(func, "__self__", None) is not self or getattr(func, "__func__", None) not in rebuilders:
            raise UnsafeCheckpointError("_rebuild_from_type_v2 is only allowed with the tensor rebuild functions")
        if not isinstance(args, tuple):
            raise CorruptCheckpointError("malformed tensor (rebuild arguments are not a tuple)")
        return torch._tensor._rebuild_from_type_v2(func, real, args, state)

    def _load_storage_bytes(self, blob: Any) -> Any:
        """Replacement for ``torch.storage._load_from_bytes``: the blob is a legacy ``torch.save`` of one
        storage; its declared sizes are checked against the blob and charged before torch reads it."""
        if not isinstance(blob, (bytes, bytearray)):
            raise CorruptCheckpointError(f"an embedded tensor storage is a {type(blob).__name__}, not bytes")
        audit_legacy_stream(io.BytesIO(blob), len(blob), self.budget, "an embedded tensor storage")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation
                storage = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as err:  # the audit passed: anything left is damage, not a payload
            raise CorruptCheckpointError(f"an embedded tensor storage cannot be read ({type(err).__name__}: "
                                         f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
        if not isinstance(storage, torch.storage.TypedStorage):
            raise CorruptCheckpointError(f"an embedded tensor storage holds a {type(storage).__name__}")
        return storage

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not NDARRAY:
            raise UnsafeCheckpointError(f"numpy array subclass {subtype!r} is not on the allow-list")
        if not isinstance(shape, tuple) or len(shape) > MAX_NDIM or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise CorruptCheckpointError("a numpy array has an invalid shape")
        try:
            itemsize = np.dtype(dtype).itemsize
        except (TypeError, ValueError):
            raise CorruptCheckpointError("a numpy array has an invalid dtype") from None
        if math.prod(shape) * itemsize > EMPTY_ARRAY_BYTES:
            raise CheckpointLimitError(
                f"numpy _reconstruct asks for an array of shape {list(shape)} up front (pickled arrays start "
                "empty and get their data, checked against their shape, from __setstate__); refused before "
                "allocating")
        from numpy._core import multiarray

        return multiarray._reconstruct(np.ndarray, shape, dtype)

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
        if not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F") or axis_order is not None:
            raise CorruptCheckpointError("a numpy array (pickle protocol 5) has a malformed buffer or order")
        if isinstance(dtype, np.dtype) and isinstance(shape, tuple):
            check_array_state(self.budget, (shape, dtype, order == "F", buf))
        else:
            raise CorruptCheckpointError("a numpy array (pickle protocol 5) has an invalid dtype or shape")
        return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)

    def _scalar(self, dtype: Any, obj: Any = None) -> Any:
        if not isinstance(dtype, np.dtype):
            raise CorruptCheckpointError("a numpy scalar has no valid dtype")
        if dtype.hasobject:
            raise UnsafeCheckpointError("numpy object scalars are not on the allow-list of data types")
        if not isinstance(obj, bytes) or len(obj) != dtype.itemsize:
            raise CorruptCheckpointError(f"a numpy {dtype} scalar needs {dtype.itemsize} bytes of data")
        self.budget.allocate(dtype.itemsize, "a numpy scalar")
        from numpy._core import multiarray

        return multiarray.scalar(dtype, obj)

    # -- opcodes ----------------------------------------------------------------------------------------

    def load_build(self) -> None:
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.ndarray):
            check_array_state(self.budget, state)
        elif isinstance(inst, torch.Tensor):
            raise UnsafeCheckpointError("the pickle sets the state of a tensor directly (legacy set_), which is "
                                        "not on the allow-list")
        BaseUnpickler.dispatch[pickle.BUILD[0]](self)

    def _check_new_class(self, cls: Any) -> None:
        if not isinstance(cls, type):
            name = cls.name if isinstance(cls, TypeToken) else type(cls).__name__
            raise UnsafeCheckpointError(f"the pickle instantiates {name}, which is not a class on the allow-list")

    def load_newobj(self) -> None:
        cls, args = self.stack[-2], self.stack[-1]
        self._check_new_class(cls)
        if isinstance(cls, type) and issubclass(cls, frozenset):  # frozenset.__new__ fills it
            self.check_keys(args[0] if args and isinstance(args[0], (list, tuple, set, frozenset)) else ())
        BaseUnpickler.dispatch[pickle.NEWOBJ[0]](self)

    def load_newobj_ex(self) -> None:
        self._check_new_class(self.stack[-3])
        BaseUnpickler.dispatch[pickle.NEWOBJ_EX[0]](self)


RestrictedUnpickler.dispatch[pickle.BUILD[0]] = RestrictedUnpickler.load_build
RestrictedUnpickler.dispatch[pickle.NEWOBJ[0]] = RestrictedUnpickler.load_newobj
RestrictedUnpickler.dispatch[pickle.NEWOBJ_EX[0]] = RestrictedUnpickler.load_newobj_ex


def restricted_load(stream: BinaryIO, budget: Budget | None = None) -> Any:
    """Unpickle one object from ``stream`` with :class:`RestrictedUnpickler`; every failure is a
    :class:`CheckpointError` subclass."""
    return run_unpickler(RestrictedUnpickler(stream, budget), "the pickle", stream)


def plain(value: Any, _memo: dict[int, Any] | None = None, _depth: int = 0) -> Any:
    """``EasyDictStub``/``OrderedDict`` -> ``dict`` recursively (kwargs trees); shared objects are converted
    once (the result shares them too)."""
    if _depth > MAX_DEPTH:
        raise CheckpointLimitError(f"kwargs nest more than {MAX_DEPTH} levels deep")
    memo = {} if _memo is None else _memo
    if id(value) in memo:
        return memo[id(value)][1]
    if isinstance(value, dict):
        out: Any = {}
        memo[id(value)] = (value, out)
        out.update((k, plain(v, memo, _depth + 1)) for k, v in value.items())
        return out
    if isinstance(value, list):
        out = []
        memo[id(value)] = (value, out)
        out.extend(plain(v, memo, _depth + 1) for v in value)
        return out
    if isinstance(value, tuple):
        out = type(value)(plain(v, memo, _depth + 1) for v in value)
        memo[id(value)] = (value, out)
        return out
    return value


def flatten_stub(stub: PersistentStub, prefix: str = "", _depth: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of a stub tree: ``_parameters`` and persistent ``_buffers``, recursing ``_modules``."""
    if _depth > MAX_DEPTH:
        raise CheckpointLimitError(f"NVIDIA modules nest more than {MAX_DEPTH} levels deep")
    state = stub.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(name, str):
                raise CheckpointError(f"a {group[1:-1]} name in {stub.class_name} is not a string")
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} in {stub.class_name} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentStub) or not isinstance(name, str):
            raise CheckpointError(f"sub-module {prefix}{name} of {stub.class_name} is not an NVIDIA network object")
        out.update(flatten_stub(child, f"{prefix}{name}.", _depth + 1))
    return out


def init_kwargs(stub: PersistentStub) -> dict[str, Any]:
    """The constructor kwargs NVIDIA stores in every persistent object (``_init_kwargs``)."""
    kwargs = plain(stub.state.get("_init_kwargs") or {})
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"_init_kwargs of {stub.class_name} is a {type(kwargs).__name__}, not a dict")
    return kwargs


def collect_tf_variables(net: TFNetworkStub, prefix: str = "", _depth: int = 0) -> dict[str, np.ndarray]:
    """Variables of a TF network and its components, named ``component/var`` (ADA ``legacy.py`` naming)."""
    if _depth > MAX_DEPTH:
        raise CheckpointLimitError(f"TF components nest more than {MAX_DEPTH} levels deep")
    out: dict[str, np.ndarray] = {}
    for entry in net.state.get("variables") or []:
        if not isinstance(entry, tuple) or len(entry) != 2 or not isinstance(entry[0], str):
            raise CheckpointError(f"TF network {prefix or 'root'} has a malformed variable entry")
        out[prefix + entry[0]] = np.asarray(entry[1])
    for name, comp in (net.state.get("components") or {}).items():
        if not isinstance(comp, TFNetworkStub) or not isinstance(name, str):
            raise CheckpointError(f"TF component {prefix}{name} is not a network")
        out.update(collect_tf_variables(comp, f"{prefix}{name}/", _depth + 1))
    return out
