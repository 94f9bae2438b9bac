"""Run configured metrics on named samplers (README, "Evaluation").

:class:`MetricSuite` turns validated specs (:mod:`metrics.specs`) into :class:`MetricValue` records: a
key that encodes the protocol essentials, the value, the full :class:`~metrics.protocol.MetricProtocol`
and metric-specific extras. What each kind computes, and on which samplers by default, comes from
:mod:`metrics.registry`; the runners live in ``metrics/runners/``. Networks are built once and shared
(one Inception pass serves FID and KID of the same sampler). Every runner shards samples over DDP ranks
without duplicates and reduces exactly, so all ranks must call :meth:`MetricSuite.evaluate` together; the
returned values are equal on all ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from metrics.features import FeatureExtractor, build_extractor, sha256_file
from metrics.lpips_family import LPIPSDistance, load_lpips
from metrics.protocol import MetricProtocol, check_no_collisions
from metrics.reference import ReferenceSet
from metrics.refstats import ReferenceStatsCache
from metrics.registry import check_metric_samplers, metric_entry
from metrics.specs import ClipSpecBase, LPIPSSpecBase, MetricSpec

if TYPE_CHECKING:
    from metrics.runners.fid import FIDSpec

ReferenceFn = Callable[[str], ReferenceSet]
RANDOM_WEIGHTS_SEED = 0  # 'trunk: random' / 'pretrained: random' (tests): the same network in every run


@dataclass
class MetricValue:
    key: str
    value: float
    metric: str
    sampler: str
    protocol: MetricProtocol
    extras: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "metric": self.metric, "sampler": self.sampler,
                "protocol": self.protocol.to_dict(), "protocol_digest": self.protocol.digest(),
                "extras": self.extras}


def reference_dict(ref: ReferenceSet, which: str) -> dict[str, Any]:
    return {"name": ref.name, "content_hash": ref.content_hash, "length": len(ref), "which": which,
            "xflip": bool(ref.xflip), "resolution": ref.resolution}


def metric_protocol(spec: MetricSpec, extractor: str, sha: str | None, resize: str, sampler_obj: Any,
                    reference: dict | None, options: dict) -> MetricProtocol:
    """The protocol of ``spec`` on one sampler (its truncation, if it has one, is part of the protocol)."""
    return MetricProtocol(metric=spec.kind, num_gen=spec.num_gen, extractor=extractor, extractor_sha256=sha,
                          resize=resize, reference=reference, seed=spec.seed,
                          truncation=getattr(sampler_obj, "truncation", None), options=options, label=spec.label)


def renamed_key(proto: MetricProtocol, sampler: str, old: str, new: str) -> str:
    """``proto.key(sampler)`` with the metric name at the start of the key replaced (one protocol, several
    logged values: ``reconstruction`` -> ``recon_lpips`` ..., ``latent_smoothness`` -> ``smoothness_mean`` ...)."""
    head, _, tail = proto.key(sampler).partition("/")
    return f"{head.replace(old, new, 1)}/{tail}"


@dataclass
class MetricRun:
    """One evaluation, as the runners see it: the suite (shared networks, batch size, device), the
    samplers by name, the reference sets and ``shared``, a scratch space the runners of this evaluation
    share (e.g. generated feature statistics reused by FID and KID)."""

    suite: MetricSuite
    samplers: dict[str, Any]
    reference_fn: ReferenceFn | None
    shared: dict[str, Any] = field(default_factory=dict)

    def reference(self, which: str, spec: MetricSpec) -> ReferenceSet:
        if self.reference_fn is None:
            raise RuntimeError(f"metric {spec.name!r} needs reference images, but the datamodule has no "
                               f"reference_set(which)")
        return self.reference_fn(which)


class MetricSuite:
    """Shared networks + the registered runners for a set of specs. ``extractors`` may pre-supply feature
    extractors by spec string (tests use stand-ins), ``clip_models`` CLIP wrappers by extractor name."""

    def __init__(self, specs: dict[str, MetricSpec], device: torch.device | str = "cpu", batch_size: int = 16,
                 cache: ReferenceStatsCache | None = None, show_progress: bool = True,
                 extractors: dict[str, FeatureExtractor] | None = None, clip_models: dict[str, Any] | None = None):
        self.specs = dict(specs)
        for spec in self.specs.values():
            metric_entry(spec.kind)  # unknown kinds fail here, not halfway through an evaluation
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._cache = cache
        self.show_progress = show_progress
        self._extractors: dict[tuple, FeatureExtractor] = {(k, None): v for k, v in (extractors or {}).items()}
        self._lpips: dict[tuple, LPIPSDistance] = {}
        self._clip: dict[str, tuple[Any, str | None]] = {k: (v, None) for k, v in (clip_models or {}).items()}

    @property
    def cache(self) -> ReferenceStatsCache:
        if self._cache is None:
            self._cache = ReferenceStatsCache(show_progress=self.show_progress)
        return self._cache

    # ---------------------------------------------------------------- shared networks
    def extractor(self, spec: FIDSpec) -> FeatureExtractor:
        if (spec.extractor, None) in self._extractors:
            return self._extractors[(spec.extractor, None)]
        key = (spec.extractor, spec.resize)
        if key not in self._extractors:
            self._extractors[key] = build_extractor(spec.extractor, self.device, spec.resize)
        return self._extractors[key]

    def lpips(self, spec: LPIPSSpecBase) -> LPIPSDistance:
        key = (spec.net, spec.trunk, spec.resolution)
        if key not in self._lpips:
            trunk = None if spec.trunk == "random" else spec.trunk
            with torch.random.fork_rng(devices=[]):  # a random trunk is one fixed network, whatever the RNG
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model, name, sha = load_lpips(spec.net, trunk, self.device)
            self._lpips[key] = LPIPSDistance(model, name, sha, spec.resolution, self.batch_size)
        return self._lpips[key]

    def clip(self, spec: ClipSpecBase) -> tuple[Any, str | None]:
        name = spec.extractor_name()
        if name not in self._clip:
            from models.clip import CLIPModel

            weights = None if spec.pretrained == "random" else spec.weights()
            sha = None
            if weights is not None:
                from models.assets import resolve

                sha = sha256_file(resolve(weights))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                self._clip[name] = (CLIPModel(spec.model, pretrained=weights, device=self.device), sha)
        return self._clip[name]

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, samplers: dict[str, Any], reference_fn: ReferenceFn | None,
                 default_samplers: Mapping[str, list[str]] | None = None) -> list[MetricValue]:
        """Every spec on the samplers it applies to (:meth:`targets`). ``reference_fn(which)`` gives
        reference sets; ``default_samplers`` is the module's ``metric_samplers()`` (kind -> names)."""
        defaults = check_metric_samplers(default_samplers)
        run = MetricRun(self, dict(samplers), reference_fn)
        plan = [(spec, metric_entry(spec.kind), self.targets(spec, run.samplers, defaults))
                for spec in self.specs.values()]
        for spec, entry, targets in plan:
            if entry.prepare is not None:
                entry.prepare(run, spec, targets)
        out: list[MetricValue] = []
        for spec, entry, targets in plan:
            out.extend(entry.runner(run, spec, targets))
        check_no_collisions((v.key, v.protocol) for v in out)
        return out

    def targets(self, spec: MetricSpec, samplers: dict[str, Any],
                default_samplers: Mapping[str, list[str]] | None = None) -> list[str]:
        """The sampler names ``spec`` runs on: its own ``samplers``; else the module's declaration for its
        kind; else every sampler that fits the kind's ``sampler_need`` (registry)."""
        if spec.samplers is not None:
            names, source = list(spec.samplers), f"metric {spec.name!r}"
        elif default_samplers and spec.kind in default_samplers:
            names, source = list(default_samplers[spec.kind]), f"the module's metric_samplers()[{spec.kind!r}]"
        else:
            need = metric_entry(spec.kind).sampler_need
            return [name for name, sampler in samplers.items() if need(sampler)]
        missing = [n for n in names if n not in samplers]
        if missing:
            raise KeyError(f"{source}: unknown sampler(s) {missing}; available: {sorted(samplers)}")
        return names
