"""Audit of ``torch.save`` files before ``torch.load(weights_only=True)`` reads them.

torch's weights-only unpickler never runs code from a file, but it allocates whatever the file declares: the
byte size of every storage (legacy files allocate it before any data is read), ``torch.Tensor(n)``,
``bytearray(n)``, ``UntypedStorage(n)`` or quantized tensors of any size through its allow-list, and
DEFLATE-compressed archive records inflated to their declared size. This audit runs first and allocates
nothing the file chooses:

* **zip files** (torch >= 1.6): the archive must end with its end-of-central-directory record, right after its
  central directory (so Python's and torch's zip readers see the same records); every record must be stored
  uncompressed (``torch.save`` never compresses) with unique names; all records together may not hold more
  bytes than the file; every CRC-32 is verified (a mismatch is reported as corruption);
* **legacy files**: the storages declared in the pickle must match the size headers of the data that follows
  it, and that data must be in the file;
* the pickle (``data.pkl``, or the legacy main pickle) is unpickled once with stand-ins ("ghosts") that hold
  nothing: a storage's declared size must fit in its record and is charged to the :class:`~.limits.Budget`,
  tensor views are checked with :func:`~.limits.check_view`, numpy array data with
  :func:`~.limits.check_array_state`, and constructors that would take a caller-chosen size are refused.
  Globals outside the allow-list (the ones this package needs, a subset of torch's) are refused by name.

Every problem raises a :class:`~.errors.CheckpointError` subclass.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import collections
import copy
import io
import math
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from .errors import CheckpointLimitError, CorruptCheckpointError, UnsafeCheckpointError
from .limits import (EMPTY_ARRAY_BYTES, MAX_NDIM, BaseUnpickler, BoundedReader, Budget, check_array_state,
                     check_view, human, run_unpickler)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_CHUNK = 1 << 20
_TEXT_ENCODINGS = ("latin1", "latin-1", "utf-8", "utf8", "ascii")

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _storage_dtypes() -> dict[str, torch.dtype]:
    """``torch.FloatStorage`` & co. (also under ``torch.cuda``) -> dtype; ``UntypedStorage`` holds bytes."""
    out: dict[str, torch.dtype] = {"torch.storage.UntypedStorage": torch.uint8, "torch.UntypedStorage": torch.uint8}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in dir(torch):
            dtype = getattr(getattr(torch, name), "dtype", None) if name.endswith("Storage") else None
            if isinstance(dtype, torch.dtype) and name not in ("Storage", "TypedStorage", "UntypedStorage"):
                out[f"torch.{name}"] = out[f"torch.cuda.{name}"] = dtype
    return out


_STORAGE_DTYPES = _storage_dtypes()
_TENSOR_TYPE = re.compile(r"torch(\.cuda)?\.([A-Z][A-Za-z0-9]*)?Tensor")


def refused_global(name: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refused, the file asks for '{name}', which is not plain tensor data; nothing from the file was "
        "executed. Only load such a file with torch.load(weights_only=False) if you fully trust it, then "
        "re-save its state dicts with models.checkpoints.save")


# ----------------------------------------------------------------------------------------------------------
# ghosts: what the audit builds instead of storages, tensors and arrays


class _GhostStorage:
    __slots__ = ("nbytes", "itemsize")

    def __init__(self, nbytes: int, itemsize: int):
        self.nbytes, self.itemsize = nbytes, itemsize


class _GhostTensor:
    """A tensor torch would build; ``BUILD`` on it is torch's legacy ``set_(storage, offset, size, stride)``."""

    def __init__(self, audit: "_AuditUnpickler"):
        self._audit = audit

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 4:
            self._audit.view(*state)
        elif isinstance(state, tuple) and len(state) == 5 and not isinstance(state[0], _GhostTensor):
            raise CorruptCheckpointError("a tensor's pickled state holds no tensor data")
        elif not isinstance(state, tuple) or len(state) not in (3, 5):
            raise CorruptCheckpointError("a tensor has a malformed pickled state")


class _GhostArray:
    """The empty numpy array ``_reconstruct`` starts from; ``BUILD`` gives it its checked data."""

    def __init__(self, budget: Budget):
        self._budget = budget

    def __setstate__(self, state: Any) -> None:
        check_array_state(self._budget, state)


class _TensorType:
    """``torch.Tensor`` / ``torch.FloatTensor`` / ``torch.nn.Parameter``: a type the file may name; calling it
    only builds an empty tensor (or, for ``Parameter``, wraps a tensor), never one of a chosen size."""

    def __init__(self, name: str, audit: "_AuditUnpickler"):
        self.name, self._audit = name, audit

    def __call__(self, *args: Any) -> _GhostTensor:
        if self.name == "torch.nn.parameter.Parameter":
            if not args or args[0] is None:
                return _GhostTensor(self._audit)
            return self._audit._rebuild_parameter(*args)
        if args:
            raise UnsafeCheckpointError(
                f"the pickle calls {self.name}(...) with arguments: a tensor constructor whose arguments choose "
                "how much memory it allocates is not on the allow-list")
        return _GhostTensor(self._audit)


class _Token:
    """A global torch would hand out that the file may only name, never call (storage classes,
    ``numpy.ndarray``)."""

    def __init__(self, name: str, dtype: torch.dtype | None = None):
        self.name, self.dtype = name, dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafeCheckpointError(
            f"the pickle calls {self.name}(...), a constructor whose arguments choose how much memory it "
            "allocates; the allow-list only lets a file name it")


_NDARRAY = _Token("numpy.ndarray")

# Harmless globals: the audit builds the real object, exactly as torch would.
_REAL: dict[str, Any] = {
    "builtins.complex": complex,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "argparse.Namespace": argparse.Namespace,
    "numpy.dtype": np.dtype,
}
for _name in dir(torch):
    if isinstance(getattr(torch, _name, None), torch.dtype):
        _REAL[f"torch.{_name}"] = getattr(torch, _name)
for _name in dir(np.dtypes):
    _cls = getattr(np.dtypes, _name)
    if isinstance(_cls, type) and issubclass(_cls, np.dtype):
        _REAL[f"numpy.dtypes.{_name}"] = _cls
_REAL_CLASSES = {value for value in _REAL.values() if isinstance(value, type)}
# Hashed containers: built for real, their keys counted first (BaseUnpickler.check_keys).
_CONTAINERS = {"collections.OrderedDict": collections.OrderedDict, "collections.Counter": collections.Counter,
               "builtins.set": set}


class _TypedBuilder:
    """A container class handed to the pickle: calling it builds the container with its keys counted;
    ``NEWOBJ`` builds it empty, as ``cls.__new__`` does."""

    def __init__(self, kind: type, build: Callable[..., Any]):
        self.kind, self._build = kind, build

    def __call__(self, *args: Any) -> Any:
        return self._build(*args)

# Checked globals: names -> methods of _AuditUnpickler.
_CHECKED = {
    "torch._utils._rebuild_tensor": "_rebuild_tensor",
    "torch._utils._rebuild_tensor_v2": "_rebuild_tensor",
    "torch._utils._rebuild_tensor_v3": "_rebuild_tensor_v3",
    "torch._utils._rebuild_parameter": "_rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state": "_rebuild_parameter",
    "torch._tensor._rebuild_from_type_v2": "_rebuild_from_type",
    "builtins.bytearray": "_bytearray",
    "_codecs.encode": "_encode",
    "numpy.core.multiarray._reconstruct": "_reconstruct",
    "numpy._core.multiarray._reconstruct": "_reconstruct",
    "numpy.core.multiarray.scalar": "_scalar",
    "numpy._core.multiarray.scalar": "_scalar",
}


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _AuditUnpickler(BaseUnpickler):
    dispatch = dict(BaseUnpickler.dispatch)

    def __init__(self, stream: BinaryIO, budget: Budget, persistent: Callable[[Any], Any] | None, what: str):
        super().__init__(stream, size_limit=budget.file_size, encoding="utf-8")
        self.budget, self._persistent, self.what = budget, persistent, what

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise CorruptCheckpointError(f"{self.what}: unexpected persistent id in a header pickle")
        return self._persistent(pid)

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (torch.save writes protocol 2), mapped as torch's weights-only unpickler does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full in _REAL:
            return _REAL[full]
        if full in _CONTAINERS:
            return _TypedBuilder(_CONTAINERS[full], self.checked_container(_CONTAINERS[full]))
        if full in _CHECKED:
            return getattr(self, _CHECKED[full])
        if full in _STORAGE_DTYPES:
            return _Token(full, _STORAGE_DTYPES[full])
        if _TENSOR_TYPE.fullmatch(full) or full == "torch.nn.parameter.Parameter":
            return _TensorType(full, self)
        if full == "numpy.ndarray":
            return _NDARRAY
        raise refused_global(full)

    # -- checks -----------------------------------------------------------------------------------------

    def view(self, storage: Any, offset: Any, size: Any, stride: Any, itemsize: int | None = None) -> _GhostTensor:
        if not isinstance(storage, _GhostStorage):
            raise CorruptCheckpointError(f"{self.what}: a tensor is rebuilt from a {type(storage).__name__}, "
                                         "not a storage")
        check_view(self.budget, storage.nbytes, itemsize or storage.itemsize, offset, size, stride)
        return _GhostTensor(self)

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _GhostTensor:
        if len(rest) > 3:
            raise CorruptCheckpointError(f"{self.what}: malformed tensor (too many rebuild arguments)")
        return self.view(storage, offset, size, stride)

    def _rebuild_tensor_v3(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                           hooks: Any = None, dtype: Any = None, *rest: Any) -> _GhostTensor:
        if not isinstance(dtype, torch.dtype):
            raise CorruptCheckpointError(f"{self.what}: malformed tensor (no dtype)")
        return self.view(storage, offset, size, stride, dtype.itemsize)

    def _rebuild_parameter(self, data: Any, *rest: Any) -> _GhostTensor:
        if not isinstance(data, _GhostTensor):
            raise CorruptCheckpointError(f"{self.what}: a parameter is rebuilt from a {type(data).__name__}, "
                                         "not a tensor")
        return data

    def _rebuild_from_type(self, func: Any, new_type: Any, args: Any, state: Any) -> _GhostTensor:
        if getattr(func, "__self__", None) is not self or getattr(func, "__func__", None) not in (
                _AuditUnpickler._rebuild_tensor, _AuditUnpickler._rebuild_tensor_v3,
                _AuditUnpickler._rebuild_parameter):
            raise UnsafeCheckpointError(f"{self.what}: _rebuild_from_type_v2 is only allowed with the tensor "
                                        "rebuild functions")
        if not isinstance(new_type, _TensorType):
            raise UnsafeCheckpointError(f"{self.what}: tensor subclass {type(new_type).__name__} is not on the "
                                        "allow-list")
        if not isinstance(args, tuple):
            raise CorruptCheckpointError(f"{self.what}: malformed tensor (rebuild arguments are not a tuple)")
        return func(*args)

    def _bytearray(self, source: Any = b"", *rest: Any) -> bytearray:
        if isinstance(source, (bytes, bytearray)) and not rest:
            self.budget.allocate(len(source), "a bytearray")
            return bytearray(source)
        if isinstance(source, str) and rest and rest[0] in _TEXT_ENCODINGS:
            data = source.encode(rest[0])
            self.budget.allocate(len(data), "a bytearray")
            return bytearray(data)
        raise UnsafeCheckpointError(f"{self.what}: bytearray(...) is only allowed with the bytes it holds, not "
                                    "with a size")

    def _encode(self, obj: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
        if not isinstance(obj, str) or encoding not in _TEXT_ENCODINGS:
            raise UnsafeCheckpointError(f"{self.what}: _codecs.encode is only allowed as pickle stores bytes "
                                        "(a str and a plain text encoding)")
        data = obj.encode(encoding)
        self.budget.allocate(len(data), "a bytes object")
        return data

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> _GhostArray:
        if subtype is not _NDARRAY:
            raise UnsafeCheckpointError(f"{self.what}: numpy array subclasses are not on the allow-list")
        if not isinstance(shape, tuple) or not all(_int(n) and n >= 0 for n in shape):
            raise CorruptCheckpointError(f"{self.what}: a numpy array has an invalid shape")
        try:
            itemsize = np.dtype(dtype).itemsize
        except (TypeError, ValueError):
            raise CorruptCheckpointError(f"{self.what}: a numpy array has an invalid dtype") from None
        if len(shape) > MAX_NDIM or math.prod(shape) * itemsize > EMPTY_ARRAY_BYTES:
            raise CheckpointLimitError(
                f"{self.what}: numpy _reconstruct asks for an array of shape {list(shape)[:8]} up front (pickled "
                "arrays start empty and get their data, checked against their shape, from __setstate__); refused "
                "before allocating")
        return _GhostArray(self.budget)

    def _scalar(self, dtype: Any, obj: Any = None) -> Any:
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise UnsafeCheckpointError(f"{self.what}: only numpy scalars of numeric dtypes are on the allow-list")
        if not isinstance(obj, bytes) or len(obj) != dtype.itemsize:
            raise CorruptCheckpointError(f"{self.what}: a numpy {dtype} scalar needs {dtype.itemsize} bytes")
        self.budget.allocate(dtype.itemsize, "a numpy scalar")
        from numpy._core import multiarray

        return multiarray.scalar(dtype, obj)

    # -- opcodes ----------------------------------------------------------------------------------------

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if isinstance(cls, type) and cls in _REAL_CLASSES:
            self.append(cls.__new__(cls, *args))
        elif isinstance(cls, _TypedBuilder):
            self.append(cls.kind.__new__(cls.kind))
        elif isinstance(cls, _TensorType):
            self.append(cls(*args))  # Parameter(*args) / an empty tensor, as torch does
        else:
            name = cls.name if isinstance(cls, _Token) else type(cls).__name__
            raise UnsafeCheckpointError(f"{self.what}: the pickle instantiates {name}, which is not a class on "
                                        "the allow-list")


_AuditUnpickler.dispatch[pickle.NEWOBJ[0]] = _AuditUnpickler.load_newobj


def _audit_pickle(stream: BinaryIO, budget: Budget, what: str,
                  persistent: Callable[[Any], Any] | None = None) -> Any:
    return run_unpickler(_AuditUnpickler(stream, budget, persistent, what), what, stream)


def _storage_pid(pid: Any, legacy: bool, what: str) -> tuple[str, torch.dtype, Any, int, Any]:
    """``('storage', storage_type, key, location, numel[, view_metadata])`` -> its parts, validated."""
    if not isinstance(pid, tuple) or len(pid) != (6 if legacy else 5):
        raise CorruptCheckpointError(f"{what}: malformed storage reference in the pickle")
    typename, storage_type, key, _location, numel = pid[:5]
    if isinstance(typename, bytes):
        typename = typename.decode("ascii", "replace")
    if typename != "storage":
        raise CorruptCheckpointError(f"{what}: unknown persistent reference {typename!r}")
    if not isinstance(storage_type, _Token) or storage_type.dtype is None:
        raise CorruptCheckpointError(f"{what}: a storage reference names no storage type")
    if not isinstance(key, (str, int)) or isinstance(key, bool) or not _int(numel) or numel < 0:
        raise CorruptCheckpointError(f"{what}: malformed storage reference (key {key!r}, numel {numel!r})")
    return str(key), storage_type.dtype, _location, numel, pid[5] if legacy else None


# ----------------------------------------------------------------------------------------------------------
# legacy (non-zip) files


def audit_legacy_stream(stream: BinaryIO, size: int, budget: Budget, what: str = "the file") -> None:
    """Check a legacy ``torch.save`` stream (magic, protocol, sys_info, main pickle, storage keys, data)."""
    if _audit_pickle(stream, budget, what) != LEGACY_MAGIC:
        raise CorruptCheckpointError(f"{what} is not a torch.save file (bad magic number)")
    if _audit_pickle(stream, budget, what) != LEGACY_PROTOCOL:
        raise CorruptCheckpointError(f"{what}: unsupported legacy torch.save protocol version")
    sys_info = _audit_pickle(stream, budget, what)
    if not isinstance(sys_info, dict):
        raise CorruptCheckpointError(f"{what}: malformed legacy torch.save header")
    roots: dict[str, tuple[int, int]] = {}  # root key -> (numel, itemsize)
    views: dict[Any, _GhostStorage] = {}

    def persistent(pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module"):
            if len(pid) != 4:
                raise CorruptCheckpointError(f"{what}: malformed module reference in the pickle")
            return pid[1]
        key, dtype, _location, numel, view = _storage_pid(pid, True, what)
        itemsize = dtype.itemsize
        if key not in roots:
            budget.allocate(numel * itemsize, f"storage {key!r} ({numel} x {dtype})")
            roots[key] = (numel, itemsize)
        root_numel, root_itemsize = roots[key]
        if view is None:
            return _GhostStorage(root_numel * root_itemsize, root_itemsize)
        if (not isinstance(view, tuple) or len(view) != 3 or not _int(view[1]) or not _int(view[2])
                or view[1] < 0 or view[2] < 0 or view[1] + view[2] > root_numel):
            raise CorruptCheckpointError(f"{what}: a storage view lies outside storage {key!r}")
        try:
            return views.setdefault(view[0], _GhostStorage(view[2] * root_itemsize, root_itemsize))
        except TypeError:
            raise CorruptCheckpointError(f"{what}: malformed storage view key") from None

    _audit_pickle(stream, budget, what, persistent)
    keys = _audit_pickle(stream, budget, what)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CorruptCheckpointError(f"{what}: malformed list of storage keys")
    unknown = [k for k in keys if k not in roots]
    if unknown:
        raise CorruptCheckpointError(f"{what}: data for storage {unknown[0]!r}, which the pickle never declares")
    without_data = sorted(set(roots) - set(keys))
    if without_data:
        raise CorruptCheckpointError(f"{what}: storage {without_data[0]!r} is declared without any data")
    order = "little" if sys_info.get("little_endian", True) else "big"
    offset = stream.tell()
    for key in keys:
        numel, itemsize = roots[key]
        stream.seek(offset)
        head = stream.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{what} is truncated: the data of storage {key!r} is missing")
        if int.from_bytes(head, order, signed=True) != numel:
            raise CorruptCheckpointError(f"{what}: storage {key!r} declares {numel} elements in the pickle but "
                                         f"{int.from_bytes(head, order, signed=True)} in its data section")
        offset += 8 + numel * itemsize
        if offset > size:
            raise CorruptCheckpointError(
                f"{what} is truncated or lies about its sizes: storage {key!r} declares {human(numel * itemsize)} "
                f"that the file does not hold ({human(size)} in all)")


# ----------------------------------------------------------------------------------------------------------
# zip files


def _check_zip_end(fh: BinaryIO, size: int, what: str) -> tuple[int, int]:
    """(central directory offset, number of records), from end records that must close the file."""
    bad = CorruptCheckpointError(f"{what}: not a well-formed torch zip archive (the end-of-central-directory "
                                 "record must close the file, right after the central directory)")
    if size < _EOCD.size:
        raise bad
    fh.seek(size - _EOCD.size)
    sig, _disk, _cd_disk, _n_disk, n_total, cd_size, cd_offset, comment = _EOCD.unpack(fh.read(_EOCD.size))
    if sig != b"PK\x05\x06" or comment:
        raise bad
    end = size - _EOCD.size
    if size >= _EOCD.size + _ZIP64_LOCATOR.size:
        fh.seek(end - _ZIP64_LOCATOR.size)
        locator = _ZIP64_LOCATOR.unpack(fh.read(_ZIP64_LOCATOR.size))
        if locator[0] == b"PK\x06\x07":
            z64 = locator[2]
            if z64 + _ZIP64_EOCD.size != end - _ZIP64_LOCATOR.size:
                raise bad
            fh.seek(z64)
            record = _ZIP64_EOCD.unpack(fh.read(_ZIP64_EOCD.size))
            if record[0] != b"PK\x06\x06":
                raise bad
            n_total, cd_size, cd_offset, end = record[7], record[8], record[9], z64
    if cd_offset + cd_size != end:
        raise bad
    return cd_offset, n_total


def _verify_crc(zf: zipfile.ZipFile, info: zipfile.ZipInfo, keep: bool = False) -> bytes:
    """Read a record through ``zipfile`` (which checks its CRC-32 at the end); return it when ``keep``."""
    if info.CRC == 0 and info.file_size:  # written with torch's compute_crc32=False: nothing to verify
        info = copy.copy(info)
        del info.CRC
    parts = []
    with zf.open(info) as fh:
        while chunk := fh.read(_CHUNK):
            if keep:
                parts.append(chunk)
    return b"".join(parts)


def audit_zip(path: Path, budget: Budget) -> None:
    """Check a zip ``torch.save`` archive and the storages its ``data.pkl`` declares."""
    what = str(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            cd_offset, n_total = _check_zip_end(fh, size, what)
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, struct.error, OSError, ValueError, NotImplementedError) as err:
        if isinstance(err, CorruptCheckpointError):
            raise
        raise CorruptCheckpointError(f"{what}: truncated or corrupt zip archive ({err})") from None
    with zf:
        infos = zf.infolist()
        if not infos or zf.start_dir != cd_offset or len(infos) != n_total:
            raise CorruptCheckpointError(f"{what}: the zip archive's records are not where its directory says")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names) or not all(n.isascii() for n in names):
            raise CorruptCheckpointError(f"{what}: the zip archive has duplicate or non-ASCII record names")
        held = 0
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointLimitError(
                    f"{what}: record {info.filename!r} is compressed (method {info.compress_type}) and would "
                    f"inflate to {human(info.file_size)}; torch.save never compresses records, so the file was "
                    "refused before decompressing anything")
            if info.flag_bits & 0x1:
                raise CorruptCheckpointError(f"{what}: record {info.filename!r} is encrypted; not a torch.save file")
            if info.compress_size != info.file_size:
                raise CorruptCheckpointError(f"{what}: stored record {info.filename!r} has inconsistent sizes")
            held += info.file_size
        if held > cd_offset:
            raise CheckpointLimitError(f"{what}: the zip records claim {human(held)} but the archive holds "
                                       f"{human(cd_offset)} of data (overlapping records); refused")
        try:
            for info in infos:
                _verify_crc(zf, info)
        except zipfile.BadZipFile as err:
            raise CorruptCheckpointError(f"{what} is corrupt: {err} (the stored checksum does not match the "
                                         "data: the file was damaged in transfer or on disk)") from None
        prefix = names[0].split("/", 1)[0]
        records = {i.filename: i for i in infos}
        pickle_info = records.get(f"{prefix}/data.pkl")
        if pickle_info is None:
            raise CorruptCheckpointError(f"{what}: the zip archive has no {prefix}/data.pkl; not a torch.save file")
        data = _verify_crc(zf, pickle_info, keep=True)
    loaded: dict[str, _GhostStorage] = {}

    def persistent(pid: Any) -> _GhostStorage:
        key, dtype, _location, numel, _ = _storage_pid(pid, False, what)
        if key in loaded:
            return loaded[key]
        record = records.get(f"{prefix}/data/{key}")
        if record is None:
            raise CorruptCheckpointError(f"{what}: storage {key!r} has no record {prefix}/data/{key}")
        nbytes = numel * dtype.itemsize
        if nbytes > record.file_size:
            raise CheckpointLimitError(
                f"{what}: storage {key!r} declares {human(nbytes)} ({numel} x {dtype}) but its record holds "
                f"{human(record.file_size)}; refused before allocating")
        budget.allocate(record.file_size, f"storage {key!r}")
        loaded[key] = _GhostStorage(nbytes, dtype.itemsize)
        return loaded[key]

    _audit_pickle(io.BytesIO(data), budget, f"{what} (data.pkl)", persistent)


def audit_torch_file(path: Path, budget: Budget) -> None:
    """Audit a ``torch.save`` file, zip or legacy, before ``torch.load`` reads it."""
    with open(path, "rb") as fh:
        zipped = fh.read(4) == b"PK\x03\x04"
    if zipped:
        audit_zip(path, budget)
        return
    size = path.stat().st_size
    with open(path, "rb") as fh:
        audit_legacy_stream(BoundedReader(fh, size), size, budget, str(path))
