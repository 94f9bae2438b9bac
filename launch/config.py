"""Config composition: ``configs/base.yaml`` < experiment file (and what it ``extends``) < CLI overrides.

Composition is shallow per key: mappings merge key by key, any other value replaces what an earlier layer
set (a string over a mapping, a mapping over a string). Dotted CLI overrides, the resolved config saved
with the run. ``~dotted.key`` on the command line removes that key from the composed config (after the
merge, so the constructor's default applies); deleting a key the config lacks is an error. An experiment
file may name one parent with a top-level ``extends: path`` (relative to ``configs/``, or to the file
itself); parents may extend further, cycles are an error. A callback set to ``null`` in a child removes
the callback inherited from its parent.

Config groups with a string shorthand (``model.generator: stylegan2-ffhq-256`` is ``{checkpoint:
stylegan2-ffhq-256}``): when a later layer gives the group as a mapping, an earlier layer's string is
first expanded to its mapping, so ``model.generator.which=g`` adds to the checkpoint instead of dropping it.
Key and type validation lives in :mod:`launch.schema`.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from launch.errors import ConfigError

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
EXTENDS_KEY = "extends"
PROVENANCE_KEY = "provenance"  # launch.provenance.SECTION


def read_yaml(path: Path) -> DictConfig:
    """One YAML file as a DictConfig; a missing file, bad YAML or a non-mapping is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {err}") from err


def _find_parent(ref: Any, child: Path, configs_dir: Path) -> Path:
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{child}: '{EXTENDS_KEY}' must be a path string, got {ref!r}")
    candidates = [Path(ref)] if Path(ref).is_absolute() else [configs_dir / ref, child.parent / ref]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"{child}: '{EXTENDS_KEY}: {ref}' not found (looked for {tried})")


def experiment_chain(path: Path, configs_dir: Path = CONFIGS_DIR) -> list[DictConfig]:
    """The experiment file and its ``extends`` ancestors, root ancestor first, ``extends`` keys removed
    (and the ``provenance`` section a run's ``config.yaml`` carries)."""
    chain: list[DictConfig] = []
    seen: list[Path] = []
    current: Path | None = Path(path).resolve()
    while current is not None:
        if current in seen:
            cycle = " -> ".join(str(p) for p in [*seen, current])
            raise ConfigError(f"'{EXTENDS_KEY}' cycle: {cycle}")
        seen.append(current)
        cfg = read_yaml(current)
        ref = cfg.pop(EXTENDS_KEY, None)
        cfg.pop(PROVENANCE_KEY, None)  # what an earlier launch of a run's config.yaml recorded, not a setting
        chain.append(cfg)
        current = _find_parent(ref, current, configs_dir) if ref is not None else None
    return chain[::-1]


DELETE_PREFIX = "~"


def split_deletions(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(key=value overrides, dotted keys to delete)``: ``~data.num_images`` removes that key from the
    composed config (as in Hydra). ``~key=value`` is refused: a deletion takes no value."""
    sets, deletions = [], []
    for item in overrides:
        if not item.startswith(DELETE_PREFIX):
            sets.append(item)
            continue
        key = item[len(DELETE_PREFIX):]
        if "=" in key:
            raise ConfigError(f"override {item!r}: a deletion takes no value; write {DELETE_PREFIX}"
                              f"{key.split('=', 1)[0]} to remove the key")
        if not key or key.startswith(".") or key.endswith(".") or ".." in key:
            raise ConfigError(f"override {item!r} must look like {DELETE_PREFIX}dotted.key (e.g. ~data.num_images)")
        deletions.append(key)
    return sets, deletions


def delete_keys(cfg: DictConfig, keys: Sequence[str]) -> None:
    """In place: remove each dotted key; a key the config does not hold is a :class:`ConfigError` naming it."""
    for key in keys:
        if key == EXTENDS_KEY:
            raise ConfigError(f"'{EXTENDS_KEY}' cannot be given on the command line; put it in the config file")
        *parents, last = key.split(".")
        node: Any = cfg
        for i, part in enumerate(parents):
            node = _child(node, part)
            if not isinstance(node, DictConfig):
                where = ".".join(parents[:i + 1])
                raise ConfigError(f"cannot delete '{key}': '{where}' is not a mapping in the config"
                                  if node is not None else f"cannot delete '{key}': the config has no key '{where}'")
        name = _key_in(node, last)
        if name is None:
            raise ConfigError(f"cannot delete '{key}': the config has no such key")
        del node[name]


def _key_in(node: DictConfig, part: str) -> Any:
    """The key of ``node`` spelt ``part`` (a string, or the integer it reads as), None when absent."""
    keys = list(node.keys())  # ``in`` would miss a key whose value is ``???``
    if part in keys:
        return part
    if part.lstrip("-").isdigit() and int(part) in keys:
        return int(part)
    return None


def _child(node: DictConfig, part: str) -> Any:
    name = _key_in(node, part)
    return None if name is None else node._get_node(name)


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """Dotted ``key=value`` overrides (values parsed as YAML: ``trainer.devices=2``, ``model.channels={4: 32}``).
    Deletions (``~key``) are taken apart by :func:`split_deletions` first."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} must look like key=value (e.g. trainer.max_steps=100)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad override: {err}") from err


def _split_indexed(sets: Sequence[str], files: DictConfig) -> tuple[list[str], list[str]]:
    """Overrides that reach into a list (``model.tasks.0.images=...`` or ``model.tasks[0].images=...``) are set
    in place after the merge; the others merge as a layer."""
    plain, indexed = [], []
    for item in sets:
        key = item.partition("=")[0].strip()
        parts = key.replace("[", ".").replace("]", "").split(".")
        node: Any = files
        crosses = "[" in key
        for part in parts[:-1]:
            if not isinstance(node, DictConfig) or part not in node:
                break
            node = node._get_node(part)
            if isinstance(node, ListConfig):
                crosses = True
                break
        (indexed if crosses else plain).append(item)
    return plain, indexed


def _apply_indexed(cfg: DictConfig, items: Sequence[str]) -> None:
    for item in items:
        key, _, raw = item.partition("=")
        key = key.strip().replace("[", ".").replace("]", "")
        value = parse_overrides([f"value={raw}"])["value"]
        parts = key.split(".")
        node: Any = cfg
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, ListConfig):
                if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                    where = ".".join(parts[:depth]) or "the config"
                    raise ConfigError(f"override {item!r}: {where} is a list of {len(node)} entries; "
                                      f"{part!r} is not an index of it")
                node = node[int(part)]
            elif isinstance(node, DictConfig):
                node = node._get_node(part) if part in node else None
            if node is None:
                break
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except (OmegaConfBaseException, TypeError, IndexError, ValueError) as err:
            raise ConfigError(f"bad override {item!r}: {err}") from None


def drop_disabled_callbacks(cfg: DictConfig) -> None:
    """Remove callbacks set to ``null`` (how a child config disables one it inherited)."""
    callbacks = cfg.get("callbacks")
    if isinstance(callbacks, DictConfig):
        for name in [k for k in callbacks if callbacks[k] is None]:
            del callbacks[name]


def group_shorthands(method: Any, methods: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``{model key: shorthand field}`` of the config groups with a string shorthand that ``method`` (a
    registry name or import string) takes; ``{}`` when the method cannot be resolved (validation reports
    that)."""
    from launch.registry import resolve
    from launch.schema import constructor_params
    from lightning_modules.config_check import group_of

    if methods is None:
        from lightning_modules import METHODS
        methods = METHODS
    try:
        method_cls = resolve("method", method, methods)
    except Exception:  # noqa: BLE001 - an unknown or broken method: validation names the problem
        return {}
    shorthands = {}
    for param in constructor_params(method_cls)[0]:
        group, _ = group_of(param.hint)
        if group is not None and group.shorthand:
            shorthands[param.name] = group.shorthand
    return shorthands


def expand_shorthands(layers: Sequence[DictConfig], shorthands: Mapping[str, str], section: str = "model") -> None:
    """In place: a string (or ``???``) a layer gives for ``<section>.<key>`` becomes ``{shorthand: value}``
    when a later layer gives that key as a mapping (which then merges into it instead of replacing it)."""
    raw = [_raw_section(layer, section) for layer in layers]
    for key, field in shorthands.items():
        for i, values in enumerate(raw):
            if not isinstance(values.get(key), str):
                continue
            if any(isinstance(later.get(key), dict) for later in raw[i + 1:]):
                layers[i][section][key] = OmegaConf.create({field: values[key]})  # "???" stays missing
                values[key] = {field: values[key]}


def _raw_section(layer: DictConfig, section: str) -> dict:
    """``layer[section]`` as plain containers, interpolations and ``???`` as written (``{}`` if absent)."""
    if not isinstance(layer, DictConfig) or section not in layer or OmegaConf.is_missing(layer, section):
        return {}
    try:
        node = layer[section]
    except OmegaConfBaseException:  # an interpolation that only resolves in the merged config
        return {}
    if not isinstance(node, DictConfig):
        return {}
    return OmegaConf.to_container(node, resolve=False)  # type: ignore[return-value]


def compose(config_path: str | Path, overrides: Sequence[str] = (), configs_dir: Path = CONFIGS_DIR,
            methods: Mapping[str, Any] | None = None) -> DictConfig:
    """Merge base, experiment chain and overrides; fill ``experiment`` from the file name; check ``???``.

    ``methods`` is the method registry used to find group shorthands (default: ``lightning_modules.METHODS``).
    The result is not yet validated against constructors (see :func:`launch.schema.validate`).
    """
    config_path = Path(config_path)
    base = read_yaml(configs_dir / "base.yaml")
    layers = experiment_chain(config_path, configs_dir)
    sets, deletions = split_deletions(overrides)
    try:  # the file layers alone, to see which override keys cross a list (their conflicts are reported below)
        files = OmegaConf.merge(base, *layers)
    except (OmegaConfBaseException, TypeError):
        files = OmegaConf.create({})
    sets, indexed = _split_indexed(sets, files)
    cli = parse_overrides(sets)
    if EXTENDS_KEY in cli:
        raise ConfigError(f"'{EXTENDS_KEY}' cannot be given on the command line; put it in the config file")
    all_layers = [base, *layers, cli]
    try:
        cfg = OmegaConf.merge(*all_layers)
        method = OmegaConf.select(cfg, "method", default=None, throw_on_missing=False)
        if isinstance(method, str) and method != "???":
            shorthands = group_shorthands(method, methods)
            if shorthands:
                expand_shorthands(all_layers, shorthands)
                cfg = OmegaConf.merge(*all_layers)
    except (OmegaConfBaseException, TypeError) as err:
        raise ConfigError(f"cannot merge configs: {err}") from err
    assert isinstance(cfg, DictConfig)
    _apply_indexed(cfg, indexed)
    delete_keys(cfg, deletions)
    drop_disabled_callbacks(cfg)
    if cfg.get("experiment") is None:
        cfg.experiment = config_path.stem
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        keys = ", ".join(repr(k) for k in missing)
        raise ConfigError(f"missing required value(s) {keys}: set them in the config file or on the command"
                          f" line, e.g. {missing[0]}=...")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve interpolation: {err}") from err
    return cfg


def to_container(cfg: DictConfig) -> dict:
    """The config as plain Python containers (what constructors, W&B and checkpoints receive)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: DictConfig | dict) -> str:
    return OmegaConf.to_yaml(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg))


def timestamp() -> str:
    """The run-dir timestamp ``YYYYmmdd-HHMMSS`` (local time)."""
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
