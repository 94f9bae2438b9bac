"""Where a run lives: ``output_dir`` (default ``runs/<YYYYmmdd-HHMMSS>_<experiment>``) and what it resumes.

DESIGN.md contract 6; spec frameworks.md §2.5 (resume continues the same run) and §2.8 (every DDP process
must agree on one directory: processes that Lightning re-launches inherit the directory chosen by rank 0
through ``STYLESHIFT_RUN_DIR``; processes started by an external launcher such as torchrun or srun need
an explicit ``output_dir``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

from launch.checkpointing import CHECKPOINT_DIR, LAST
from launch.config import timestamp, to_yaml
from launch.errors import ConfigError

log = logging.getLogger(__name__)

ENV_RUN_DIR = "STYLESHIFT_RUN_DIR"
CONFIG_FILE = "config.yaml"
SAMPLES_DIR = "samples"


def _external_multiprocess() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | None) -> Path | None:
    """``ckpt_path`` as an existing file; ``last`` means ``<output_dir>/checkpoints/last.ckpt``."""
    if ckpt_path is None:
        return None
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


def resolve_run_dir(output_dir: str | None, experiment: str, ckpt: Path | None) -> Path:
    """The run directory: explicit ``output_dir``, else the resumed checkpoint's run, else a new one."""
    if output_dir is not None:
        return Path(output_dir)
    if ckpt is not None and (run := run_dir_of_checkpoint(ckpt)) is not None:
        return run
    if os.environ.get(ENV_RUN_DIR):
        return Path(os.environ[ENV_RUN_DIR])
    if _external_multiprocess():
        raise ConfigError("several processes were started by an external launcher (WORLD_SIZE/SLURM_NTASKS > 1):"
                          " set output_dir=... explicitly so that they all use the same run directory")
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
