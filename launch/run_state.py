"""Run continuity across resumes: the W&B run id, the global RNG states and the resolved config.

Spec frameworks.md §2.5 and §4.2 item 11. Lightning restores optimizers and loops but neither the logger's
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
