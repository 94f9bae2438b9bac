"""``train.py`` end to end: config -> objects -> run directory, loggers, callbacks -> Trainer.

DESIGN.md contract 6 and spec frameworks.md §4.4. :func:`prepare` turns a composed config into a
validated :class:`Prepared` (used by ``--dry-run`` too); :func:`execute` builds the module, datamodule,
callbacks, loggers and Trainer and runs ``mode`` (fit | validate | test). The return value is the exit
status: 0, or ``128 + signal`` when training stopped on SIGTERM/SIGINT after saving a checkpoint.
"""
from __future__ import annotations

import logging
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from launch.checkpointing import CHECKPOINT_DIR, CheckpointWriter, KimgCheckpoint, read_checkpoint_meta
from launch.config import to_container
from launch.interrupt import GracefulInterrupt
from launch.jsonl import append_jsonl
from launch.loggers import JsonlLogger, build_wandb_logger, finish_wandb
from launch.run_state import RunStateCallback
from launch.rundir import (CONFIG_FILE, ENV_RUN_DIR, prepare_run_dir, resolve_ckpt_path, resolve_run_dir,
                           run_dir_of_checkpoint)
from launch.schema import Plan, Registries, validate

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A validated run: the resolved config (plain), what it builds, its directory and checkpoint."""

    config: dict
    plan: Plan
    run_dir: Path
    ckpt_path: Path | None


def prepare(cfg: DictConfig, registries: Registries | None = None) -> Prepared:
    """Validate ``cfg`` and decide the run directory and checkpoint (nothing is created yet)."""
    config = to_container(cfg)
    plan = validate(config, registries)
    ckpt = resolve_ckpt_path(config["ckpt_path"], config["output_dir"])
    run_dir = resolve_run_dir(config["output_dir"], config["experiment"], ckpt)
    config["output_dir"] = str(run_dir)
    config["ckpt_path"] = None if ckpt is None else str(ckpt)
    return Prepared(config, plan, run_dir, ckpt)


def build_callbacks(prep: Prepared, writer: CheckpointWriter) -> tuple[list[pl.Callback], GracefulInterrupt]:
    callbacks: list[pl.Callback] = [cls(**kwargs) for _, cls, kwargs in prep.plan.callbacks]
    interrupt = GracefulInterrupt(writer)
    callbacks += [RunStateCallback(prep.config), interrupt]
    if prep.plan.trainer_kwargs.get("enable_checkpointing", True):
        checkpoint = prep.config["checkpoint"]
        callbacks.append(KimgCheckpoint(writer, every_kimg=checkpoint.get("every_kimg"),
                                        save_last=checkpoint.get("save_last", True)))
    return callbacks, interrupt


def resume_command(prep: Prepared) -> str:
    return f"python train.py {shlex.quote(str(prep.run_dir / CONFIG_FILE))} ckpt_path=last"


def execute(prep: Prepared) -> int:
    """Run ``prep``; returns the process exit status."""
    config, plan, run_dir, ckpt = prep.config, prep.plan, prep.run_dir, prep.ckpt_path
    mode = config["mode"]
    resume_id = None
    if mode == "fit" and ckpt is not None:
        meta = read_checkpoint_meta(ckpt)
        ckpt_run = run_dir_of_checkpoint(ckpt)
        same_run = ckpt_run is not None and ckpt_run.resolve() == run_dir.resolve()
        resume_id = meta.get("wandb_run_id") if same_run else None  # another run dir: a fork, new W&B run
    prepare_run_dir(run_dir, config, mode)
    log.info("run directory: %s", run_dir)
    had_env = ENV_RUN_DIR in os.environ
    os.environ[ENV_RUN_DIR] = str(run_dir)  # DDP processes re-launched by Lightning use the same directory
    try:
        pl.seed_everything(config["seed"], workers=True)
        module = plan.method_cls(**plan.model_kwargs)
        datamodule = plan.datamodule_cls(**plan.data_kwargs)
        writer = CheckpointWriter(run_dir / CHECKPOINT_DIR)
        callbacks, interrupt = build_callbacks(prep, writer)
        wandb_logger = build_wandb_logger(config["logger"]["wandb"], run_dir, run_dir.name, run_id=resume_id,
                                          job_type="train" if mode == "fit" else mode)
        trainer = pl.Trainer(**plan.trainer_kwargs, default_root_dir=str(run_dir),
                             logger=[wandb_logger, JsonlLogger(run_dir)], callbacks=callbacks)
        ckpt_arg = None if ckpt is None else str(ckpt)
        if mode == "fit":
            if ckpt is not None:
                append_jsonl(run_dir, {"kind": "resume", "ckpt_path": ckpt_arg, "time": time.time()})
                log.info("resuming from %s", ckpt)
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_arg)
        elif mode == "validate":
            trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_arg)
        else:
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_arg)
    except BaseException:
        finish_wandb(exit_code=1)
        raise
    finally:
        if not had_env:
            os.environ.pop(ENV_RUN_DIR, None)
    finish_wandb(exit_code=0)
    if interrupt.signum is not None:
        log.warning("training interrupted; checkpoint saved to %s. Resume with:\n  %s",
                    run_dir / CHECKPOINT_DIR / "last.ckpt", resume_command(prep))
        return 128 + int(interrupt.signum)
    log.info("done; outputs in %s", run_dir)
    return 0
