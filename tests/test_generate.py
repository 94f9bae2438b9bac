"""``python generate.py`` (launch/generate.py): fixed-seed images equal the generator's own rendering, seed
lists parse, grids, interpolations, saved codes, Domain Expansion domains and generator pairs give the
expected files, and a bad file is one error line with exit status 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from launch.generate import GenerateError, main, parse_seeds
from lightning_modules.base import MEAN_W_SAMPLES, MEAN_W_SEED
from metrics.features import quantize
from models import checkpoints
from models.expansion import ExpansionBasis
from models.sampler import seeded_normal
from models.stylegan2 import Generator

ROOT = Path(__file__).resolve().parents[1]
SIZE, DIM = 16, 32
CHANNELS = {4: 32, 8: 32, 16: 16}


def tiny_generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    g = Generator(SIZE, style_dim=DIM, n_mlp=2, channels=CHANNELS).eval()
    with torch.no_grad():  # a visible output at initialization, and noise that matters
        for p in g.to_rgbs.parameters():
            p.mul_(2)
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.5)
    return g


def as_array(images: torch.Tensor) -> np.ndarray:
    return quantize(images.clamp(-1, 1)).permute(0, 2, 3, 1).numpy()


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("generate")
    g, g2 = tiny_generator(0), tiny_generator(1)
    avg = g.style(torch.randn(64, DIM, generator=torch.Generator().manual_seed(5))).mean(0, keepdim=True).detach()
    basis = torch.linalg.qr(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(3)))[0]
    table = {"basis": basis, "dims": [DIM - 1, DIM - 2], "distances": [30.0, -30.0], "w_mean": avg[0].clone(),
             "names": ["sketch", "pixar"]}
    out = {"g": g, "g2": g2, "avg": avg, "table": table,
           "pt": checkpoints.save(tmp / "g.pt", g_ema=g, latent_avg=avg),
           "noavg": checkpoints.save(tmp / "noavg.pt", g_ema=g),
           "pair": checkpoints.save(tmp / "g2.pt", g_ema=g2),
           "expanded": checkpoints.save(tmp / "expanded.pt", g_ema=g, latent_avg=avg, expansion=table)}
    ckpt = tmp / "last.ckpt"
    torch.save({"state_dict": {f"g_ema.{k}": v for k, v in g.state_dict().items()},
                "pytorch-lightning_version": "2.6.6"}, ckpt)
    out["ckpt"] = ckpt
    return out


@torch.no_grad()
def own_rendering(g: Generator, seeds: list[int], psi: float, center: torch.Tensor | None) -> np.ndarray:
    z = seeded_normal(seeds, 0, DIM)
    return as_array(g([z], truncation=psi, truncation_latent=center, noise_mode="const")[0])


def test_seed_lists_parse():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds("5") == [5] and parse_seeds(" 2 , 0-1 ") == [2, 0, 1]
    for bad in ("a", "3-1", "", "-1", "1-x"):
        with pytest.raises(GenerateError):
            parse_seeds(bad)


def test_seed_latent_is_numpy_randomstate_of_the_seed():
    assert np.allclose(seeded_normal([7], 0, DIM)[0].numpy(), np.random.RandomState(7).randn(DIM), atol=1e-6)


def test_seed_pngs_equal_the_generators_own_truncated_rendering(files, tmp_path: Path):
    assert main(["--network", str(files["pt"]), "--seeds", "0-2,9", "--trunc", "0.7", "--outdir", str(tmp_path)]) == 0
    expected = own_rendering(files["g"], [0, 1, 2, 9], 0.7, files["avg"])
    for i, seed in enumerate([0, 1, 2, 9]):
        got = png(tmp_path / f"seed{seed:04d}.png")
        assert got.shape == (SIZE, SIZE, 3)
        assert np.array_equal(got, expected[i]), seed
    assert len(list(tmp_path.glob("*.png"))) == 4


def test_without_latent_avg_truncation_uses_the_mean_of_4096_fixed_z(files, tmp_path: Path):
    assert main(["--network", str(files["noavg"]), "--seeds", "3", "--trunc", "0.5", "--outdir", str(tmp_path)]) == 0
    g = files["g"]
    with torch.no_grad():
        z = torch.randn(MEAN_W_SAMPLES, DIM, generator=torch.Generator().manual_seed(MEAN_W_SEED))
        center = g.style(z).mean(0, keepdim=True)
    assert np.array_equal(png(tmp_path / "seed0003.png"), own_rendering(g, [3], 0.5, center)[0])


def test_noise_modes_random_is_reproducible_and_none_differs(files, tmp_path: Path):
    runs = {}
    for name, mode in (("a", "random"), ("b", "random"), ("c", "none"), ("d", "const")):
        assert main(["--network", str(files["pt"]), "--seeds", "1", "--noise-mode", mode,
                     "--outdir", str(tmp_path / name)]) == 0
        runs[name] = png(tmp_path / name / "seed0001.png")
    assert np.array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["d"]) and not np.array_equal(runs["c"], runs["d"])
    with torch.no_grad():
        none = as_array(files["g"]([seeded_normal([1], 0, DIM)], noise_mode="none")[0])[0]
    assert np.array_equal(runs["c"], none)


def test_lightning_checkpoint_renders_like_the_exported_file(files, tmp_path: Path):
    assert main(["--network", str(files["ckpt"]), "--seeds", "0-1", "--outdir", str(tmp_path)]) == 0
    expected = own_rendering(files["g"], [0, 1], 1.0, None)
    assert np.array_equal(png(tmp_path / "seed0001.png"), expected[1])


def test_grid_only_and_grid_besides(files, tmp_path: Path):
    assert main(["--network", str(files["pt"]), "--seeds", "0-4", "--grid-only", "--outdir", str(tmp_path / "a")]) == 0
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["grid.png"]
    assert png(tmp_path / "a" / "grid.png").shape == (2 * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2, 3)  # 3 per row
    assert main(["--network", str(files["pt"]), "--seeds", "0-3", "--grid", "--nrow", "4",
                 "--outdir", str(tmp_path / "b")]) == 0
    assert len(list((tmp_path / "b").glob("seed*.png"))) == 4
    assert png(tmp_path / "b" / "grid.png").shape == (SIZE + 4, 4 * (SIZE + 2) + 2, 3)


def test_interpolation_strip_and_gif_start_and_end_at_the_seeds(files, tmp_path: Path):
    assert main(["--network", str(files["pt"]), "--seeds", "0-2", "--trunc", "0.8", "--interpolate", "5",
                 "--outdir", str(tmp_path)]) == 0
    strip = png(tmp_path / "interpolation.png")
    assert strip.shape == (2 * SIZE, 5 * SIZE, 3)
    assert np.array_equal(strip[:SIZE, :SIZE], png(tmp_path / "seed0000.png"))
    assert np.array_equal(strip[:SIZE, 4 * SIZE:], png(tmp_path / "seed0001.png"))
    assert np.array_equal(strip[SIZE:, 4 * SIZE:], png(tmp_path / "seed0002.png"))
    gif = Image.open(tmp_path / "interpolation.gif")
    assert gif.n_frames == 9 and gif.size == (SIZE, SIZE)


@pytest.mark.parametrize("layout", ["w", "wplus", "batched_w", "npz"])
def test_projected_w_renders_the_saved_codes(files, tmp_path: Path, layout: str):
    g = files["g"]
    with torch.no_grad():
        w = g.style(torch.randn(2, DIM, generator=torch.Generator().manual_seed(11)))
    wplus = w[:, None].repeat(1, g.n_latent, 1)
    wplus[1, 3:] = w[0]  # a genuine W+ code: rows differ
    if layout == "w":
        path, codes = tmp_path / "c.pt", wplus[:1]
        torch.save(w[0], path)
    elif layout == "wplus":
        path, codes = tmp_path / "c.pt", wplus[1:]
        torch.save(wplus[1], path)
    elif layout == "batched_w":
        path, codes = tmp_path / "c.pt", w[:, None].repeat(1, g.n_latent, 1)
        torch.save(w, path)
    else:
        path, codes = tmp_path / "c.npz", wplus
        np.savez(path, w=wplus.numpy())
    assert main(["--network", str(files["pt"]), "--projected-w", str(path), "--outdir", str(tmp_path / "o")]) == 0
    with torch.no_grad():
        expected = as_array(g.synthesis(codes, noise_mode="const"))
    for i in range(codes.shape[0]):
        assert np.array_equal(png(tmp_path / "o" / f"proj{i:04d}.png"), expected[i])
    assert not list((tmp_path / "o").glob("seed*.png"))


def test_projected_w_of_the_wrong_width_is_an_error(files, tmp_path: Path, capsys):
    torch.save(torch.zeros(DIM + 1), tmp_path / "bad.pt")
    assert main(["--network", str(files["pt"]), "--projected-w", str(tmp_path / "bad.pt"),
                 "--outdir", str(tmp_path / "o")]) == 2
    assert "style_dim is 32" in capsys.readouterr().err


def test_domains_of_an_expanded_generator(files, tmp_path: Path, capsys):
    g, basis = files["g"], ExpansionBasis.from_state(files["table"])
    assert main(["--network", str(files["expanded"]), "--seeds", "0-1", "--trunc", "0.7", "--domain", "all",
                 "--grid", "--outdir", str(tmp_path / "all")]) == 0
    row = png(tmp_path / "all" / "seed0001.png")
    assert row.shape == (SIZE, 3 * SIZE, 3)
    assert png(tmp_path / "all" / "grid.png").shape == (2 * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2, 3)
    with torch.no_grad():
        w = g.style(seeded_normal([0, 1], 0, DIM))
        w = files["avg"] + 0.7 * (w - files["avg"])
        wplus = w[:, None].repeat(1, g.n_latent, 1)
        base = as_array(g.synthesis(basis.base(wplus), noise_mode="const"))
        pixar = as_array(g.synthesis(basis.edit(wplus, 1), noise_mode="const"))
    assert np.array_equal(row[:, :SIZE], base[1]) and np.array_equal(row[:, 2 * SIZE:], pixar[1])
    assert not np.array_equal(row[:, SIZE:2 * SIZE], row[:, :SIZE])
    assert main(["--network", str(files["expanded"]), "--seeds", "0-1", "--trunc", "0.7", "--domain", "pixar",
                 "--outdir", str(tmp_path / "one")]) == 0
    assert np.array_equal(png(tmp_path / "one" / "seed0000.png"), pixar[0])
    assert main(["--network", str(files["expanded"]), "--domain", "anime", "--outdir", str(tmp_path / "x")]) == 2
    assert "sketch, pixar" in capsys.readouterr().err
    assert main(["--network", str(files["pt"]), "--domain", "base", "--outdir", str(tmp_path / "x")]) == 2
    assert "not an expanded generator" in capsys.readouterr().err


def test_pair_with_renders_the_same_seeds_through_both(files, tmp_path: Path):
    assert main(["--network", str(files["pt"]), "--pair-with", str(files["pair"]), "--seeds", "4",
                 "--outdir", str(tmp_path)]) == 0
    row = png(tmp_path / "seed0004.png")
    assert row.shape == (SIZE, 2 * SIZE, 3)
    assert np.array_equal(row[:, :SIZE], own_rendering(files["g"], [4], 1.0, None)[0])
    assert np.array_equal(row[:, SIZE:], own_rendering(files["g2"], [4], 1.0, None)[0])


def test_bad_arguments_are_one_error_line(files, tmp_path: Path, capsys):
    assert main(["--network", str(tmp_path / "missing.pt"), "--outdir", str(tmp_path)]) == 2
    assert main(["--network", str(files["pt"]), "--seeds", "x", "--outdir", str(tmp_path)]) == 2
    assert main(["--network", str(files["pt"]), "--interpolate", "1", "--outdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    with pytest.raises(SystemExit) as exit_:
        main(["--network", str(files["pt"]), "--outdir", str(tmp_path), "--noise-mode", "loud"])
    assert exit_.value.code == 2


def test_a_bad_file_exits_2_without_traceback(tmp_path: Path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all" * 10)
    proc = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--network", str(tmp_path / "bad.pt"),
                           "--outdir", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.pt" in lines[0]


# ------------------------------------------------------------------------------------------ DualStyleGAN
# (the --style selectors themselves: tests/test_dualstylegan_inference.py)
def test_dualstylegan_flags_need_style_and_style_needs_a_dualstylegan_file(files, tmp_path: Path, capsys):
    for extra in (["--preserve-color"], ["--weights", "full"], ["--trunc-center", "zero"], ["--weight-sweep", "3"]):
        assert main(["--network", str(files["pt"]), *extra, "--outdir", str(tmp_path)]) == 2
        assert "need --style" in capsys.readouterr().err
    assert main(["--network", str(files["pt"]), "--style", "0", "--outdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a DualStyleGAN" in err[0]
