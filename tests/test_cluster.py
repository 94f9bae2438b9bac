"""Cluster launches (docs/cluster.md): the run directory every process of a torchrun / srun launch derives
alike, ``ckpt_path=auto`` for requeued jobs, SIGUSR1 -> checkpoint + ``scontrol requeue``, and a real
2-process ``torchrun`` (gloo, CPU) whose ranks end with identical parameters in one run directory."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import launch.interrupt as interrupt
from launch.config import compose
from launch.errors import ConfigError
from launch.jsonl import read_jsonl
from launch.run import execute, prepare
from launch.rundir import launch_id, resolve_run_dir
from tests.helpers_launch import QUIET_TRAINER, dummy_gan, tiny_stylegan2

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_stylegan2(total_kimg=0.016, trainer=QUIET_TRAINER + ", limit_val_batches: 0", wandb="offline")
DUMMY = dummy_gan(QUIET_TRAINER + ", limit_val_batches: 0, max_steps: 4")
LAUNCH_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID",
               "WORLD_SIZE", "STYLESHIFT_RUN_DIR")


def state_digest(state: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ParamDigest(pl.Callback):
    """Each rank writes the digest of its module's state at the end of training to ``digest.<rank>``."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = Path(trainer.default_root_dir) / f"digest.{trainer.global_rank}"
        path.write_text(f"{trainer.world_size} {state_digest(pl_module.state_dict())}")


class SignalAt(pl.Callback):
    def __init__(self, batch: int, signum: int = int(signal.SIGUSR1)) -> None:
        self.batch, self.signum, self.seen = batch, signum, 0

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.seen += 1
        if self.seen == self.batch:
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_processes_of_one_launch_derive_the_same_run_dir(clean_env: pytest.MonkeyPatch):
    assert launch_id() is None
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="without a shared launch id"):
        resolve_run_dir(None, "exp", None)
    clean_env.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default --rdzv-id: not an id
    assert launch_id() is None
    clean_env.setenv("TORCHELASTIC_RUN_ID", "a1b2/c3")
    assert resolve_run_dir(None, "exp", None) == Path("runs/exp_torchrun-a1b2_c3")
    clean_env.setenv("SLURM_JOB_ID", "4242")  # SLURM first: a requeued job keeps its id
    assert resolve_run_dir(None, "exp", None) == Path("runs/exp_slurm4242")
    clean_env.setenv("SLURM_ARRAY_JOB_ID", "7")
    clean_env.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert launch_id() == "slurm7_3"
    assert resolve_run_dir("mine", "exp", None) == Path("mine")  # an explicit output_dir wins
    clean_env.delenv("WORLD_SIZE")
    assert resolve_run_dir(None, "exp", None, new=False) == Path("runs/exp_slurm7_3")  # ckpt_path=auto, 1 task
    assert resolve_run_dir(None, "exp", None).name.endswith("_exp")  # a plain single process: timestamped


def test_requeue_calls_scontrol_only_under_slurm(clean_env: pytest.MonkeyPatch):
    calls = []

    def fake(cmd, check):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    assert interrupt.requeue_slurm_job(fake) is False and calls == []
    clean_env.setenv("SLURM_JOB_ID", "99")
    assert interrupt.requeue_slurm_job(fake) is True and calls == [["scontrol", "requeue", "99"]]


def test_sigusr1_saves_requeues_and_ckpt_path_auto_resumes(tmp_path: Path, clean_env: pytest.MonkeyPatch):
    exp = tmp_path / "dummy.yaml"
    exp.write_text(textwrap.dedent(DUMMY))
    run = tmp_path / "run"
    requeued = []
    clean_env.setattr(interrupt, "requeue_slurm_job", lambda: requeued.append(True))

    def launch(*extra: str) -> int:
        return execute(prepare(compose(exp, [f"output_dir={run}", "ckpt_path=auto", *extra]), preflight=True))

    stop = "callbacks={tests.test_cluster:SignalAt: {batch: 2}}"
    assert launch(stop) == 128 + signal.SIGUSR1  # fresh start (nothing to resume), stopped by SIGUSR1
    assert requeued == [True] and (run / "checkpoints/last.ckpt").is_file()
    assert launch() == 0  # the requeued job's command: resumes last.ckpt
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["kind"] for r in records].count("resume") == 1
    assert [r["step"] for r in records if r["kind"] == "scalars"] == [0, 1, 2, 3]


def test_ckpt_path_auto_without_a_directory_is_a_config_error(tmp_path: Path, clean_env: pytest.MonkeyPatch):
    exp = tmp_path / "dummy.yaml"
    exp.write_text(textwrap.dedent(DUMMY))
    with pytest.raises(ConfigError, match="ckpt_path=auto needs the run directory"):
        prepare(compose(exp, ["ckpt_path=auto"]), preflight=True)


def test_torchrun_two_cpu_processes_share_one_run_dir_and_end_identical(tmp_path: Path):
    exp = tmp_path / "tiny.yaml"
    exp.write_text(textwrap.dedent(TINY))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py"), str(exp), "trainer.devices=2",
           "callbacks={tests.test_cluster:ParamDigest: {}}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("tiny_torchrun-"), runs
    run = runs[0]
    digests = [(run / f"digest.{rank}").read_text() for rank in (0, 1)]
    assert digests[0] == digests[1] and digests[0].startswith("2 ")  # 2 processes, identical parameters
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert digests[0].split()[1] == state_digest(ckpt["state_dict"])
    assert ckpt["method_state"]["nimg"] == 16  # 4 iterations x 2 images x 2 ranks
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # one W&B run, written by rank 0
