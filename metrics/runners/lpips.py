"""LPIPS-family metrics (Zhang et al. 2018): intra-cluster LPIPS (CDC, Ojha et al. 2021), pairwise
diversity and nearest-training LPIPS (MixDL, Kong et al. 2022) and cross-sampler alignment.

The pair computations render each needed image once, shard the pairs over DDP ranks and all-reduce
float64 sums and counts, so the values equal a single-process run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from metrics import ddp
from metrics.lpips_family import (LPIPSDistance, all_pairs, cluster_pairs, nearest_center, select_members,
                                  summarize_clusters)
from metrics.memorization import nearest_training_lpips
from metrics.registry import register_metric
from metrics.specs import LPIPSSpecBase, check_choice, check_int
from metrics.streams import progress, render_uint8, shard_batches
from metrics.suite import MetricRun, MetricValue, metric_protocol, reference_dict


@dataclass
class IntraLPIPSSpec(LPIPSSpecBase):
    """CDC intra-cluster LPIPS (Ojha et al. 2021): 1000 samples, VGG, 256 px, clusters of <= 50."""

    kind: ClassVar[str] = "intra_lpips"
    num_gen: int = 1000
    cluster_size: int = 50
    subset_seed: int = 0
    centers: str = "train"

    def validate(self) -> None:
        super().validate()
        check_int(self, "cluster_size", minimum=2)
        check_int(self, "subset_seed", minimum=0)
        check_choice(self, "centers", ("train", "full"))


@dataclass
class DiversitySpec(LPIPSSpecBase):
    """Mean LPIPS over all pairs of samples (MixDL, Kong et al. 2022)."""

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
class NearestTrainingLPIPSSpec(LPIPSSpecBase):
    """Nearest-training-image LPIPS, a memorisation measure (MixDL, Kong et al. 2022): mean over
    ``num_gen`` samples of the min LPIPS to any image of ``centers`` (``train``: the few-shot training
    images); the mode count (training images matched, ties to the lowest index) goes to the extras."""

    kind: ClassVar[str] = "nn_lpips"
    num_gen: int = 1000
    centers: str = "train"

    def validate(self) -> None:
        super().validate()
        check_choice(self, "centers", ("train", "full"))


# ---------------------------------------------------------------------------------------------- helpers
def render_prepared(run: MetricRun, dist: LPIPSDistance, sampler, indices: list[int], seed: int,
                    desc: str) -> dict:
    """Images ``indices`` of ``sampler``, quantized and prepared for ``dist``, by index."""
    images = {}
    batches = list(shard_batches(indices, run.suite.batch_size))
    for idx in progress(batches, len(batches), desc, run.suite.show_progress):
        x = dist.prepare(render_uint8(sampler, idx, seed))
        images.update(zip(idx, x))
    return images


def pair_sums(run: MetricRun, dist: LPIPSDistance, sampler, pairs: list[tuple[int, int, int]], num_groups: int,
              seed: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of LPIPS over ``(group, i, j)`` pairs, pairs sharded over ranks, all-reduced."""
    mine = pairs[ddp.rank()::ddp.world_size()]
    needed = sorted({i for _, i, _ in mine} | {j for _, _, j in mine})
    images = render_prepared(run, dist, sampler, needed, seed, f"{desc} (render)")
    sums = torch.zeros(num_groups, dtype=torch.float64)
    counts = torch.zeros(num_groups, dtype=torch.float64)
    chunks = [mine[s:s + dist.batch_size] for s in range(0, len(mine), dist.batch_size)]
    for chunk in progress(chunks, len(chunks), f"{desc} (pairs)", run.suite.show_progress):
        c = torch.tensor([p[0] for p in chunk])
        a = torch.stack([images[p[1]] for p in chunk])
        b = torch.stack([images[p[2]] for p in chunk])
        sums.index_add_(0, c, dist(a, b))
        counts.index_add_(0, c, torch.ones(len(chunk), dtype=torch.float64))
    return ddp.all_reduce_sum(sums).numpy(), ddp.all_reduce_sum(counts).numpy()


def lpips_protocol(spec: LPIPSSpecBase, dist: LPIPSDistance, sampler_obj: Any, reference, options):
    return metric_protocol(spec, dist.name, dist.sha256, dist.resize, sampler_obj, reference, options)


def require_source(run: MetricRun, spec) -> None:
    if spec.source not in run.samplers:
        raise KeyError(f"metric {spec.name!r}: source sampler {spec.source!r} not in {sorted(run.samplers)}")


# ---------------------------------------------------------------------------------------------- runners
@register_metric("intra_lpips", IntraLPIPSSpec)
def run_intra_lpips(run: MetricRun, spec: IntraLPIPSSpec, targets: list[str]) -> list[MetricValue]:
    """Assign every sample to its LPIPS-nearest center, then mean LPIPS within clusters (CDC)."""
    suite = run.suite
    dist = suite.lpips(spec)
    ref = run.reference(spec.centers, spec)
    centers = dist.prepare(torch.cat(list(ref.batches(64))))
    k = centers.shape[0]
    out = []
    for name in targets:
        sampler = run.samplers[name]
        idx_all, assign_all = [], []
        batches = list(shard_batches(ddp.shard(spec.num_gen), suite.batch_size))
        for idx in progress(batches, len(batches), f"intra_lpips {name} (assign)", suite.show_progress):
            assign_all.append(nearest_center(dist, dist.prepare(render_uint8(sampler, idx, spec.seed)), centers))
            idx_all.append(torch.tensor(idx))
        local_idx = torch.cat(idx_all) if idx_all else torch.zeros(0, dtype=torch.long)
        local_assign = torch.cat(assign_all) if assign_all else torch.zeros(0, dtype=torch.long)
        _, assignment = ddp.gather_by_index(local_idx, local_assign)
        members = select_members(assignment.numpy(), k, spec.cluster_size, spec.subset_seed)
        sums, counts = pair_sums(run, dist, sampler, cluster_pairs(members), k, spec.seed, f"intra_lpips {name}")
        res = summarize_clusters(sums, counts, [len(m) for m in members])
        proto = lpips_protocol(spec, dist, sampler, reference_dict(ref, spec.centers),
                               {"cluster_size": spec.cluster_size, "subset_seed": spec.subset_seed,
                                "assignment": "argmin LPIPS to training images (CDC)"})
        extras = {"std": res.std, "cluster_means": res.cluster_means,
                  "cluster_sizes": np.bincount(assignment.numpy(), minlength=k).tolist()}
        out.append(MetricValue(proto.key(name), res.value, spec.kind, name, proto, extras))
    return out


@register_metric("lpips_diversity", DiversitySpec)
def run_lpips_diversity(run: MetricRun, spec: DiversitySpec, targets: list[str]) -> list[MetricValue]:
    dist = run.suite.lpips(spec)
    out = []
    pairs = [(0, i, j) for i, j in all_pairs(spec.num_gen)]
    if not pairs:
        raise ValueError(f"metric {spec.name!r}: pairwise diversity needs num_gen >= 2")
    for name in targets:
        sums, counts = pair_sums(run, dist, run.samplers[name], pairs, 1, spec.seed, f"lpips_diversity {name}")
        proto = lpips_protocol(spec, dist, run.samplers[name], None, {"pairs": "all unordered"})
        out.append(MetricValue(proto.key(name), float(sums[0] / counts[0]), spec.kind, name, proto))
    return out


@register_metric("lpips_align", AlignSpec)
def run_lpips_align(run: MetricRun, spec: AlignSpec, targets: list[str]) -> list[MetricValue]:
    """Mean LPIPS between image ``i`` of ``source`` and image ``i`` of each other target."""
    require_source(run, spec)
    suite = run.suite
    dist = suite.lpips(spec)
    out = []
    for name in [t for t in targets if t != spec.source]:
        total = torch.zeros(2, dtype=torch.float64)
        batches = list(shard_batches(ddp.shard(spec.num_gen), suite.batch_size))
        for idx in progress(batches, len(batches), f"lpips_align {name}", suite.show_progress):
            a = dist.prepare(render_uint8(run.samplers[spec.source], idx, spec.seed))
            b = dist.prepare(render_uint8(run.samplers[name], idx, spec.seed))
            total += torch.stack([dist(a, b).sum(), torch.tensor(float(len(idx)), dtype=torch.float64)])
        total = ddp.all_reduce_sum(total)
        proto = lpips_protocol(spec, dist, run.samplers[name], None, {"source": spec.source})
        out.append(MetricValue(proto.key(name), float(total[0] / total[1]), spec.kind, name, proto,
                               {"source": spec.source}))
    return out


@register_metric("nn_lpips", NearestTrainingLPIPSSpec)
def run_nn_lpips(run: MetricRun, spec: NearestTrainingLPIPSSpec, targets: list[str]) -> list[MetricValue]:
    """Mean over samples of the min LPIPS to the ``centers`` images; std, mode count (training images
    matched) and per-image counts in the extras."""
    suite = run.suite
    dist = suite.lpips(spec)
    ref = run.reference(spec.centers, spec)
    train = torch.cat(list(ref.batches(64)))
    out = []
    for name in targets:
        res = nearest_training_lpips(dist, run.samplers[name], train, spec.num_gen, spec.seed, suite.batch_size,
                                     show_progress=suite.show_progress)
        proto = lpips_protocol(spec, dist, run.samplers[name], reference_dict(ref, spec.centers),
                               {"reduction": "mean_i min_j LPIPS(x_i, y_j)", "ties": "lowest index"})
        extras = {"std": res.std, "modes": res.modes, "num_centers": int(train.shape[0]),
                  "match_counts": res.match_counts}
        out.append(MetricValue(proto.key(name), res.value, spec.kind, name, proto, extras))
    return out
