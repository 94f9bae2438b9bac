"""Sweeps (launch/sweep.py, ``train.py --multirun``): which overrides are axes, the cartesian product of the
points, one run directory per point, validation of every point before the first run, the summary table,
and a second launch that skips finished points and resumes unfinished ones."""
from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest

import train
from launch.errors import ConfigError
from launch.jsonl import read_jsonl
from launch.sweep import STATUS_FILE, SUMMARY_FILE, parse_sweep, point_name, short_names, split_top_level
from tests.helpers_launch import QUIET_TRAINER, dummy_gan

ROOT = Path(__file__).resolve().parents[1]
DUMMY = dummy_gan(QUIET_TRAINER + ", limit_val_batches: 0, max_steps: 2")


def test_only_top_level_commas_split():
    assert split_top_level("1,10") == ["1", "10"]
    assert split_top_level("[1,2]") == ["[1,2]"]
    assert split_top_level("{4: 32, 8: 16}") == ["{4: 32, 8: 16}"]
    assert split_top_level("'a,b'") == ["'a,b'"]
    assert split_top_level("[1,2],[3,4]") == ["[1,2]", "[3,4]"]
    spec = parse_sweep(["model.gan.r1_gamma=1,10", "seed=0,1", "data.tags=[a,b]", "trainer.max_steps=3",
                        "~callbacks.metrics", "model.channels={4: 32, 8: 16}"])
    assert spec.axes == [("model.gan.r1_gamma", ["1", "10"]), ("seed", ["0", "1"])]
    assert spec.fixed == ["data.tags=[a,b]", "trainer.max_steps=3", "~callbacks.metrics",
                          "model.channels={4: 32, 8: 16}"]
    points = spec.points()  # the cartesian product, first axis slowest
    assert [[v for _, v in p] for p in points] == [["1", "0"], ["1", "1"], ["10", "0"], ["10", "1"]]
    names = short_names([k for k, _ in spec.axes])
    assert point_name(points[1], names) == "r1_gamma=1,seed=1"
    assert short_names(["model.lr", "data.lr", "seed"]) == {"model.lr": "model.lr", "data.lr": "data.lr",
                                                            "seed": "seed"}


@pytest.mark.parametrize("overrides, message", [
    (["seed=0,1", "ckpt_path=last"], "drop ckpt_path"),
    (["output_dir=a,b"], "'output_dir' cannot be swept"),
    (["seed=0,1", "seed=2,3"], "given twice"),
    (["seed=0,"], "empty value"),
    (["seed=0"], "at least one override with several values"),
])
def test_bad_sweeps_are_config_errors(overrides: list[str], message: str):
    with pytest.raises(ConfigError, match=message):
        parse_sweep(overrides)


@pytest.fixture
def exp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the points' processes import tests.test_train_cli
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "dummy.yaml"
    path.write_text(textwrap.dedent(DUMMY))
    return path


def summary(parent: Path) -> list[dict]:
    with open(parent / SUMMARY_FILE, newline="") as fh:
        return list(csv.DictReader(fh))


def test_two_point_sweep_then_rerun_skips_and_resumes(exp: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    parent = tmp_path / "sweep"
    args = [str(exp), "model.images_per_step=100,200", f"output_dir={parent}", "--multirun"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    runs = sorted(p.name for p in parent.iterdir() if p.is_dir())
    assert runs == ["images_per_step=100", "images_per_step=200"]
    rows = summary(parent)
    assert [(r["run"], r["status"], r["images_per_step"]) for r in rows] == [
        ("images_per_step=100", "finished", "100"), ("images_per_step=200", "finished", "200")]
    assert [float(r["kimg"]) for r in rows] == [0.2, 0.4]  # 2 steps of 100 / 200 images: the last kimg of each
    last_loss = [read_jsonl(parent / r["run"] / "metrics.jsonl")[-1]["metrics"]["loss"] for r in rows]
    assert [float(r["loss"]) for r in rows] == pytest.approx(last_loss, rel=1e-5)
    assert "| run | status | images_per_step |" in out and "| images_per_step=200 | finished | 200 |" in out
    for run in runs:
        assert json.loads((parent / run / STATUS_FILE).read_text())["status"] == "finished"
        config = (parent / run / "config.yaml").read_text()
        assert f"output_dir: {parent / run}" in config and f"name: sweep/{run}" in config

    before = {run: (parent / run / "metrics.jsonl").read_bytes() for run in runs}
    assert train.main(args) == 0  # everything finished: nothing runs again
    assert {run: (parent / run / "metrics.jsonl").read_bytes() for run in runs} == before
    assert [r["status"] for r in summary(parent)] == ["finished", "finished"]

    (parent / runs[1] / STATUS_FILE).unlink()  # as if that run had been stopped before it finished
    assert train.main(args) == 0
    assert (parent / runs[0] / "metrics.jsonl").read_bytes() == before[runs[0]]
    kinds = [r["kind"] for r in read_jsonl(parent / runs[1] / "metrics.jsonl")]
    assert kinds.count("resume") == 1  # resumed from checkpoints/last.ckpt, not started over
    assert [r["status"] for r in summary(parent)] == ["finished", "finished"]


def test_every_point_is_validated_before_the_first_run(exp: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    parent = tmp_path / "bad"
    status = train.main([str(exp), "model.images_per_step=100,many", f"output_dir={parent}", "--multirun"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "invalid sweep" in err and "[images_per_step=many] 'model.images_per_step' must be an integer" in err
    assert not (parent / "images_per_step=100").exists()  # the valid point did not start either


def test_a_finished_point_with_other_settings_is_not_mixed(exp: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture):
    parent = tmp_path / "sweep"
    assert train.main([str(exp), "seed=0,1", f"output_dir={parent}", "--multirun"]) == 0
    capsys.readouterr()
    status = train.main([str(exp), "seed=0,1", "trainer.max_steps=3", f"output_dir={parent}", "--multirun"])
    err = capsys.readouterr().err
    assert status == 2 and "holds a finished run with other settings (trainer.max_steps)" in err
