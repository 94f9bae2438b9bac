"""Package layering: lower layers never import upper ones.

The rules (a package on the left imports nothing from the packages on the right):

* ``models``, ``losses``, ``metrics``: ``lightning_modules``, ``launch``, ``callbacks``, ``datamodules`` and the
  Lightning framework (``pytorch_lightning``, ``lightning``, ``lightning_fabric``): they are plain PyTorch;
* ``callbacks``: ``launch`` (callbacks are given everything through the Trainer and the module);
* ``datamodules``: ``lightning_modules``, ``launch``, ``callbacks``;
* ``lightning_modules``: ``launch``, ``callbacks``, ``datamodules``.

Every ``.py`` file of those packages is parsed with :mod:`ast`: module-level and function-level imports,
``import a.b`` and ``from a import b``, relative imports (resolved against the file's package) and
``importlib.import_module("a.b")`` / ``__import__("a.b")`` with a constant name. A failure lists each
violation as ``file:line  imported module  (rule)``.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "models": ("lightning_modules", "launch", "callbacks", "datamodules", *LIGHTNING),
    "losses": ("lightning_modules", "launch", "callbacks", "datamodules", *LIGHTNING),
    "metrics": ("lightning_modules", "launch", "callbacks", "datamodules", *LIGHTNING),
    "callbacks": ("launch",),
    "datamodules": ("lightning_modules", "launch", "callbacks"),
    "lightning_modules": ("launch", "callbacks", "datamodules"),
}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    module: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}  imports {self.module}  ({self.rule})"


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of ``path`` (``pkg/__init__.py`` -> ``pkg``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(current: str, is_package: bool, level: int, module: str | None) -> str:
    package = current.split(".") if is_package else current.split(".")[:-1]
    if level - 1 > len(package):
        raise ValueError(f"relative import beyond the top-level package in {current}")
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imported_modules(source: str, current: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``source`` (the code of module ``current``).

    ``from a import b`` yields ``a.b`` (``b`` may be a submodule); relative imports are made absolute.
    """
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(current, is_package, node.level, node.module) if node.level
                    else node.module or "")
            out.extend((node.lineno, ".".join(filter(None, (base, alias.name if alias.name != "*" else ""))))
                       for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                out.append((node.lineno, node.args[0].value))
    return sorted(out)


def _matches(module: str, forbidden: str) -> bool:
    return module == forbidden or module.startswith(forbidden + ".")


def violations(package: str, root: Path = ROOT, rules: dict[str, tuple[str, ...]] = FORBIDDEN) -> list[Violation]:
    found = []
    for path in sorted((root / package).rglob("*.py")):
        current = module_name(path, root)
        for line, module in imported_modules(path.read_text(), current, path.name == "__init__.py"):
            for banned in rules[package]:
                if _matches(module, banned):
                    found.append(Violation(str(path.relative_to(root)), line, module,
                                           f"{package}/ must not import {banned}"))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_the_layering(package):
    assert (ROOT / package).is_dir(), f"package {package}/ not found"
    found = violations(package)
    assert not found, f"{len(found)} layering violation(s):\n" + "\n".join(map(str, found))


def test_scanner_finds_every_import_form(tmp_path):
    pkg = tmp_path / "metrics" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "metrics" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .. import launch_free\n")
    (pkg / "mod.py").write_text(
        "import os, launch.jsonl\n"
        "from callbacks import metrics as m\n"
        "from ..helpers import x\n"
        "import lightning_modules_like\n"
        "def f():\n"
        "    from datamodules.toy import ToyDataModule\n"
        "    import pytorch_lightning as pl\n"
        "    import importlib\n"
        "    importlib.import_module('lightning.pytorch')\n"
        "class C:\n"
        "    def g(self):\n"
        "        from . import sibling\n"
        "        from ... import launch\n"
        "        __import__('lightning_modules.gan')\n")
    rules = {"metrics": FORBIDDEN["metrics"]}
    found = {(Path(v.path).name, v.line, v.module) for v in violations("metrics", tmp_path, rules)}
    assert found == {("mod.py", 1, "launch.jsonl"), ("mod.py", 2, "callbacks.metrics"),
                     ("mod.py", 6, "datamodules.toy.ToyDataModule"), ("mod.py", 7, "pytorch_lightning"),
                     ("mod.py", 9, "lightning.pytorch"), ("mod.py", 13, "launch"),
                     ("mod.py", 14, "lightning_modules.gan")}
    mods = dict((m, line) for line, m in imported_modules((pkg / "mod.py").read_text(), "metrics.sub.mod"))
    assert {"metrics.helpers.x", "metrics.sub.sibling", "lightning_modules_like"} <= set(mods)
    assert imported_modules("from .. import launch_free\n", "metrics.sub", is_package=True) == \
        [(1, "metrics.launch_free")]
    message = str(Violation("metrics/a.py", 3, "launch.jsonl", "metrics/ must not import launch"))
    assert message == "metrics/a.py:3  imports launch.jsonl  (metrics/ must not import launch)"
