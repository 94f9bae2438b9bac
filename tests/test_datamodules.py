"""Datamodules: image folders/zips, few-shot manifests, toy data, latent streams."""
from __future__ import annotations

import colorsys
import io
import json
import logging
import warnings
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import images as images_mod
from datamodules.base import dummy_eval_loader, fewshot_order, read_manifest
from datamodules.images import ImageDataModule, UnreadableImageWarning
from datamodules.latents import LatentDataModule, LatentStream, latent_batch
from datamodules.toy import (FACE_FACTORS, ToyDataModule, hsv_to_rgb, render_toy, toy_factors,
                             write_toy_folder)


def _smooth_rgb(seed: int, size=(24, 24)) -> Image.Image:
    rng = np.random.RandomState(seed)
    w, h = size
    base = rng.randint(0, 256, (3,))
    grad = np.linspace(0, 1, w)[None, :, None] * rng.randint(-80, 80, (3,))
    arr = np.clip(base + grad + np.zeros((h, 1, 1)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def messy_folder(tmp_path):
    """One file per case the loader must handle; 8 readable images, 2 unreadable, 2 ignored files."""
    root = tmp_path / "messy"
    (root / "sub").mkdir(parents=True)
    _smooth_rgb(0).save(root / "rgb.png")
    Image.fromarray(np.tile(np.arange(0, 240, 10, dtype=np.uint8), (24, 1)), "L").save(root / "gray.png")
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 12:, 3] = 255  # left half fully transparent (colour under it is red), right half opaque red
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    _smooth_rgb(1).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(root / "palette.png")
    Image.fromarray(np.full((24, 24), 128 * 257, np.uint16)).save(root / "deep16.png")
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    odd = np.zeros((32, 48, 3), np.uint8)
    odd[:, :8] = (255, 0, 0)
    odd[:, 8:40] = (0, 255, 0)
    odd[:, 40:] = (0, 0, 255)
    Image.fromarray(odd).save(root / "odd.png")
    _smooth_rgb(2).save(root / "sub" / "nested.jpg")
    (root / "corrupt.png").write_bytes(np.random.RandomState(0).bytes(500))
    noise = np.random.RandomState(3).randint(0, 256, (64, 64, 3)).astype(np.uint8)
    (root / "truncated.png").write_bytes(_png_bytes(Image.fromarray(noise))[:3000])
    _smooth_rgb(4).save(root / ".hidden.png")
    (root / "notes.txt").write_text("not an image")
    return root


def _reference_images(dm, which="full") -> dict[str, torch.Tensor]:
    ref = dm.reference_set(which)
    imgs = torch.cat(list(ref.batches(5)))
    names = dm.manifest_names if which == "train" else dm._full_reference_names()
    return dict(zip(names, imgs))


# ------------------------------------------------------------------------------------ image folders


def test_messy_folder_conversions_and_one_counted_warning(messy_folder, caplog):
    dm = ImageDataModule(str(messy_folder), resolution=16, xflip=False, resize_filter="box")
    with caplog.at_level(logging.INFO, logger="datamodules"), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        dm.setup("fit")
    unreadable = [w for w in rec if issubclass(w.category, UnreadableImageWarning)]
    assert len(unreadable) == 1
    msg = str(unreadable[0].message)
    assert "2 unreadable" in msg and "corrupt.png" in msg and "truncated.png" in msg
    assert dm.manifest_names == sorted(["rgb.png", "gray.png", "rgba.png", "palette.png", "deep16.png",
                                        "cmyk.jpg", "odd.png", "sub/nested.jpg"])
    summary = caplog.text
    for part in ("1 grayscale", "1 16-bit", "1 palette", "1 alpha", "1 cmyk", "1 non-square center-cropped"):
        assert part in summary, (part, summary)

    imgs = _reference_images(dm, "train")
    gray = imgs["gray.png"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert gray[0, 0, 0] < 20 and gray[0, 0, -1] > 200  # horizontal ramp survived
    assert (imgs["deep16.png"] == 128).all()  # 16-bit 32896 scales to 128 (PIL's convert would clip to 255)
    rgba = imgs["rgba.png"]
    assert (rgba[:, :, :6] == 255).all(), "transparent pixels composite on white"
    assert (rgba[:, :, 10:] == torch.tensor([200, 0, 0]).view(3, 1, 1)).all()
    odd = imgs["odd.png"]
    assert (odd == torch.tensor([0, 255, 0]).view(3, 1, 1)).all(), "non-square image is center-cropped"
    cmyk = imgs["cmyk.jpg"].float().mean((1, 2))
    assert cmyk[0] > 200 and cmyk[1] < 40 and cmyk[2] < 40  # CMYK (0,255,255,0) is red


@pytest.mark.parametrize("filt", ["lanczos", "box"])
def test_resize_matches_pil_filter(tmp_path, filt):
    src = _smooth_rgb(7, (40, 40))
    src.save(tmp_path / "a.png")
    dm = ImageDataModule(str(tmp_path), resolution=16, resize_filter=filt, xflip=False)
    got = _reference_images(dm)["a.png"]
    pil_filter = Image.Resampling.LANCZOS if filt == "lanczos" else Image.Resampling.BOX
    want = torch.from_numpy(np.array(src.resize((16, 16), pil_filter))).permute(2, 0, 1)
    assert torch.equal(got, want)
    assert dm.preprocessing["resize_filter"] == filt


def test_clear_errors(tmp_path, messy_folder):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        ImageDataModule(str(tmp_path / "does_not_exist"), 16).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ImageDataModule(str(tmp_path / "empty"), 16).setup()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no readable image"), pytest.warns(UnreadableImageWarning):
        ImageDataModule(str(bad), 16).setup()
    (tmp_path / "file.tar").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .zip"):
        ImageDataModule(str(tmp_path / "file.tar"), 16).setup()
    with pytest.raises(ValueError, match="resize_filter"):
        ImageDataModule(str(messy_folder), 16, resize_filter="lanczoz")
    with pytest.raises(ValueError, match="set only one"):
        ImageDataModule(str(messy_folder), 16, fewshot=2, manifest="m.txt")
    with pytest.raises(ValueError, match="crop='none'"):
        ImageDataModule(str(messy_folder), 16, crop="none").setup()
    with pytest.raises(ValueError, match="fewshot=50"):
        ImageDataModule(str(messy_folder), 16, fewshot=50).setup()
    dm = ImageDataModule(str(messy_folder), 16, fewshot=3, xflip=False, batch_size=4)
    with pytest.raises(ValueError, match="batch_size=4"):
        dm.train_dataloader()


def test_zip_equals_folder(tmp_path):
    folder = write_toy_folder(tmp_path / "toy", 7, resolution=16, kind="shapes", seed=3)
    zpath = tmp_path / "toy.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
        zf.writestr("dataset.json", json.dumps({"labels": [[f"{i:06d}.png", i % 2] for i in range(7)]}))
    a = ImageDataModule(str(folder), resolution=16, xflip=False)
    b = ImageDataModule(str(zpath), resolution=16, xflip=False)
    with pytest.warns(UserWarning, match="labels"):
        b.setup()
    assert a.reference_set().content_hash == b.reference_set().content_hash
    ia, ib = _reference_images(a), _reference_images(b)
    assert list(ia) == list(ib) and all(torch.equal(ia[k], ib[k]) for k in ia)
    want, _ = render_toy(range(7), 16, "shapes", 3)  # the PNGs hold exactly the rendered pixels
    assert torch.equal(torch.stack(list(ib.values())), want)


def test_fewshot_selection_deterministic_and_skips_corrupt(tmp_path):
    folder = write_toy_folder(tmp_path / "d", 30, resolution=16, seed=0)
    names = sorted(p.name for p in folder.iterdir())

    def pick(n, seed):
        dm = ImageDataModule(str(folder), 16, fewshot=n, fewshot_seed=seed)
        dm.setup()
        return dm.manifest_names

    assert pick(10, 0) == pick(10, 0) == sorted(fewshot_order(names, 0)[:10])
    assert pick(10, 1) != pick(10, 0)
    assert set(pick(5, 0)) <= set(pick(10, 0))
    victim = fewshot_order(names, 0)[2]
    (folder / victim).write_bytes(b"broken")
    with pytest.warns(UnreadableImageWarning, match="1 unreadable"):
        chosen = pick(10, 0)
    assert victim not in chosen and len(chosen) == 10
    assert chosen == sorted([n for n in fewshot_order(names, 0) if n != victim][:10])


def test_manifest_exact_roundtrip_and_missing(tmp_path):
    folder = write_toy_folder(tmp_path / "d", 12, resolution=16, seed=0)
    man = tmp_path / "m.txt"
    man.write_text("# three shots\n000007.png\n\n./000002.png\n000011.png\n")
    dm = ImageDataModule(str(folder), 16, manifest=str(man), xflip=False, batch_size=2)
    dm.setup()
    assert dm.manifest_names == ["000002.png", "000007.png", "000011.png"]
    assert len(dm.reference_set("train")) == 3 and len(dm.reference_set("full")) == 12
    saved = dm.save_manifest(tmp_path / "run" / "manifest.txt")
    assert read_manifest(saved) == dm.manifest_names
    dm2 = ImageDataModule(str(folder), 16, fewshot=4, fewshot_seed=5)
    dm2.setup()
    dm3 = ImageDataModule(str(folder), 16, manifest=str(dm2.save_manifest(tmp_path / "m2.txt")))
    dm3.setup()
    assert dm3.manifest_names == dm2.manifest_names
    assert dm3.reference_set("train").content_hash == dm2.reference_set("train").content_hash
    capped = ImageDataModule(str(folder), 16, max_images=4, reference_max_images=5)
    capped.setup()
    assert capped.manifest_names == [f"{i:06d}.png" for i in range(4)]
    assert len(capped.reference_set("full")) == 5 and len(capped.reference_set("train")) == 4
    man.write_text("000001.png\nmissing_one.png\n")
    with pytest.raises(FileNotFoundError, match="missing_one.png"):
        ImageDataModule(str(folder), 16, manifest=str(man)).setup()
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        ImageDataModule(str(folder), 16, manifest=str(tmp_path / "nope.txt")).setup()


@pytest.mark.parametrize("lazy", [False, True])
def test_batches_range_and_xflip(tmp_path, monkeypatch, lazy):
    if lazy:
        monkeypatch.setattr(images_mod, "IN_MEMORY_MAX_BYTES", 0)
    folder = write_toy_folder(tmp_path / "d", 6, resolution=16, seed=1)
    dm = ImageDataModule(str(folder), 16, batch_size=4, xflip=True, seed=0)
    dm.setup()
    assert dm.in_memory is (not lazy)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3  # 12 items (6 + 6 mirrored), drop_last
    for b in batches:
        assert isinstance(b, torch.Tensor) and b.shape == (4, 3, 16, 16) and b.dtype == torch.float32
        assert b.min() >= -1 and b.max() <= 1
    refs = [r.float() / 127.5 - 1 for r in _reference_images(dm).values()]
    seen = torch.cat(batches)
    counts = Counter()
    for x in seen:
        for k, r in enumerate(refs):
            counts[(k, "plain")] += int(torch.allclose(x, r, atol=1e-6))
            counts[(k, "flip")] += int(torch.allclose(x, r.flip(-1), atol=1e-6))
    assert all(counts[(k, kind)] == 1 for k in range(6) for kind in ("plain", "flip")), counts
    again = torch.cat(list(dm.train_dataloader()))
    other = torch.cat(list(ImageDataModule(str(folder), 16, batch_size=4, seed=1).train_dataloader()))
    assert torch.equal(again, seen) and not torch.equal(other, seen)


def test_lazy_mode_skips_truncated_file_with_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "IN_MEMORY_MAX_BYTES", 0)
    folder = write_toy_folder(tmp_path / "d", 3, resolution=16, seed=0)
    (folder / "000001.png").write_bytes((folder / "000001.png").read_bytes()[:60])  # header intact
    dm = ImageDataModule(str(folder), 16, xflip=False, batch_size=1)
    dm.setup()
    assert not dm.in_memory and len(dm.manifest_names) == 3
    with pytest.warns(UnreadableImageWarning, match="000001.png"):
        x = dm._train[1]
    assert torch.equal(x, dm._train[2])


def test_reference_hash_tracks_content(tmp_path):
    folder = write_toy_folder(tmp_path / "d", 5, resolution=16, seed=2)

    def ref_hash(**kw):
        return ImageDataModule(str(folder), 16, **kw).reference_set("full").content_hash

    h = ref_hash()
    assert h == ref_hash() and len(h) == 64
    assert ref_hash(resize_filter="box") != h
    ref = ImageDataModule(str(folder), 16).reference_set("full")
    assert len(ref) == 5 and ref.resolution == 16 and not ref.xflip
    b = next(ref.batches(4))
    assert b.dtype == torch.uint8 and b.shape == (4, 3, 16, 16)
    img = np.asarray(Image.open(folder / "000003.png")).copy()
    img[0, 0] ^= 1
    Image.fromarray(img).save(folder / "000003.png")
    assert ref_hash() != h


# ------------------------------------------------------------------------------------ toy data


def test_toy_determinism_range_and_factors():
    small = ToyDataModule(resolution=16, num_images=8, seed=4)
    big = ToyDataModule(resolution=16, num_images=40, seed=4)
    small.setup()
    big.setup()
    assert torch.equal(small.images, big.images[:8])
    single, _ = render_toy([30], 16, "faces", 4)
    assert torch.equal(single[0], big.images[30])
    assert not torch.equal(big.images[0], big.images[1])
    other = ToyDataModule(resolution=16, num_images=8, seed=5)
    other.setup()
    assert not torch.equal(other.images, small.images)

    f = big.factors
    assert set(f) == set(FACE_FACTORS)
    for name, v in f.items():
        assert v.shape == (40,) and v.std() > 0, name
    assert (f["face_size"] >= 0.45).all() and (f["face_size"] <= 0.60).all()
    # The corner pixel is pure background: its colour follows the bg factors through HSV -> RGB.
    bg = hsv_to_rgb(f["bg_hue"], torch.full((40,), 0.35), f["bg_value"])
    assert torch.equal(big.images[:, :, 0, 0], torch.round(bg * 255).to(torch.uint8))
    h, v = float(f["bg_hue"][0]), float(f["bg_value"][0])
    assert np.allclose(bg[0].numpy(), colorsys.hsv_to_rgb(h, 0.35, v), atol=1e-6)

    batch = next(iter(big.train_dataloader()))
    assert batch.shape == (16, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1
    assert batch.min() < -0.5 and batch.max() > 0.5  # dark pupils, light eye whites


def test_toy_shapes_fewshot_and_reference():
    dm = ToyDataModule(resolution=16, num_images=50, kind="shapes", fewshot=10, fewshot_seed=1,
                       batch_size=4, xflip=True)
    dm.setup()
    assert len(dm.manifest_names) == 10 and dm.manifest_names == sorted(dm.manifest_names)
    assert dm.train_indices == [int(n[:6]) for n in dm.manifest_names]
    train, full = dm.reference_set("train"), dm.reference_set("full")
    assert len(train) == 10 and len(full) == 50 and train.content_hash != full.content_hash
    assert torch.equal(torch.cat(list(train.batches(3))), dm.images[dm.train_indices])
    assert len(list(dm.train_dataloader())) == 5  # 20 items with x-flip, batch 4
    again = ToyDataModule(resolution=16, num_images=50, kind="shapes", fewshot=10, fewshot_seed=1)
    again.setup()
    assert again.manifest_names == dm.manifest_names
    assert again.reference_set("train").content_hash == train.content_hash
    assert toy_factors([3], 0, "shapes")["shape0_type"].item() in (0.0, 1.0, 2.0)
    assert len(list(dm.val_dataloader())) == 1 and len(list(dm.test_dataloader())) == 1


# ------------------------------------------------------------------------------------ latents


def test_latent_stream_determinism_ranks_and_resume():
    dm = LatentDataModule(z_dim=8, batch_size=3, steps_per_epoch=4, seed=1)
    first = list(dm.train_dataloader())
    assert len(first) == 4 and all(b.shape == (3, 8) for b in first)
    second = list(dm.train_dataloader())  # the stream continues, it does not repeat
    assert not torch.equal(first[0], second[0]) and dm.state_dict() == {"position": 8}
    fresh = list(LatentDataModule(z_dim=8, batch_size=3, steps_per_epoch=4, seed=1).train_dataloader())
    assert all(torch.equal(a, b) for a, b in zip(first, fresh))
    other_seed = next(iter(LatentDataModule(z_dim=8, batch_size=3, steps_per_epoch=4, seed=2).train_dataloader()))
    assert not torch.equal(other_seed, first[0])
    rank1 = next(iter(LatentStream(8, 3, 4, seed=1, rank=1)))
    assert not torch.equal(rank1, first[0])
    assert not torch.equal(next(iter(LatentStream(8, 3, 4, seed=0, rank=1))),
                           next(iter(LatentStream(8, 3, 4, seed=1, rank=0))))
    resumed = LatentDataModule(z_dim=8, batch_size=3, steps_per_epoch=4, seed=1)
    resumed.load_state_dict({"position": 5})
    assert torch.equal(next(iter(resumed.train_dataloader())), second[1])
    big = latent_batch(0, 0, 0, 256, 64)
    assert abs(big.mean()) < 0.03 and abs(big.std() - 1) < 0.03
    assert len(list(dm.val_dataloader())) == 1


def test_dummy_eval_loader_and_trainer_loops(tmp_path):
    import pytorch_lightning as pl

    class Probe(pl.LightningModule):
        def __init__(self, seed=123, batch_size=99):  # clashes with the datamodule's values on purpose
            super().__init__()
            self.save_hyperparameters()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.shapes, self.val_calls = [], 0

        def training_step(self, batch, i):
            self.shapes.append(tuple(batch.shape))
            return (self.w * batch.mean()).sum()

        def validation_step(self, batch, i):
            self.val_calls += 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    assert len(list(dummy_eval_loader())) == 1
    probe = Probe()
    logger = pl.loggers.CSVLogger(tmp_path)  # logging hparams must not clash with the datamodule's
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=tmp_path, val_check_interval=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(probe, datamodule=ToyDataModule(resolution=16, num_images=32, batch_size=4))
    assert probe.shapes == [(4, 3, 16, 16)] * 3 and probe.val_calls == 1
