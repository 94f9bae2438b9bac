"""Budgets and guards for reading untrusted checkpoint files.

Through its pickle, a downloaded checkpoint chooses how large the tensors and arrays it declares are, and
how its containers nest. The readers check all of it **before** allocating or walking anything:

* :class:`Budget` — every storage, numpy array, numpy scalar or bytes object the pickle makes the loader
  build is charged with its declared size. All of them together may not exceed what the file holds
  (``DATA_FACTOR`` x its size, plus ``DATA_SLACK``) nor the total cap. The cap is ``DEFAULT_MAX_BYTES``
  (8 GiB); a legitimately larger model is read with ``max_bytes=`` of ``models.checkpoints.load()`` /
  ``read()`` or with the environment variable ``STYLESHIFT_CHECKPOINT_MAX_BYTES`` (a number of bytes,
  optionally with a K/M/G/T suffix in binary units, e.g. ``32G``).
* :func:`check_view` — a tensor must lie inside its storage and may not repeat it (zero or overlapping
  strides) beyond ``VIEW_SLACK_PER_TENSOR``; all tensors together may not exceed ``VIEW_FACTOR`` x the file
  size (plus ``VIEW_SLACK``), so that copying every tensor of a file stays proportional to the file.
* :func:`check_array_state` — a numpy array's ``__setstate__`` data must match its shape and dtype exactly.
* :func:`check_structure` — one iterative walk over a loaded object, memoised on object identity: cycles,
  nesting deeper than ``MAX_DEPTH`` and shared-reference structures ("billion laughs") that expand to more than
  ``MAX_NODES`` entries are refused, so every later walk over the object is bounded.
* :class:`BaseUnpickler` — the standard library's pure-Python unpickler (its memo is a dict, so a huge
  ``LONG_BINPUT`` index cannot make it allocate, unlike the C unpickler's memo array) with tuple nesting bounded
  (hashing a deeply nested tuple overflows the C stack), ``BYTEARRAY8`` bounded by the file size and at most
  ``MAX_HASHED_KEYS`` dict keys or set members whose hash a file can choose (anything but strings, bytes and
  integers below 2**61: crafted collisions make inserting them quadratic); :class:`BoundedReader` keeps
  ``read(n)`` from reserving more than the bytes left in the file.

Violations raise :class:`~.errors.CheckpointLimitError` or :class:`~.errors.CorruptCheckpointError`.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import struct
from typing import Any, BinaryIO, Iterable

import numpy as np

from .errors import CheckpointError, CheckpointLimitError, CorruptCheckpointError, UnsafeCheckpointError

MiB = 1 << 20
DEFAULT_MAX_BYTES = 8 << 30
MAX_BYTES_ENV = "STYLESHIFT_CHECKPOINT_MAX_BYTES"
DATA_FACTOR = 2  # numpy arrays may keep the pickle's bytes object *and* a copy of it
DATA_SLACK = MiB
VIEW_FACTOR = 4
VIEW_SLACK = 16 * MiB
VIEW_SLACK_PER_TENSOR = MiB
MAX_DEPTH = 100
MAX_NODES = 1_000_000
MAX_NDIM = 64
EMPTY_ARRAY_BYTES = 64  # numpy pickles rebuild an array from an empty one, then __setstate__ gives its data
MAX_HASHED_KEYS = 10_000  # dict keys / set members other than strings and small ints, per pickle

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"8589934592"``, ``"8G"``, ``"8GiB"``, ``"512 MB"`` -> bytes (binary units)."""
    found = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not found:
        raise ValueError(f"not a byte count: {text!r} (use e.g. 34359738368, 32G or 32GiB)")
    return int(found.group(1)) * _UNITS[found.group(2).lower()]


def resolve_max_bytes(max_bytes: int | str | None = None) -> int:
    """The total cap: ``max_bytes`` if given, else ``$STYLESHIFT_CHECKPOINT_MAX_BYTES``, else 8 GiB."""
    if max_bytes is not None:
        value = parse_bytes(max_bytes) if isinstance(max_bytes, str) else int(max_bytes)
    elif os.environ.get(MAX_BYTES_ENV, "").strip():
        try:
            value = parse_bytes(os.environ[MAX_BYTES_ENV])
        except ValueError as err:
            raise ValueError(f"{MAX_BYTES_ENV}: {err}") from None
    else:
        value = DEFAULT_MAX_BYTES
    if value <= 0:
        raise ValueError(f"max_bytes must be positive, got {value}")
    return value


def human(nbytes: int) -> str:
    """``1610612736`` -> ``'1.5 GiB'``."""
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def override_hint() -> str:
    return (f"if you trust the file and the model really is this large, raise the cap with "
            f"load(..., max_bytes=N) / read(..., max_bytes=N) or the environment variable {MAX_BYTES_ENV}=N "
            "(bytes, or e.g. 32G)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Budget:
    """What one file may make the loader allocate (see the module docstring); ``file_size=None`` checks the
    cap only."""

    def __init__(self, file_size: int | None, max_bytes: int | str | None = None):
        self.file_size = file_size
        self.max_bytes = resolve_max_bytes(max_bytes)
        self.data = 0
        self.views = 0

    def allocate(self, nbytes: int, what: str) -> None:
        """Charge ``nbytes`` of data that ``what`` is about to allocate; refuse before it happens."""
        if not _is_int(nbytes) or nbytes < 0:
            raise CorruptCheckpointError(f"{what} declares an invalid size {nbytes!r}")
        self.data += nbytes
        if self.file_size is not None and self.data > DATA_FACTOR * self.file_size + DATA_SLACK:
            raise CheckpointLimitError(
                f"{what} declares {human(nbytes)} ({nbytes} bytes); with what was declared before it the file "
                f"asks for {human(self.data)} of tensor/array data but holds only {human(self.file_size)} "
                "in all: the sizes were refused before allocating anything")
        if self.data > self.max_bytes:
            raise CheckpointLimitError(
                f"the file declares more than {human(self.max_bytes)} of tensor/array data ({human(self.data)} "
                f"so far, {what} included), the cap on what one checkpoint may make the loader allocate; "
                + override_hint())

    def view(self, nbytes: int, what: str) -> None:
        """Charge the logical size of a tensor view (what copying it would allocate)."""
        self.views += nbytes
        if self.file_size is not None and self.views > VIEW_FACTOR * self.file_size + VIEW_SLACK:
            raise CheckpointLimitError(
                f"the tensors of the file ({what} included) view {human(self.views)} of data, more than "
                f"{VIEW_FACTOR}x the {human(self.file_size)} it holds: many tensors repeat the same storage")
        if self.views > VIEW_FACTOR * self.max_bytes:
            raise CheckpointLimitError(
                f"the tensors of the file view {human(self.views)} of data, more than {VIEW_FACTOR}x the cap of "
                f"{human(self.max_bytes)}; " + override_hint())


def check_view(budget: Budget, storage_nbytes: int, itemsize: int, offset: Any, size: Any, stride: Any,
               what: str = "a tensor") -> int:
    """A strided view ``(offset, size, stride)`` of a storage of ``storage_nbytes`` bytes: it must lie inside
    the storage and not repeat it; its logical size is charged to ``budget``. Returns that size in bytes."""
    if not _is_int(offset) or offset < 0:
        raise CorruptCheckpointError(f"{what} has an invalid storage offset {offset!r}")
    if (not isinstance(size, (tuple, list)) or len(size) > MAX_NDIM
            or not all(_is_int(s) and s >= 0 for s in size)):
        raise CorruptCheckpointError(f"{what} has an invalid shape")
    if (not isinstance(stride, (tuple, list)) or len(stride) != len(size)
            or not all(_is_int(s) and s >= 0 for s in stride)):
        raise CorruptCheckpointError(f"{what} has invalid strides for its shape {list(size)}")
    numel = math.prod(size)
    if numel == 0:
        return 0
    extent = (offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))) * itemsize
    if extent > storage_nbytes:
        raise CorruptCheckpointError(f"{what} of shape {list(size)} reaches byte {extent} of a storage that "
                                     f"holds {storage_nbytes} bytes")
    logical = numel * itemsize
    if logical > max(storage_nbytes, VIEW_SLACK_PER_TENSOR):
        raise CheckpointLimitError(
            f"{what} of shape {list(size)} with strides {list(stride)} repeats the {human(storage_nbytes)} of its "
            f"storage as {human(logical)} (zero or overlapping strides); refused before anything was copied")
    budget.view(logical, what)
    return logical


def check_array_state(budget: Budget, state: Any, what: str = "a numpy array") -> None:
    """The argument of ``numpy.ndarray.__setstate__``: data must match shape x dtype; no object arrays."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise CorruptCheckpointError(f"{what} has a malformed pickled state")
    shape, dtype, _fortran, data = state[-4:]
    if not isinstance(shape, tuple) or len(shape) > MAX_NDIM or not all(_is_int(s) and s >= 0 for s in shape):
        raise CorruptCheckpointError(f"{what} has an invalid shape")
    if not isinstance(dtype, np.dtype):
        raise CorruptCheckpointError(f"{what} has no valid dtype")
    if dtype.hasobject:
        raise UnsafeCheckpointError(f"{what} is a numpy object array (it holds Python objects, not numbers), "
                                    "which is not on the allow-list of data types")
    nbytes = math.prod(shape) * dtype.itemsize
    if not isinstance(data, (bytes, bytearray)) or len(data) != nbytes:
        held = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
        raise CorruptCheckpointError(f"{what} of shape {list(shape)} and dtype {dtype} needs {nbytes} bytes of "
                                     f"data, the file gives {held}")
    budget.allocate(nbytes, what)


# ----------------------------------------------------------------------------------------------------------
# structure walk

_END = object()


def _children(value: Any) -> Iterable[Any] | None:
    """The objects a container holds (keys too), or None for a leaf."""
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return value
    if isinstance(value, argparse.Namespace):
        return list(vars(value).values())
    walk = getattr(type(value), "walk_children", None)  # the unpickler's stand-ins for NVIDIA objects
    return walk(value) if walk is not None else None


def check_structure(root: Any, what: str = "the checkpoint", max_depth: int = MAX_DEPTH,
                    max_nodes: int = MAX_NODES) -> int:
    """Walk ``root`` once (iteratively, each distinct object once) and return how many entries it expands to.

    Raises :class:`CheckpointLimitError` for a cycle, nesting deeper than ``max_depth`` or an expansion beyond
    ``max_nodes`` (shared references), in time linear in the number of distinct objects.
    """
    kids = _children(root)
    if kids is None:
        return 1
    done: dict[int, tuple[int, int]] = {}  # id -> (expanded size, height)
    on_path = {id(root)}
    stack: list[tuple[Any, Any, list[int]]] = [(root, iter(kids), [1, 1])]

    def too_many() -> CheckpointLimitError:
        return CheckpointLimitError(
            f"{what} expands to more than {max_nodes:,} entries through shared references (a 'billion laughs' "
            "structure) or is that large; refused without expanding it")

    while stack:
        node, it, acc = stack[-1]
        child = next(it, _END)
        if child is _END:
            stack.pop()
            on_path.discard(id(node))
            done[id(node)] = (acc[0], acc[1])
            if stack:
                parent = stack[-1][2]
                parent[0] += acc[0]
                parent[1] = max(parent[1], acc[1] + 1)
                if parent[0] > max_nodes:
                    raise too_many()
            continue
        grandkids = _children(child)
        if grandkids is None:
            acc[0] += 1
            if acc[0] > max_nodes:
                raise too_many()
            continue
        cid = id(child)
        if cid in done:
            size, height = done[cid]
            if len(stack) + height > max_depth:
                raise CheckpointLimitError(f"{what} nests containers more than {max_depth} levels deep")
            acc[0] += size
            acc[1] = max(acc[1], height + 1)
            if acc[0] > max_nodes:
                raise too_many()
            continue
        if cid in on_path:
            raise CheckpointLimitError(f"{what} contains a cycle (a container that holds itself); refused")
        if len(stack) >= max_depth:
            raise CheckpointLimitError(f"{what} nests containers more than {max_depth} levels deep")
        on_path.add(cid)
        stack.append((child, iter(grandkids), [1, 1]))
    return done[id(root)][0]


# ----------------------------------------------------------------------------------------------------------
# unpickling


class BoundedReader:
    """Read-only view of a binary file that never reads past ``end``: ``read(n)`` with a huge declared ``n``
    returns what is left instead of reserving ``n`` bytes first."""

    def __init__(self, fh: BinaryIO, end: int | None = None):
        self._fh = fh
        self._pos = fh.tell()
        if end is None:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(self._pos)
        self._end = end

    def _left(self, n: int | None) -> int:
        left = max(0, self._end - self._pos)
        return left if n is None or n < 0 else min(n, left)

    def read(self, n: int | None = -1) -> bytes:
        data = self._fh.read(self._left(n))
        self._pos += len(data)
        return data

    def readline(self, limit: int | None = -1) -> bytes:
        data = self._fh.readline(self._left(limit))
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        self._pos = self._fh.seek(pos, whence)
        return self._pos


class BaseUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with tuple nesting bounded and ``BYTEARRAY8`` bounded by ``size_limit``.

    Subclasses decide what ``find_class`` and ``persistent_load`` hand out.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, size_limit: int | None = None, **kwargs: Any):
        super().__init__(file, **kwargs)
        self._size_limit = size_limit
        self._deep: dict[int, int] = {}  # id -> nesting depth of the tuples nested more than one level
        self._keep: list[tuple] = []  # keeps those ids valid
        self._hashed = 0

    def check_keys(self, keys: Iterable[Any]) -> None:
        """Count the keys about to be hashed into a dict or set whose hash the file could have chosen."""
        for key in keys:
            kind = type(key)
            if kind in _RANDOMISED_HASH or (kind is int and -_SMALL_INT < key < _SMALL_INT):
                continue
            self._hashed += 1
            if self._hashed > MAX_HASHED_KEYS:
                raise CheckpointLimitError(
                    f"the pickle uses more than {MAX_HASHED_KEYS:,} dict keys or set members that are neither "
                    "strings nor small integers (crafted hash collisions would make inserting them quadratic)")

    def checked_container(self, kind: type) -> Any:
        """``set`` / ``frozenset`` / ``OrderedDict`` / ``Counter`` for REDUCE, with their keys counted first."""
        def build(source: Any = (), *rest: Any) -> Any:
            if not isinstance(source, (dict, list, tuple, set, frozenset)):
                raise CorruptCheckpointError(f"the pickle builds a {kind.__name__} from a {type(source).__name__}")
            if isinstance(source, dict):
                pass  # its keys were counted when it was built
            elif issubclass(kind, dict) and source and all(isinstance(p, tuple) and len(p) == 2 for p in source):
                self.check_keys(p[0] for p in source)
            else:
                self.check_keys(source)
            return kind(source, *rest)
        return build

    def _bound_tuple(self) -> None:
        made = self.stack[-1]
        depth = 1 + max((self._deep.get(id(x), 1) for x in made if isinstance(x, tuple)), default=0)
        if depth > 1:
            if depth > MAX_DEPTH:
                raise CheckpointLimitError(f"the pickle nests tuples more than {MAX_DEPTH} levels deep")
            self._deep[id(made)] = depth
            self._keep.append(made)

    def load_bytearray8(self) -> None:
        (size,) = struct.unpack("<Q", self.read(8))
        if self._size_limit is not None and size > self._size_limit:
            raise CorruptCheckpointError(f"the pickle declares a bytearray of {size} bytes, more than the file "
                                         "holds")
        data = bytearray(size)
        self.readinto(data)
        self.append(data)


_RANDOMISED_HASH = (str, bytes, bool, type(None))  # str/bytes hashes are salted per process
_SMALL_INT = 1 << 61  # smaller ints hash to themselves: no collisions


def _keys_first(opcode: bytes, keys: Any) -> Any:
    base = pickle._Unpickler.dispatch[opcode[0]]

    def load(self: BaseUnpickler) -> None:
        self.check_keys(keys(self.stack))
        base(self)
    return load


def _after_tuple(opcode: bytes) -> Any:
    base = pickle._Unpickler.dispatch[opcode[0]]

    def load(self: BaseUnpickler) -> None:
        base(self)
        self._bound_tuple()
    return load


for _opcode in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3):
    BaseUnpickler.dispatch[_opcode[0]] = _after_tuple(_opcode)
BaseUnpickler.dispatch[pickle.BYTEARRAY8[0]] = BaseUnpickler.load_bytearray8
# after MARK, ``self.stack`` holds the marked items
BaseUnpickler.dispatch[pickle.SETITEM[0]] = _keys_first(pickle.SETITEM, lambda stack: stack[-2:-1])
BaseUnpickler.dispatch[pickle.SETITEMS[0]] = _keys_first(pickle.SETITEMS, lambda stack: stack[0::2])
BaseUnpickler.dispatch[pickle.DICT[0]] = _keys_first(pickle.DICT, lambda stack: stack[0::2])
BaseUnpickler.dispatch[pickle.ADDITEMS[0]] = _keys_first(pickle.ADDITEMS, lambda stack: stack)
BaseUnpickler.dispatch[pickle.FROZENSET[0]] = _keys_first(pickle.FROZENSET, lambda stack: stack)


def run_unpickler(unpickler: pickle._Unpickler, what: str = "the pickle", stream: Any = None) -> Any:
    """``unpickler.load()`` with every failure turned into a :class:`CheckpointError` subclass; a failure with
    ``stream`` (the unpickler's file) exhausted is reported as truncation."""
    try:
        return unpickler.load()
    except CheckpointError:
        raise
    except EOFError:
        raise CorruptCheckpointError(f"{what} ends early: the file is truncated") from None
    except RecursionError:
        raise CheckpointLimitError(f"{what} nests objects too deeply") from None
    except MemoryError:
        raise CheckpointLimitError(f"{what} asks for more memory than is available") from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError,
            OverflowError, UnicodeError, LookupError, struct.error) as err:
        text = str(err).splitlines()[0] if str(err) else ""
        if "truncated" in text or "exhausted" in text or (stream is not None and not stream.read(1)):
            raise CorruptCheckpointError(f"{what} ends early: the file is truncated ({text})") from None
        raise CorruptCheckpointError(f"corrupt pickle data in {what} ({type(err).__name__}: {text[:300]})") from None
    finally:  # the memo holds every object of the pickle: release it now, not at the next garbage collection
        unpickler.memo.clear()
        unpickler.__dict__.pop("stack", None)
        unpickler.__dict__.pop("metastack", None)
