"""``python -m launch.ckpt_tools info|convert`` on a run's own Lightning checkpoints: what they hold (with
kimg and the method's counters), and the generator of an intermediate state exported like the run's end."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from launch import ckpt_tools
from launch.config import compose
from launch.run import execute, prepare
from models import checkpoints
from tests.helpers_launch import tiny_stylegan2

CONFIG = tiny_stylegan2(trainer="accelerator: cpu, enable_progress_bar: false, enable_model_summary: false",
                        checkpoint="{every_kimg: 0.004}")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt_tools")
    (tmp / "tiny.yaml").write_text(textwrap.dedent(CONFIG))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert execute(prepare(compose(tmp / "tiny.yaml", [f"output_dir={tmp}/run"]))) == 0
    finally:
        torch.set_num_threads(threads)
    return tmp / "run"


def test_info_names_the_run_kimg_counters_and_networks(run: Path, capsys: pytest.CaptureFixture):
    assert ckpt_tools.main(["info", str(run / "checkpoints/kimg000000.004.ckpt")]) == 0
    out = capsys.readouterr().out
    for line in ("method:                 stylegan2", "kimg:                   0.004", "iteration:              2",
                 "  nimg:                 4", "  g_ema:                ", "  style_dim:            32",
                 "  channels:             {4: 32, 8: 32, 16: 16}"):
        assert line in out, (line, out)
    info = ckpt_tools.summary(run / "checkpoints/last.ckpt")
    assert info["kimg"] == pytest.approx(0.008) and info["optimizers"] == 2
    assert set(info["networks"]) == {"g_ema", "g", "d"}


def test_convert_exports_what_the_run_exports_and_never_overwrites_silently(run: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture):
    out = tmp_path / "gen.pt"
    assert ckpt_tools.main(["convert", str(run / "checkpoints/last.ckpt"), str(out)]) == 0
    converted, exported = torch.load(out, weights_only=True), torch.load(run / "generator.pt", weights_only=True)
    for net in ("g_ema", "g", "d"):
        assert converted[net].keys() == exported[net].keys()
        assert all(torch.equal(v, exported[net][k]) for k, v in converted[net].items()), net
    assert torch.equal(converted["latent_avg"], exported["latent_avg"]) and converted["kimg"] == exported["kimg"]
    assert checkpoints.load(out).g_ema is not None  # readable by the project's loader
    before = out.read_bytes()
    assert ckpt_tools.main(["convert", str(run / "checkpoints/kimg000000.004.ckpt"), str(out)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == before
    assert ckpt_tools.main(["convert", str(run / "checkpoints/kimg000000.004.ckpt"), str(out), "--force"]) == 0
    assert torch.load(out, weights_only=True)["kimg"] == pytest.approx(0.004)


def test_files_that_are_not_run_checkpoints_are_refused(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    assert ckpt_tools.main(["info", str(run / "generator.pt")]) == 1
    assert "is not a Lightning checkpoint" in capsys.readouterr().err
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    assert ckpt_tools.main(["convert", str(tmp_path / "junk.ckpt"), str(tmp_path / "x.pt")]) == 1
    assert "not a readable Lightning checkpoint" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_checkpoint_cli_points_at_run_checkpoint_tools_and_does_not_overwrite(tmp_path, capsys):
    from pathlib import Path

    from models.checkpoints import main as checkpoints_main

    fixture = Path(__file__).parent / "fixtures" / "rosinality_tiny.pt"
    assert checkpoints_main(["info", str(fixture)]) == 0
    printed = capsys.readouterr().out
    assert "extra.args:" in printed and "n_mlp: 2" in printed  # extras with their values
    assert checkpoints_main(["info", str(tmp_path / "last.ckpt")]) == 2
    assert "python -m launch.ckpt_tools info" in capsys.readouterr().err
    out = tmp_path / "g.pt"
    assert checkpoints_main(["convert", str(fixture), str(out)]) == 0
    before = out.read_bytes()
    assert checkpoints_main(["convert", str(fixture), str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == before
    assert checkpoints_main(["convert", str(fixture), str(out), "--force"]) == 0
