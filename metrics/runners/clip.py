"""CLIP metrics (Radford et al. 2021): text similarity of samples to a prompt, and the directional
similarity of StyleGAN-NADA (Gal et al. 2022) between a ``source`` sampler and each other sampler."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from metrics.clip_metrics import clip_directional_similarity, clip_text_similarity
from metrics.registry import register_metric
from metrics.specs import ClipSpecBase
from metrics.suite import MetricRun, MetricValue, metric_protocol


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


@register_metric("clip_text", ClipTextSpec)
def run_clip_text(run: MetricRun, spec: ClipTextSpec, targets: list[str]) -> list[MetricValue]:
    suite = run.suite
    clip, sha = suite.clip(spec)
    out = []
    for name in targets:
        value = clip_text_similarity(clip, run.samplers[name], spec.text, spec.num_gen, spec.seed, suite.batch_size,
                                     spec.templates, suite.show_progress)
        proto = metric_protocol(spec, spec.extractor_name(), sha, "clip", run.samplers[name], None,
                                {"text": spec.text, "templates": spec.templates})
        out.append(MetricValue(proto.key(name), value, spec.kind, name, proto))
    return out


@register_metric("clip_direction", ClipDirectionSpec)
def run_clip_direction(run: MetricRun, spec: ClipDirectionSpec, targets: list[str]) -> list[MetricValue]:
    if spec.source not in run.samplers:
        raise KeyError(f"metric {spec.name!r}: source sampler {spec.source!r} not in {sorted(run.samplers)}")
    suite = run.suite
    clip, sha = suite.clip(spec)
    out = []
    for name in [t for t in targets if t != spec.source]:
        value = clip_directional_similarity(clip, run.samplers[spec.source], run.samplers[name], spec.source_text,
                                            spec.target_text, spec.num_gen, spec.seed, suite.batch_size,
                                            spec.templates, suite.show_progress)
        proto = metric_protocol(spec, spec.extractor_name(), sha, "clip", run.samplers[name], None,
                                {"source": spec.source, "source_text": spec.source_text,
                                 "target_text": spec.target_text, "templates": spec.templates})
        out.append(MetricValue(proto.key(name), value, spec.kind, name, proto))
    return out
