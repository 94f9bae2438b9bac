"""The run's loggers: ``metrics.jsonl`` (always), W&B (offline by default) and, when their section is
given, a CSV file and TensorBoard event files; README, "Weights & Biases" and "CSV and TensorBoard".

Both put ``kimg`` (the module's images-seen counter) next to Lightning's step: the JSONL logger writes it
into every line, the W&B logger logs it with every metric dict and makes it the x-axis of every panel
(``define_metric("*", step_metric="kimg")``; the metrics callback's values included). The module is bound
after the Trainer has launched (``bind_module``), so the loggers stay picklable for spawn-based DDP.

The CSV logger (``logger.csv: {}``) writes ``<run dir>/csv/metrics.csv``, one row per logged dict, with a
``kimg`` column next to Lightning's ``step``; a resumed run appends to the same file. The TensorBoard logger
(``logger.tensorboard: {}``) writes ``<run dir>/tensorboard/``: every scalar is logged at TensorBoard step
``round(kimg * 1000)`` (images seen), so its x-axis is the kimg axis, and ``kimg`` itself is logged as a scalar
too. Without a module's ``kimg`` both fall back to Lightning's step.

The W&B config is the launcher's resolved config, nested as in ``config.yaml`` and with its ``provenance``
(:meth:`KimgWandbLogger.log_config`); Lightning's own logging of constructor arguments is ignored.
"""
from __future__ import annotations

import sys
import time
import weakref
from pathlib import Path
from typing import Any, Mapping

from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities import rank_zero_only

from metrics.jsonl import append_jsonl


class _KimgSource:
    """Reads ``module.kimg`` through a weak reference (``None`` when unbound or the module has none)."""

    _module_ref: Any = None

    def bind_module(self, module: Any) -> None:
        self._module_ref = weakref.ref(module)

    def current_kimg(self) -> float | None:
        module = self._module_ref() if self._module_ref is not None else None
        kimg = getattr(module, "kimg", None)
        return None if kimg is None else float(kimg)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__() or {})  # keeps WandbLogger's own pickling logic
        state.pop("_module_ref", None)
        return state


class JsonlLogger(_KimgSource, Logger):
    """Writes each logged scalar dict as ``{"kind": "scalars", "step", "kimg", "time", "metrics"}``.

    ``writes_metrics_jsonl`` tells the metrics callback that this logger's file already receives the
    callback's own per-value lines (with their protocols), so it does not log the values here again.
    """

    writes_metrics_jsonl = True

    def __init__(self, run_dir: str | Path, name: str = "styleshift") -> None:
        super().__init__()
        self._run_dir = Path(run_dir)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._run_dir.name

    @property
    def save_dir(self) -> str:
        return str(self._run_dir)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        record = {"kind": "scalars", "step": step, "kimg": self.current_kimg(), "time": time.time(),
                  "metrics": dict(metrics)}
        append_jsonl(self._run_dir, record)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """No-op: the resolved config is ``config.yaml`` in the run directory."""


class KimgWandbLogger(_KimgSource, WandbLogger):
    """``WandbLogger`` whose metrics carry ``kimg`` and are plotted against it."""

    _kimg_axis = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # WandbLogger always passes anonymous=None, which wandb answers with a deprecation notice per run.
        getattr(self, "_wandb_init", {}).pop("anonymous", None)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Ignored: Lightning would log the module's constructor arguments here, flattened to the top level
        (where ``model.seed: null`` overwrites the run's ``seed``). The config is :meth:`log_config`'s."""

    @rank_zero_only
    def log_config(self, config: Mapping[str, Any]) -> None:
        """The run's resolved config as the W&B config, nested as in ``config.yaml`` (with its provenance)."""
        super().log_hyperparams(dict(config))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        kimg = self.current_kimg()
        if kimg is not None:
            metrics = {**metrics}
            metrics.setdefault("kimg", kimg)
            if not self._kimg_axis:
                self.experiment.define_metric("kimg")
                self.experiment.define_metric("*", step_metric="kimg", step_sync=True)
                self._kimg_axis = True
        super().log_metrics(metrics, step)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` (a resumed run's) is appended to, not
    deleted, and the hyperparameters file is not written (the config is ``config.yaml``)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            import csv

            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                header = next(csv.reader(fh), [])
            self.metrics_keys = sorted(header)

    def log_hparams(self, params: dict[str, Any]) -> None:
        """No-op."""


class KimgCSVLogger(_KimgSource, CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/csv/metrics.csv`` with a ``kimg`` column."""

    def __init__(self, save_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(save_dir=str(save_dir), name="csv", version="", **kwargs)

    @property
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: Any = None) -> None:
        """No-op: the resolved config is ``config.yaml`` in the run directory."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        kimg = self.current_kimg()
        if kimg is not None:
            metrics = {**metrics}
            metrics.setdefault("kimg", kimg)
        super().log_metrics(dict(metrics), step)


class KimgTensorBoardLogger(_KimgSource, TensorBoardLogger):
    """``TensorBoardLogger`` writing ``<save_dir>/tensorboard/`` at step ``round(kimg * 1000)`` (images seen)."""

    def __init__(self, save_dir: str | Path, **kwargs: Any) -> None:
        kwargs.setdefault("default_hp_metric", False)
        super().__init__(save_dir=str(save_dir), name="tensorboard", version="", **kwargs)

    @rank_zero_only
    def log_hyperparams(self, params: Any = None, metrics: Any = None) -> None:
        """No-op: the resolved config is ``config.yaml`` in the run directory."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        kimg = self.current_kimg()
        if kimg is not None:
            metrics = {**metrics}
            metrics.setdefault("kimg", kimg)
            step = int(round(kimg * 1000))
        super().log_metrics(dict(metrics), step)


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by ``logger.tensorboard``) is importable."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def build_file_loggers(settings: Mapping[str, Any], run_dir: Path) -> list[Logger]:
    """The CSV and TensorBoard loggers the ``logger`` section turns on (``csv: {}``, ``tensorboard: {}``; a
    ``dir`` key puts the files elsewhere than the run directory)."""
    out: list[Logger] = []
    for key, cls in (("csv", KimgCSVLogger), ("tensorboard", KimgTensorBoardLogger)):
        section = settings.get(key)
        if section is None:
            continue
        out.append(cls(Path(section.get("dir") or run_dir)))
    return out


def build_wandb_logger(settings: Mapping[str, Any], run_dir: Path, run_name: str, run_id: str | None = None,
                       job_type: str = "train") -> KimgWandbLogger:
    """The W&B logger from the ``logger.wandb`` section (mode offline | online | disabled).

    ``run_id`` continues an existing W&B run (resume); the run's files go to ``dir`` or the run directory.
    """
    mode = settings.get("mode", "offline")
    save_dir = Path(settings.get("dir") or run_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = dict(
        name=settings.get("name") or run_name, project=settings.get("project") or "styleshift",
        entity=settings.get("entity"), tags=list(settings.get("tags") or []), save_dir=str(save_dir),
        offline=mode == "offline", job_type=job_type, mode=mode, settings=wandb_settings())
    if run_id is not None:
        kwargs.update(id=run_id, resume="allow")
    return KimgWandbLogger(**kwargs)


def wandb_settings() -> Any:
    """W&B settings of every run: ``console="off"``, so the console (the progress bar's carriage-return
    redraws, the log lines) is not captured into the run's ``output.log``; the metrics and the config are
    logged as values, and the run directory's ``metrics.jsonl`` holds everything."""
    import wandb

    return wandb.Settings(console="off")


def finish_wandb(exit_code: int = 0) -> None:
    """Close the process's W&B run, if one was started (flushes it; lets a later run start fresh)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
