"""The offline stand-in extractor: deterministic weights, protocol identity, a FID that separates data."""
import torch

from metrics.features import build_extractor, quantize
from metrics.fid import fid_from_features


def _images(seed: int, shift: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return quantize((torch.rand(64, 3, 32, 32, generator=g) * 2 - 1) * 0.5 + shift)


def test_standin_is_deterministic_and_pinned_by_hash():
    a = build_extractor("metrics.standin:random_features", resize="none")
    b = build_extractor("metrics.standin:random_features", resize="none")
    x = _images(0, 0.0)
    assert torch.equal(a(x), b(x)) and a(x).shape == (64, 128)
    assert a.sha256 == b.sha256 and a.sha256 is not None and a.name == "metrics.standin:random_features"


def test_standin_fid_is_zero_for_equal_sets_and_grows_with_a_shift():
    fx = build_extractor("metrics.standin:random_features", resize="none")
    ref = fx(_images(0, 0.0)).double()
    same = fid_from_features(ref, ref)
    near = fid_from_features(fx(_images(1, 0.0)).double(), ref)
    far = fid_from_features(fx(_images(1, 0.4)).double(), ref)
    assert abs(same) < 1e-6 and 0 < near < far
