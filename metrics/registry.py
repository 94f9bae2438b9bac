"""The one registry of metric kinds (README, "Evaluation").

Each entry says everything the rest of the code needs to know about a metric kind:

* ``spec_cls``: its config schema (a :class:`metrics.specs.MetricSpec` dataclass; ``parse_spec`` builds it);
* ``runner(run, spec, targets) -> list[MetricValue]``: computes it on the named samplers ``targets``
  (``run`` is the :class:`metrics.suite.MetricRun` of one evaluation: samplers, reference sets, shared
  networks and a scratch space shared by the runners);
* ``assets(spec) -> [asset names]``: the pretrained files it needs (default: ``spec.required_assets()``),
  resolved by the metrics callback at start-up;
* ``sampler_need``: the kind of sampler it runs on (:data:`ANY_SAMPLER`, :data:`PATH_SAMPLER`,
  :data:`PAIRED_SAMPLER`, :data:`DOMAIN_SAMPLER` or a new :class:`SamplerNeed`);
* ``prepare(run, spec, targets)`` (optional): called for every configured metric before any runner runs,
  to plan work shared between metrics (FID and KID of one sampler share one feature pass).

Which samplers a metric runs on, first match wins: the metric's own ``samplers`` option; the callback's
``samplers`` option (only for metrics that accept any sampler); the method module's
``metric_samplers()[kind]`` (the sampler names it declares for that kind, e.g. MixDL's
``{"latent_smoothness": ["interpolation"]}``); else every sampler that fits ``sampler_need``.

Adding a metric is one file under ``metrics/runners/`` (every module there is imported when the registry
is first read): its spec dataclass, its runner and a :func:`register_metric` call::

    @dataclass
    class MeanBrightnessSpec(MetricSpec):
        kind: ClassVar[str] = "mean_brightness"
        num_gen: int = 100

    @register_metric("mean_brightness", MeanBrightnessSpec)
    def run_mean_brightness(run, spec, targets):
        ...  # -> [MetricValue(...) for each sampler name in targets]

A metric defined elsewhere registers itself when its module is imported.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from models.sampler import DomainSampler, PathSampler

if TYPE_CHECKING:
    from metrics.specs import MetricSpec
    from metrics.suite import MetricRun, MetricValue

Runner = Callable[["MetricRun", "MetricSpec", list], list["MetricValue"]]
RUNNERS_PACKAGE = "metrics.runners"


@dataclass(frozen=True)
class SamplerNeed:
    """The kind of sampler a metric runs on: ``fits(sampler)`` says whether one qualifies.

    ``generic`` needs (any sampler) follow the metrics callback's ``samplers`` selection; the others keep
    their own default (the module's declaration, else every fitting sampler).
    """

    name: str
    description: str
    fits: Callable[[Any], bool] = field(compare=False)
    generic: bool = False

    def __call__(self, sampler: Any) -> bool:
        return bool(self.fits(sampler))


ANY_SAMPLER = SamplerNeed("any", "every sampler", lambda sampler: True, generic=True)
PATH_SAMPLER = SamplerNeed(
    "path", "path samplers (models.sampler.PathSampler: ordered paths of frames_per_path frames)",
    lambda sampler: isinstance(sampler, PathSampler))
DOMAIN_SAMPLER = SamplerNeed(
    "domain", "domain samplers (models.sampler.DomainSampler: a domain rendering its source sampler's latents)",
    lambda sampler: isinstance(sampler, DomainSampler))
PAIRED_SAMPLER = SamplerNeed(
    "paired", "paired samplers (kind 'paired': image i is the reconstruction of reference image i)",
    lambda sampler: getattr(sampler, "kind", None) == "paired")


def _spec_assets(spec: MetricSpec) -> list[str]:
    return list(spec.required_assets())


@dataclass(frozen=True)
class MetricEntry:
    kind: str
    spec_cls: type
    runner: Runner
    sampler_need: SamplerNeed = ANY_SAMPLER
    assets: Callable[[Any], list[str]] = _spec_assets
    prepare: Callable[..., None] | None = None

    def required_assets(self, spec: MetricSpec) -> list[str]:
        return list(self.assets(spec))


_ENTRIES: dict[str, MetricEntry] = {}
_LOCK = threading.RLock()
_BUILTINS_LOADED = False


def register_metric(kind: str, spec_cls: type, runner: Runner | None = None, *,
                    sampler_need: SamplerNeed = ANY_SAMPLER, assets: Callable[[Any], list[str]] | None = None,
                    prepare: Callable[..., None] | None = None, replace: bool = False):
    """Register metric ``kind``; without ``runner`` this returns a decorator for the runner function.

    ``spec_cls.kind`` must equal ``kind``. Registering a kind twice is an error unless ``replace`` is true
    (re-importing the module that registered it is allowed: same runner name in the same module).
    """
    if not isinstance(kind, str) or not kind or ":" in kind:
        raise ValueError(f"metric kind must be a non-empty string without ':', got {kind!r}")
    if getattr(spec_cls, "kind", None) != kind:
        raise ValueError(f"metric {kind!r}: spec class {spec_cls.__name__} has kind "
                         f"{getattr(spec_cls, 'kind', None)!r}")
    if not isinstance(sampler_need, SamplerNeed):
        raise TypeError(f"metric {kind!r}: sampler_need must be a SamplerNeed, got {sampler_need!r}")

    def add(fn: Runner) -> Runner:
        entry = MetricEntry(kind, spec_cls, fn, sampler_need, assets or _spec_assets, prepare)
        with _LOCK:
            old = _ENTRIES.get(kind)
            if old is not None and not replace and _origin(old.runner) != _origin(fn):
                raise ValueError(f"metric {kind!r} is already registered (runner {_origin(old.runner)}); "
                                 f"pass replace=True to override it")
            _ENTRIES[kind] = entry
        return fn

    return add if runner is None else add(runner)


def unregister_metric(kind: str) -> None:
    """Remove ``kind`` (tests that register temporary metrics)."""
    with _LOCK:
        _ENTRIES.pop(kind, None)


def _origin(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def load_builtin_metrics() -> None:
    """Import every module of ``metrics/runners/`` once (each registers its metrics)."""
    global _BUILTINS_LOADED
    with _LOCK:
        if _BUILTINS_LOADED:
            return
        _BUILTINS_LOADED = True  # before importing: a runner module reading the registry must not recurse
        try:
            package = importlib.import_module(RUNNERS_PACKAGE)
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{RUNNERS_PACKAGE}.{info.name}")
        except BaseException:
            _BUILTINS_LOADED = False
            raise


def metric_kinds() -> list[str]:
    """Every registered metric kind, sorted (what the ``metrics`` mapping of the callback accepts)."""
    load_builtin_metrics()
    return sorted(_ENTRIES)


def unknown_metric_message(kind: str) -> str:
    kinds = metric_kinds()
    hint = difflib.get_close_matches(kind, kinds, n=1)
    return (f"unknown metric {kind!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; available: {kinds}")


def metric_entry(kind: str) -> MetricEntry:
    """The entry of ``kind``; ``KeyError`` with the closest name and the list of kinds otherwise."""
    load_builtin_metrics()
    try:
        return _ENTRIES[kind]
    except KeyError:
        raise KeyError(unknown_metric_message(kind)) from None


def check_metric_samplers(declared: Mapping[str, Any] | None, owner: str = "module") -> dict[str, list[str]]:
    """Validate a module's ``metric_samplers()``: ``{metric kind: [sampler names]}`` with registered kinds."""
    if declared is None:
        return {}
    if not isinstance(declared, Mapping):
        raise TypeError(f"{owner}.metric_samplers() must return a mapping of metric kind -> sampler names, "
                        f"got {type(declared).__name__}")
    out: dict[str, list[str]] = {}
    for kind, names in declared.items():
        if kind not in metric_kinds():
            raise ValueError(f"{owner}.metric_samplers(): {unknown_metric_message(str(kind))}")
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"{owner}.metric_samplers()[{kind!r}] must be a list of sampler names, got {names!r}")
        out[kind] = list(names)
    return out


__all__ = ["SamplerNeed", "ANY_SAMPLER", "PATH_SAMPLER", "PAIRED_SAMPLER", "DOMAIN_SAMPLER", "MetricEntry",
           "register_metric", "unregister_metric", "load_builtin_metrics", "metric_kinds", "metric_entry",
           "unknown_metric_message", "check_metric_samplers"]
