"""Metric configuration schema (issue "Evaluation" §1, §5): one validated spec per configured metric.

The ``metrics`` mapping of the metrics callback names each metric by its kind, optionally with a label
(``fid``, ``kid``, ``fid:clip`` ...); the value holds that kind's options. Unknown kinds, unknown option
keys and ill-typed values are errors that name the offending key and list the valid ones. Example::

    metrics:
      fid: {num_gen: 5000, reference: full, extractor: inception, optional: true}
      kid: {num_gen: 5000, subset_size: 1000}
      intra_lpips: {num_gen: 1000, net: vgg, cluster_size: 50, optional: true}
      nn_lpips: {num_gen: 1000, net: vgg, centers: train, optional: true}
      latent_smoothness: {num_gen: 500, net: vgg, optional: true}    # num_gen = paths
      clip_text: {text: "a sketch of a face", optional: true}

Options common to all kinds: ``num_gen`` (samples per sampler), ``seed`` (first seed of the sampler's
stream; sample ``i`` comes from ``RandomState(seed + i)``), ``samplers`` (list or null = every sampler of
the callback), ``optional`` (skip with one warning when a pretrained file is missing, instead of failing
at start-up) and ``label`` (appended to the key to keep two otherwise equal keys apart). An entry set
to null is disabled; ``{}`` runs the metric with its defaults.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from metrics.features import required_assets as extractor_assets
from metrics.lpips_family import LPIPS_NETS, lpips_asset


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
        _check_int(self, "num_gen", minimum=1)
        _check_int(self, "seed", minimum=0)
        if self.samplers is not None and (not isinstance(self.samplers, (list, tuple))
                                          or not all(isinstance(s, str) for s in self.samplers)):
            raise ValueError(f"metric {self.name!r}: 'samplers' must be a list of sampler names or null")
        if not isinstance(self.optional, bool):
            raise ValueError(f"metric {self.name!r}: 'optional' must be true or false")

    def required_assets(self) -> list[str]:
        return []


@dataclass
class FIDSpec(MetricSpec):
    kind: ClassVar[str] = "fid"
    reference: str = "full"
    extractor: str = "inception"
    resize: str | None = None

    def validate(self) -> None:
        super().validate()
        _check_choice(self, "reference", ("full", "train"))
        if self.resize is not None:
            _check_choice(self, "resize", ("clean", "legacy_tensorflow", "none"))

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
        _check_int(self, "num_subsets", minimum=1)
        _check_int(self, "subset_size", minimum=2)
        _check_int(self, "subset_seed", minimum=0)


@dataclass
class LPIPSSpecBase(MetricSpec):
    net: str = "vgg"
    resolution: int | None = 256
    trunk: str = "auto"

    def validate(self) -> None:
        super().validate()
        _check_choice(self, "net", LPIPS_NETS)
        if self.resolution is not None:
            _check_int(self, "resolution", minimum=8)
        if not isinstance(self.trunk, str):
            raise ValueError(f"metric {self.name!r}: 'trunk' is 'auto' (asset registry), 'random' (tests) or a path")

    def required_assets(self) -> list[str]:
        return [lpips_asset(self.net)] if self.trunk == "auto" else ([] if self.trunk == "random" else [self.trunk])


@dataclass
class IntraLPIPSSpec(LPIPSSpecBase):
    """CDC intra-cluster LPIPS (spec idinvert_mixdl.md §3): 1000 samples, VGG, 256 px, clusters of <= 50."""

    kind: ClassVar[str] = "intra_lpips"
    num_gen: int = 1000
    cluster_size: int = 50
    subset_seed: int = 0
    centers: str = "train"

    def validate(self) -> None:
        super().validate()
        _check_int(self, "cluster_size", minimum=2)
        _check_int(self, "subset_seed", minimum=0)
        _check_choice(self, "centers", ("train", "full"))


@dataclass
class DiversitySpec(LPIPSSpecBase):
    """Mean LPIPS over all pairs of samples (MixDL, spec idinvert_mixdl.md §2.7)."""

    kind: ClassVar[str] = "lpips_diversity"
    num_gen: int = 100


@dataclass
class AlignSpec(LPIPSSpecBase):
    """LPIPS between the same latent rendered by ``source`` and by each other sampler."""

    kind: ClassVar[str] = "lpips_align"
    num_gen: int = 100
    resolution: int | None = None
    source: str = "source"


@dataclass
class ReconstructionSpec(LPIPSSpecBase):
    """Reconstruction LPIPS/PSNR/SSIM/MSE of image ``i`` of ``reference`` vs sample ``i`` of the sampler.

    ``samplers: null`` means the module's ``reconstruction`` sampler (IDInvert) when it has one, else none.
    """

    kind: ClassVar[str] = "reconstruction"
    num_gen: int = 100
    resolution: int | None = None
    reference: str = "full"

    def validate(self) -> None:
        super().validate()
        _check_choice(self, "reference", ("full", "train"))


@dataclass
class LatentSmoothnessSpec(LPIPSSpecBase):
    """Latent smoothness along W paths (MixDL ``ppl_uniformity.py``, spec idinvert_mixdl.md §2.7).

    ``num_gen`` counts *paths* (each renders the path sampler's ``frames_per_path`` images). ``samplers:
    null`` means the module's ``interpolation`` path sampler when it has one, else none. Logged as two
    values, ``smoothness_mean`` and ``smoothness_uniformity``; cv, max-share and the endpoint distance go
    to the record's extras.
    """

    kind: ClassVar[str] = "latent_smoothness"
    num_gen: int = 500


@dataclass
class NearestTrainingLPIPSSpec(LPIPSSpecBase):
    """Nearest-training-image LPIPS, a memorisation measure (MixDL ``nn_lpips.py``, spec idinvert_mixdl.md
    §2.7): mean over ``num_gen`` samples of the min LPIPS to any image of ``centers`` (``train``: the
    few-shot training images); the mode count (``count_modes.py``, argmin fixed) goes to the extras."""

    kind: ClassVar[str] = "nn_lpips"
    num_gen: int = 1000
    centers: str = "train"

    def validate(self) -> None:
        super().validate()
        _check_choice(self, "centers", ("train", "full"))


@dataclass
class ClipSpecBase(MetricSpec):
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


@dataclass
class ClipTextSpec(ClipSpecBase):
    kind: ClassVar[str] = "clip_text"
    text: str = ""
    templates: bool = False

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.text, str) or not self.text:
            raise ValueError(f"metric {self.name!r}: 'text' (the prompt) is required")


@dataclass
class ClipDirectionSpec(ClipSpecBase):
    kind: ClassVar[str] = "clip_direction"
    source_text: str = ""
    target_text: str = ""
    source: str = "source"
    templates: bool = True

    def validate(self) -> None:
        super().validate()
        for key in ("source_text", "target_text"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValueError(f"metric {self.name!r}: '{key}' is required")


SPECS: dict[str, type[MetricSpec]] = {cls.kind: cls for cls in (
    FIDSpec, KIDSpec, IntraLPIPSSpec, DiversitySpec, AlignSpec, ReconstructionSpec, LatentSmoothnessSpec,
    NearestTrainingLPIPSSpec, ClipTextSpec, ClipDirectionSpec)}


def _check_int(spec: MetricSpec, key: str, minimum: int) -> None:
    value = getattr(spec, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"metric {spec.name!r}: '{key}' must be an integer >= {minimum}, got {value!r}")


def _check_choice(spec: MetricSpec, key: str, choices) -> None:
    if getattr(spec, key) not in choices:
        raise ValueError(f"metric {spec.name!r}: '{key}' must be one of {list(choices)}, got {getattr(spec, key)!r}")


def parse_spec(name: str, options: dict[str, Any] | None) -> MetricSpec:
    """Build and validate the spec for config entry ``name`` (``kind`` or ``kind:label``)."""
    kind, _, label = str(name).partition(":")
    if kind not in SPECS:
        hint = difflib.get_close_matches(kind, SPECS, n=1)
        raise ValueError(f"unknown metric {kind!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; available: {sorted(SPECS)}")
    cls = SPECS[kind]
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
