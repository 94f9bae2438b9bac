"""FID/KID input pipeline (docs/metrics.md, "FID and KID"): the clean resize is bit-identical to clean-fid's
resizer and returns one contiguous NCHW buffer; a reference-statistics pass over an image folder decodes
each file at most once."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

import datamodules.images as images_module
from datamodules.images import ImageDataModule
from metrics.features import make_resize
from metrics.refstats import ReferenceStatsCache
from tests.helpers_metrics import standin_extractor, write_folder


def cleanfid_formula(images: torch.Tensor, size: int) -> torch.Tensor:
    """The former implementation: clean-fid's resizer per NHWC image, ``np.stack``, permute to NCHW."""
    from cleanfid.resize import make_resizer

    fn = make_resizer("PIL", False, "bicubic", (size, size))
    arrays = images.permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.stack([fn(a) for a in arrays])).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("batch, height, width, size", [(1, 20, 28, 299), (5, 33, 17, 299), (3, 301, 299, 299),
                                                         (2, 64, 64, 37), (4, 7, 9, 299)])
def test_clean_resize_is_bit_identical_to_cleanfid_formula(batch, height, width, size):
    rs = np.random.RandomState(batch * 1000 + height)
    img = torch.from_numpy(rs.randint(0, 256, (batch, 3, height, width), dtype=np.uint8))
    img[0, :, :2] = 255  # saturated rows exercise the clip (bicubic overshoots above 255 and below 0)
    img[-1, :, -2:] = 0
    ours = make_resize("clean", size)(img)
    assert ours.dtype == torch.float32 and ours.shape == (batch, 3, size, size) and ours.is_contiguous()
    assert torch.equal(ours, cleanfid_formula(img, size))


def test_clean_resize_takes_non_contiguous_input():
    img = torch.from_numpy(np.random.RandomState(1).randint(0, 256, (3, 24, 24, 3), dtype=np.uint8))
    nchw_view = img.permute(0, 3, 1, 2)  # channels-last memory, as decoded PIL arrays often are
    assert not nchw_view.is_contiguous()
    assert torch.equal(make_resize("clean")(nchw_view), cleanfid_formula(nchw_view.contiguous(), 299))


@pytest.fixture
def count_decodes(monkeypatch):
    counts: collections.Counter = collections.Counter()
    original = images_module.decode_image

    def counting(data, name, *args, **kwargs):
        counts[name] += 1
        return original(data, name, *args, **kwargs)

    monkeypatch.setattr(images_module, "decode_image", counting)
    return counts


@pytest.mark.parametrize("lazy", [False, True], ids=["in_memory", "lazy"])
@pytest.mark.parametrize("which, options", [("train", {}), ("full", {"fewshot": 3}), ("holdout", {"holdout": 2})])
def test_reference_stats_decode_each_file_once(tmp_path, monkeypatch, count_decodes, lazy, which, options):
    if lazy:  # headers only at setup, images decoded while streaming
        monkeypatch.setattr(images_module, "IN_MEMORY_MAX_BYTES", 0)
    folder = write_folder(tmp_path / "imgs", 8, seed=0, size=24)
    dm = ImageDataModule(str(folder), resolution=16, xflip=False, **options)
    dm.setup()
    assert dm.in_memory is not lazy
    ref = dm.reference_set(which)
    cache = ReferenceStatsCache(tmp_path / "cache", batch_size=3, show_progress=False)
    stats = cache.get(ref, standin_extractor())
    assert stats.n == len(ref) and cache.computed == 1
    assert max(count_decodes.values()) == 1  # setup + one statistics pass: no file decoded twice
    assert set(ref_names(dm, which)) <= set(count_decodes)


def ref_names(dm: ImageDataModule, which: str) -> list[str]:
    if which == "train":
        return dm.manifest_names
    return dm._full_reference_names() if which == "full" else dm._holdout_reference_names()
