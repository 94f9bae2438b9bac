"""Latent smoothness along W paths (MixDL, Kong et al. 2022; :mod:`metrics.smoothness` holds the math).

Runs on path samplers (:class:`models.sampler.PathSampler`): by default the ones the module declares for
``latent_smoothness`` in ``metric_samplers()`` (MixDL: ``interpolation``), else every path sampler; a module
without one logs nothing. ``num_gen`` counts paths. Logged as two values sharing one protocol,
``smoothness_mean<n>...`` and ``smoothness_uniformity<n>...``; cv, max-share and the endpoint distance go
to the extras.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from metrics.registry import PATH_SAMPLER, register_metric
from metrics.runners.lpips import lpips_protocol
from metrics.smoothness import latent_smoothness
from metrics.specs import LPIPSSpecBase
from metrics.suite import MetricRun, MetricValue, renamed_key


@dataclass
class LatentSmoothnessSpec(LPIPSSpecBase):
    """Latent smoothness along W paths; ``num_gen`` counts *paths* (each renders the path sampler's
    ``frames_per_path`` images)."""

    kind: ClassVar[str] = "latent_smoothness"
    num_gen: int = 500


@register_metric("latent_smoothness", LatentSmoothnessSpec, sampler_need=PATH_SAMPLER)
def run_latent_smoothness(run: MetricRun, spec: LatentSmoothnessSpec, targets: list[str]) -> list[MetricValue]:
    if not targets:
        return []
    suite = run.suite
    dist = suite.lpips(spec)
    out = []
    for name in targets:
        sampler = run.samplers[name]
        frames = getattr(sampler, "frames_per_path", None)
        batch_paths = max(1, suite.batch_size // frames) if isinstance(frames, int) and frames > 0 else 1
        res = latent_smoothness(dist, sampler, spec.num_gen, spec.seed, batch_paths=batch_paths,
                                show_progress=suite.show_progress)
        proto = lpips_protocol(spec, dist, sampler, None,
                               {"frames_per_path": frames, "step": 1.0 / res.steps, "space": "W",
                                "distance": "LPIPS(frame k, frame k+1) / step^2",
                                "uniformity": "per-path std (ddof 0), mean over paths"})
        extras = {k: v for k, v in res.as_dict().items() if k not in ("mean", "uniformity")}
        for k in ("mean", "uniformity"):
            key = renamed_key(proto, name, "latent_smoothness", f"smoothness_{k}")
            out.append(MetricValue(key, getattr(res, k), f"smoothness_{k}", name, proto, dict(extras)))
    return out
