"""W&B dashboard plumbing for metric values (README, "Weights & Biases").

The protocol object of every key goes into the run config under ``metric_protocols`` and into the
summary, and the test harness's table is logged as a W&B table. The ``kimg`` x-axis of the metric panels
is the W&B logger's business (the launcher's logger defines ``define_metric("*", step_metric="kimg")``
and the callbacks log ``kimg`` with every value). Only W&B loggers of the trainer are touched, on global
rank zero; with no W&B logger every function is a no-op.
"""
from __future__ import annotations

from typing import Any

from pytorch_lightning.loggers import WandbLogger


def wandb_experiments(trainer) -> list[Any]:
    if not trainer.is_global_zero:
        return []
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def record_protocols(trainer, protocols: dict[str, dict]) -> None:
    """Store the full protocol of each key in the run config and summary."""
    for exp in wandb_experiments(trainer):
        exp.config.update({"metric_protocols": protocols}, allow_val_change=True)
        for key, proto in protocols.items():
            exp.summary[f"protocol/{key}"] = proto


def log_table(trainer, name: str, columns: list[str], rows: list[list[Any]]) -> None:
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and trainer.is_global_zero:
            lg.log_table(key=name, columns=columns, data=rows)
