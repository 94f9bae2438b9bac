"""FID and KID (Heusel et al. 2017; Binkowski et al. 2018) of every sampler against a reference set.

Generated feature statistics are computed once per (sampler, extractor, resize, num_gen, seed) and shared
by FID and KID in one evaluation; when a KID needs them, the per-sample features are kept too (the
``prepare`` hook marks those keys before any runner starts). The same holds for the reference set: a FID
that runs before a KID on the same reference keeps its features, so the set is read and embedded once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from metrics.features import required_assets as extractor_assets
from metrics.fid import fid_from_stats, kernel_inception_distance
from metrics.registry import register_metric
from metrics.specs import MetricSpec, check_choice, check_int
from metrics.stats import FeatureStats
from metrics.streams import generated_stats
from metrics.suite import MetricRun, MetricValue, metric_protocol, reference_dict

STATS = "fid.generated_stats"  # MetricRun.shared keys
CAPTURE = "fid.capture_features"
REFERENCE_FEATURES = "fid.reference_features"


@dataclass
class FIDSpec(MetricSpec):
    kind: ClassVar[str] = "fid"
    reference: str = "full"
    extractor: str = "inception"
    resize: str | None = None

    def validate(self) -> None:
        super().validate()
        check_choice(self, "reference", ("full", "train", "holdout"))
        if self.resize is not None:
            check_choice(self, "resize", ("clean", "legacy_tensorflow", "none"))

    def required_assets(self) -> list[str]:
        return extractor_assets(self.extractor)


@dataclass
class KIDSpec(FIDSpec):
    kind: ClassVar[str] = "kid"
    num_subsets: int = 100
    subset_size: int = 1000
    subset_seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_int(self, "num_subsets", minimum=1)
        check_int(self, "subset_size", minimum=2)
        check_int(self, "subset_seed", minimum=0)


def feature_key(spec: FIDSpec, sampler: str) -> tuple:
    return (sampler, spec.extractor, spec.resize, spec.num_gen, spec.seed)


def reference_key(spec: FIDSpec) -> tuple:
    return (spec.reference, spec.extractor, spec.resize)


def plan_kid_features(run: MetricRun, spec: KIDSpec, targets: list[str]) -> None:
    """KID needs the features themselves: mark its keys (generated and reference) so the shared passes keep
    them."""
    run.shared.setdefault(CAPTURE, set()).update(feature_key(spec, name) for name in targets)
    run.shared.setdefault(REFERENCE_FEATURES, set()).add(reference_key(spec))


def generated(run: MetricRun, spec: FIDSpec, sampler: str) -> FeatureStats:
    memo: dict[tuple, FeatureStats] = run.shared.setdefault(STATS, {})
    key = feature_key(spec, sampler)
    if key not in memo:
        suite = run.suite
        memo[key] = generated_stats(run.samplers[sampler], suite.extractor(spec), spec.num_gen, spec.seed,
                                    suite.batch_size, capture_all=key in run.shared.get(CAPTURE, set()),
                                    desc=f"{spec.kind} {sampler}", show_progress=suite.show_progress)
    return memo[key]


def run_fid(run: MetricRun, spec: FIDSpec, targets: list[str]) -> list[MetricValue]:
    """FID (or KID for a :class:`KIDSpec`) of each target against ``spec.reference``."""
    suite = run.suite
    ex = suite.extractor(spec)
    ref = run.reference(spec.reference, spec)
    need = isinstance(spec, KIDSpec) or reference_key(spec) in run.shared.get(REFERENCE_FEATURES, set())
    ref_stats = suite.cache.get(ref, ex, need_features=need)
    out = []
    for name in targets:
        gen = generated(run, spec, name)
        options: dict[str, Any] = {}
        extras: dict[str, Any] = {"num_reference": ref_stats.n}
        if isinstance(spec, KIDSpec):
            res = kernel_inception_distance(gen.features(), ref_stats.features(), spec.num_subsets,
                                            spec.subset_size, spec.subset_seed, device=suite.device)
            value = res.value
            options = {"num_subsets": spec.num_subsets, "subset_size": res.subset_size,
                       "subset_seed": spec.subset_seed}
            extras["kid_std"] = res.std
        else:
            value = fid_from_stats(gen, ref_stats)
        proto = metric_protocol(spec, ex.name, ex.sha256, ex.resize, run.samplers[name],
                                reference_dict(ref, spec.reference), options)
        out.append(MetricValue(proto.key(name), value, spec.kind, name, proto, extras))
    return out


register_metric("fid", FIDSpec, run_fid)
register_metric("kid", KIDSpec, run_fid, prepare=plan_kid_features)
