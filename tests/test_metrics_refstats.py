"""Reference-statistics cache (README, "Evaluation"): a second request does not recompute (the extractor is
never called), a changed dataset invalidates the entry, a corrupt or tampered file is detected and rebuilt;
the CLI (``python -m launch.refstats``) lists, computes and verifies."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from launch import refstats
from metrics.refstats import ReferenceStatsCache, read_entry
from metrics.streams import reference_stats_direct
from metrics.specs import parse_specs
from metrics.suite import MetricSuite
from tests.helpers_metrics import standin_extractor, tensor_reference, tiny_sampler


def images(seed: int, n: int = 12) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed).randint(0, 256, (n, 3, 16, 16), dtype=np.uint8))


@pytest.fixture
def setup(tmp_path):
    ex = standin_extractor(resize="none")
    return ReferenceStatsCache(tmp_path / "cache", batch_size=5, show_progress=False), ex, tensor_reference(images(0))


def test_second_request_is_served_from_cache(setup):
    cache, ex, ref = setup
    first = cache.get(ref, ex)
    calls = ex.net.calls
    second = cache.get(ref, ex)
    assert (cache.computed, cache.loaded) == (1, 1)
    assert ex.net.calls == calls  # measured: no forward pass on the second request
    assert torch.equal(first.sum, second.sum) and torch.equal(first.outer, second.outer)
    direct = reference_stats_direct(ref, ex, batch_size=5, show_progress=False)
    assert torch.allclose(second.cov(), direct.cov(), rtol=0, atol=0)


def test_changed_dataset_or_extractor_invalidates(setup):
    cache, ex, ref = setup
    cache.get(ref, ex)
    changed = images(0)
    changed[3, 0, 0, 0] ^= 1  # one pixel differs
    cache.get(tensor_reference(changed), ex)
    assert cache.computed == 2
    cache.get(ref, standin_extractor(resize="none", seed=1))  # other weights -> other sha256 -> other entry
    assert cache.computed == 3
    assert len(list(cache.root.glob("*.npz"))) == 3


def test_features_are_added_when_kid_needs_them(setup):
    cache, ex, ref = setup
    assert not cache.get(ref, ex).capture_all
    with_feats = cache.get(ref, ex, need_features=True)
    assert cache.computed == 2 and with_feats.features().shape == (12, 16)
    cache.get(ref, ex)  # the entry with features also serves plain requests
    assert cache.computed == 2


@pytest.mark.parametrize("damage", ["garbage", "truncate", "tamper"])
def test_corrupt_file_is_detected_and_rebuilt(setup, caplog, damage):
    cache, ex, ref = setup
    good = cache.get(ref, ex)
    path = cache.path_for(ref, ex)
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    else:  # valid npz, arrays changed, metadata (with the old checksum) kept
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["sum"] = arrays["sum"] + 1.0
        np.savez(path, **arrays)
    with caplog.at_level(logging.WARNING, logger="metrics.refstats"):
        rebuilt = cache.get(ref, ex)
    assert "corrupt" in caplog.text
    assert cache.computed == 2
    assert torch.equal(rebuilt.sum, good.sum)
    read_entry(path)  # valid again


def test_cli_compute_list_verify(tmp_path, capsys):
    cache_dir = str(tmp_path / "cli")
    common = ["--toy", "--toy-images", "10", "--resolution", "16", "--extractor",
              "tests.helpers_metrics:standin_extractor", "--cache", cache_dir]
    assert refstats.main(["compute", *common]) == 0
    assert "computed" in capsys.readouterr().out
    assert refstats.main(["compute", *common]) == 0
    assert "already cached" in capsys.readouterr().out
    assert refstats.main(["list", "--cache", cache_dir]) == 0
    listing = capsys.readouterr().out
    assert "toy-" in listing and " 10 " in listing and "standin" in listing
    assert refstats.main(["verify", *common]) == 0
    assert "MATCH" in capsys.readouterr().out
    next((tmp_path / "cli").glob("*.npz")).write_bytes(b"broken")
    assert refstats.main(["verify", "--cache", cache_dir]) == 1
    assert "CORRUPT" in capsys.readouterr().out


def test_fid_and_kid_on_one_reference_read_it_once(tmp_path):
    """A FID before a KID on the same reference keeps the features, so the set is embedded once."""
    specs = parse_specs({"fid": {"num_gen": 20, "extractor": "standin"},
                         "kid": {"num_gen": 20, "extractor": "standin", "subset_size": 5, "num_subsets": 2}})
    ref_images = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (12, 3, 32, 32), dtype=np.uint8))
    passes = []

    def reference(which):
        ref = tensor_reference(ref_images)
        inner = ref.batches_fn

        def counted(batch_size):
            passes.append(which)
            yield from inner(batch_size)

        ref.batches_fn = counted
        return ref

    cache = ReferenceStatsCache(tmp_path / "cache", show_progress=False)
    suite = MetricSuite(specs, batch_size=4, cache=cache, show_progress=False,
                        extractors={"standin": standin_extractor(resize="none")})
    values = {v.metric: v for v in suite.evaluate({"ema": tiny_sampler(seed=1, size=32)}, reference)}
    assert set(values) == {"fid", "kid"}
    assert cache.computed == 1 and passes == ["full"]
