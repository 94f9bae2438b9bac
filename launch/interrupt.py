"""SIGTERM / SIGINT / SIGUSR1 during training: checkpoint at the end of the current batch, then stop cleanly.

README, "Where outputs go". The handler only records the signal; at the end of the batch every rank agrees
(any rank that got a signal stops all), ``checkpoints/last.ckpt`` and ``checkpoints/interrupted.ckpt`` are
written and the Trainer is asked to stop. The module's export at the end of ``fit`` then goes to
``<name>.interrupted<suffix>`` (``generator.interrupted.pt``), so a partial model never replaces the
product of a finished run. The previous handlers come back after the first signal, so a
second Ctrl-C interrupts at once (Lightning's KeyboardInterrupt path), and after training.

SIGUSR1 is SLURM's requeue signal (``sbatch --signal=USR1@120``; docs/cluster.md): under SLURM the job is
requeued (``scontrol requeue``) once the checkpoint is written, and the requeued job resumes it with
``ckpt_path=auto``.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from launch.checkpointing import INTERRUPTED, LAST, CheckpointWriter

log = logging.getLogger(__name__)


def interrupted_name(name: str) -> str:
    """``generator.pt`` -> ``generator.interrupted.pt``: where an interrupted run exports its partial product."""
    path = Path(name)
    return str(path.with_name(f"{path.stem}.interrupted{path.suffix}"))


class GracefulInterrupt(Callback):
    """Turns SIGTERM/SIGINT into "save, then stop"; ``signum`` tells the launcher what happened."""

    def __init__(self, writer: CheckpointWriter,
                 signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)) -> None:
        self.writer = writer
        self.signals = signals
        self.signum: int | None = None  # set on every rank once the run stopped because of a signal
        self._received: int | None = None
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._received = signum
        self._restore_handlers()

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._received = None
        self._install_handlers()

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", *args: Any) -> None:
        stop = self._received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop or self.signum is not None:
            return
        self.signum = self._received or signal.SIGTERM
        log.warning("received %s: saving a checkpoint and stopping", signal.Signals(self.signum).name)
        self.writer.save(trainer, [LAST, INTERRUPTED])
        trainer.should_stop = True
        if self.signum == signal.SIGUSR1 and trainer.is_global_zero:
            requeue_slurm_job()
        product = getattr(pl_module, "product_file", None)
        if isinstance(product, str):  # the export at the end of fit is a partial model: say so in its name
            pl_module.product_file = interrupted_name(product)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._restore_handlers()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._restore_handlers()


def slurm_job_id() -> str | None:
    """The SLURM job to requeue (``<array job>_<task>`` for an array task), None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def requeue_slurm_job(run: Any = subprocess.run) -> bool:
    """``scontrol requeue <job>`` when running under SLURM; whether the job was requeued."""
    job = slurm_job_id()
    if job is None:
        log.warning("SIGUSR1: not running under SLURM (no SLURM_JOB_ID), nothing to requeue")
        return False
    try:
        result = run(["scontrol", "requeue", job], check=False)
    except OSError as err:
        log.warning("could not requeue SLURM job %s: %s", job, err)
        return False
    if getattr(result, "returncode", 1) != 0:
        log.warning("scontrol requeue %s failed with status %s", job, getattr(result, "returncode", "?"))
        return False
    log.warning("requeued SLURM job %s; it resumes from the checkpoint with ckpt_path=auto", job)
    return True
