"""Pre-emption resume is exact: a run SIGTERMed anywhere in an epoch and resumed with ``ckpt_path=last``
ends with the same weights, optimizer states and ``metrics.jsonl`` scalars as a run never interrupted.

The interruption is a real SIGTERM, sent by the run to itself from a callback at a chosen batch (so the
position is exact), handled by the launcher's ``GracefulInterrupt`` (checkpoint, exit status 143). Tiny
networks and a few iterations keep every case to seconds.
"""
from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from launch.config import compose
from launch.jsonl import read_jsonl
from launch.run import execute, prepare

ROOT = Path(__file__).resolve().parents[1]
SIGNALLER = "tests.test_resume_exact:SigtermAt"


class SigtermAt(pl.Callback):
    """Sends SIGTERM to this process at the end of training batch ``batch`` (counted from 1, this launch)."""

    def __init__(self, batch: int) -> None:
        self.batch, self.seen = batch, 0

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.seen += 1
        if self.seen == self.batch and trainer.is_global_zero:
            os.kill(os.getpid(), signal.SIGTERM)


COMMON = """
    seed: 3
    trainer: {accelerator: cpu, enable_progress_bar: false, enable_model_summary: false, log_every_n_steps: 1,
              limit_val_batches: 0}
    logger: {wandb: {mode: disabled}}
"""
TINY_G = "{resolution: 16, style_dim: 32, n_mlp: 2, channels: {4: 32, 8: 32, 16: 16}}"
CONFIGS = {
    # 8 toy images, batch 2: 4 batches per epoch; 10 iterations = 2.5 epochs
    "stylegan2": f"""
        method: stylegan2
        model: {{generator: {TINY_G}, gan: {{r1_interval: 2, pl_interval: 3, pl_weight: 1.0, mixing_prob: 0.5}},
                 total_kimg: 0.02}}
        data: {{name: toy, resolution: 16, num_images: 8, batch_size: 2}}
    """,
    "mixdl": f"""
        method: mixdl
        model: {{generator: {TINY_G}, total_kimg: 0.02, patch_resolutions: [16, 8, 4]}}
        data: {{name: toy, resolution: 16, num_images: 16, fewshot: 6, batch_size: 2}}
    """,
    "nada": """
        extends: nada/toy.yaml
        model: {auto_layer_iters: 1, auto_layer_k: 2}
        data: {steps_per_epoch: 3}
        trainer: {max_steps: 7}
        callbacks: {samples: null, metrics: null}
    """,
}


def run(tmp_path: Path, name: str, out: Path, *overrides: str) -> int:
    config = tmp_path / f"{name}.yaml"
    config.write_text(textwrap.dedent(CONFIGS[name]) + textwrap.dedent(COMMON))
    return execute(prepare(compose(config, [f"output_dir={out}", *overrides])))


def scalars(run_dir: Path) -> list:
    return [(r["step"], r["kimg"], r["metrics"]) for r in read_jsonl(run_dir / "metrics.jsonl")
            if r["kind"] == "scalars"]


def assert_same_state(a: Path, b: Path) -> None:
    ca = torch.load(a / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    cb = torch.load(b / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ca["global_step"] == cb["global_step"] and ca["method_state"] == cb["method_state"]
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for key, value in ca["state_dict"].items():
        assert torch.equal(value, cb["state_dict"][key]), key
    assert len(ca["optimizer_states"]) == len(cb["optimizer_states"]) > 0
    for oa, ob in zip(ca["optimizer_states"], cb["optimizer_states"]):
        assert oa["state"].keys() == ob["state"].keys() and oa["state"]
        for index, entry in oa["state"].items():
            for field, value in entry.items():
                other = ob["state"][index][field]
                assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (index, field)
    assert scalars(a) == scalars(b)


def interrupted_and_resumed(tmp_path: Path, name: str, at: int, *overrides: str) -> Path:
    part = tmp_path / f"part{at}"
    status = run(tmp_path, name, part, f"callbacks={{{SIGNALLER}: {{batch: {at}}}}}", *overrides)
    assert status == 128 + signal.SIGTERM
    assert (part / "checkpoints/interrupted.ckpt").is_file()
    assert run(tmp_path, name, part, "ckpt_path=last", *overrides) == 0
    return part


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stylegan2_resume_is_exact_wherever_the_sigterm_falls(tmp_path: Path, num_workers: int):
    workers = f"data.num_workers={num_workers}"
    full = tmp_path / "full"
    assert run(tmp_path, "stylegan2", full, workers) == 0
    # inside the first epoch, at an epoch's last batch, in the middle of the third epoch
    for at in ((1, 4, 7) if num_workers == 0 else (3, 6)):
        assert_same_state(full, interrupted_and_resumed(tmp_path, "stylegan2", at, workers))


def test_mixdl_resume_is_exact_mid_epoch(tmp_path: Path):
    full = tmp_path / "full"
    assert run(tmp_path, "mixdl", full) == 0
    for at in (2, 5):  # 3 batches per epoch: inside the first and the second epoch
        assert_same_state(full, interrupted_and_resumed(tmp_path, "mixdl", at))


def test_nada_resume_is_exact_mid_epoch(tmp_path: Path):
    full = tmp_path / "full"
    assert run(tmp_path, "nada", full) == 0
    for at in (2, 4):  # 3 latent batches per epoch
        assert_same_state(full, interrupted_and_resumed(tmp_path, "nada", at))


def test_ddp_resume_is_exact_with_per_rank_shards(tmp_path: Path):
    """Two CPU processes (gloo, fork): each rank's shard of the shuffle resumes where it stopped."""
    ddp = ("trainer.devices=2", "trainer.strategy=ddp_fork_find_unused_parameters_true", "data.num_images=8")
    full = tmp_path / "full"
    assert run(tmp_path, "stylegan2", full, *ddp) == 0
    for at in (1, 2, 3):  # 2 batches per rank and epoch: inside, at the end of and after the first epoch
        part = tmp_path / f"part{at}"
        assert run(tmp_path, "stylegan2", part, f"callbacks={{{SIGNALLER}: {{batch: {at}}}}}", *ddp) == 143
        assert (part / "checkpoints/interrupted.ckpt").is_file()
        assert run(tmp_path, "stylegan2", part, "ckpt_path=last", *ddp) == 0
        assert_same_state(full, part)
