"""``train.py`` end to end: config -> objects -> run directory, loggers, callbacks -> Trainer.

docs/architecture.md, "Run directories". :func:`prepare` turns a composed config into a
validated :class:`Prepared` (with ``preflight=True``, as ``train.py`` and ``--dry-run`` call it, the
machine is checked too: :mod:`launch.preflight`); :func:`execute` builds the module and datamodule, then
takes the run directory (:class:`launch.rundir.RunDirectory`: lock, refusal of a used directory), writes
the config, builds callbacks, loggers and Trainer and runs ``mode`` (fit | validate | test). Nothing is
written before the checks pass and the objects are built. The return value is the exit status: 0, or
``128 + signal`` when training stopped on SIGTERM/SIGINT after saving a checkpoint.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from launch.checkpointing import (CHECKPOINT_DIR, INTERRUPTED, CheckpointWriter, KimgCheckpoint,
                                  read_checkpoint_meta)
from launch.config import to_container
from launch.errors import ConfigError, RunError
from launch.interrupt import GracefulInterrupt, interrupted_name
from launch.jsonl import append_jsonl
from launch.loggers import JsonlLogger, build_file_loggers, build_wandb_logger, finish_wandb
from launch.preflight import choose_strategy, is_leader, preflight
from launch.provenance import SECTION as PROVENANCE, provenance
from launch.run_state import RunStateCallback
from launch.rundir import (CONFIG_FILE, ENV_RUN_DIR, RunDirectory, lock_problem, prepare_run_dir, resolve_ckpt_path,
                           resolve_run_dir, run_dir_of_checkpoint, used_dir_problem)
from launch.schema import Plan, Registries, validate

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Prepared:
    """A validated run: the resolved config (plain), what it builds, its directory and checkpoint.

    ``reuse_dir``: a fresh fit may take over a used run directory (``--reuse-dir``); ``checked``: the
    pre-flight checks passed.
    """

    config: dict
    plan: Plan
    run_dir: Path
    ckpt_path: Path | None
    reuse_dir: bool = False
    checked: bool = False


def prepare(cfg: DictConfig, registries: Registries | None = None, *, preflight: bool = False,
            reuse_dir: bool = False) -> Prepared:
    """Validate ``cfg`` and decide the run directory and checkpoint (nothing is created).

    With ``preflight`` the machine is checked as well (:func:`preflight_problems`) and every problem,
    of the config and of the machine, is raised in one :class:`ConfigError`; without it the first failing
    stage raises. With several devices and no ``trainer.strategy``, the strategy every method needs is
    filled in (:func:`launch.preflight.choose_strategy`).
    """
    config = to_container(cfg)
    problems: list[str] = []
    plan: Plan | None = None
    try:
        plan = validate(config, registries)
    except ConfigError as err:
        if not preflight:
            raise
        problems += err.problems
    invalid = bool(problems)
    ckpt = run_dir = None
    output_dir = config.get("output_dir")
    if config.get("ckpt_path") == "auto" and output_dir is None:
        try:  # auto needs the directory first: the derived one of a torchrun/SLURM launch
            output_dir = str(resolve_run_dir(None, str(config.get("experiment")), None, new=False))
        except ConfigError as err:
            if not preflight:
                raise
            problems += err.problems
    try:
        ckpt = resolve_ckpt_path(config.get("ckpt_path"), output_dir)
    except ConfigError as err:
        if not preflight:
            raise
        problems += err.problems
    try:
        run_dir = resolve_run_dir(output_dir, str(config.get("experiment")), ckpt)
    except ConfigError as err:
        if not preflight:
            raise
        problems += err.problems
    if config.get("ckpt_path") == "auto" and ckpt is None:
        reuse_dir = True  # nothing to resume yet: start (over); files of a launch without a checkpoint move aside
    if plan is not None:
        strategy = choose_strategy(plan.trainer_kwargs)
        if strategy is not None:
            config["trainer"]["strategy"] = strategy
            log.info("trainer.devices=%s: using trainer.strategy=%s (GAN phases leave parameters without "
                     "gradients); set trainer.strategy to choose another", plan.trainer_kwargs.get("devices"),
                     strategy)
    if preflight:
        resumes = ckpt is not None or config.get("ckpt_path") not in (None, "auto")
        problems += preflight_problems(config, plan, run_dir, ckpt, reuse_dir, resumes)
        if problems:
            raise ConfigError.of(list(dict.fromkeys(problems)), "invalid config" if invalid else "cannot start the run")
    assert plan is not None and run_dir is not None
    config["output_dir"] = str(run_dir)
    config["ckpt_path"] = None if ckpt is None else str(ckpt)
    return Prepared(config, plan, run_dir, ckpt, reuse_dir=reuse_dir, checked=preflight)


def preflight_problems(config: dict, plan: Plan | None, run_dir: Path | None, ckpt: Path | None,
                       reuse_dir: bool, resumes: bool | None = None) -> list[str]:
    """The machine's problems with a config: files, assets, devices, and (on rank zero) the run directory."""
    problems = preflight(config, plan, ckpt)
    resumes = ckpt is not None if resumes is None else resumes
    if run_dir is not None and is_leader():
        for problem in (lock_problem(run_dir),
                        used_dir_problem(run_dir, str(config.get("mode")), resumes, reuse_dir)):
            if problem:
                problems.append(problem)
    return problems


def build_callbacks(prep: Prepared, writer: CheckpointWriter) -> tuple[list[pl.Callback], GracefulInterrupt]:
    from pytorch_lightning.callbacks import ProgressBar

    from callbacks.progress import KimgProgressBar

    callbacks: list[pl.Callback] = [cls(**kwargs) for _, cls, kwargs in prep.plan.callbacks]
    if prep.plan.trainer_kwargs.get("enable_progress_bar", True) and not any(
            isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(KimgProgressBar())  # kimg of total_kimg, ETA, losses (callbacks.progress sets options)
    interrupt = GracefulInterrupt(writer)
    callbacks += [RunStateCallback(prep.config), interrupt]
    if prep.plan.trainer_kwargs.get("enable_checkpointing", True):
        checkpoint = prep.config["checkpoint"]
        callbacks.append(KimgCheckpoint(writer, every_kimg=checkpoint.get("every_kimg"),
                                        save_last=checkpoint.get("save_last", True)))
    return callbacks, interrupt


def cluster_plugins(trainer_kwargs: dict) -> dict:
    """The Trainer's arguments, with Lightning's SLURM auto-requeue turned off under ``srun`` (unless
    ``trainer.plugins`` is set): Lightning would save a checkpoint from inside the signal handler, in the
    middle of a step. :class:`launch.interrupt.GracefulInterrupt` takes the requeue signal instead, saves
    ``last.ckpt`` at the end of the batch and requeues the job (docs/cluster.md)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if trainer_kwargs.get("plugins") is not None or TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
        return dict(trainer_kwargs)
    return {**trainer_kwargs, "plugins": [SLURMEnvironment(auto_requeue=False)]}


def resume_command(prep: Prepared) -> str:
    return f"python train.py {shlex.quote(str(prep.run_dir / CONFIG_FILE))} ckpt_path=last"


def _raised_in_project(err: BaseException) -> bool:
    """Whether ``err`` was raised by a ``raise`` in this repository's code (not in an installed package)."""
    tb: TracebackType | None = err.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    filename = Path(last.tb_frame.f_code.co_filename).resolve()
    return ROOT in filename.parents and "site-packages" not in filename.parts


def build(cls: type, kwargs: dict, section: str) -> Any:
    """``cls(**kwargs)``; a ``ValueError`` raised by the project's argument checks (a generator file that
    disagrees with the architecture keys, an unreadable checkpoint) becomes a :class:`ConfigError`."""
    try:
        return cls(**kwargs)
    except ValueError as err:
        if isinstance(err, ConfigError) or not _raised_in_project(err):
            raise
        raise ConfigError(f"'{section}': {cls.__name__} cannot be built: {err}") from err


def setup_data(datamodule: Any, mode: str) -> None:
    """Set up one of the project's datamodules before the run directory exists, so that a data folder with
    nothing usable in it stops the launch with its message (:class:`RunError`) and leaves nothing behind."""
    from datamodules.base import GANDataModule

    if not isinstance(datamodule, GANDataModule):
        return  # Lightning sets up other datamodules itself
    try:
        datamodule.setup("fit" if mode == "fit" else mode)
    except (ValueError, OSError) as err:
        if not _raised_in_project(err):
            raise
        raise RunError(f"data: {err}") from err


TRAINING_IMAGES_FILE = "fewshot_files.txt"


def record_training_images(run_dir: Path, datamodule: Any, mode: str) -> Path | None:
    """A fit on a chosen subset of a dataset (``data.fewshot``, ``data.manifest`` or ``data.max_images``) writes
    the names of its training images to ``<run>/fewshot_files.txt`` (rank zero), a manifest that
    ``data.manifest=`` reads back: the run's few-shot set is reproducible from its directory."""
    from datamodules.base import GANDataModule

    if mode != "fit" or not is_leader() or not isinstance(datamodule, GANDataModule):
        return None
    if all(getattr(datamodule, key, None) is None for key in ("fewshot", "manifest", "max_images")):
        return None
    if not datamodule.manifest_names:
        return None
    path = datamodule.save_manifest(run_dir / TRAINING_IMAGES_FILE)
    log.info("training images (%d) listed in %s", len(datamodule.manifest_names), path)
    return path


def share_exports(run_dir: Path, module: Any) -> None:
    """Make the module's exported files as readable as any other output (``0o666`` minus the umask)."""
    names = {getattr(module, "product_file", None), getattr(type(module), "product_file", None)}
    umask = os.umask(0)
    os.umask(umask)
    for name in names - {None}:
        for candidate in (name, interrupted_name(name)):
            path = run_dir / candidate
            if path.is_file():
                os.chmod(path, 0o666 & ~umask)


def execute(prep: Prepared) -> int:
    """Run ``prep``; returns the process exit status."""
    if not prep.checked:
        problems = preflight_problems(prep.config, prep.plan, prep.run_dir, prep.ckpt_path, prep.reuse_dir)
        if problems:
            raise ConfigError.of(problems, "cannot start the run")
    config, plan, run_dir, ckpt = prep.config, prep.plan, prep.run_dir, prep.ckpt_path
    config = {**config, PROVENANCE: provenance()}
    prep = Prepared(config, plan, run_dir, ckpt, prep.reuse_dir, True)
    mode = config["mode"]
    resume_id = None
    if mode == "fit" and ckpt is not None:
        meta = read_checkpoint_meta(ckpt)
        ckpt_run = run_dir_of_checkpoint(ckpt)
        same_run = ckpt_run is not None and ckpt_run.resolve() == run_dir.resolve()
        resume_id = meta.get("wandb_run_id") if same_run else None  # another run dir: a fork, new W&B run
    had_env = ENV_RUN_DIR in os.environ
    started = time.time()
    try:
        pl.seed_everything(config["seed"], workers=True)
        module = build(plan.method_cls, plan.model_kwargs, "model")
        datamodule = build(plan.datamodule_cls, plan.data_kwargs, "data")
        setup_data(datamodule, mode)
        with RunDirectory(run_dir, mode, resumes=ckpt is not None, reuse_dir=prep.reuse_dir, leader=is_leader()):
            try:
                prepare_run_dir(run_dir, config, mode)
                record_training_images(run_dir, datamodule, mode)
                log.info("run directory: %s", run_dir)
                os.environ[ENV_RUN_DIR] = str(run_dir)  # DDP processes re-launched by Lightning use the same directory
                writer = CheckpointWriter(run_dir / CHECKPOINT_DIR)
                callbacks, interrupt = build_callbacks(prep, writer)
                wandb_logger = build_wandb_logger(config["logger"]["wandb"], run_dir, run_dir.name, run_id=resume_id,
                                                  job_type="train" if mode == "fit" else mode)
                trainer = pl.Trainer(**cluster_plugins(plan.trainer_kwargs), default_root_dir=str(run_dir),
                                     logger=[wandb_logger, JsonlLogger(run_dir),
                                             *build_file_loggers(config["logger"], run_dir)],
                                     callbacks=callbacks)
                ckpt_arg = None if ckpt is None else str(ckpt)
                if mode == "fit":
                    if ckpt is not None:
                        append_jsonl(run_dir, {"kind": "resume", "ckpt_path": ckpt_arg, "time": time.time()})
                        log.info("resuming from %s", ckpt)
                    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_arg)
                    share_exports(run_dir, module)
                elif mode == "validate":
                    trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_arg)
                else:
                    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_arg)
            except BaseException:
                finish_wandb(exit_code=1)  # before a failed launch's directory is removed
                raise
    except BaseException:
        finish_wandb(exit_code=1)
        raise
    finally:
        if not had_env:
            os.environ.pop(ENV_RUN_DIR, None)
    finish_wandb(exit_code=0)
    signum = interrupt.signum
    interrupted = run_dir / CHECKPOINT_DIR / INTERRUPTED
    if signum is None and mode == "fit" and interrupted.is_file() and interrupted.stat().st_mtime >= started:
        signum = signal.SIGTERM  # stopped in a process of a spawn/fork DDP launch, whose callbacks stay there
    if signum is not None:
        log.warning("training interrupted; checkpoint saved to %s. Resume with:\n  %s",
                    run_dir / CHECKPOINT_DIR / "last.ckpt", resume_command(prep))
        return 128 + int(signum)
    log.info("done; outputs in %s", run_dir)
    return 0


__all__ = ["Prepared", "prepare", "preflight_problems", "execute", "build", "setup_data", "share_exports",
           "resume_command"]
