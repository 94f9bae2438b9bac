"""Golden tests of the FID/KID math and pipeline (docs/metrics.md, "FID and KID").

* FID of two image folders with a fixed stand-in extractor equals ``cleanfid.fid.compute_fid(mode="clean",
  custom_feat_extractor=...)`` to 1e-6 relative, for folders and for a generator (``gen=``);
* FID from features equals a direct numpy/scipy computation;
* KID equals clean-fid's ``kernel_distance`` with the same subsets and the unbiased MMD^2 formula;
* quantization is NVIDIA's ``floor(127.5 x + 128)`` clamped; float64 statistics equal numpy's.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from cleanfid import fid as cleanfid

from metrics.features import inception_extractor, make_resize, quantize
from metrics.fid import fid_from_features, fid_from_stats, frechet_distance, kernel_inception_distance
from metrics.protocol import MetricProtocol, check_no_collisions
from metrics.stats import FeatureStats
from metrics.streams import generated_stats, reference_stats_direct
from tests.helpers_metrics import StandInNet, folder_reference, standin_extractor, tiny_sampler, write_folder

CPU = torch.device("cpu")
pytestmark = [pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning"),  # inside clean-fid
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_folders")
    return write_folder(root / "A", 24, seed=0), write_folder(root / "B", 24, seed=1, shift=40)


def test_fid_equals_cleanfid_on_folders(folders):
    a, b = folders
    net = StandInNet(seed=0).eval()
    expected = cleanfid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=net, device=CPU,
                                    num_workers=0, batch_size=8, verbose=False)
    ex = standin_extractor()
    stats_a = reference_stats_direct(folder_reference(a), ex, batch_size=7, show_progress=False)
    stats_b = reference_stats_direct(folder_reference(b), ex, batch_size=5, show_progress=False)
    ours = fid_from_stats(stats_a, stats_b)
    assert expected > 0.1
    assert ours == pytest.approx(expected, rel=1e-6)


def test_generated_fid_equals_cleanfid_gen_mode(folders):
    """Sampler -> NVIDIA quantization -> clean resize -> extractor matches clean-fid's ``gen=`` path when
    clean-fid is fed the same (quantized) images in [0, 255]."""
    _, b = folders
    sampler, num_gen, batch = tiny_sampler(seed=3), 32, 8
    rendered = iter(range(0, num_gen, batch))

    def gen(z):  # clean-fid draws unseeded z; render our seeded indices instead, in order
        start = next(rendered)
        return quantize(sampler.render(list(range(start, start + batch)), 0)).float()

    expected = cleanfid.compute_fid(gen=gen, fdir2=str(b), mode="clean", custom_feat_extractor=StandInNet(0).eval(),
                                    num_gen=num_gen, batch_size=batch, z_dim=8, device=CPU, num_workers=0,
                                    verbose=False)
    ex = standin_extractor()
    ours = fid_from_stats(generated_stats(sampler, ex, num_gen, seed=0, batch_size=batch, show_progress=False),
                          reference_stats_direct(folder_reference(b), ex, show_progress=False))
    assert ours == pytest.approx(expected, rel=1e-6)


def test_clean_resize_is_cleanfids():
    from cleanfid.resize import build_resizer

    img = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (2, 3, 20, 28), dtype=np.uint8))
    ours = make_resize("clean")(img)
    ref = build_resizer("clean")(img[1].permute(1, 2, 0).numpy())
    assert ours.shape == (2, 3, 299, 299) and ours.dtype == torch.float32
    assert torch.equal(ours[1], torch.from_numpy(ref).permute(2, 0, 1))


def test_fid_from_features_equals_scipy():
    rs = np.random.RandomState(0)
    f1 = rs.randn(60, 8) @ rs.randn(8, 8)
    f2 = rs.randn(50, 8) @ rs.randn(8, 8) + 0.5
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_rejects_nan():
    s = np.eye(3)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0, 0]), s, np.zeros(3), s)


def test_kid_equals_cleanfid_kernel_distance():
    rs = np.random.RandomState(1)
    gen, ref = rs.randn(40, 16), rs.randn(30, 16) + 0.2
    np.random.seed(7)
    expected = cleanfid.kernel_distance(gen, ref, num_subsets=10, max_subset_size=20)
    ours = kernel_inception_distance(gen, ref, num_subsets=10, subset_size=20, seed=7)
    assert ours.value == pytest.approx(expected, rel=1e-12)
    assert ours.subset_size == 20


def test_kid_full_subset_is_unbiased_mmd():
    """With one subset covering both sets, KID is the unbiased MMD^2 with k(x,y) = (x.y/d + 1)^3."""
    rs = np.random.RandomState(2)
    x, y = rs.randn(12, 5) + 0.3, rs.randn(12, 5)
    d, m = 5, 12
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.sum() / m**2
    assert kernel_inception_distance(x, y, num_subsets=1, subset_size=100).value == pytest.approx(expected, rel=1e-12)


def test_quantize_is_nvidia_rounding():
    x = torch.linspace(-1.3, 1.3, 10001)
    expected = torch.floor(127.5 * x.double() + 128).clamp(0, 255).to(torch.uint8)
    assert torch.equal(quantize(x.view(1, 1, 1, -1)).flatten(), expected)
    assert quantize(torch.tensor([-1.0, 1.0])).tolist() == [0, 255]
    with pytest.raises(ValueError, match="NaN"):
        quantize(torch.tensor([0.0, float("nan")]))


def test_feature_stats_float64_equals_numpy_and_order():
    rs = np.random.RandomState(3)
    feats = rs.randn(37, 6).astype(np.float32) * 10 + 100
    stats = FeatureStats(capture_all=True)
    order = rs.permutation(37)
    for chunk in np.array_split(order, 5):  # appended out of order, tagged with indices
        stats.append(torch.from_numpy(feats[chunk]), chunk.tolist())
    np.testing.assert_allclose(stats.mean().numpy(), feats.astype(np.float64).mean(0), rtol=1e-13)
    np.testing.assert_allclose(stats.cov().numpy(), np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-9)
    assert np.array_equal(stats.features().numpy(), feats.astype(np.float64))
    with pytest.raises(ValueError, match="NaN"):
        stats.append(torch.tensor([[float("nan")] * 6]))


def test_protocol_keys_encode_essentials_and_never_collide():
    base = MetricProtocol("fid", 5000, "inception-2015-12-05", "abc", reference={"which": "full"})
    assert base.key("adapted") == "fid5k/adapted"
    train = MetricProtocol("fid", 5000, "inception-2015-12-05", "abc", reference={"which": "train", "xflip": True})
    assert train.key("ema") == "fid5k_train_xflip/ema"
    clip = MetricProtocol("fid", 1500, "clip:ViT-B-32", "def", resize="none", truncation=0.7)
    assert clip.key("ema") == "fid1500_trunc0.7@clip:ViT-B-32@none/ema"
    assert MetricProtocol("fid", 5000, "inception-2015-12-05", seed=3).key("ema") == "fid5k_seed3/ema"
    kid_a = MetricProtocol("kid", 5000, "inception-2015-12-05", options={"subset_size": 1000})
    kid_b = MetricProtocol("kid", 5000, "inception-2015-12-05", options={"subset_size": 100})
    assert kid_a.key("ema") == kid_b.key("ema") and kid_a.digest() != kid_b.digest()
    with pytest.raises(ValueError, match="same key"):
        check_no_collisions([(kid_a.key("ema"), kid_a), (kid_b.key("ema"), kid_b)])
    labelled = MetricProtocol("kid", 5000, "inception-2015-12-05", options={"subset_size": 100}, label="small")
    assert labelled.key("ema") == "kid5k+small/ema"
    check_no_collisions([(kid_a.key("ema"), kid_a), (labelled.key("ema"), labelled), (kid_a.key("ema"), kid_a)])


class _ScriptedInceptionStandIn(torch.nn.Module):
    """Same TorchScript interface as NVIDIA's Inception file: ``.layers`` on [-1, 1] 299px inputs, and
    ``forward(x, return_features)`` that resizes [0, 255] inputs itself."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Conv2d(3, 2048, 4))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128)


def test_inception_extractor_matches_cleanfid_wrapper(tmp_path):
    from cleanfid.inception_torchscript import InceptionV3W

    torch.jit.script(_ScriptedInceptionStandIn()).save(str(tmp_path / "inception-2015-12-05.pt"))
    ours = inception_extractor(tmp_path / "inception-2015-12-05.pt")
    assert ours.name == "inception-2015-12-05" and ours.resize == "clean" and len(ours.sha256) == 64
    images = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (2, 3, 24, 24), dtype=np.uint8))
    theirs = InceptionV3W(str(tmp_path), download=False, resize_inside=False)
    expected = theirs(make_resize("clean")(images))
    assert torch.allclose(ours(images), expected, rtol=0, atol=0)
    legacy = inception_extractor(tmp_path / "inception-2015-12-05.pt", resize="legacy_tensorflow")
    theirs_legacy = InceptionV3W(str(tmp_path), download=False, resize_inside=True)
    assert torch.equal(legacy(images), theirs_legacy(images.float()))
