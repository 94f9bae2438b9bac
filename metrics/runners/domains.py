"""Metrics of multi-domain generators (Domain Expansion, Nitzan et al. 2023; docs/metrics.md, "Domains").

Both run on domain samplers (``models.sampler.DomainSampler``): domain ``j`` renders the latents of its
``source`` sampler (``base``) moved into the domain, so image pairs ``(x_i^src, x_i^j)`` share a latent.

* ``domain_leakage``: with each domain's own task score ``score_t(x_src, x_dom)`` (lower = more of domain t)
  the gain of direction ``j`` on task ``t`` is ``G[t, j] = mean_i score_t(x_i^src, x_i^src) - score_t(x_i^src,
  x_i^j)``. Logged per domain j: ``domain_gain`` = G[j, j] (its own task), and with two or more scored
  domains ``domain_leakage`` = max_{t != j} G[t, j] / G[t, t] (how much of another task's own effect
  direction j also produces: 0 none, 1 as much; tasks whose own gain is not positive are left out). The
  whole column is in the record's ``extras``.
* ``clip_domains``: for domains with a text ``prompt`` (source_text, target_text), with unit CLIP image
  embeddings E, NADA text directions ΔT_t and target-text embeddings T_t:
  ``clip_domain_direction`` = mean_i cos(E(x_i^j) - E(x_i^src), ΔT_j), ``clip_domain_text`` = mean_i
  cos(E(x_i^j), T_j) and ``clip_domain_leakage`` = max_{t != j} mean_i cos(E(x_i^j) - E(x_i^src), ΔT_t); the
  column of direction scores is in ``extras``. Every image is embedded once (k domains: k + 1 passes).

Images are quantized like for every other metric; sample ``i`` is evaluated on rank ``i mod W`` and the
sums are all-reduced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from metrics import ddp
from metrics.clip_metrics import text_direction
from metrics.registry import DOMAIN_SAMPLER, register_metric
from metrics.specs import ClipSpecBase, MetricSpec
from metrics.streams import progress, render_uint8, shard_batches
from metrics.suite import MetricRun, MetricValue, metric_protocol, renamed_key


@dataclass
class DomainLeakageSpec(MetricSpec):
    kind: ClassVar[str] = "domain_leakage"
    num_gen: int = 64


@dataclass
class ClipDomainsSpec(ClipSpecBase):
    kind: ClassVar[str] = "clip_domains"
    templates: bool = True


def _dequantized(sampler, idx, seed) -> torch.Tensor:
    return render_uint8(sampler, idx, seed).float() / 127.5 - 1.0


def _by_source(run: MetricRun, targets: list[str], keep) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in targets:
        sampler = run.samplers[name]
        if keep(sampler):
            if sampler.source not in run.samplers:
                raise KeyError(f"domain sampler {name!r}: its source sampler {sampler.source!r} is not among "
                               f"{sorted(run.samplers)}")
            groups.setdefault(sampler.source, []).append(name)
    return groups


def _relative_leakage(gain: torch.Tensor, j: int) -> float | None:
    ratios = [float(gain[t, j] / gain[t, t]) for t in range(gain.shape[0]) if t != j and gain[t, t] > 0]
    return max(ratios) if ratios else None


@register_metric("domain_leakage", DomainLeakageSpec, sampler_need=DOMAIN_SAMPLER)
def run_domain_leakage(run: MetricRun, spec: DomainLeakageSpec, targets: list[str]) -> list[MetricValue]:
    suite, out = run.suite, []
    for source, names in _by_source(run, targets, lambda s: s.score is not None).items():
        samplers = [run.samplers[n] for n in names]
        k = len(names)
        sums = torch.zeros(k + 1, k, dtype=torch.float64)  # rows: task t; columns: direction j, then the source
        count = torch.zeros(1, dtype=torch.float64)
        batches = list(shard_batches(ddp.shard(spec.num_gen), suite.batch_size))
        with torch.no_grad():
            for idx in progress(batches, len(batches), "domain leakage", suite.show_progress):
                x_src = _dequantized(run.samplers[source], idx, spec.seed)
                domain_images = [_dequantized(s, idx, spec.seed) for s in samplers]
                for t, task_sampler in enumerate(samplers):
                    sums[k, t] += float(task_sampler.score(x_src, x_src).double().sum())
                    for j, x_dom in enumerate(domain_images):
                        sums[t, j] += float(task_sampler.score(x_src, x_dom).double().sum())
                count += len(idx)
        sums, count = ddp.all_reduce_sum(sums), ddp.all_reduce_sum(count)
        means = sums / count
        gain = means[k][:, None] - means[:k]  # G[t, j] = score_t(src, src) - score_t(src, x_j)
        for j, name in enumerate(names):
            proto = metric_protocol(spec, "task-scores", None, "none", samplers[j], None, {"source": source})
            column = {f"gain_on/{samplers[t].domain}": float(gain[t, j]) for t in range(k)}
            out.append(MetricValue(renamed_key(proto, name, "domain_leakage", "domain_gain"), float(gain[j, j]),
                                   spec.kind, name, proto, extras=column))
            relative = _relative_leakage(gain, j)
            if relative is not None:
                out.append(MetricValue(proto.key(name), relative, spec.kind, name, proto, extras=column))
    return out


@register_metric("clip_domains", ClipDomainsSpec, sampler_need=DOMAIN_SAMPLER)
def run_clip_domains(run: MetricRun, spec: ClipDomainsSpec, targets: list[str]) -> list[MetricValue]:
    suite, out = run.suite, []
    groups = _by_source(run, targets, lambda s: s.prompt is not None)
    if not groups:
        return out
    clip, sha = suite.clip(spec)
    for source, names in groups.items():
        samplers = [run.samplers[n] for n in names]
        k = len(names)
        directions = torch.stack([text_direction(clip, *s.prompt, spec.templates) for s in samplers])  # [k, D]
        texts = F.normalize(clip.encode_text([s.prompt[1] for s in samplers], templates=spec.templates).float(), dim=-1)
        sums = torch.zeros(k + 1, k, dtype=torch.float64)  # rows: prompt t (last: target text); columns: domain j
        count = torch.zeros(1, dtype=torch.float64)
        batches = list(shard_batches(ddp.shard(spec.num_gen), suite.batch_size))
        with torch.no_grad():
            for idx in progress(batches, len(batches), "clip domains", suite.show_progress):
                device = directions.device
                e_src = clip.encode_images(_dequantized(run.samplers[source], idx, spec.seed).to(device)).float()
                for j, sampler in enumerate(samplers):
                    e_dom = clip.encode_images(_dequantized(sampler, idx, spec.seed).to(device)).float()
                    delta = F.normalize(e_dom - e_src, dim=-1)
                    sums[:k, j] += (delta @ directions.T.to(delta)).double().sum(0).cpu()
                    sums[k, j] += float((F.normalize(e_dom, dim=-1) @ texts[j].to(e_dom)).double().sum())
                count += len(idx)
        sums, count = ddp.all_reduce_sum(sums), ddp.all_reduce_sum(count)
        means = sums / count
        for j, name in enumerate(names):
            proto = metric_protocol(spec, spec.extractor_name(), sha, "clip", samplers[j], None,
                                    {"source": source, "prompt": list(samplers[j].prompt), "templates": spec.templates})
            column = {f"direction_on/{samplers[t].domain}": float(means[t, j]) for t in range(k)}
            values = {"clip_domain_direction": float(means[j, j]), "clip_domain_text": float(means[k, j])}
            if k > 1:
                values["clip_domain_leakage"] = max(float(means[t, j]) for t in range(k) if t != j)
            for key, value in values.items():
                out.append(MetricValue(renamed_key(proto, name, "clip_domains", key), value, spec.kind, name, proto,
                                       extras=column))
    return out
