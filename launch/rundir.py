"""Where a run lives: ``output_dir`` (default ``runs/<YYYYmmdd-HHMMSS>_<experiment>``) and what it resumes.

docs/architecture.md, "Run directories": a resume continues the same run, and every DDP process
must agree on one directory: processes that Lightning re-launches inherit the directory chosen by rank 0
through ``STYLESHIFT_RUN_DIR``; processes started by an external launcher such as torchrun or srun, which
all decide at once, derive it from the id their launcher shares (:func:`launch_id`:
``runs/<experiment>_torchrun-<id>``, ``runs/<experiment>_slurm<job id>``) unless ``output_dir`` is given.
``ckpt_path=auto`` resumes ``<run dir>/checkpoints/last.ckpt`` when it exists and starts fresh otherwise (the
command of a requeued cluster job).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from launch.checkpointing import CHECKPOINT_DIR, LAST
from launch.config import timestamp, to_yaml
from launch.errors import ConfigError

log = logging.getLogger(__name__)

ENV_RUN_DIR = "STYLESHIFT_RUN_DIR"
CONFIG_FILE = "config.yaml"
SAMPLES_DIR = "samples"


def _external_multiprocess() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def launch_id() -> str | None:
    """An id every process of an external launch shares, derived from its environment (None if there is none):
    ``slurm<job id>`` (``slurm<array job>_<task>`` for an array task) under SLURM, where a requeued job keeps its
    id; ``torchrun-<rdzv id>`` under torchrun (``--standalone`` draws one per launch; a multi-node launch
    needs ``--rdzv-id``)."""
    if os.environ.get("SLURM_JOB_ID", "").strip():
        array = os.environ.get("SLURM_ARRAY_JOB_ID", "").strip()
        task = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
        return f"slurm{array}_{task}" if array and task else f"slurm{os.environ['SLURM_JOB_ID'].strip()}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "").strip()
    if run_id and run_id.lower() != "none":
        return "torchrun-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)[:40]
    return None


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | None) -> Path | None:
    """``ckpt_path`` as an existing file; ``last`` means ``<output_dir>/checkpoints/last.ckpt``; ``auto`` means
    that file when it exists, else None (a fresh start). ``output_dir`` may be the derived run directory."""
    if ckpt_path is None:
        return None
    if ckpt_path == "auto":
        if output_dir is None:
            raise ConfigError("ckpt_path=auto needs the run directory: add output_dir=runs/<run> (or launch "
                              "under torchrun/SLURM, whose run directory is derived from the launch id)")
        path = Path(output_dir) / CHECKPOINT_DIR / LAST
        return path if path.is_file() else None
    if ckpt_path == "last":
        if output_dir is None:
            raise ConfigError("ckpt_path=last needs the run directory: add output_dir=runs/<run>")
        path = Path(output_dir) / CHECKPOINT_DIR / LAST
        if not path.is_file():
            raise ConfigError(f"ckpt_path=last: no checkpoint at {path}")
        return path
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path: no such file {path}")
    return path


def run_dir_of_checkpoint(ckpt: Path) -> Path | None:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` with ``<run>/config.yaml``)."""
    run = ckpt.parent.parent  # kept relative when given relative, like the output_dir it was saved under
    return run if (run / CONFIG_FILE).is_file() else None


def resolve_run_dir(output_dir: str | None, experiment: str, ckpt: Path | None, new: bool = True) -> Path:
    """The run directory: explicit ``output_dir``, else the resumed checkpoint's run, else a new one.

    ``new=False`` (``ckpt_path=auto``): a directory that the same command finds again - the inherited one, or
    the one derived from the launch id (also for a single process) - never a new timestamped one.
    """
    if output_dir is not None:
        return Path(output_dir)
    if ckpt is not None and (run := run_dir_of_checkpoint(ckpt)) is not None:
        return run
    if os.environ.get(ENV_RUN_DIR):
        return Path(os.environ[ENV_RUN_DIR])
    if _external_multiprocess() or not new:
        # Each process decides on its own and a timestamp can differ between them: derive the name from what
        # the launcher gave every process alike.
        shared = launch_id()
        if shared is None:
            raise ConfigError("ckpt_path=auto needs the run directory: add output_dir=runs/<run>" if not new else
                              "several processes were started by an external launcher (WORLD_SIZE/SLURM_NTASKS > "
                              "1) without a shared launch id (torchrun --rdzv-id, SLURM_JOB_ID): set "
                              "output_dir=... explicitly so that they all use the same run directory")
        return Path("runs") / f"{experiment}_{shared}"
    return Path("runs") / f"{timestamp()}_{experiment}"


def _settings(config: Any) -> Any:
    """A config without ``ckpt_path``: resuming alone is not a change of settings."""
    return {k: v for k, v in config.items() if k != "ckpt_path"} if isinstance(config, dict) else config


def prepare_run_dir(run_dir: Path, config: dict, mode: str) -> None:
    """Create ``checkpoints/`` and ``samples/`` and write the resolved config (rank zero only).

    Fitting writes ``config.yaml``; an existing ``config.yaml`` with other settings (a resume with
    changed settings; ``ckpt_path`` alone does not count) is kept as ``config.<timestamp>.yaml``.
    Validation/testing write ``config.<mode>.yaml``.
    """
    from lightning_fabric.utilities.rank_zero import rank_zero_only
    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    for sub in (CHECKPOINT_DIR, SAMPLES_DIR):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    text = to_yaml(config)
    target = run_dir / (CONFIG_FILE if mode == "fit" else f"config.{mode}.yaml")
    if mode == "fit" and target.is_file() and _settings(yaml.safe_load(target.read_text())) != _settings(config):
        backup = run_dir / f"config.{timestamp()}.yaml"
        target.rename(backup)
        log.info("config changed since the last launch; previous config kept as %s", backup)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


# ------------------------------------------------------------------------------------------ ownership
LOCK_FILE = ".styleshift.lock"
OWNER_FILE = ".styleshift.owner.json"
#: names that mark a directory as holding (the start of) a run
RUN_MARKERS = (CONFIG_FILE, "metrics.jsonl", "generator.pt", "mapper.pt", "encoder.pt", "test_metrics.json")
#: what a run directory holds right after ``prepare_run_dir`` (removed again when the launch fails early)
_BOOKKEEPING = {CONFIG_FILE, LOCK_FILE, OWNER_FILE, CHECKPOINT_DIR, SAMPLES_DIR, "wandb"}


class RunDirBusy(ConfigError):
    """Another live process holds the run directory's lock."""


class RunDirUsed(ConfigError):
    """A fresh fit would write into a directory that holds an earlier run."""


def previous_run(run_dir: Path) -> list[str]:
    """What in ``run_dir`` belongs to an earlier run (empty: the directory is new, empty or unrelated)."""
    if not run_dir.is_dir():
        return []
    found = [name for name in RUN_MARKERS if (run_dir / name).exists()]
    ckpts = sorted((run_dir / CHECKPOINT_DIR).glob("*.ckpt")) if (run_dir / CHECKPOINT_DIR).is_dir() else []
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint(s) in {CHECKPOINT_DIR}/")
    return found


def used_dir_problem(run_dir: Path, mode: str, resumes: bool, reuse_dir: bool) -> str | None:
    """A fresh fit into a directory of an earlier run is refused unless it resumes or ``--reuse-dir``."""
    if mode != "fit" or resumes or reuse_dir:
        return None
    found = previous_run(run_dir)
    if not found:
        return None
    return (f"'output_dir': {run_dir} already holds a run ({', '.join(found)}); a fresh fit there would mix its "
            f"logs and overwrite its checkpoints and exports. Resume it with ckpt_path=last, choose another "
            f"output_dir, or pass --reuse-dir to start over there (the earlier files are moved to "
            f"{run_dir}/previous-<time>/)")


def read_owner(run_dir: Path) -> dict:
    try:
        owner = json.loads((run_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe_owner(owner: dict) -> str:
    if not owner:
        return "another process"
    when = owner.get("since")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "?"
    command = owner.get("command")
    return (f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (since {since}"
            + (f": {command}" if command else "") + ")")


def lock_problem(run_dir: Path) -> str | None:
    """Whether ``run_dir`` is locked by a live run right now (probe: takes and releases the lock)."""
    if not (run_dir / LOCK_FILE).is_file():
        return None
    lock = FileLock(str(run_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return (f"'output_dir': {run_dir} is in use by {_describe_owner(read_owner(run_dir))}; wait until it "
                f"finishes or choose another output_dir")
    lock.release()
    return None


class RunDirectory:
    """Owns a run directory for one launch (global rank zero only; other ranks get a no-op).

    On entry: creates the directory, takes its lock (``.styleshift.lock``, an ``flock`` that the kernel
    releases when the process dies; a second launch into the directory fails at once with
    :class:`RunDirBusy`), records the owner (pid, host, time, command) and, when the previous owner died
    without releasing, says that its stale lock was taken over. It then refuses a fresh fit into an earlier
    run (:class:`RunDirUsed`) or, with ``reuse_dir``, moves the earlier files to ``previous-<time>/``.
    On exit: releases the lock; if the launch failed and the directory was created by it and holds
    nothing but its config and empty folders, removes it again.
    """

    def __init__(self, run_dir: Path, mode: str, resumes: bool, reuse_dir: bool = False,
                 leader: bool = True) -> None:
        self.run_dir, self.mode, self.resumes, self.reuse_dir, self.leader = run_dir, mode, resumes, reuse_dir, leader
        self._lock: FileLock | None = None
        self._created = False

    def __enter__(self) -> "RunDirectory":
        if not self.leader:
            return self
        self._created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.run_dir / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunDirBusy(f"{self.run_dir} is in use by {_describe_owner(read_owner(self.run_dir))}; wait "
                             f"until it finishes or choose another output_dir") from None
        self._lock = lock
        try:
            stale = read_owner(self.run_dir)
            if stale:
                log.warning("run directory %s: taking over the lock of %s, which ended without releasing it",
                            self.run_dir, _describe_owner(stale))
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                     "command": " ".join(sys.argv)}
            _write_atomic(self.run_dir / OWNER_FILE, json.dumps(owner))
            problem = used_dir_problem(self.run_dir, self.mode, self.resumes, self.reuse_dir)
            if problem:
                raise RunDirUsed(problem)
            if self.mode == "fit" and not self.resumes and self.reuse_dir and previous_run(self.run_dir):
                self._move_aside()
        except BaseException:
            self._release()
            raise
        return self

    def _move_aside(self) -> None:
        target = self.run_dir / f"previous-{timestamp()}"
        target.mkdir()
        for entry in sorted(self.run_dir.iterdir()):
            if entry.name in (LOCK_FILE, OWNER_FILE) or entry.name.startswith("previous-"):
                continue
            entry.rename(target / entry.name)
        log.warning("--reuse-dir: the earlier run's files in %s were moved to %s", self.run_dir, target)

    def _release(self) -> None:
        if self._lock is not None:
            (self.run_dir / OWNER_FILE).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def _holds_nothing(self) -> bool:
        for entry in self.run_dir.iterdir():
            if entry.name not in _BOOKKEEPING:
                return False
            if entry.is_dir() and entry.name != "wandb" and any(entry.iterdir()):
                return False
        return True

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.leader:
            return
        self._release()
        if exc_type is not None and self._created and self.run_dir.is_dir() and self._holds_nothing():
            shutil.rmtree(self.run_dir, ignore_errors=True)
            log.info("removed %s again: the launch failed before the run wrote anything", self.run_dir)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
