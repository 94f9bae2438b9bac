"""Checks of config values against type hints, shared by config groups and the launcher.

``coerce_group`` (:mod:`lightning_modules.config_groups`) and the launcher, which validates a whole config
before anything is built, check what YAML can express: scalars, null, lists, mappings, literals and unions
of those, plus config groups (dataclasses with a ``shorthand`` attribute, recursively). A hint they cannot
check (any other class, ``Callable``, a forward reference that does not resolve) accepts every value.
Every error names the dotted key (``model.gan.r1_gamma``); unknown keys come with their closest spellings.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import numbers
import sys
import types
import typing
from collections import abc
from typing import Any, Callable, Literal, Sequence, Union


def group_fields(cls: type) -> list[str]:
    """The keys of config group ``cls``."""
    return [f.name for f in dataclasses.fields(cls)]


def is_config_group(cls: Any) -> bool:
    return isinstance(cls, type) and dataclasses.is_dataclass(cls) and hasattr(cls, "shorthand")


UnknownKey = Callable[[str, Sequence[str], str], str]

_SCALARS = {bool: ("a bool (true or false)", "bools"), int: ("an integer", "integers"),
            float: ("a float", "floats"), str: ("a string", "strings"), type(None): ("null", "nulls")}
_SEQUENCES = (list, tuple, abc.Sequence, abc.MutableSequence, abc.Collection, abc.Iterable, set, frozenset,
              abc.Set)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)
_UNION_TYPES = (Union, types.UnionType)


def unknown_key_message(key: str, valid: Sequence[str], section: str) -> str:
    """``unknown key 'model.gan.r1_gama': did you mean 'model.gan.r1_gamma'? valid keys: ...``."""
    prefix = f"{section}." if section else ""
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.6)
    hint = (" did you mean " + " or ".join(f"'{prefix}{c}'" for c in close) + "?") if close else ""
    listed = ", ".join(prefix + v for v in valid) if valid else "(none)"
    return f"unknown key '{prefix}{key}':{hint} valid keys: {listed}"


def resolve_hints(obj: Any) -> dict[str, Any]:
    """Type hints of a function's parameters or a class's fields, annotations given as strings resolved in
    the defining module. An annotation that does not resolve (a name imported only for type checkers) is
    left out, the others are kept."""
    try:
        return typing.get_type_hints(obj)
    except Exception:  # noqa: BLE001 - any failure: resolve the annotations one by one
        pass
    target = inspect.unwrap(obj) if callable(obj) and not isinstance(obj, type) else obj
    if isinstance(target, type):
        module = sys.modules.get(target.__module__)
        globalns = dict(vars(module)) if module is not None else {}
        annotations: dict[str, Any] = {}
        for klass in reversed(target.__mro__):
            annotations.update(vars(klass).get("__annotations__", {}))
        localns = dict(vars(target))
    else:
        globalns = dict(getattr(target, "__globals__", {}))
        annotations = dict(getattr(target, "__annotations__", {}))
        localns = {}
    hints = {}
    for name, annotation in annotations.items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, globalns, localns)  # noqa: S307 - the module's own annotation
            except Exception:  # noqa: BLE001
                continue
        hints[name] = annotation
    return hints


def describe_hint(hint: Any) -> str:
    """What a hint accepts, in words: ``a float or null``, ``a list of integers``."""
    if hint in _SCALARS:
        return _SCALARS[hint][0]
    if is_config_group(hint):
        return _group_forms(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNION_TYPES:
        return " or ".join(dict.fromkeys(describe_hint(a) for a in args))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint in _SEQUENCES or origin in _SEQUENCES:
        items = [a for a in args if a is not Ellipsis]
        if not items or (origin is tuple and len(args) > 1 and args[-1] is not Ellipsis):
            return "a list" if not items else f"a list of {len(items)} ({', '.join(describe_hint(a) for a in items)})"
        return f"a list of {_plural(items[0])}"
    if hint in _MAPPINGS or origin in _MAPPINGS:
        if len(args) == 2 and args[1] is not Any:
            return f"a mapping of {_plural(args[0])} to {_plural(args[1])}"
        return "a mapping"
    return f"a {getattr(hint, '__name__', hint)}"


def _plural(hint: Any) -> str:
    if hint in _SCALARS:
        return _SCALARS[hint][1]
    if hint is Any:
        return "values"
    return f"({describe_hint(hint)})"


def _group_forms(cls: type) -> str:
    forms = f"a mapping of {cls.__name__} keys"
    if cls.shorthand:
        forms += f" or a string (shorthand for {{{cls.shorthand}: ...}})"
    return forms


def _show(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _wrong(where: str, hint: Any, value: Any) -> str:
    return f"'{where}' must be {describe_hint(hint)}, got {_show(value)}"


def _is_list(value: Any) -> bool:
    return isinstance(value, abc.Sequence) and not isinstance(value, (str, bytes, bytearray))


def group_of(hint: Any) -> tuple[type | None, bool]:
    """The config group a hint names (alone or in a union) and whether the hint admits ``None``."""
    if is_config_group(hint):
        return hint, False
    if typing.get_origin(hint) in _UNION_TYPES:
        args = typing.get_args(hint)
        groups = [a for a in args if is_config_group(a)]
        if groups:
            return groups[0], type(None) in args
    return None, False


def _key_fits(key: Any, hint: Any) -> bool:
    """Mapping keys are checked loosely: YAML gives ``4`` or ``"4"`` for an integer key, either for a string."""
    if hint is int:
        if isinstance(key, bool):
            return False
        if isinstance(key, numbers.Integral):
            return True
        return isinstance(key, str) and key.strip().lstrip("+-").isdigit()
    if hint is str:
        return isinstance(key, (str, numbers.Integral)) and not isinstance(key, bool)
    return True


def value_errors(value: Any, hint: Any, where: str, *, none_ok: bool = False,
                 unknown_key: UnknownKey = unknown_key_message) -> list[str]:
    """Problems of ``value`` against type hint ``hint``, each naming ``where`` (``[]``: it fits).

    ``none_ok``: ``None`` fits whatever the hint (a parameter whose default is ``None``). ``unknown_key``
    formats an unknown key of a config group.
    """
    if value is None and none_ok:
        return []
    group, group_none = group_of(hint)
    if group is not None:
        return group_value_errors(group, value, where, none_ok=none_ok or group_none, unknown_key=unknown_key)
    if hint is Any or isinstance(hint, (str, typing.ForwardRef, typing.TypeVar)):
        return []
    if hint is None or hint is type(None):
        return [] if value is None else [_wrong(where, type(None), value)]
    if hint in (bool, int, float, str):
        return [] if _scalar_fits(value, hint) else [_wrong(where, hint, value)]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNION_TYPES:
        if any(not value_errors(value, a, where, unknown_key=unknown_key) for a in args):
            return []
        # one member of the value's own shape (the list of a ``float | list[float]``): its detailed errors
        shaped = [a for a in args if _shape_fits(value, a)]
        if len(shaped) == 1:
            return value_errors(value, shaped[0], where, unknown_key=unknown_key)
        return [_wrong(where, hint, value)]
    if origin is Literal:
        fits = any(value == a and (type(value) is type(a) or (isinstance(a, float) and not isinstance(value, bool)
                                                             and isinstance(value, numbers.Real)))
                   for a in args)
        return [] if fits else [_wrong(where, hint, value)]
    if hint in _SEQUENCES or origin in _SEQUENCES:
        if not _is_list(value):
            return [_wrong(where, hint, value)]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return [_wrong(where, hint, value)]
            items = list(zip(value, args))
        else:
            item_hint = args[0] if args else Any
            items = [(v, item_hint) for v in value]
        errors: list[str] = []
        for i, (item, item_hint) in enumerate(items):
            errors += value_errors(item, item_hint, f"{where}[{i}]", unknown_key=unknown_key)
        return errors
    if hint in _MAPPINGS or origin in _MAPPINGS:
        if not isinstance(value, abc.Mapping):
            return [_wrong(where, hint, value)]
        key_hint, item_hint = args if len(args) == 2 else (Any, Any)
        errors = []
        for key, item in value.items():
            if not _key_fits(key, key_hint):
                errors.append(f"'{where}' keys must be {_plural(key_hint)}, got {_show(key)}")
            errors += value_errors(item, item_hint, f"{where}.{key}", unknown_key=unknown_key)
        return errors
    return []  # a class YAML cannot express (torch.dtype, Path, a module ...): not checked


def _scalar_fits(value: Any, hint: type) -> bool:
    """bool is not a number; an int is a float; an integer-valued float is not an int."""
    if hint is bool or hint is str:
        return isinstance(value, hint)
    number = numbers.Integral if hint is int else numbers.Real
    return isinstance(value, number) and not isinstance(value, bool)


def _shape_fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the outer shape of ``hint`` (a list for a sequence hint, a mapping for a
    mapping or group hint)."""
    origin = typing.get_origin(hint)
    if hint in _SEQUENCES or origin in _SEQUENCES:
        return _is_list(value)
    if hint in _MAPPINGS or origin in _MAPPINGS or is_config_group(hint):
        return isinstance(value, abc.Mapping)
    return False


def group_value_errors(cls: type, value: Any, where: str, *, none_ok: bool = False,
                       unknown_key: UnknownKey = unknown_key_message) -> list[str]:
    """Problems of ``value`` as config group ``cls`` at ``where``: an instance, ``None`` (if ``none_ok``),
    the group's string shorthand (only a group with one), or a mapping of its fields checked one by one
    (unknown keys, values against the fields' types, nested groups recursively)."""
    if isinstance(value, cls) or (value is None and none_ok):
        return []
    if isinstance(value, str):
        if cls.shorthand:
            return []
        return [f"'{where}' must be {_group_forms(cls)}, got {_show(value)}: {cls.__name__} has no string shorthand"
                f" (valid keys: {', '.join(f'{where}.{k}' for k in group_fields(cls))})"]
    if not isinstance(value, abc.Mapping):
        return [f"'{where}' must be {_group_forms(cls)}{' or null' if none_ok else ''}, got {_show(value)}"]
    valid = group_fields(cls)
    hints = resolve_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    errors: list[str] = []
    for key, item in value.items():
        if key not in valid:
            errors.append(unknown_key(str(key), valid, where))
            continue
        errors += value_errors(item, hints.get(key, Any), f"{where}.{key}", none_ok=defaults[key] is None,
                               unknown_key=unknown_key)
    return errors
