"""Exact DDP evaluation (docs/metrics.md, "Distributed evaluation"): FID, KID and
intra-cluster LPIPS computed by 2 CPU processes (gloo) equal the single-process values. ``num_gen`` is odd,
so the shards differ in size and any padding duplicate would change the result."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metrics.lpips_family import LPIPSDistance, load_lpips
from metrics.refstats import ReferenceStatsCache
from metrics.specs import parse_specs
from metrics.suite import MetricSuite
from tests.helpers_metrics import standin_extractor, tensor_reference, tiny_sampler

NUM_GEN = 41  # odd: rank shards of 21 and 20; > feature dim (16) so covariances are full rank


def evaluate() -> dict[str, float]:
    specs = parse_specs({
        "fid": {"num_gen": NUM_GEN, "extractor": "standin"},
        "kid": {"num_gen": NUM_GEN, "extractor": "standin", "subset_size": 6, "num_subsets": 5},
        "intra_lpips": {"num_gen": 15, "net": "alex", "trunk": "random", "resolution": None, "cluster_size": 4},
    })
    torch.manual_seed(0)
    model, name, sha = load_lpips("alex", trunk=None)
    ref_images = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (40, 3, 32, 32), dtype=np.uint8))
    cache_dir = os.environ["METRICS_DDP_CACHE"]
    # batch_size 1: every sample goes through the networks alone, as in the single process
    suite = MetricSuite(specs, batch_size=1, cache=ReferenceStatsCache(cache_dir, show_progress=False),
                        show_progress=False, extractors={"standin": standin_extractor(resize="none")})
    suite._lpips[("alex", "random", None)] = LPIPSDistance(model, name, sha, None, 1)
    samplers = {"ema": tiny_sampler(seed=1, size=32), "other": tiny_sampler(seed=2, size=32, offset=0.3)}
    values = suite.evaluate(samplers,
                            lambda which: tensor_reference(ref_images[:3] if which == "train" else ref_images))
    return {v.key: v.value for v in values}


def _worker(rank: int, world: int, init_file: str, out: str, cache_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["METRICS_DDP_CACHE"] = cache_dir
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        values = evaluate()
        with open(f"{out}.{rank}", "w") as f:
            json.dump(values, f)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path, monkeypatch):
    out = str(tmp_path / "values.json")
    # fork: the workers inherit the imported modules (spawn would re-import torch & co. in each)
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), out, str(tmp_path / "cache2")), nprocs=2,
                       join=True, start_method="fork")
    rank0 = json.load(open(f"{out}.0"))
    rank1 = json.load(open(f"{out}.1"))
    assert rank0 == rank1  # every rank gets the same numbers

    monkeypatch.setenv("METRICS_DDP_CACHE", str(tmp_path / "cache1"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate()
    finally:
        torch.set_num_threads(threads)
    assert set(single) == set(rank0) == {f"{m}/{s}" for s in ("ema", "other") for m in (
        "fid41@standin@none", "kid41@standin@none", "intra_lpips15@lpips-alex-randtrunk@none")}
    for key, value in single.items():
        assert rank0[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
