"""Runs launched by train.py: run-dir layout, metrics.jsonl, kimg checkpoints, resume, signals, modes.

docs/architecture.md, "Run directories" (a resume keeps the W&B id and the RNG). The module here is a
dummy with manual optimization and a ``kimg`` counter; it records the global RNG draws of every step so
a resumed run can be compared with an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml

from launch.config import compose
from launch.jsonl import append_jsonl, read_jsonl
from launch.run import execute, prepare
from launch.schema import Registries

ROOT = Path(__file__).resolve().parents[1]


class DummyGAN(pl.LightningModule):
    """One linear layer, SGD, ``images_per_step`` images per step; appends [torch, numpy, python] draws."""

    def __init__(self, images_per_step: int = 500, record: str | None = None, sleep: float = 0.0):
        super().__init__()
        self.automatic_optimization = False
        self.net = torch.nn.Linear(4, 1)
        self.images_per_step, self.record, self.sleep = images_per_step, record, sleep
        self.nimg = 0

    @property
    def kimg(self) -> float:
        return self.nimg / 1000

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        opt = self.optimizers()
        loss = self.net(batch).pow(2).mean()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.nimg += self.images_per_step
        self.log("loss", loss)
        if self.record:
            with open(self.record, "a") as f:
                f.write(json.dumps([torch.rand(()).item(), float(np.random.rand()), random.random()]) + "\n")
        time.sleep(self.sleep)

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("test_value", self.net.weight.sum())

    validation_step = test_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nimg"] = self.nimg

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nimg = checkpoint["nimg"]


class DummyData(pl.LightningDataModule):
    """Identical batches: a resumed epoch restarts its (non-resumable) loader without changing the data."""

    def __init__(self, n: int = 64, batch_size: int = 4):
        super().__init__()
        self.data = torch.randn(1, 4, generator=torch.Generator().manual_seed(0)).repeat(n, 1)
        self.batch_size = batch_size

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.data[:4], batch_size=4)

    test_dataloader = val_dataloader


REGISTRIES = Registries(methods={"dummy": DummyGAN}, datamodules={"dummy": DummyData}, callbacks={})
CONFIG = """
    method: dummy
    data: {name: dummy}
    trainer: {accelerator: cpu, enable_progress_bar: false, enable_model_summary: false, log_every_n_steps: 1,
              limit_val_batches: 0}
    logger: {wandb: {mode: disabled}}
"""


def launch(tmp_path: Path, *overrides: str) -> int:
    config = tmp_path / "dummy.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    return execute(prepare(compose(config, overrides), REGISTRIES))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_run_dir_layout_metrics_jsonl_and_kimg_checkpoints(tmp_path: Path):
    run = tmp_path / "run"
    assert launch(tmp_path, f"output_dir={run}", "trainer.max_steps=6", "checkpoint.every_kimg=1") == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["output_dir"] == str(run) and saved["experiment"] == "dummy" and saved["method"] == "dummy"
    assert (run / "samples").is_dir()
    # 0.5 kimg per step: kimg 1, 2, 3 are crossed after steps 2, 4, 6
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["kimg000001.ckpt", "kimg000002.ckpt", "kimg000003.ckpt", "last.ckpt"]
    first, last = load(run / "checkpoints/kimg000001.ckpt"), load(run / "checkpoints/last.ckpt")
    assert (first["global_step"], first["nimg"]) == (2, 1000) and (last["global_step"], last["nimg"]) == (6, 3000)
    meta = last["styleshift"]
    assert meta["config"]["output_dir"] == str(run) and len(meta["rng_states"]) == 1
    lines = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "scalars"]
    assert [r["step"] for r in lines] == [0, 1, 2, 3, 4, 5]
    for r in lines:  # kimg is the module's counter at the time of logging (after the step)
        assert r["kimg"] == pytest.approx((r["step"] + 1) * 0.5) and np.isfinite(r["metrics"]["loss"])


def test_resume_continues_wandb_run_rng_and_weights(tmp_path: Path):
    def draws(path: Path) -> list:
        return [json.loads(line) for line in path.read_text().splitlines()]

    full, part = tmp_path / "full", tmp_path / "part"
    wandb = "logger.wandb.mode=offline"
    assert launch(tmp_path, f"output_dir={full}", "trainer.max_steps=6", f"model.record={tmp_path}/full.txt",
                  "logger.wandb.mode=disabled") == 0
    assert launch(tmp_path, f"output_dir={part}", "trainer.max_steps=3", f"model.record={tmp_path}/part.txt",
                  wandb) == 0
    first_id = load(part / "checkpoints/last.ckpt")["styleshift"]["wandb_run_id"]
    assert launch(tmp_path, f"output_dir={part}", "ckpt_path=last", "trainer.max_steps=6",
                  f"model.record={tmp_path}/part.txt", wandb) == 0
    # the resumed steps draw the same global random numbers as the uninterrupted run
    assert draws(tmp_path / "part.txt") == draws(tmp_path / "full.txt")
    a, b = load(full / "checkpoints/last.ckpt"), load(part / "checkpoints/last.ckpt")
    assert b["global_step"] == 6 and all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # one W&B run, continued: both launches wrote into the run id stored in the checkpoint
    assert first_id and b["styleshift"]["wandb_run_id"] == first_id
    # one offline dir per launch: offline-run-<date>_<time>-<id>, with "-1" appended when both share a second
    runs = sorted(p.name for p in (part / "wandb").glob("offline-run-*"))
    assert runs and all(re.fullmatch(rf"offline-run-\d+_\d+-{re.escape(first_id)}(-\d+)?", n) for n in runs)
    assert [r["kind"] for r in read_jsonl(part / "metrics.jsonl")].count("resume") == 1
    # max_steps changed on resume: the first launch's config is kept beside the new one
    (backup,) = part.glob("config.2*.yaml")
    assert yaml.safe_load(backup.read_text())["trainer"]["max_steps"] == 3
    assert yaml.safe_load((part / "config.yaml").read_text())["trainer"]["max_steps"] == 6


def test_validate_and_test_modes_use_the_checkpoints_run(tmp_path: Path):
    run = tmp_path / "run"
    assert launch(tmp_path, f"output_dir={run}", "trainer.max_steps=2") == 0
    config_before = (run / "config.yaml").read_text()
    for mode in ("validate", "test"):
        assert launch(tmp_path, f"mode={mode}", f"ckpt_path={run}/checkpoints/last.ckpt",
                      "trainer.limit_val_batches=1") == 0
        written = yaml.safe_load((run / f"config.{mode}.yaml").read_text())
        assert written["mode"] == mode and written["output_dir"] == str(run)
    assert (run / "config.yaml").read_text() == config_before
    assert launch(tmp_path, "mode=test", f"output_dir={tmp_path}/eval") == 0  # no checkpoint needed


def test_append_jsonl_is_line_atomic_and_json_safe(tmp_path: Path):
    record = {"metric": "fid5k/ema", "value": torch.tensor(1.5), "n": np.int64(3), "bad": float("nan"),
              "path": tmp_path, "nested": {"x": [np.float32(2.0), float("-inf")]}}
    assert append_jsonl(None, record) is None
    path = append_jsonl(tmp_path, record)
    append_jsonl(tmp_path, {"kind": "b"})
    assert read_jsonl(path) == [{"metric": "fid5k/ema", "value": 1.5, "n": 3, "bad": "NaN", "path": str(tmp_path),
                                 "nested": {"x": [2.0, "-Infinity"]}}, {"kind": "b"}]
    with pytest.raises(TypeError, match=r"record.obj: cannot write a object"):
        append_jsonl(tmp_path, {"obj": object()})


def test_sigterm_saves_checkpoint_and_exits_with_resume_hint(tmp_path: Path):
    config = tmp_path / "slow.yaml"
    config.write_text(textwrap.dedent(CONFIG).replace("method: dummy", "method: tests.test_train_cli:DummyGAN")
                      .replace("name: dummy", "name: tests.test_train_cli:DummyData"))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), str(config), f"output_dir={run}",
                             "model.sleep=0.2"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run / "metrics.jsonl").exists():  # training has started
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and f"python train.py {run}/config.yaml ckpt_path=last" in err
    last, interrupted = run / "checkpoints/last.ckpt", run / "checkpoints/interrupted.ckpt"
    assert last.read_bytes() == interrupted.read_bytes()
    ckpt = load(last)
    assert ckpt["global_step"] >= 1 and ckpt["nimg"] == 500 * ckpt["global_step"]


@pytest.mark.skipif(not (ROOT / "configs/demo.yaml").is_file(), reason="configs/demo.yaml not written yet")
def test_demo_config_trains_end_to_end(tmp_path: Path):
    """``make demo`` in miniature: the real registries, StyleGAN2 on the toy data, a few optimizer steps."""
    import train
    run = tmp_path / "demo"
    assert train.main([str(ROOT / "configs/demo.yaml"), f"output_dir={run}", "trainer.max_steps=4",
                       "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
                       "logger.wandb.mode=disabled", "callbacks.metrics=null", "data.num_images=64",
                       "data.batch_size=4", "callbacks.samples.n=4", "callbacks.samples.nrow=2"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["experiment"] == "demo"
    assert load(run / "checkpoints/last.ckpt")["styleshift"]["config"]["method"] == "stylegan2"
    scalars = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "scalars"]
    assert scalars and all(r["kimg"] > 0 for r in scalars)
    assert any(key.startswith("loss/") for key in scalars[-1]["metrics"])
    assert (run / "generator.pt").is_file()
