"""Checkpoints of a run: ``checkpoints/kimg{NNNNNN}.ckpt`` every ``every_kimg`` and ``checkpoints/last.ckpt``.

docs/architecture.md, "kimg counters, not global_step": the cadence follows the module's own images-seen counter
(``module.kimg``), not ``trainer.global_step`` (which counts every optimizer step of a GAN). Files are
full Lightning checkpoints (optimizers, loops, callbacks), so ``ckpt_path=...`` resumes them exactly.
``last.ckpt`` and ``interrupted.ckpt`` are hard links to the file just written (copies where links are
not possible), so one save serves several names. Every file is written under a temporary name and
renamed, so a crash never leaves a truncated checkpoint and a linked file is never rewritten in place.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint

from launch.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
INTERRUPTED = "interrupted.ckpt"
META_KEY = "styleshift"  # top-level checkpoint entry written by launch.run_state.RunStateCallback


def kimg_filename(kimg: float, every_kimg: float) -> str:
    """``kimg000120.ckpt`` (whole kimg), or ``kimg000000.512.ckpt`` when the interval is not a whole number."""
    if float(every_kimg).is_integer():
        return f"kimg{int(math.floor(kimg + 1e-9)):06d}.ckpt"
    return f"kimg{kimg:010.3f}.ckpt"


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class CheckpointWriter:
    """Saves a checkpoint once under several names; remembers the step of the last save."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.saved_step: int | None = None

    def save(self, trainer: "pl.Trainer", names: Sequence[str]) -> Path:
        """Write ``names[0]`` (collective: every rank calls it) and link the other names to it."""
        first = self.dirpath / names[0]
        tmp = first.with_name(first.name + ".tmp")
        # Written aside, then renamed: never rewrites in place a file that another name links to.
        trainer.save_checkpoint(tmp, weights_only=False)  # full state (False is also the default)
        if trainer.is_global_zero:
            os.replace(tmp, first)
            for name in names[1:]:
                _link_or_copy(first, self.dirpath / name)
            log.info("saved checkpoint %s", ", ".join(str(self.dirpath / n) for n in names))
        self.saved_step = trainer.global_step
        return first


class KimgCheckpoint(Checkpoint):
    """Periodic checkpoints by kimg plus ``last.ckpt`` (at every periodic save and at the end of fitting)."""

    def __init__(self, writer: CheckpointWriter, every_kimg: float | None = None, save_last: bool = True) -> None:
        self.writer = writer
        self.every_kimg = every_kimg
        self.save_last = save_last
        self._tick: int | None = None

    @staticmethod
    def _kimg(pl_module: "pl.LightningModule") -> float:
        return float(pl_module.kimg)

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage == "fit" and self.every_kimg is not None and not hasattr(pl_module, "kimg"):
            raise ConfigError(f"checkpoint.every_kimg needs a module that counts images seen (`kimg`); "
                              f"{type(pl_module).__name__} has none: set checkpoint.every_kimg=null")

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.every_kimg is not None and self._tick is None:
            self._tick = math.floor(self._kimg(pl_module) / self.every_kimg + 1e-9)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", *args: Any) -> None:
        if self.every_kimg is None:
            return
        kimg = self._kimg(pl_module)
        tick = math.floor(kimg / self.every_kimg + 1e-9)
        if trainer.world_size > 1:  # every rank must take the same decision: save_checkpoint is collective
            tick = trainer.strategy.broadcast(tick, src=0)
        if tick > (self._tick or 0):
            self._tick = tick
            names = [kimg_filename(kimg, self.every_kimg)] + ([LAST] if self.save_last else [])
            self.writer.save(trainer, names)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.save_last and self.writer.saved_step != trainer.global_step:
            self.writer.save(trainer, [LAST])

    def state_dict(self) -> dict:
        return {"tick": self._tick}

    def load_state_dict(self, state_dict: dict) -> None:
        self._tick = state_dict.get("tick")


def read_checkpoint_meta(path: str | Path) -> dict:
    """The launcher's entry of a Lightning checkpoint (config, W&B run id, RNG states); ``{}`` if absent.

    Loaded memory-mapped with ``weights_only=True``: cheap for large files and never runs code from them.
    """
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except Exception as err:  # noqa: BLE001 - any failure means the file cannot be resumed from
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read checkpoint {path} ({type(err).__name__}: {reason[:200]}): it is damaged "
                          f"or not a torch checkpoint; point ckpt_path at a run's checkpoints/*.ckpt "
                          f"(or ckpt_path=last)") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{path} is not a Lightning checkpoint (no 'state_dict'); to start from exported "
                          f"generator weights use the method's own option (e.g. model.checkpoint=...)")
    meta = ckpt.get(META_KEY)
    return dict(meta) if isinstance(meta, dict) else {}
