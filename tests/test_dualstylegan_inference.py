"""DualStyleGAN inference through ``python generate.py --style`` (launch/generate.py) and the structure-weight
sweep table (launch/style_sweep.py): every selector renders exactly the model's own output for fixed seeds,
weights and exemplars; preserve-color replaces exactly the colour rows; ``--trunc-center zero`` scales W+ by
psi; a content photo goes through the encoder's code; mistakes are one error line."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from launch import style_sweep
from launch.generate import main
from metrics.features import quantize
from models import checkpoints
from models import dualstylegan as dsg
from models.encoders import build_encoder, save_encoder
from models.sampler import seeded_normal
from models.style_codes import StyleCodes
from models.stylegan2 import Generator

SIZE, DIM = 16, 16
ARCH = dict(size=SIZE, style_dim=DIM, n_mlp=2, channels={4: 16, 8: 16, 16: 16})
NAMES = ["anna.png", "bob.png", "cleo.png"]


def as_array(images: torch.Tensor) -> np.ndarray:
    return quantize(images.clamp(-1, 1)).permute(0, 2, 3, 1).numpy()


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dsg_inference")
    torch.manual_seed(0)
    g = Generator(**ARCH).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.3)
        for p in g.to_rgbs.parameters():
            p.mul_(2)
    model = dsg.DualStyleGAN(g, res_index=2).eval()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # make the extrinsic path matter
        for block in model.modres_blocks():
            block.conv1[0].weight.mul_(30)
            block.conv2[0].weight.mul_(30)
        for layer in model.colour_transforms():
            layer.weight.add_(0.3 * math.sqrt(DIM) * torch.randn(layer.weight.shape, generator=gen))
    n = model.n_latent
    table = StyleCodes(NAMES, torch.randn(3, n, DIM, generator=gen), 2 * torch.randn(3, n, DIM, generator=gen))
    codes = table.save(tmp / "codes.pt")
    bad_codes = StyleCodes(NAMES, torch.randn(3, n, DIM + 1), torch.randn(3, n, DIM + 1)).save(tmp / "bad.pt")
    avg = g.style(torch.randn(64, DIM, generator=gen)).mean(0, keepdim=True).detach()
    export = dsg.save(tmp / "generator.pt", model, latent_avg=avg,
                      style_codes={"path": str(codes), "names": list(NAMES)})
    official = tmp / "official.pt"
    torch.save({"g_ema": dsg.official_state_dict(model)}, official)
    plain = checkpoints.save(tmp / "plain.pt", g_ema=g)
    torch.manual_seed(1)
    encoder = build_encoder(resolution=SIZE, n_latent=n, style_dim=DIM, stem_channels=8, max_channels=16)
    enc = save_encoder(tmp / "encoder.pt", encoder.eval())
    styles = tmp / "styles"
    styles.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):
        arr = rng.integers(0, 255, (24, 24, 3)).astype(np.uint8)
        arr[..., i] = 230
        Image.fromarray(arr).save(styles / name)
    photo = tmp / "me.png"
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3)).astype(np.uint8)).save(photo)
    return dict(model=model, table=table, codes=codes, bad_codes=bad_codes, avg=avg, export=export,
                official=official, plain=plain, encoder=encoder.eval(), enc=enc, styles=styles, photo=photo)


@torch.no_grad()
def own(model, seeds, e, weights, psi=1.0, center=None) -> np.ndarray:
    z = seeded_normal(seeds, 0, DIM)
    return as_array(model([z], e.expand(len(seeds), -1, -1), truncation=psi, truncation_latent=center,
                          interp_weights=weights, noise_mode="const")[0])


def inference_w(model):
    return dsg.inference_weights(model.n_latent, model.res_index)


def test_style_by_name_renders_the_models_own_output(files, tmp_path):
    model, table = files["model"], files["table"]
    assert main(["--network", str(files["export"]), "--style", "bob.png", "--seeds", "0-1,5", "--trunc", "0.7",
                 "--outdir", str(tmp_path)]) == 0  # codes: the path the export records
    expected = own(model, [0, 1, 5], table.extrinsic[1:2], inference_w(model), 0.7, files["avg"])
    for i, seed in enumerate([0, 1, 5]):
        assert np.array_equal(png(tmp_path / f"seed{seed:04d}.png"), expected[i]), seed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0000.png", "seed0001.png", "seed0005.png"]


def test_style_all_index_stem_presets_and_weight_lists(files, tmp_path):
    model, table = files["model"], files["table"]
    assert main(["--network", str(files["export"]), "--style", "all", "--weights", "full", "--seeds", "3",
                 "--outdir", str(tmp_path / "all")]) == 0
    row = png(tmp_path / "all" / "seed0003.png")
    assert row.shape == (SIZE, 3 * SIZE, 3)
    for k in range(3):
        assert np.array_equal(row[:, k * SIZE:(k + 1) * SIZE],
                              own(model, [3], table.extrinsic[k:k + 1], [1.0] * model.n_latent)[0]), k
    weights = [0.0, 0.3, 0.6, 0.9, 0.2, 1.0]
    assert main(["--network", str(files["export"]), "--style", "2,anna", "--seeds", "3",
                 "--weights", ",".join(map(str, weights)), "--outdir", str(tmp_path / "list")]) == 0
    row = png(tmp_path / "list" / "seed0003.png")
    assert np.array_equal(row[:, :SIZE], own(model, [3], table.extrinsic[2:3], weights)[0])
    assert np.array_equal(row[:, SIZE:], own(model, [3], table.extrinsic[0:1], weights)[0])
    for preset in ("structure", "color"):
        assert main(["--network", str(files["export"]), "--style", "cleo", "--seeds", "3", "--weights", preset,
                     "--outdir", str(tmp_path / preset)]) == 0
        expected = own(model, [3], table.extrinsic[2:3], model.weights(preset))[0]
        assert np.array_equal(png(tmp_path / preset / "seed0003.png"), expected)
    assert not np.array_equal(png(tmp_path / "structure" / "seed0003.png"), png(tmp_path / "color" / "seed0003.png"))


def test_trunc_center_zero_scales_w_plus_by_psi(files, tmp_path):
    model, table = files["model"], files["table"]
    assert main(["--network", str(files["export"]), "--style", "0", "--seeds", "4", "--trunc", "0.5",
                 "--trunc-center", "zero", "--outdir", str(tmp_path)]) == 0
    got = png(tmp_path / "seed0004.png")
    assert np.array_equal(got, own(model, [4], table.extrinsic[:1], inference_w(model), 0.5, 0.0)[0])
    with torch.no_grad():
        w = model.generator.style(seeded_normal([4], 0, DIM))
        scaled = (0.5 * w)[:, None].repeat(1, model.n_latent, 1)
        direct = as_array(model(scaled, table.extrinsic[:1], input_is_latent=True, interp_weights=inference_w(model),
                                noise_mode="const")[0])[0]
    assert np.abs(got.astype(int) - direct.astype(int)).max() <= 1  # psi * w, up to rounding order
    assert not np.array_equal(got, own(model, [4], table.extrinsic[:1], inference_w(model), 0.5, files["avg"])[0])


def test_preserve_color_replaces_exactly_the_colour_rows(files, tmp_path):
    model, table = files["model"], files["table"]
    assert main(["--network", str(files["export"]), "--style", "bob", "--seeds", "2", "--trunc", "0.8",
                 "--preserve-color", "--weights", "full", "--outdir", str(tmp_path)]) == 0
    with torch.no_grad():
        w = model.generator.style(seeded_normal([2], 0, DIM))
        content = w[:, None].repeat(1, model.n_latent, 1)
        e = table.extrinsic[1:2].clone()
        split = model.res_index + 1
        e[:, split:] = content[:, split:]  # the untruncated content rows
        assert torch.equal(e[:, :split], table.extrinsic[1:2, :split])
        latent = files["avg"] + 0.8 * (content - files["avg"])
        expected = as_array(model(latent, e, input_is_latent=True, interp_weights=[1.0] * model.n_latent,
                                  noise_mode="const")[0])[0]
    got = png(tmp_path / "seed0002.png")
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, own(model, [2], table.extrinsic[1:2], [1.0] * model.n_latent, 0.8,
                                       files["avg"])[0])


def test_a_content_photo_goes_through_the_encoder(files, tmp_path):
    model, table = files["model"], files["table"]
    assert main(["--network", str(files["export"]), "--style", "anna", "--content", str(files["photo"]),
                 "--encoder", str(files["enc"]), "--outdir", str(tmp_path)]) == 0
    image = torch.from_numpy(png(files["photo"]).copy()).permute(2, 0, 1).float()[None] / 127.5 - 1.0
    with torch.no_grad():
        code = files["encoder"](image)
        expected = as_array(model(code, table.extrinsic[:1], input_is_latent=True, interp_weights=inference_w(model),
                                  noise_mode="const")[0])[0]
    assert np.array_equal(png(tmp_path / "me.png"), expected)


def test_grid_and_weight_sweep(files, tmp_path):
    model, table = files["model"], files["table"]
    assert main(["--network", str(files["export"]), "--style", "anna,bob", "--seeds", "0-2", "--grid",
                 "--weight-sweep", "3", "--outdir", str(tmp_path)]) == 0
    grid = png(tmp_path / "grid.png")
    assert grid.shape == (3 * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2, 3)  # contents x (intrinsic, 2 exemplars)
    with torch.no_grad():
        intrinsic = as_array(model.generator([seeded_normal([1], 0, DIM)], noise_mode="const")[0])[0]
    cell = grid[SIZE + 4: 2 * SIZE + 4, 2: SIZE + 2]  # row 1, column 0
    assert np.array_equal(cell, intrinsic)
    assert np.array_equal(grid[2:SIZE + 2, SIZE + 4:2 * SIZE + 4], png(tmp_path / "seed0000.png")[:, :SIZE])
    sweep = png(tmp_path / "sweep.png")
    assert sweep.shape == (6 * SIZE, 3 * SIZE, 3)  # (content, exemplar) rows x 3 frames
    colour = inference_w(model)[model.res_index + 1:]
    split = model.res_index + 1
    for t, frame in ((0.0, 0), (0.5, 1), (1.0, 2)):
        w = [t] * split + colour
        expected = own(model, [2], table.extrinsic[1:2], w)[0]  # content 2, exemplar bob: row 5
        assert np.array_equal(sweep[5 * SIZE:, frame * SIZE:(frame + 1) * SIZE], expected), t


def test_an_official_file_renders_like_our_export_with_codes(files, tmp_path, capsys):
    assert main(["--network", str(files["official"]), "--style", "bob", "--seeds", "1",
                 "--outdir", str(tmp_path / "x")]) == 2
    assert "records no code table" in capsys.readouterr().err
    assert main(["--network", str(files["official"]), "--codes", str(files["codes"]), "--style", "bob",
                 "--seeds", "1", "--outdir", str(tmp_path / "off")]) == 0
    assert main(["--network", str(files["export"]), "--style", "bob", "--seeds", "1",
                 "--outdir", str(tmp_path / "ours")]) == 0
    assert np.array_equal(png(tmp_path / "off" / "seed0001.png"), own(files["model"], [1],
                          files["table"].extrinsic[1:2], inference_w(files["model"]))[0])


def test_mistakes_are_one_error_line(files, tmp_path, capsys):
    out = ["--outdir", str(tmp_path / "o")]
    cases = [
        (["--network", str(files["export"]), "--style", "dora"], "anna.png, bob.png, cleo.png"),
        (["--network", str(files["export"]), "--style", "7"], "out of range"),
        (["--network", str(files["export"]), "--style", "0", "--codes", str(files["bad_codes"])], "[6, 16]"),
        (["--network", str(files["plain"]), "--style", "0", "--codes", str(files["codes"])], "not a DualStyleGAN"),
        (["--network", str(files["export"]), "--style", "0", "--weights", "1,2"], "needs 6"),
        (["--network", str(files["export"]), "--style", "0", "--content", str(files["photo"])], "--encoder"),
        (["--network", str(files["plain"]), "--preserve-color"], "need --style"),
    ]
    for argv, needle in cases:
        assert main(argv + out) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (argv, err)


def test_sweep_table_rows_and_csv(files, tmp_path, capsys):
    argv = ["--network", str(files["export"]), "--styles", "anna,cleo", "--structure", "0,1", "--n", "3",
            "--styles-dir", str(files["styles"]), "--identity", "random", "--vgg", "random",
            "--resolution", "16", "--lpips-net", "alex", "--lpips-trunk", "random", "--lpips-resolution", "64",
            "--quiet",
            "--csv", str(tmp_path / "sweep.csv"), "--device", "cpu"]
    assert style_sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert "identity" in printed and "style_gram" in printed and "lpips_content" in printed
    with open(tmp_path / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["style"], float(r["structure"])) for r in rows] == [("anna.png", 0.0), ("anna.png", 1.0),
                                                                   ("cleo.png", 0.0), ("cleo.png", 1.0)]
    assert all(-1 <= float(r["identity"]) <= 1 and float(r["lpips_content"]) >= 0 and float(r["style_gram"]) >= 0
               for r in rows)
    # the structure weight matters (ModRes x30): the LPIPS to the content changes between s = 0 and 1
    assert float(rows[0]["lpips_content"]) != float(rows[1]["lpips_content"])
    again = style_sweep.sweep(style_sweep.build_parser().parse_args(argv))  # deterministic, CSV = the table
    assert [r["style"] for r in again] == [r["style"] for r in rows]
    for a, b in zip(again, rows):
        assert all(a[k] == pytest.approx(float(b[k]), rel=1e-9) for k in a if k != "style")


def test_random_styles_from_the_sampling_network(files, tmp_path, capsys):
    from models.style_sampler import StyleSampler, train_style_sampler

    model, table = files["model"], files["table"]
    sampler, _ = train_style_sampler(table.extrinsic, model.res_index, epochs=2, seed=0)
    path = sampler.save(tmp_path / "n.pt")
    assert main(["--network", str(files["export"]), "--style", "random:2", "--sampler", str(path), "--seeds", "0",
                 "--sampler-seed", "3", "--outdir", str(tmp_path / "out")]) == 0
    codes = StyleSampler.load(path).sample(2, torch.Generator().manual_seed(3))
    row = png(tmp_path / "out" / "seed0000.png")
    for k in range(2):
        expected = own(model, [0], codes[k:k + 1], inference_w(model))[0]
        assert np.array_equal(row[:, k * SIZE:(k + 1) * SIZE], expected), k
    assert main(["--network", str(files["export"]), "--style", "random:2", "--outdir", str(tmp_path / "x")]) == 2
    assert "needs --sampler" in capsys.readouterr().err
    assert main(["--network", str(files["export"]), "--style", "bob.png", "--sampler", str(path),
                 "--outdir", str(tmp_path / "x")]) == 2
    assert "--sampler goes with --style random" in capsys.readouterr().err
