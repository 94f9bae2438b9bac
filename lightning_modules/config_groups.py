"""Config groups shared by methods: keys several methods take, defined once.

A method's constructor takes its own keys plus named groups it shares with other methods, so no method
copies another's signature:

* ``generator`` (:class:`GeneratorSpec`): the generator to start from - a checkpoint (path or registered
  asset name; a bare string is shorthand for ``{checkpoint: ...}``) or the architecture of a new one;
* ``gan`` (:class:`GANSettings`): the adversarial training settings of the StyleGAN2 core.

In YAML::

    model:
      generator: {resolution: 32, style_dim: 64, n_mlp: 2}     # or: generator: stylegan2-ffhq-256
      gan: {r1_gamma: 0.05, pl_weight: 0, ema_kimg: 0.5}
      total_kimg: 16

A group is a dataclass; :func:`coerce_group` builds it from a mapping over a method's defaults
(``dataclasses.replace``), with the same did-you-mean errors as the launcher. The launcher validates
every group's keys and value types before anything is built.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import logging
import numbers
import sys
import types
import typing
from collections import abc
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence, TypeVar, Union

from torch import nn

log = logging.getLogger(__name__)

G = TypeVar("G")

#: architecture defaults of a new generator (rosinality's ``train.py``)
SCRATCH_DEFAULTS = {"style_dim": 512, "n_mlp": 8, "channel_multiplier": 2}


def group_fields(cls: type) -> list[str]:
    """The keys of config group ``cls``."""
    return [f.name for f in dataclasses.fields(cls)]


def is_config_group(cls: Any) -> bool:
    return isinstance(cls, type) and dataclasses.is_dataclass(cls) and hasattr(cls, "shorthand")


def coerce_group(cls: type[G], value: Any, where: str, defaults: G | None = None) -> G:
    """``value`` (an instance, a mapping, ``None`` or the group's string shorthand) as a ``cls`` instance.

    Mapping keys override ``defaults`` (else the dataclass defaults). Unknown keys and values of the wrong
    type raise one ``ValueError`` that names each offending key from ``where`` (``model.gan.r1_gamma``),
    with the closest valid keys - the checks the launcher runs on a config (:func:`group_value_errors`).
    """
    if isinstance(value, cls):
        return value
    base = copy.deepcopy(defaults) if defaults is not None else cls()
    if value is None:
        return base
    errors = group_value_errors(cls, value, where)
    if errors:
        raise ValueError("; ".join(errors))
    if isinstance(value, str):
        value = {cls.shorthand: value}
    return dataclasses.replace(base, **dict(value))


# ------------------------------------------------------------------------------------ value checking
# The checks below are shared by :func:`coerce_group` and the launcher (which validates a whole config
# before anything is built). They check what YAML can express: scalars, null, lists, mappings, literals
# and unions of those, plus config groups (recursively). A hint they cannot check (any other class,
# ``Callable``, a forward reference that does not resolve) accepts every value.

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


def _channel_table(channels: Mapping[Any, Any] | None) -> dict[int, int] | None:
    """``{resolution: channels}`` with integer keys (YAML may give strings)."""
    if channels is None:
        return None
    try:
        return {int(k): int(v) for k, v in dict(channels).items()}
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"channels must map resolutions to channel counts, got {channels!r}") from err


@dataclass
class GeneratorSpec:
    """The generator a method starts from: ``checkpoint`` (pretrained), or a new one of this architecture.

    Attributes:
        checkpoint: a file ``models.checkpoints.load`` reads (rosinality ``.pt``, NVIDIA ``.pkl``, an exported
            ``generator.pt``) or a registered asset name. Architecture keys that are also given must agree.
        which: the generator of the file single-generator methods use: ``g_ema`` (default) or ``g``.
        resolution, style_dim (512), n_mlp (8), channel_multiplier (2), channels (``{res: ch}`` table),
            lr_mlp, conv_clamp: architecture of a new generator; ``mbstd_group_size`` of a new discriminator.
        init_seed: seed of a new generator's random weights (None: the global torch RNG).
    """

    shorthand = "checkpoint"

    checkpoint: str | None = None
    which: str = "g_ema"
    resolution: int | None = None
    style_dim: int | None = None
    n_mlp: int | None = None
    channel_multiplier: int | None = None
    channels: dict[int, int] | None = None
    lr_mlp: float = 0.01
    conv_clamp: float | None = None
    mbstd_group_size: int | None = 4
    init_seed: int | None = None

    def __post_init__(self) -> None:
        self.channels = _channel_table(self.channels)
        if self.which not in ("g_ema", "g"):
            raise ValueError(f"generator.which must be 'g_ema' or 'g', got {self.which!r}")

    ARCHITECTURE = ("resolution", "style_dim", "n_mlp", "channel_multiplier", "channels")

    # -------------------------------------------------------------------------------- new networks
    def architecture(self) -> dict[str, Any]:
        """Keyword arguments of a new ``models.stylegan2.Generator`` (defaults filled in)."""
        if self.resolution is None:
            raise ValueError("a new generator needs model.generator.resolution (or model.generator.checkpoint "
                             "to start from a pretrained one)")
        kw = {k: SCRATCH_DEFAULTS[k] if getattr(self, k) is None else getattr(self, k) for k in SCRATCH_DEFAULTS}
        return dict(size=self.resolution, **kw, lr_mlp=self.lr_mlp, channels=self.channels,
                    conv_clamp=self.conv_clamp)

    def _new(self, build):
        import torch

        if self.init_seed is None:
            return build()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.init_seed))
            return build()

    def new_networks(self) -> tuple[nn.Module, nn.Module]:
        """A new generator and discriminator of this architecture (weights from the RNG, see ``init_seed``)."""
        from models.stylegan2 import Discriminator, Generator

        arch = self.architecture()

        def build():
            g = Generator(**arch)
            d = Discriminator(self.resolution, channel_multiplier=arch["channel_multiplier"],
                              channels=self.channels, mbstd_group_size=self.mbstd_group_size,
                              conv_clamp=self.conv_clamp)
            return g, d

        return self._new(build)

    # -------------------------------------------------------------------------------- pretrained
    def check_against(self, config) -> None:
        """Architecture keys given alongside ``checkpoint`` must agree with the file's (a ``StyleGANConfig``)."""
        found = {"resolution": config.size, "style_dim": config.style_dim, "n_mlp": config.n_mlp,
                 "channel_multiplier": config.channel_multiplier,
                 "channels": {int(k): int(v) for k, v in config.channels.items()}}
        for key in self.ARCHITECTURE:
            value = getattr(self, key)
            if value is not None and value != found[key]:
                raise ValueError(f"model.generator.{key}={value!r} disagrees with checkpoint {self.checkpoint!r} "
                                 f"({key}={found[key]!r}); drop it or use a matching file")

    def generator(self) -> nn.Module:
        """The one generator (eval mode): ``which`` of ``checkpoint`` (``models.checkpoints.load_generator``),
        or a new generator of this architecture."""
        if self.checkpoint is None:
            from models.stylegan2 import Generator

            arch = self.architecture()
            return self._new(lambda: Generator(**arch)).eval()
        from models import checkpoints

        generator = checkpoints.load_generator(self.checkpoint, self.which)
        self.check_against(generator.config if hasattr(generator, "config") else _config_of(generator))
        return generator

    def gan(self) -> tuple[nn.Module, nn.Module, nn.Module | None]:
        """``(G, D, G_ema or None)`` to train: from ``checkpoint`` (G = ``g`` else a copy of ``g_ema``; D new
        when the file has none, with a warning), or new networks (G_ema None: a copy of G)."""
        if self.checkpoint is None:
            g, d = self.new_networks()
            return g, d, None
        from models import checkpoints
        from models.stylegan2 import Discriminator

        loaded = checkpoints.load(self.checkpoint)
        if loaded.g_ema is None and loaded.g is None:
            raise ValueError(f"checkpoint {self.checkpoint!r} holds no generator")
        self.check_against(loaded.config)
        g_ema = loaded.g_ema if loaded.g_ema is not None else loaded.g
        if loaded.g is None:
            log.warning("checkpoint %s has no trained generator 'g': fine-tuning starts from 'g_ema'",
                        self.checkpoint)
        generator = copy.deepcopy(loaded.g if loaded.g is not None else g_ema).train()
        discriminator = loaded.d
        if discriminator is None:
            log.warning("checkpoint %s has no discriminator: D starts from random weights", self.checkpoint)
            config = loaded.config
            discriminator = Discriminator(config.size, channels={int(k): int(v) for k, v in config.channels.items()},
                                          mbstd_group_size=config.mbstd_group_size, conv_clamp=config.conv_clamp)
        return generator, discriminator.train(), g_ema


def _config_of(generator: nn.Module):
    """A ``StyleGANConfig``-like view of a generator's architecture (for :meth:`GeneratorSpec.check_against`)."""
    return _Arch(generator.size, generator.style_dim, generator.n_mlp, generator.channel_multiplier,
                 generator.channels)


@dataclass
class _Arch:
    size: int
    style_dim: int
    n_mlp: int
    channel_multiplier: int
    channels: Mapping[int, int]


@dataclass
class GANSettings:
    """Adversarial training settings of the StyleGAN2 core (rosinality ``train.py`` defaults).

    Attributes:
        g_lr, d_lr, betas: Adam settings before the lazy-regularization correction.
        r1_gamma, r1_interval: R1 weight (0 disables) and lazy interval (iterations).
        pl_weight, pl_interval, pl_batch_shrink, pl_decay: path-length regularization (0 disables).
        mixing_prob: probability that a batch uses two z and a random crossover index.
        ema_kimg, ema_rampup: EMA half-life in kimg and optional ramp-up (NVIDIA; None = off).
        diffaugment: DiffAugment policy for every image D sees, e.g. ``"color,translation,cutout"`` (None = off).
    """

    shorthand = None

    g_lr: float = 0.002
    d_lr: float = 0.002
    betas: Sequence[float] = (0.0, 0.99)
    r1_gamma: float = 10.0
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    mixing_prob: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: float | None = None
    diffaugment: str | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2:
            raise ValueError(f"gan.betas must have two entries, got {self.betas}")
        if not 0.0 <= self.mixing_prob <= 1.0:
            raise ValueError(f"gan.mixing_prob must be in [0, 1], got {self.mixing_prob}")
        if self.r1_gamma < 0 or self.pl_weight < 0:
            raise ValueError(f"gan.r1_gamma and gan.pl_weight must be >= 0, got {self.r1_gamma}, {self.pl_weight}")
        for key in ("r1_interval", "pl_interval", "pl_batch_shrink"):
            value = getattr(self, key)
            if int(value) != value or value < 1:
                raise ValueError(f"gan.{key} must be an integer >= 1, got {value}")


__all__ = ["GeneratorSpec", "GANSettings", "coerce_group", "group_fields", "is_config_group", "SCRATCH_DEFAULTS",
           "describe_hint", "group_of", "group_value_errors", "resolve_hints", "unknown_key_message", "value_errors"]
