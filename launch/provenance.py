"""What ran: the code's git commit (and whether the work tree had local changes) and package versions.

Recorded as the ``provenance`` section of the run's ``config.yaml``, in its checkpoints and in the W&B
config. The section describes a past launch, not a setting: :func:`launch.config.compose` drops it when
a ``config.yaml`` is launched again (``python train.py runs/<run>/config.yaml ckpt_path=last``).
"""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

SECTION = "provenance"
ROOT = Path(__file__).resolve().parents[1]
#: distributions whose versions decide results: the framework, data loading and the metric packages
PACKAGES = ("torch", "torchvision", "pytorch-lightning", "torchdata", "torchmetrics", "clean-fid", "lpips",
            "open_clip_torch", "numpy", "scipy", "wandb")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout this code runs from.

    ``dirty`` is true when tracked files differ from the commit (untracked files do not count).
    """
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict:
    """``{distribution: version}`` of :data:`PACKAGES` (absent ones left out) and Python."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def provenance() -> dict:
    """The ``provenance`` section: ``git`` (commit, dirty) and ``versions``."""
    return {"git": git_state(), "versions": versions()}
