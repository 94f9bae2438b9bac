"""Run configured metrics on named samplers (issue "Evaluation" §1-§4; DESIGN.md contracts 3 and 4).

:class:`MetricSuite` turns validated specs (:mod:`metrics.specs`) into :class:`MetricValue` records: a
key that encodes the protocol essentials, the value, the full :class:`~metrics.protocol.MetricProtocol`
and metric-specific extras. Networks are built once and shared (one Inception pass serves FID and KID of
the same sampler). Every runner shards samples over DDP ranks without duplicates and reduces exactly,
so all ranks must call :meth:`MetricSuite.evaluate` together; the returned values are equal on all ranks.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from metrics import ddp
from metrics.clip_metrics import clip_directional_similarity, clip_text_similarity
from metrics.features import FeatureExtractor, build_extractor, sha256_file
from metrics.fid import fid_from_stats, kernel_inception_distance
from metrics.lpips_family import (LPIPSDistance, all_pairs, cluster_pairs, load_lpips, nearest_center,
                                  reconstruction_scores, select_members, summarize_clusters)
from metrics.memorization import nearest_training_lpips
from metrics.protocol import MetricProtocol, check_no_collisions
from metrics.reference import ReferenceSet
from metrics.refstats import ReferenceStatsCache
from metrics.smoothness import latent_smoothness
from metrics.specs import (AlignSpec, ClipDirectionSpec, ClipSpecBase, ClipTextSpec, DiversitySpec, FIDSpec,
                           IntraLPIPSSpec, KIDSpec, LatentSmoothnessSpec, LPIPSSpecBase, MetricSpec,
                           NearestTrainingLPIPSSpec, ReconstructionSpec)
from metrics.stats import FeatureStats
from metrics.streams import generated_stats, progress, render_uint8, shard_batches

log = logging.getLogger(__name__)

ReferenceFn = Callable[[str], ReferenceSet]
RECONSTRUCTION_SAMPLER = "reconstruction"
PATH_SAMPLER = "interpolation"  # latent smoothness runs on the module's W-path sampler by default
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


class MetricSuite:
    """Shared networks + runners for a set of specs. ``extractors`` may pre-supply feature extractors
    by spec string (tests use stand-ins), ``clip_models`` CLIP wrappers by extractor name."""

    def __init__(self, specs: dict[str, MetricSpec], device: torch.device | str = "cpu", batch_size: int = 16,
                 cache: ReferenceStatsCache | None = None, show_progress: bool = True,
                 extractors: dict[str, FeatureExtractor] | None = None, clip_models: dict[str, Any] | None = None):
        self.specs = dict(specs)
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
    def evaluate(self, samplers: dict[str, Any], reference_fn: ReferenceFn | None) -> list[MetricValue]:
        """Every spec on every sampler it applies to. ``reference_fn(which)`` gives reference sets."""
        memo: dict[tuple, FeatureStats] = {}
        capture = self._capture_plan(samplers)
        out: list[MetricValue] = []
        for _name, spec in self.specs.items():
            targets = self._targets(spec, samplers)
            runner = getattr(self, f"_run_{spec.kind}")
            out.extend(runner(spec, samplers, targets, reference_fn, memo, capture))
        check_no_collisions((v.key, v.protocol) for v in out)
        return out

    def _targets(self, spec: MetricSpec, samplers: dict[str, Any]) -> list[str]:
        if spec.samplers is None:
            if isinstance(spec, ReconstructionSpec):  # only an inversion module's reconstructions
                return [RECONSTRUCTION_SAMPLER] if RECONSTRUCTION_SAMPLER in samplers else []
            if isinstance(spec, LatentSmoothnessSpec):  # only a path sampler (MixDL's interpolation)
                return [PATH_SAMPLER] if PATH_SAMPLER in samplers else []
            return list(samplers)
        names = list(spec.samplers)
        missing = [n for n in names if n not in samplers]
        if missing:
            raise KeyError(f"metric {spec.name!r}: unknown sampler(s) {missing}; available: {sorted(samplers)}")
        return names

    def _capture_plan(self, samplers) -> set[tuple]:
        return {self._feature_key(s, sampler) for s in self.specs.values() if isinstance(s, KIDSpec)
                for sampler in self._targets(s, samplers)}

    @staticmethod
    def _feature_key(spec: FIDSpec, sampler: str) -> tuple:
        return (sampler, spec.extractor, spec.resize, spec.num_gen, spec.seed)

    def _reference(self, reference_fn: ReferenceFn | None, which: str, spec: MetricSpec) -> ReferenceSet:
        if reference_fn is None:
            raise RuntimeError(f"metric {spec.name!r} needs reference images, but the datamodule has no "
                               f"reference_set(which)")
        return reference_fn(which)

    def _protocol(self, spec: MetricSpec, extractor: str, sha: str | None, resize: str, sampler_obj,
                  reference: dict | None, options: dict) -> MetricProtocol:
        return MetricProtocol(metric=spec.kind, num_gen=spec.num_gen, extractor=extractor, extractor_sha256=sha,
                              resize=resize, reference=reference, seed=spec.seed,
                              truncation=getattr(sampler_obj, "truncation", None), options=options,
                              label=spec.label)

    # FID / KID -------------------------------------------------------------------------------------
    def _gen_stats(self, spec: FIDSpec, sampler: str, samplers, memo, capture) -> FeatureStats:
        key = self._feature_key(spec, sampler)
        if key not in memo:
            memo[key] = generated_stats(samplers[sampler], self.extractor(spec), spec.num_gen, spec.seed,
                                        self.batch_size, capture_all=key in capture,
                                        desc=f"{spec.kind} {sampler}", show_progress=self.show_progress)
        return memo[key]

    def _run_fid(self, spec: FIDSpec, samplers, targets, reference_fn, memo, capture) -> list[MetricValue]:
        ex = self.extractor(spec)
        ref = self._reference(reference_fn, spec.reference, spec)
        ref_stats = self.cache.get(ref, ex, need_features=isinstance(spec, KIDSpec))
        out = []
        for name in targets:
            gen = self._gen_stats(spec, name, samplers, memo, capture)
            options, extras = {}, {"num_reference": ref_stats.n}
            if isinstance(spec, KIDSpec):
                res = kernel_inception_distance(gen.features(), ref_stats.features(), spec.num_subsets,
                                                spec.subset_size, spec.subset_seed, device=self.device)
                value = res.value
                options = {"num_subsets": spec.num_subsets, "subset_size": res.subset_size,
                           "subset_seed": spec.subset_seed}
                extras["kid_std"] = res.std
            else:
                value = fid_from_stats(gen, ref_stats)
            proto = self._protocol(spec, ex.name, ex.sha256, ex.resize, samplers[name],
                                   reference_dict(ref, spec.reference), options)
            out.append(MetricValue(proto.key(name), value, spec.kind, name, proto, extras))
        return out

    _run_kid = _run_fid

    # LPIPS family ----------------------------------------------------------------------------------
    def _render_prepared(self, dist: LPIPSDistance, sampler, indices: list[int], seed: int, desc: str) -> dict:
        images = {}
        batches = list(shard_batches(indices, self.batch_size))
        for idx in progress(batches, len(batches), desc, self.show_progress):
            x = dist.prepare(render_uint8(sampler, idx, seed))
            images.update(zip(idx, x))
        return images

    def _pair_sums(self, dist: LPIPSDistance, sampler, pairs: list[tuple[int, int, int]], num_groups: int,
                   seed: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
        """Sum and count of LPIPS over ``(group, i, j)`` pairs, pairs sharded over ranks, all-reduced."""
        mine = pairs[ddp.rank()::ddp.world_size()]
        needed = sorted({i for _, i, _ in mine} | {j for _, _, j in mine})
        images = self._render_prepared(dist, sampler, needed, seed, f"{desc} (render)")
        sums = torch.zeros(num_groups, dtype=torch.float64)
        counts = torch.zeros(num_groups, dtype=torch.float64)
        chunks = [mine[s:s + dist.batch_size] for s in range(0, len(mine), dist.batch_size)]
        for chunk in progress(chunks, len(chunks), f"{desc} (pairs)", self.show_progress):
            c = torch.tensor([p[0] for p in chunk])
            a = torch.stack([images[p[1]] for p in chunk])
            b = torch.stack([images[p[2]] for p in chunk])
            sums.index_add_(0, c, dist(a, b))
            counts.index_add_(0, c, torch.ones(len(chunk), dtype=torch.float64))
        return ddp.all_reduce_sum(sums).numpy(), ddp.all_reduce_sum(counts).numpy()

    def _lpips_protocol(self, spec: LPIPSSpecBase, dist: LPIPSDistance, sampler_obj, reference, options):
        return self._protocol(spec, dist.name, dist.sha256, dist.resize, sampler_obj, reference, options)

    def _run_intra_lpips(self, spec: IntraLPIPSSpec, samplers, targets, reference_fn, memo, capture):
        dist = self.lpips(spec)
        ref = self._reference(reference_fn, spec.centers, spec)
        centers = dist.prepare(torch.cat(list(ref.batches(64))))
        k = centers.shape[0]
        out = []
        for name in targets:
            sampler = samplers[name]
            idx_all, assign_all = [], []
            batches = list(shard_batches(ddp.shard(spec.num_gen), self.batch_size))
            for idx in progress(batches, len(batches), f"intra_lpips {name} (assign)", self.show_progress):
                assign_all.append(nearest_center(dist, dist.prepare(render_uint8(sampler, idx, spec.seed)), centers))
                idx_all.append(torch.tensor(idx))
            local_idx = torch.cat(idx_all) if idx_all else torch.zeros(0, dtype=torch.long)
            local_assign = torch.cat(assign_all) if assign_all else torch.zeros(0, dtype=torch.long)
            _, assignment = ddp.gather_by_index(local_idx, local_assign)
            members = select_members(assignment.numpy(), k, spec.cluster_size, spec.subset_seed)
            sums, counts = self._pair_sums(dist, sampler, cluster_pairs(members), k, spec.seed,
                                           f"intra_lpips {name}")
            res = summarize_clusters(sums, counts, [len(m) for m in members])
            proto = self._lpips_protocol(spec, dist, sampler, reference_dict(ref, spec.centers),
                                         {"cluster_size": spec.cluster_size, "subset_seed": spec.subset_seed,
                                          "assignment": "argmin LPIPS to training images (CDC)"})
            extras = {"std": res.std, "cluster_means": res.cluster_means,
                      "cluster_sizes": np.bincount(assignment.numpy(), minlength=k).tolist()}
            out.append(MetricValue(proto.key(name), res.value, spec.kind, name, proto, extras))
        return out

    def _run_lpips_diversity(self, spec: DiversitySpec, samplers, targets, reference_fn, memo, capture):
        dist = self.lpips(spec)
        out = []
        pairs = [(0, i, j) for i, j in all_pairs(spec.num_gen)]
        if not pairs:
            raise ValueError(f"metric {spec.name!r}: pairwise diversity needs num_gen >= 2")
        for name in targets:
            sums, counts = self._pair_sums(dist, samplers[name], pairs, 1, spec.seed, f"lpips_diversity {name}")
            proto = self._lpips_protocol(spec, dist, samplers[name], None, {"pairs": "all unordered"})
            out.append(MetricValue(proto.key(name), float(sums[0] / counts[0]), spec.kind, name, proto))
        return out

    def _run_lpips_align(self, spec: AlignSpec, samplers, targets, reference_fn, memo, capture):
        if spec.source not in samplers:
            raise KeyError(f"metric {spec.name!r}: source sampler {spec.source!r} not in {sorted(samplers)}")
        dist = self.lpips(spec)
        out = []
        for name in [t for t in targets if t != spec.source]:
            total = torch.zeros(2, dtype=torch.float64)
            batches = list(shard_batches(ddp.shard(spec.num_gen), self.batch_size))
            for idx in progress(batches, len(batches), f"lpips_align {name}", self.show_progress):
                a = dist.prepare(render_uint8(samplers[spec.source], idx, spec.seed))
                b = dist.prepare(render_uint8(samplers[name], idx, spec.seed))
                total += torch.stack([dist(a, b).sum(), torch.tensor(float(len(idx)), dtype=torch.float64)])
            total = ddp.all_reduce_sum(total)
            proto = self._lpips_protocol(spec, dist, samplers[name], None, {"source": spec.source})
            out.append(MetricValue(proto.key(name), float(total[0] / total[1]), spec.kind, name, proto,
                                   {"source": spec.source}))
        return out

    def _run_reconstruction(self, spec: ReconstructionSpec, samplers, targets, reference_fn, memo, capture):
        if not targets:
            return []
        dist = self.lpips(spec)
        ref = self._reference(reference_fn, spec.reference, spec)
        n = min(spec.num_gen, len(ref))
        out = []
        for name in targets:
            sums = torch.zeros(5, dtype=torch.float64)  # lpips, psnr, ssim, mse, count
            offset = 0
            for batch in progress(ref.batches(self.batch_size), -(-n // self.batch_size), f"reconstruction {name}",
                                  self.show_progress):
                idx = [i for i in range(offset, offset + batch.shape[0])
                       if i < n and i % ddp.world_size() == ddp.rank()]
                if idx:
                    target = batch[[i - offset for i in idx]]
                    scores = reconstruction_scores(dist, render_uint8(samplers[name], idx, spec.seed), target)
                    sums += torch.stack([scores[k].sum() for k in ("lpips", "psnr", "ssim", "mse")]
                                        + [torch.tensor(float(len(idx)), dtype=torch.float64)])
                offset += batch.shape[0]
                if offset >= n:
                    break
            sums = ddp.all_reduce_sum(sums)
            means = {k: float(sums[i] / sums[4]) for i, k in enumerate(("lpips", "psnr", "ssim", "mse"))}
            spec_n = dataclasses.replace(spec, num_gen=n)
            proto = self._lpips_protocol(spec_n, dist, samplers[name], reference_dict(ref, spec.reference),
                                         {"psnr_ssim_range": "[0,1]", "mse_range": "[-1,1]"})
            for k, v in means.items():  # keys recon_lpips<n>/..., recon_psnr<n>/..., ...
                key = self._renamed_key(proto, name, "reconstruction", f"recon_{k}")
                out.append(MetricValue(key, v, f"recon_{k}", name, proto))
        return out

    @staticmethod
    def _renamed_key(proto: MetricProtocol, sampler: str, old: str, new: str) -> str:
        """``proto.key(sampler)`` with the metric name at the start of the key replaced (one protocol,
        several logged values: ``reconstruction`` -> ``recon_lpips`` ..., ``latent_smoothness`` -> ...)."""
        head, _, tail = proto.key(sampler).partition("/")
        return f"{head.replace(old, new, 1)}/{tail}"

    def _run_latent_smoothness(self, spec: LatentSmoothnessSpec, samplers, targets, reference_fn, memo, capture):
        """Latent smoothness (spec idinvert_mixdl.md §2.7) of each path sampler: ``num_gen`` paths, logged as
        ``smoothness_mean<n>...`` and ``smoothness_uniformity<n>...``; cv, max-share, endpoint in the extras."""
        if not targets:
            return []
        dist = self.lpips(spec)
        out = []
        for name in targets:
            sampler = samplers[name]
            frames = getattr(sampler, "frames_per_path", None)
            batch_paths = max(1, self.batch_size // frames) if isinstance(frames, int) and frames > 0 else 1
            res = latent_smoothness(dist, sampler, spec.num_gen, spec.seed, batch_paths=batch_paths,
                                    show_progress=self.show_progress)
            proto = self._lpips_protocol(spec, dist, sampler, None,
                                         {"frames_per_path": frames, "step": 1.0 / res.steps, "space": "W",
                                          "distance": "LPIPS(frame k, frame k+1) / step^2",
                                          "uniformity": "per-path std (ddof 0), mean over paths"})
            extras = {k: v for k, v in res.as_dict().items() if k not in ("mean", "uniformity")}
            for k in ("mean", "uniformity"):
                key = self._renamed_key(proto, name, "latent_smoothness", f"smoothness_{k}")
                out.append(MetricValue(key, getattr(res, k), f"smoothness_{k}", name, proto, dict(extras)))
        return out

    def _run_nn_lpips(self, spec: NearestTrainingLPIPSSpec, samplers, targets, reference_fn, memo, capture):
        """Nearest-training LPIPS (spec idinvert_mixdl.md §2.7): mean over samples of the min LPIPS to the
        ``centers`` images; std, mode count (training images matched) and per-image counts in the extras."""
        dist = self.lpips(spec)
        ref = self._reference(reference_fn, spec.centers, spec)
        train = torch.cat(list(ref.batches(64)))
        out = []
        for name in targets:
            res = nearest_training_lpips(dist, samplers[name], train, spec.num_gen, spec.seed, self.batch_size,
                                         show_progress=self.show_progress)
            proto = self._lpips_protocol(spec, dist, samplers[name], reference_dict(ref, spec.centers),
                                         {"reduction": "mean_i min_j LPIPS(x_i, y_j)", "ties": "lowest index"})
            extras = {"std": res.std, "modes": res.modes, "num_centers": int(train.shape[0]),
                      "match_counts": res.match_counts}
            out.append(MetricValue(proto.key(name), res.value, spec.kind, name, proto, extras))
        return out

    # CLIP ------------------------------------------------------------------------------------------
    def _run_clip_text(self, spec: ClipTextSpec, samplers, targets, reference_fn, memo, capture):
        clip, sha = self.clip(spec)
        out = []
        for name in targets:
            value = clip_text_similarity(clip, samplers[name], spec.text, spec.num_gen, spec.seed, self.batch_size,
                                         spec.templates, self.show_progress)
            proto = self._protocol(spec, spec.extractor_name(), sha, "clip", samplers[name], None,
                                   {"text": spec.text, "templates": spec.templates})
            out.append(MetricValue(proto.key(name), value, spec.kind, name, proto))
        return out

    def _run_clip_direction(self, spec: ClipDirectionSpec, samplers, targets, reference_fn, memo, capture):
        if spec.source not in samplers:
            raise KeyError(f"metric {spec.name!r}: source sampler {spec.source!r} not in {sorted(samplers)}")
        clip, sha = self.clip(spec)
        out = []
        for name in [t for t in targets if t != spec.source]:
            value = clip_directional_similarity(clip, samplers[spec.source], samplers[name], spec.source_text,
                                                spec.target_text, spec.num_gen, spec.seed, self.batch_size,
                                                spec.templates, self.show_progress)
            proto = self._protocol(spec, spec.extractor_name(), sha, "clip", samplers[name], None,
                                   {"source": spec.source, "source_text": spec.source_text,
                                    "target_text": spec.target_text, "templates": spec.templates})
            out.append(MetricValue(proto.key(name), value, spec.kind, name, proto))
        return out
