"""Run continuity across resumes: the W&B run id, the global RNG states and the resolved config.

README, "Where outputs go". Lightning restores optimizers and loops but neither the logger's
run id (so a resumed run would open a new W&B run) nor the global RNGs. This callback stores, in the
checkpoint's top-level ``styleshift`` entry: ``config`` (the resolved config), ``wandb_run_id`` and
``rng_states`` (python, numpy, torch and CUDA generators of every rank). On resume the states are put
back right before the first training batch, where the uninterrupted run would have had them.
"""
from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

from launch.checkpointing import META_KEY

log = logging.getLogger(__name__)


def get_rng_state() -> dict:
    """This process's global RNG states, as plain types and tensors (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_after_last_batch(checkpoint: dict) -> None:
    """In place: make a checkpoint written at the end of an epoch's last batch resume as the next epoch.

    Lightning (2.4-2.6) restores such a checkpoint by counting the epoch as finished and then running the
    rest of it, which is empty, as one more epoch: the epoch counter runs one ahead (a DDP sampler then
    shuffles the next epoch with the wrong epoch number, and ``max_epochs`` ends a run one epoch early).
    With a resumable loader (its state is in the checkpoint), clearing the saved ``is_last_batch`` lets
    the restored, exhausted loader end epoch ``e`` once, after which epoch ``e + 1`` runs as it would have.
    Called from ``on_load_checkpoint``, before Lightning restores its loops from the same dict.
    """
    fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    batches = fit.get("epoch_loop.batch_progress")
    if fit.get("state_dict", {}).get("combined_loader") and isinstance(batches, dict) and batches.get("is_last_batch"):
        batches["is_last_batch"] = False


def _all_gather(obj: Any, trainer: "pl.Trainer") -> list:
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


class RunStateCallback(Callback):
    """Saves/restores the W&B run id and RNG states; logs the config; binds the module to the loggers."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self._pending_rng: dict | None = None

    @property
    def state_key(self) -> str:
        return "RunStateCallback"

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        for logger in trainer.loggers:
            if hasattr(logger, "bind_module"):
                logger.bind_module(pl_module)
            if hasattr(logger, "log_config"):
                logger.log_config(self.config)
            else:
                logger.log_hyperparams(self.config)

    @staticmethod
    def wandb_run_id(trainer: "pl.Trainer") -> str | None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                return logger.version
        return None

    def on_save_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", checkpoint: dict) -> None:
        checkpoint[META_KEY] = {"config": self.config, "wandb_run_id": self.wandb_run_id(trainer),
                                "world_size": trainer.world_size,
                                "rng_states": _all_gather(get_rng_state(), trainer)}

    def on_load_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", checkpoint: dict) -> None:
        resume_after_last_batch(checkpoint)
        states = (checkpoint.get(META_KEY) or {}).get("rng_states")
        if not states:
            log.warning("checkpoint has no RNG states: random streams restart from the seed")
            return
        rank = trainer.global_rank
        if len(states) != trainer.world_size:
            log.warning("checkpoint was written by %d processes, resuming with %d: rank %d takes the RNG "
                        "state of rank %d", len(states), trainer.world_size, rank, rank % len(states))
        self._pending_rng = states[rank % len(states)]

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", *args: Any) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        drop_stale_step_values(trainer)


def drop_stale_step_values(trainer: "pl.Trainer") -> None:
    """Forget the step-only values logged by earlier batches of the epoch.

    Lightning keeps a value logged with ``on_step=True, on_epoch=False`` until the epoch ends, and logs it
    again with every later step, so a step that did not compute it (a lazy regularization step skipped
    this iteration) would show the last computed value. Each ``metrics.jsonl`` line (and W&B step) then
    holds what its own step computed, the same whether or not the run was resumed in between.
    """
    results = getattr(trainer, "_results", None)
    for item in (results.values() if results is not None else ()):
        meta = getattr(item, "meta", None)
        if getattr(item, "is_tensor", False) and meta is not None and meta.on_step and not meta.on_epoch:
            item.reset()
