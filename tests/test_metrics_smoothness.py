"""Latent smoothness along W paths and nearest-training LPIPS (docs/metrics.md): the summaries
against their formulas, path bookkeeping against direct loops, stair-like vs smooth paths, mode counting."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metrics.memorization import nearest_training, nearest_training_lpips, summarize_nearest
from metrics.smoothness import latent_smoothness, segment_distances, summarize_paths
from models.sampler import Sampler


class MeanAbs:
    """A stand-in distance with the ``LPIPSDistance`` interface: mean |a - b| per pair."""

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8
        return images.float() / 127.5 - 1

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs().flatten(1).mean(1).double()


class PathSampler(Sampler):
    """Flat grey images whose level follows ``level(t)`` on each path; path p spans [-0.5 + 0.1 p, 0.5]."""

    def __init__(self, frames: int, level):
        self.frames_per_path = frames

        def render(indices, seed):
            out = []
            for i in indices:
                p, k = divmod(i, frames)
                start = -0.5 + 0.1 * ((p + seed) % 3)
                out.append(torch.full((3, 8, 8), start + (0.5 - start) * level(k / (frames - 1))))
            return torch.stack(out)

        super().__init__(render=render, kind="strip")


def test_summaries_match_the_formulas():
    seg = np.array([[0.1, 0.1, 0.1, 0.1], [0.0, 0.4, 0.0, 0.0], [0.1, 0.2, 0.3, 0.2]])
    ends = np.array([0.3, 0.35, 0.5])
    r = summarize_paths(seg, ends)
    speed = seg * 16  # / eps^2 with eps = 1/4
    assert r.mean == pytest.approx(speed.mean())
    assert r.uniformity == pytest.approx(np.mean([speed[p].std() for p in range(3)]))
    assert r.cv == pytest.approx(np.mean([0.0, math.sqrt(3), speed[2].std() / speed[2].mean()]))
    assert r.max_share == pytest.approx(np.mean([0.25, 1.0, 0.3 / 0.8]))
    assert r.endpoint == pytest.approx(ends.mean()) and (r.num_paths, r.steps) == (3, 4)


def test_summaries_reject_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        summarize_paths(np.array([[0.1, np.nan]]), np.array([0.1]))
    with pytest.raises(ValueError):
        summarize_paths(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError):
        segment_distances(MeanAbs(), torch.zeros(2, 1, 3, 4, 4))


def test_segment_distances_match_a_loop():
    frames = torch.randn(3, 5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    seg, ends = segment_distances(MeanAbs(), frames)
    for p in range(3):
        for k in range(4):
            assert float(seg[p, k]) == pytest.approx(float((frames[p, k] - frames[p, k + 1]).abs().mean()))
        assert float(ends[p]) == pytest.approx(float((frames[p, 0] - frames[p, -1]).abs().mean()))


def test_stair_like_paths_score_worse_than_linear_ones():
    linear = latent_smoothness(MeanAbs(), PathSampler(11, lambda t: t), num_paths=6, seed=1, batch_paths=4,
                               show_progress=False)
    stair = latent_smoothness(MeanAbs(), PathSampler(11, lambda t: float(t > 0.45)), num_paths=6, seed=1,
                              batch_paths=4, show_progress=False)
    assert linear.steps == stair.steps == 10 and linear.num_paths == 6
    assert linear.endpoint == pytest.approx(stair.endpoint, abs=0.01)  # same end points (uint8 quantization)
    assert linear.cv < 0.1 and linear.max_share == pytest.approx(0.1, abs=0.02)
    assert stair.max_share == pytest.approx(1.0) and stair.cv == pytest.approx(3.0, rel=1e-6)  # sqrt(T - 1)
    assert stair.uniformity > 10 * linear.uniformity
    assert stair.mean == pytest.approx(linear.mean, rel=0.05)  # same total distance, only its spread differs


def test_smoothness_is_independent_of_batching_and_needs_a_path_sampler():
    sampler = PathSampler(5, lambda t: t * t)
    a = latent_smoothness(MeanAbs(), sampler, num_paths=5, batch_paths=2, show_progress=False)
    b = latent_smoothness(MeanAbs(), sampler, num_paths=5, batch_paths=5, show_progress=False)
    assert a == b
    plain = Sampler(render=lambda idx, seed: torch.zeros(len(idx), 3, 8, 8))
    with pytest.raises(TypeError, match="frames_per_path"):
        latent_smoothness(MeanAbs(), plain, num_paths=2, show_progress=False)


# ---------------------------------------------------------------------------------------------- memorization
def test_nearest_training_matches_a_loop_and_breaks_ties_low():
    gen = torch.Generator().manual_seed(0)
    images, train = torch.randn(7, 3, 4, 4, generator=gen), torch.randn(3, 3, 4, 4, generator=gen)
    train = torch.cat([train, train[1:2]])  # training image 3 duplicates image 1: ties go to 1
    d, arg = nearest_training(MeanAbs(), images, train)
    for i in range(7):
        dists = [float((images[i] - train[j]).abs().mean()) for j in range(4)]
        assert float(d[i]) == pytest.approx(min(dists)) and int(arg[i]) == int(np.argmin(dists))
    assert 3 not in arg.tolist()


def test_mode_count_uses_the_nearest_not_the_farthest_image():
    r = summarize_nearest(np.array([0.1, 0.2, 0.3, 0.4]), np.array([2, 2, 0, 2]), num_train=5)
    assert r.value == pytest.approx(0.25) and r.std == pytest.approx(np.std([0.1, 0.2, 0.3, 0.4]))
    assert r.modes == 2 and r.match_counts == [1, 0, 3, 0, 0]
    with pytest.raises(ValueError):
        summarize_nearest(np.array([0.1]), np.array([5]), num_train=5)


def test_copying_generator_has_zero_nearest_lpips_and_all_modes():
    train = (torch.arange(4).view(4, 1, 1, 1) * 60).expand(4, 3, 8, 8).to(torch.uint8)
    copies = Sampler(render=lambda idx, seed: train[[i % 4 for i in idx]].float() / 127.5 - 1)
    r = nearest_training_lpips(MeanAbs(), copies, train, num_gen=10, batch_size=3, show_progress=False)
    assert r.value == pytest.approx(0.0, abs=1e-9) and r.modes == 4 and r.match_counts == [3, 3, 2, 2]
    shifted = Sampler(render=lambda idx, seed: torch.full((len(idx), 3, 8, 8), 30 / 127.5 - 1))
    r = nearest_training_lpips(MeanAbs(), shifted, train, num_gen=4, show_progress=False)
    assert r.value == pytest.approx(30 / 127.5) and r.modes == 1  # 30 is equally far from 0 and 60: lowest index


def test_real_lpips_stand_in_is_zero_on_identical_frames():
    from metrics.lpips_family import LPIPSDistance, load_lpips

    torch.manual_seed(0)
    model, name, sha = load_lpips("squeeze", trunk=None)
    dist = LPIPSDistance(model, name, sha, resolution=32)
    still = PathSampler(3, lambda t: 0.0)
    r = latent_smoothness(dist, still, num_paths=2, show_progress=False)
    assert r.mean == pytest.approx(0.0, abs=1e-6) and r.max_share == pytest.approx(0.5)
    moving = latent_smoothness(dist, PathSampler(3, lambda t: t), num_paths=2, show_progress=False)
    assert moving.mean > 0 and moving.endpoint > 0
