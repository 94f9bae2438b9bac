"""Strict validation of a composed config: every key must mean something, every value must fit its type.

Top-level sections are fixed; ``model`` keys are checked against the method's constructor, ``data``
against the datamodule's, ``trainer`` against ``pytorch_lightning.Trainer`` (keys and the types its hints
express), each ``callbacks.<name>``
against that callback's constructor, ``logger.wandb``, ``logger.csv``, ``logger.tensorboard`` and
``checkpoint`` against fixed schemas. All problems are reported at once, each unknown key with its closest
valid spellings.

How a constructor's keys are found (:func:`constructor_params`):

* its named parameters; when it also takes ``**kwargs``, the named parameters of the next class in the
  MRO that defines its own ``__init__`` (where the keywords are forwarded by ``super().__init__``),
  repeated while that one takes ``**kwargs`` too. A chain that never ends (it reaches ``object`` still
  taking ``**kwargs``) leaves unknown keys unchecked;
* a parameter annotated with a config group (``GeneratorSpec | Mapping | str | None``, see
  :mod:`lightning_modules.config_groups`) takes a mapping of the group's fields, checked key by key
  (``model.gan.r1_gamma``), or a string when the group has a shorthand;
* every value is checked against its parameter's type hint where YAML can express it (bool, int, float,
  str, null, ``Literal``, unions, lists, mappings); other hints are not checked.

The metrics callback's ``metrics`` entries are parsed as the callback will parse them, so a misspelt
metric name stops a dry run too.
"""
from __future__ import annotations

import inspect
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from launch.errors import ConfigError
from launch.registry import resolve, suggest
from lightning_modules.config_check import resolve_hints, value_errors

SECTIONS = ("experiment", "seed", "method", "model", "data", "trainer", "callbacks", "logger", "checkpoint",
            "output_dir", "mode", "ckpt_path")
MODES = ("fit", "validate", "test")
WANDB_KEYS = ("mode", "project", "entity", "name", "tags", "dir")
WANDB_MODES = ("offline", "online", "disabled")
#: ``logger.csv`` / ``logger.tensorboard``: ``{}`` (or any of these keys) turns the logger on, null/absent off
FILE_LOGGER_KEYS = {"csv": ("dir",), "tensorboard": ("dir",)}
CHECKPOINT_KEYS = ("every_kimg", "save_last")
# Trainer arguments the launcher owns, and where the user sets them instead.
MANAGED_TRAINER_KEYS = {"logger": "the 'logger' section", "callbacks": "the 'callbacks' section",
                        "default_root_dir": "'output_dir'"}


@dataclass
class Registries:
    """Name -> import string tables for methods, datamodules and callbacks."""

    methods: Mapping[str, Any]
    datamodules: Mapping[str, Any]
    callbacks: Mapping[str, Any]

    @classmethod
    def default(cls) -> "Registries":
        from callbacks import CALLBACKS
        from datamodules import DATAMODULES
        from lightning_modules import METHODS
        return cls(METHODS, DATAMODULES, CALLBACKS)


@dataclass
class Plan:
    """What a valid config builds: classes with their keyword arguments."""

    method_cls: type
    model_kwargs: dict
    datamodule_cls: type
    data_kwargs: dict
    callbacks: list[tuple[str, type, dict]] = field(default_factory=list)
    trainer_kwargs: dict = field(default_factory=dict)


def unknown_key(key: str, valid: Sequence[str], section: str) -> str:
    """``unknown key 'model.lr_g': did you mean 'model.g_lr'? valid keys: model.a, model.g_lr``."""
    prefix = f"{section}." if section else ""
    hint = suggest(key, valid, prefix)
    listed = ", ".join(prefix + v for v in valid) if valid else "(none)"
    return f"unknown key '{prefix}{key}':{hint} valid keys: {listed}"


def check_keys(section: str, given: Mapping, valid: list[str] | tuple[str, ...], errors: list[str]) -> None:
    for key in given:
        if key not in valid:
            errors.append(unknown_key(str(key), list(valid), section))


@dataclass(frozen=True)
class Param:
    """One keyword a constructor accepts: its default (``inspect.Parameter.empty`` if required), type
    hint (``Any`` when unknown) and the qualified name of the function that declares it."""

    name: str
    default: Any
    hint: Any
    owner: str

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def _declared(func: Callable, owner: str, drop_first: bool) -> tuple[list[Param], bool]:
    """Keyword parameters ``func`` declares and whether it takes ``**kwargs`` (``drop_first``: ``self``).

    Raises ``TypeError`` or ``ValueError`` when ``func`` has no signature (some builtins).
    """
    signature = inspect.signature(func)
    params = list(signature.parameters.values())
    if drop_first and params and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD):
        params = params[1:]  # self
    hints = resolve_hints(func)
    named = [Param(p.name, p.default, hints.get(p.name, Any), owner) for p in params
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def constructor_params(target: Callable) -> tuple[list[Param], bool]:
    """The keyword arguments ``target`` (a class: its ``__init__``) accepts, following ``**kwargs`` up the
    MRO, and whether that list is complete (``False``: some ``**kwargs`` goes nowhere checkable).

    A name declared by several ``__init__`` of the chain is the most derived one's.
    """
    if not isinstance(target, type):
        try:
            declared, var_keyword = _declared(target, getattr(target, "__qualname__", repr(target)), drop_first=False)
        except (TypeError, ValueError):
            return [], False
        return declared, not var_keyword
    params: dict[str, Param] = {}
    for klass in target.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            declared, var_keyword = _declared(init, klass.__qualname__, drop_first=True)
        except (TypeError, ValueError):  # builtins without a signature: nothing to check against
            return list(params.values()), False
        for param in declared:
            params.setdefault(param.name, param)
        if not var_keyword:
            return list(params.values()), True
    return list(params.values()), False


def check_signature(section: str, given: Mapping, target: Callable, errors: list[str],
                    exclude: tuple[str, ...] = (), check_types: bool = True) -> None:
    """Unknown, missing and ill-typed keyword arguments of ``target`` (a class: its ``__init__``, with
    the ``**kwargs`` chain of :func:`constructor_params`), minus ``exclude``."""
    found, complete = constructor_params(target)
    params = {p.name: p for p in found if p.name not in exclude}
    if complete:
        check_keys(section, given, list(params), errors)
    for param in params.values():
        if param.required and param.name not in given:
            errors.append(f"missing required key '{section}.{param.name}' ({param.owner} has no default for it)")
    if not check_types:
        return
    for key, value in given.items():
        param = params.get(key)
        if param is not None:
            errors.extend(value_errors(value, param.hint, f"{section}.{key}", none_ok=param.default is None,
                                       unknown_key=unknown_key))
    for import_string, check in DEEP_CHECKS.items():
        if any(f"{k.__module__}:{k.__qualname__}" == import_string for k in getattr(target, "__mro__", ())):
            check(section, given, errors)


def _check_metric_entries(section: str, given: Mapping, errors: list[str]) -> None:
    """Parse ``<section>.metrics`` as the metrics callback will (a bad entry: an error naming it)."""
    metrics = given.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        return  # reported by the type check or the callback itself
    from metrics import specs

    parse_all = getattr(specs, "parse_specs", None)
    parse_one = getattr(specs, "parse_spec", None)
    if parse_all is None and parse_one is None:
        return
    failed = False
    for name, options in metrics.items():
        if options is None:
            continue  # disabled
        try:
            if parse_all is not None:
                parse_all({name: options})
            else:
                parse_one(name, options)
        except ValueError as err:
            failed = True
            errors.append(f"'{section}.metrics.{name}': {err}")
    if not failed and parse_all is not None:
        try:  # checks across entries
            parse_all(dict(metrics))
        except ValueError as err:
            errors.append(f"'{section}.metrics': {err}")


#: classes (import string) whose arguments get a further check: ``check(section, kwargs, errors)``
DEEP_CHECKS: dict[str, Callable[[str, Mapping, list[str]], None]] = {
    "callbacks.metrics:MetricsCallback": _check_metric_entries,
}


def _is_mapping(value: Any) -> bool:
    return isinstance(value, Mapping)


def _check_scalars(cfg: Mapping, errors: list[str]) -> None:
    experiment = cfg.get("experiment")
    if not isinstance(experiment, str) or not experiment or "/" in experiment:
        errors.append(f"'experiment' must be a non-empty name without '/', got {experiment!r}")
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        errors.append(f"'seed' must be an integer, got {seed!r}")
    mode = cfg.get("mode")
    if mode not in MODES:
        errors.append(f"'mode' must be one of {', '.join(MODES)}, got {mode!r}:{suggest(str(mode), MODES)}")
    for key in ("output_dir", "ckpt_path"):
        if cfg.get(key) is not None and not isinstance(cfg.get(key), str):
            errors.append(f"'{key}' must be a path string or null, got {cfg.get(key)!r}")
    for key in ("model", "data", "trainer", "callbacks", "logger", "checkpoint"):
        if not _is_mapping(cfg.get(key)):
            errors.append(f"section '{key}' must be a mapping, got {cfg.get(key)!r}")


def _check_file_loggers(logger: Mapping, errors: list[str]) -> None:
    for name, keys in FILE_LOGGER_KEYS.items():
        section = logger.get(name)
        if section is None:
            continue
        if not _is_mapping(section):
            errors.append(f"'logger.{name}' must be a mapping ({{}} for the defaults) or null, got {section!r}")
            continue
        check_keys(f"logger.{name}", section, keys, errors)
        if section.get("dir") is not None and not isinstance(section.get("dir"), str):
            errors.append(f"'logger.{name}.dir' must be a path string or null, got {section.get('dir')!r}")
        if name == "tensorboard":
            from launch.loggers import tensorboard_available
            if not tensorboard_available():
                errors.append("'logger.tensorboard' needs the tensorboard package (pip install tensorboard, or "
                              "make venv); or log to CSV instead: logger.csv={}")


def _check_logger(logger: Mapping, errors: list[str]) -> None:
    check_keys("logger", logger, ["wandb", *FILE_LOGGER_KEYS], errors)
    _check_file_loggers(logger, errors)
    wandb = logger.get("wandb")
    if not _is_mapping(wandb):
        errors.append(f"'logger.wandb' must be a mapping, got {wandb!r}")
        return
    check_keys("logger.wandb", wandb, WANDB_KEYS, errors)
    mode = wandb.get("mode")
    if mode not in WANDB_MODES:
        errors.append(f"'logger.wandb.mode' must be one of {', '.join(WANDB_MODES)}, got {mode!r}:"
                      f"{suggest(str(mode), WANDB_MODES)}")
    tags = wandb.get("tags")
    if tags is not None and not (isinstance(tags, (list, tuple)) and all(isinstance(t, str) for t in tags)):
        errors.append(f"'logger.wandb.tags' must be a list of strings, got {tags!r}")


def _check_checkpoint(checkpoint: Mapping, errors: list[str]) -> None:
    check_keys("checkpoint", checkpoint, CHECKPOINT_KEYS, errors)
    every = checkpoint.get("every_kimg")
    if every is not None and (not isinstance(every, numbers.Real) or isinstance(every, bool) or every <= 0):
        errors.append(f"'checkpoint.every_kimg' must be a positive number or null, got {every!r}")
    if not isinstance(checkpoint.get("save_last", True), bool):
        errors.append(f"'checkpoint.save_last' must be true or false, got {checkpoint.get('save_last')!r}")


def _resolve(kind: str, name: Any, registry: Mapping[str, Any], errors: list[str]) -> Any:
    try:
        return resolve(kind, name, registry)
    except ConfigError as err:
        errors.append(str(err))
        return None


def validate(cfg: Mapping, registries: Registries | None = None) -> Plan:
    """Check a composed, plain-container config and return what it builds; raise one :class:`ConfigError`."""
    import pytorch_lightning as pl

    errors: list[str] = []
    check_keys("", cfg, SECTIONS, errors)
    _check_scalars(cfg, errors)
    if errors:
        raise ConfigError.of(errors)
    registries = registries or Registries.default()

    method_cls = _resolve("method", cfg["method"], registries.methods, errors)
    model_kwargs = dict(cfg["model"])
    if method_cls is not None:
        check_signature("model", model_kwargs, method_cls, errors)

    data_kwargs = dict(cfg["data"])
    data_name = data_kwargs.pop("name", None)
    datamodule_cls = None
    if data_name is None:
        errors.append("missing required key 'data.name' (which datamodule to use, e.g. data.name=toy; "
                      f"available: {', '.join(sorted(registries.datamodules))})")
    else:
        datamodule_cls = _resolve("datamodule", data_name, registries.datamodules, errors)
        if datamodule_cls is not None:
            check_signature("data", data_kwargs, datamodule_cls, errors)

    trainer_kwargs = dict(cfg["trainer"])
    for key, where in MANAGED_TRAINER_KEYS.items():
        if key in trainer_kwargs:
            errors.append(f"'trainer.{key}' is set by the launcher; use {where} instead")
            trainer_kwargs.pop(key)
    check_signature("trainer", trainer_kwargs, pl.Trainer, errors, exclude=tuple(MANAGED_TRAINER_KEYS))

    callbacks = []
    for name, kwargs in cfg["callbacks"].items():
        if not _is_mapping(kwargs):
            errors.append(f"'callbacks.{name}' must be a mapping of arguments ({{}} for defaults) or null, "
                          f"got {kwargs!r}")
            continue
        cls = _resolve("callback", name, registries.callbacks, errors)
        if cls is not None:
            check_signature(f"callbacks.{name}", kwargs, cls, errors)
            callbacks.append((name, cls, dict(kwargs)))

    _check_logger(cfg["logger"], errors)
    _check_checkpoint(cfg["checkpoint"], errors)
    if errors:
        raise ConfigError.of(errors)
    return Plan(method_cls, model_kwargs, datamodule_cls, data_kwargs, callbacks, trainer_kwargs)
