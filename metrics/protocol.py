"""The metric protocol object (docs/metrics.md, "The metric protocol").

A :class:`MetricProtocol` pins everything a number depends on: the feature extractor (name + sha256 of
its weights), the resize, the quantization of generated images, the sample count, the reference set
(name, content hash, size, split, x-flip), the seeds and the truncation. The logged key encodes the
essentials, ``<metric><count>[_<split>][_xflip][_seed<s>][_trunc<psi>][@<extractor>][@<resize>][+<label>]/<sampler>``
(e.g. ``fid5k/adapted``, ``kid5k_train/ema``, ``intra_lpips1k@lpips-alex/ema``); the full protocol goes
with every value into ``metrics.jsonl`` and W&B, and its :meth:`digest` tells protocols apart.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

#: NVIDIA's conversion of generated images: ``(x * 127.5 + 128).clamp(0, 255)`` then cast (= round).
QUANTIZATION = "x*127.5+128,clamp[0,255],uint8"

#: The extractor and resize each metric uses unless configured otherwise; only departures from these
#: appear in the key.
DEFAULTS: dict[str, dict[str, str]] = {  # "which": the default reference split (else "full")
    "fid": {"extractor": "inception-2015-12-05", "resize": "clean"},
    "kid": {"extractor": "inception-2015-12-05", "resize": "clean"},
    "intra_lpips": {"extractor": "lpips-vgg", "resize": "bilinear256", "which": "train"},
    "lpips_diversity": {"extractor": "lpips-vgg", "resize": "bilinear256"},
    "lpips_align": {"extractor": "lpips-vgg", "resize": "none"},
    "reconstruction": {"extractor": "lpips-vgg", "resize": "none"},
    "latent_smoothness": {"extractor": "lpips-vgg", "resize": "bilinear256"},
    "nn_lpips": {"extractor": "lpips-vgg", "resize": "bilinear256", "which": "train"},
    "clip_text": {"extractor": "clip:ViT-B-32", "resize": "clip"},
    "clip_direction": {"extractor": "clip:ViT-B-32", "resize": "clip"},
    "clip_domains": {"extractor": "clip:ViT-B-32", "resize": "clip"},
    "domain_leakage": {"extractor": "task-scores", "resize": "none"},
}


def count_tag(n: int) -> str:
    """``5000 -> '5k'``, ``50000 -> '50k'``, ``1500 -> '1500'`` (NVIDIA's ``fid50k`` naming)."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


@dataclass(frozen=True)
class MetricProtocol:
    """Everything a metric value depends on. ``options`` holds metric-specific settings
    (KID subsets, cluster size, prompts, ...)."""

    metric: str
    num_gen: int
    extractor: str
    extractor_sha256: str | None = None
    resize: str = "clean"
    quantization: str = QUANTIZATION
    reference: dict[str, Any] | None = None
    seed: int = 0
    truncation: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def key(self, sampler: str) -> str:
        """The logged key for this protocol applied to ``sampler`` (see module docstring)."""
        name = f"{self.metric}{count_tag(self.num_gen)}"
        ref = self.reference or {}
        defaults = DEFAULTS.get(self.metric, {})
        if ref.get("which", defaults.get("which", "full")) != defaults.get("which", "full"):
            name += f"_{ref['which']}"
        if ref.get("xflip"):
            name += "_xflip"
        if self.seed != 0:
            name += f"_seed{self.seed}"
        if self.truncation is not None and float(self.truncation) != 1.0:
            name += f"_trunc{float(self.truncation):g}"
        if self.extractor != defaults.get("extractor", self.extractor):
            name += f"@{self.extractor}"
        if self.resize != defaults.get("resize", self.resize):
            name += f"@{self.resize}"
        if self.label:
            name += f"+{self.label}"
        return f"{name}/{sampler}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """Short sha256 of the canonical JSON form: equal iff every protocol field is equal."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def check_no_collisions(pairs: Iterable[tuple[str, MetricProtocol]]) -> None:
    """Raise if one key would carry values of two different protocols (values of
    different protocols never overwrite each other; docs/metrics.md, "Never mixing protocols")."""
    seen: dict[str, str] = {}
    for key, proto in pairs:
        d = proto.digest()
        if seen.setdefault(key, d) != d:
            raise ValueError(f"two metric protocols map to the same key {key!r}; give one of them a distinct "
                             f"'label' in the metrics config")
