"""LPIPS family (README, "Evaluation"): intra-cluster LPIPS equals a direct loop implementation of CDC's
procedure (Ojha et al. 2021), diversity/alignment/reconstruction against their formulas, and the
torchvision trunk is loaded into the lpips slices exactly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

from metrics.features import quantize
from metrics.lpips_family import (LPIPSDistance, intra_cluster_lpips, load_lpips, pairwise_diversity,
                                  reconstruction_scores, summarize_clusters)
from metrics.specs import parse_spec
from metrics.suite import MetricSuite
from tests.helpers_metrics import tensor_reference, tiny_sampler


@pytest.fixture(scope="module")
def dist():
    torch.manual_seed(0)
    model, name, sha = load_lpips("alex", trunk=None)
    return LPIPSDistance(model, name, sha, resolution=None, batch_size=7)


def lpips_one(dist, a_uint8, b_uint8) -> float:
    """LPIPS of one pair with a single forward of the lpips package, inputs in [-1, 1]."""
    a = a_uint8[None].float() / 127.5 - 1
    b = b_uint8[None].float() / 127.5 - 1
    with torch.no_grad():
        return float(dist.model(a, b))


def cdc_direct(dist, images, centers, cluster_size, seed):
    """CDC intra-cluster LPIPS, written as the plain loops of the paper's procedure."""
    k = len(centers)
    clusters = [[] for _ in range(k)]
    for i in range(len(images)):
        d = [lpips_one(dist, images[i], centers[c]) for c in range(k)]
        clusters[int(np.argmin(d))].append(i)
    rng = np.random.RandomState(seed)
    means = []
    for c in range(k):
        members = rng.permutation(np.array(clusters[c], dtype=np.int64))[:cluster_size]
        pair_d = [lpips_one(dist, images[members[i]], images[members[j]])
                  for i in range(len(members)) for j in range(i + 1, len(members))]
        means.append(np.mean(pair_d) if pair_d else np.nan)
    means = np.array(means)
    return float(np.nanmean(means)), [len(c) for c in clusters]


def fixed_images(n, seed, size=32):
    return torch.from_numpy(np.random.RandomState(seed).randint(0, 256, (n, 3, size, size), dtype=np.uint8))


def test_intra_cluster_lpips_equals_direct_cdc_loop(dist):
    images, centers = fixed_images(10, 0), fixed_images(3, 1)
    expected, sizes = cdc_direct(dist, images, centers, cluster_size=3, seed=3)
    assert max(sizes) > 3  # the cap is exercised
    ours = intra_cluster_lpips(dist, images, centers, cluster_size=3, seed=3)
    assert ours.value == pytest.approx(expected, rel=1e-6)


def test_clusters_without_pairs_are_dropped():
    res = summarize_clusters(np.array([2.0, 0.0, 3.0]), np.array([4.0, 0.0, 1.0]), [5, 1, 2])
    assert res.value == pytest.approx((0.5 + 3.0) / 2) and math.isnan(res.cluster_means[1])
    with pytest.raises(ValueError, match="no cluster"):
        summarize_clusters(np.zeros(2), np.zeros(2), [1, 0])


def test_intra_lpips_runner_equals_function(dist):
    """The sharded sampler runner equals the in-memory function on the same rendered images."""
    sampler = tiny_sampler(seed=2)
    centers = quantize(tiny_sampler(seed=5).render(list(range(3)), 0))
    spec = parse_spec("intra_lpips", {"num_gen": 12, "net": "alex", "resolution": None, "trunk": "random",
                                      "cluster_size": 5, "subset_seed": 1})
    suite = MetricSuite({"intra_lpips": spec}, batch_size=5, show_progress=False)
    suite._lpips[("alex", "random", None)] = dist
    (value,) = suite.evaluate({"ema": sampler}, lambda which: tensor_reference(centers, which=which))
    images = quantize(sampler.render(list(range(12)), 0))
    direct = intra_cluster_lpips(dist, images, centers, cluster_size=5, seed=1)
    assert value.key == "intra_lpips12@lpips-alex-randtrunk@none/ema"
    assert value.value == pytest.approx(direct.value, rel=1e-9)
    assert sum(value.extras["cluster_sizes"]) == 12
    assert value.protocol.options["cluster_size"] == 5


def test_pairwise_diversity_equals_loop(dist):
    images = fixed_images(5, 4)
    expected = np.mean([lpips_one(dist, images[i], images[j]) for i in range(5) for j in range(i + 1, 5)])
    assert pairwise_diversity(dist, images) == pytest.approx(expected, rel=1e-6)


def test_alignment_zero_for_same_sampler_positive_otherwise(dist):
    same, other = tiny_sampler(seed=1), tiny_sampler(seed=1, offset=0.5)
    spec = parse_spec("lpips_align", {"num_gen": 6, "net": "alex", "trunk": "random", "source": "source"})
    suite = MetricSuite({"lpips_align": spec}, batch_size=4, show_progress=False)
    suite._lpips[("alex", "random", None)] = dist
    values = {v.sampler: v.value for v in suite.evaluate({"source": same, "copy": same, "shifted": other}, None)}
    assert set(values) == {"copy", "shifted"}
    assert values["copy"] == pytest.approx(0.0, abs=1e-7)
    a = quantize(same.render(list(range(6)), 0))
    b = quantize(other.render(list(range(6)), 0))
    assert values["shifted"] == pytest.approx(np.mean([lpips_one(dist, a[i], b[i]) for i in range(6)]), rel=1e-6)


def test_reconstruction_scores_match_formulas(dist):
    target = fixed_images(3, 5)
    noise = torch.from_numpy(np.random.RandomState(6).randint(-20, 21, target.shape))
    pred = (target.int() + noise).clamp(0, 255).to(torch.uint8)
    scores = reconstruction_scores(dist, pred, target)
    mse01 = ((pred.double() - target.double()) / 255).pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(scores["psnr"], 10 * torch.log10(1 / mse01), rtol=1e-6)
    assert torch.allclose(scores["mse"], 4 * mse01, rtol=1e-9)
    assert torch.all(scores["ssim"] < 1) and torch.all(scores["ssim"] > 0)
    same = reconstruction_scores(dist, target, target)
    assert torch.allclose(same["ssim"], torch.ones(3, dtype=torch.float64))
    assert torch.all(same["lpips"].abs() < 1e-7)
    assert scores["lpips"][0] == pytest.approx(lpips_one(dist, pred[0], target[0]), rel=1e-6)


def test_reconstruction_runner_keys(dist):
    target = quantize(tiny_sampler(seed=7).render(list(range(5)), 0))
    spec = parse_spec("reconstruction", {"num_gen": 5, "net": "alex", "trunk": "random"})
    suite = MetricSuite({"reconstruction": spec}, batch_size=2, show_progress=False)
    suite._lpips[("alex", "random", None)] = dist
    values = {v.key: v.value for v in suite.evaluate(  # the sampler an inversion module declares for it
        {"reconstruction": tiny_sampler(seed=7), "ema": tiny_sampler(seed=8)}, lambda w: tensor_reference(target),
        default_samplers={"reconstruction": ["reconstruction"]})}
    assert set(values) == {f"recon_{k}5@lpips-alex-randtrunk/reconstruction" for k in ("lpips", "psnr", "ssim", "mse")}
    assert math.isinf(values["recon_psnr5@lpips-alex-randtrunk/reconstruction"])  # exact reconstruction


def test_trunk_weights_are_loaded_into_lpips_slices(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(state, tmp_path / "alexnet.pth")
    model, name, sha = load_lpips("alex", trunk=tmp_path / "alexnet.pth")
    assert name == "lpips-alex" and len(sha) == 64
    assert torch.equal(model.net.slice1._modules["0"].weight, state["features.0.weight"])
    assert torch.equal(model.net.slice5._modules["10"].bias, state["features.10.bias"])
    torch.save({"classifier.1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="features.0.weight"):
        load_lpips("alex", trunk=tmp_path / "bad.pth")
