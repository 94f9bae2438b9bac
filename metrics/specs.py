"""Metric configuration schema (README, "Evaluation"): one validated spec per configured metric.

The ``metrics`` mapping of the metrics callback names each metric by its kind, optionally with a label
(``fid``, ``kid``, ``fid:clip`` ...); the value holds that kind's options. The kinds and their spec classes
come from :mod:`metrics.registry` (the spec classes live next to their runners in ``metrics/runners/``).
Unknown kinds, unknown option keys and ill-typed values are errors that name the offending key and list
the valid ones. Example::

    metrics:
      fid: {num_gen: 5000, reference: full, extractor: inception, optional: true}
      kid: {num_gen: 5000, subset_size: 1000}
      intra_lpips: {num_gen: 1000, net: vgg, cluster_size: 50, optional: true}
      nn_lpips: {num_gen: 1000, net: vgg, centers: train, optional: true}
      latent_smoothness: {num_gen: 500, net: vgg, optional: true}    # num_gen = paths
      clip_text: {text: "a sketch of a face", optional: true}

Options common to all kinds: ``num_gen`` (samples per sampler), ``seed`` (first seed of the sampler's
stream; sample ``i`` comes from ``RandomState(seed + i)``), ``samplers`` (list, or null = the default
samplers of the kind, see :mod:`metrics.registry`), ``optional`` (skip with one warning when a pretrained
file is missing, instead of failing at start-up) and ``label`` (appended to the key to keep two otherwise
equal keys apart). An entry set to null is disabled; ``{}`` runs the metric with its defaults.

This module holds the base classes shared by several kinds: :class:`MetricSpec`, :class:`LPIPSSpecBase`
(LPIPS network options) and :class:`ClipSpecBase` (CLIP model options), plus the validators.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from metrics.lpips_family import LPIPS_NETS, lpips_asset
from metrics.registry import metric_entry, metric_kinds, unknown_metric_message


@dataclass
class MetricSpec:
    kind: ClassVar[str] = ""
    name: str = ""
    num_gen: int = 5000
    seed: int = 0
    samplers: list[str] | None = None
    optional: bool = False
    label: str | None = None

    def validate(self) -> None:
        check_int(self, "num_gen", minimum=1)
        check_int(self, "seed", minimum=0)
        if self.samplers is not None and (not isinstance(self.samplers, (list, tuple))
                                          or not all(isinstance(s, str) for s in self.samplers)):
            raise ValueError(f"metric {self.name!r}: 'samplers' must be a list of sampler names or null")
        if not isinstance(self.optional, bool):
            raise ValueError(f"metric {self.name!r}: 'optional' must be true or false")

    def required_assets(self) -> list[str]:
        return []


@dataclass
class LPIPSSpecBase(MetricSpec):
    """Options of the LPIPS network (``net``, input ``resolution``, ``trunk``: 'auto' = asset registry)."""

    net: str = "vgg"
    resolution: int | None = 256
    trunk: str = "auto"

    def validate(self) -> None:
        super().validate()
        check_choice(self, "net", LPIPS_NETS)
        if self.resolution is not None:
            check_int(self, "resolution", minimum=8)
        if not isinstance(self.trunk, str):
            raise ValueError(f"metric {self.name!r}: 'trunk' is 'auto' (asset registry), 'random' (tests) or a path")

    def required_assets(self) -> list[str]:
        return [lpips_asset(self.net)] if self.trunk == "auto" else ([] if self.trunk == "random" else [self.trunk])


@dataclass
class ClipSpecBase(MetricSpec):
    """Options of the CLIP model (``model`` architecture, ``pretrained`` weights; 'random' for tests)."""

    num_gen: int = 100
    model: str = "ViT-B-32"
    pretrained: str | None = None

    def weights(self) -> str:
        from metrics.features import parse_clip_spec

        return parse_clip_spec(self.extractor_name())[1]

    def extractor_name(self) -> str:
        return f"clip:{self.model}" + (f"@{self.pretrained}" if self.pretrained else "")

    def required_assets(self) -> list[str]:
        return [] if self.pretrained == "random" else [self.weights()]


def check_int(spec: MetricSpec, key: str, minimum: int) -> None:
    value = getattr(spec, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"metric {spec.name!r}: '{key}' must be an integer >= {minimum}, got {value!r}")


def check_choice(spec: MetricSpec, key: str, choices) -> None:
    if getattr(spec, key) not in choices:
        raise ValueError(f"metric {spec.name!r}: '{key}' must be one of {list(choices)}, got {getattr(spec, key)!r}")


def spec_class(kind: str) -> type[MetricSpec]:
    """The spec dataclass of a registered kind (``ValueError`` naming the closest kind otherwise)."""
    if kind not in metric_kinds():
        raise ValueError(unknown_metric_message(kind))
    return metric_entry(kind).spec_cls


def parse_spec(name: str, options: dict[str, Any] | None) -> MetricSpec:
    """Build and validate the spec for config entry ``name`` (``kind`` or ``kind:label``)."""
    kind, _, label = str(name).partition(":")
    cls = spec_class(kind)
    options = dict(options or {})
    allowed = [f.name for f in fields(cls) if f.name != "name"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        hints = {k: difflib.get_close_matches(k, allowed, n=1) for k in unknown}
        msg = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise ValueError(f"metric {name!r}: unknown option(s) {msg}; valid options: {sorted(allowed)}")
    if label and "label" in options and options["label"] != label:
        raise ValueError(f"metric {name!r}: label given twice ({label!r} and {options['label']!r})")
    if label:
        options["label"] = label
    if "samplers" in options and options["samplers"] is not None:
        options["samplers"] = list(options["samplers"])
    spec = cls(name=str(name), **options)
    spec.validate()
    return spec


def parse_specs(config: dict[str, Any]) -> dict[str, MetricSpec]:
    """Specs of every entry; an entry set to null is disabled (e.g. ``callbacks.metrics.metrics.kid=null``)."""
    if not isinstance(config, dict) or not config:
        raise ValueError("'metrics' must be a non-empty mapping of metric name -> options")
    for name, opts in config.items():
        if opts is not None and not isinstance(opts, dict):
            raise ValueError(f"metric {name!r}: options must be a mapping (or null to disable it), got {opts!r}")
    return {str(name): parse_spec(name, opts) for name, opts in config.items() if opts is not None}
