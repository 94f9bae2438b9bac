"""Import-string registries (docs/architecture.md, "Layout").

Registries map a short name to ``"package.module:Attribute"`` and are resolved lazily, so that naming a
method does not import every other method. A config may also name a class directly by import string
(``method: mypackage.gans:MyModule``), which is how projects outside this repository plug in.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Mapping

from launch.errors import ConfigError


def import_object(spec: str) -> Any:
    """Import ``"package.module:Attribute"`` (the attribute may be dotted: ``"mod:Outer.Inner"``)."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"bad import string {spec!r}: expected 'package.module:Attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ConfigError(f"cannot import {spec!r}: module {err.name!r} does not exist") from err
        raise  # the module exists but one of its own imports failed: show the real traceback
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise ConfigError(f"cannot import {spec!r}: {module_name!r} has no attribute {attr_path!r}") from err
    return obj


def close_matches(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """Likely intended spellings of ``name``: same words in another order or case (``lr_g`` -> ``g_lr``),
    then ``difflib`` near-misses (``max_step`` -> ``max_steps``)."""
    def words(s: str) -> list[str]:
        return sorted(s.lower().replace("-", "_").split("_"))

    same_words = [c for c in choices if words(c) == words(name) and c != name]
    fuzzy = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    return list(dict.fromkeys(same_words + fuzzy))[:n]


def suggest(name: str, choices: list[str] | tuple[str, ...], prefix: str = "", n: int = 3) -> str:
    """``" did you mean 'x'?"`` for the closest matches of ``name`` in ``choices`` (empty if none).

    ``prefix`` is prepended to each shown match (``"model."`` turns ``'g_lr'`` into ``'model.g_lr'``).
    """
    close = close_matches(name, choices, n)
    if not close:
        return ""
    return " did you mean " + " or ".join(f"'{prefix}{c}'" for c in close) + "?"


def resolve(kind: str, name: Any, registry: Mapping[str, Any]) -> Any:
    """The object registered as ``name`` in ``registry``, or imported from ``name`` if it is an import string.

    Registry values are import strings (or, for programmatic use, the objects themselves). ``kind`` names
    the registry in errors (``"method"``, ``"datamodule"``, ``"callback"``).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{kind} must be a non-empty string, got {name!r}")
    if name in registry:
        target = registry[name]
        return import_object(target) if isinstance(target, str) else target
    if ":" in name:
        return import_object(name)
    available = ", ".join(sorted(registry))
    raise ConfigError(f"unknown {kind} {name!r}:{suggest(name, sorted(registry))} available: {available}"
                      f" (or give an import string 'package.module:Class')")
