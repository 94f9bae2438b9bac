"""The training progress bar (callbacks/progress.py): position, total, rate and ETA in kimg against a known
counter and clock (no timing assertions), the losses it shows, how the launcher installs it, and W&B not
capturing the console."""
from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from callbacks.progress import KimgProgressBar, format_duration, format_progress, kimg_progress, pick_losses
from launch.checkpointing import CheckpointWriter
from launch.config import compose
from launch.loggers import build_wandb_logger
from launch.run import build_callbacks, execute, prepare
from tests.helpers_launch import tiny_stylegan2

TINY = tiny_stylegan2(trainer="accelerator: cpu, enable_model_summary: false, log_every_n_steps: 1",
                      checkpoint="{save_last: false}")


def test_rate_and_eta_follow_the_kimg_counter_of_this_launch():
    # resumed at 2 kimg, 8 s later at 6 kimg: 0.5 kimg/s, 10 kimg left -> 20 s
    p = kimg_progress(6.0, 16.0, start_kimg=2.0, elapsed_s=8.0)
    assert p.rate == pytest.approx(0.5) and p.eta_s == pytest.approx(20.0) and p.fraction == pytest.approx(0.375)
    assert format_progress(p) == "6.000/16 kimg, 0.5 kimg/s, ETA 0:00:20"
    done = kimg_progress(16.5, 16.0, 0.0, 10.0)
    assert done.fraction == 1.0 and done.eta_s == 0.0
    assert kimg_progress(2.0, 16.0, 2.0, 5.0).rate is None  # nothing trained yet: no rate, no ETA
    assert kimg_progress(2.0, 16.0, 2.0, 5.0).eta_s is None
    unlimited = kimg_progress(3.0, None, 1.0, 4.0)
    assert unlimited.rate == pytest.approx(0.5) and unlimited.eta_s is None and unlimited.fraction is None
    assert format_progress(unlimited) == "3.000 kimg, 0.5 kimg/s"
    assert format_duration(3723) == "1:02:03" and format_duration(90061) == "1d 01:01:01"
    assert format_duration(None) == "?"


def test_losses_shown_are_the_matching_scalars_in_pattern_order():
    metrics = {"loss/G_main": torch.tensor(1.5), "loss/D_main": 0.25, "reg/r1_penalty": 3.0, "kimg": 1.0,
               "loss/D_reg": 0.1}
    assert pick_losses(metrics, ["loss/*"], 2) == {"loss/D_main": 0.25, "loss/D_reg": pytest.approx(0.1)}
    assert list(pick_losses(metrics, ["loss/G_*", "reg/*"], 4)) == ["loss/G_main", "reg/r1_penalty"]


def test_bar_position_total_and_text(capsys: pytest.CaptureFixture):
    bar = KimgProgressBar(losses=["loss/*"], max_losses=1)
    module = SimpleNamespace(kimg=2.0, total_kimg=16.0)
    trainer = SimpleNamespace(callback_metrics={"loss/G_main": torch.tensor(0.75), "reg/x": 1.0})
    bar._train_progress_bar = bar.init_train_tqdm()
    bar._train_progress_bar.set_description("train")  # as on_train_start
    bar._counting = True
    bar._start = (module.kimg, 100.0)  # t = 100 s at 2 kimg
    module.kimg = 6.0                   # t = 108 s at 6 kimg
    bar._update(trainer, module, now=108.0)
    tqdm = bar.train_progress_bar
    assert (tqdm.n, tqdm.total) == (375, 1000)  # 6 / 16 kimg, per mille
    assert tqdm.unit == "6.000/16 kimg, 0.5 kimg/s, ETA 0:00:20, loss/G_main=0.75"
    tqdm.close()
    line = capsys.readouterr().out.strip().split("\r")[-1]
    assert line.startswith("train:  38%|")
    assert line.endswith("| 6.000/16 kimg, 0.5 kimg/s, ETA 0:00:20, loss/G_main=0.75")


def _prepared(tmp_path: Path, *overrides: str):
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent(TINY))
    return prepare(compose(tmp_path / "tiny.yaml", [f"output_dir={tmp_path}/run", *overrides]))


def test_launcher_installs_the_kimg_bar_unless_bars_are_off(tmp_path: Path):
    writer = CheckpointWriter(tmp_path / "ckpt")
    callbacks, _ = build_callbacks(_prepared(tmp_path), writer)
    assert sum(isinstance(c, KimgProgressBar) for c in callbacks) == 1
    callbacks, _ = build_callbacks(_prepared(tmp_path, "trainer.enable_progress_bar=false"), writer)
    assert not any(isinstance(c, KimgProgressBar) for c in callbacks)
    configured, _ = build_callbacks(_prepared(tmp_path, "callbacks.progress={losses: [loss/D_*], max_losses: 1}"),
                                    writer)
    (bar,) = [c for c in configured if isinstance(c, KimgProgressBar)]
    assert bar.losses == ["loss/D_*"] and bar.max_losses == 1


def test_a_fit_shows_kimg_of_total_kimg(tmp_path: Path, capsys: pytest.CaptureFixture):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert execute(_prepared(tmp_path)) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "0.008/0.008 kimg" in out and "ETA" in out and "loss/" in out
    assert "train: " in out and ": :" not in out and "|, " not in out  # one colon, no postfix comma
    assert "Epoch 0" not in out  # not Lightning's per-epoch bar


def test_wandb_does_not_capture_the_console(tmp_path: Path):
    logger = build_wandb_logger({"mode": "offline"}, tmp_path, "run")
    assert logger._wandb_init["settings"].console == "off"
