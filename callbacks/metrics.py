"""``MetricsCallback`` (registry name ``metrics``): every configured metric on the module's samplers, during
training every N kimg and at test time (README, "Evaluation").

YAML::

    callbacks:
      metrics:
        every_kimg: 50            # null: only at test time
        samplers: null            # null = every sampler of the module (e.g. [ema] or [source, adapted])
        metrics:                  # kinds: metrics.registry.metric_kinds(); schema: metrics/specs.py
          fid: {num_gen: 5000, reference: full, optional: true}
          kid: {num_gen: 5000}
          intra_lpips: {num_gen: 1000, net: vgg, optional: true}
          nn_lpips: {num_gen: 1000, net: vgg, centers: train, optional: true}
          latent_smoothness: {num_gen: 500, net: vgg, optional: true}   # on the module's path sampler

* **Samplers.** A metric runs on its own ``samplers`` if set; else on the callback's ``samplers`` if
  the metric accepts any sampler; else on the samplers the module declares for its kind
  (``metric_samplers()``, e.g. MixDL's ``{"latent_smoothness": ["interpolation"]}``); else on every
  sampler that fits the kind's need (``metrics.registry``: a path sampler for latent smoothness, a
  paired sampler for reconstruction).
* **Start-up check.** ``setup`` resolves every pretrained file the metrics need (the registry's
  ``assets``) through ``models.assets``. A missing file is an error before training begins, unless the
  metric is ``optional: true``: then it is skipped with one warning naming the file and how to fetch it.
* **Evaluation.** On all ranks together (samples are sharded without duplicates, results reduced
  exactly), with the module in eval mode, under ``no_grad``, inside a forked RNG (torch, CUDA, numpy,
  python) so training randomness is unchanged; each submodule's train/eval flag is restored exactly.
  Samplers render with what the module chose for them (the EMA generator for the GAN modules).
* **Output** (rank zero), in the run directory ``trainer.default_root_dir`` (the launcher passes the
  run directory; a bare ``Trainer()`` uses the working directory, as Lightning does for its own files):
  one ``{"kind": "metric", "key", "value", "protocol", ...}`` line per value in ``metrics.jsonl``,
  ``log_metrics({key: value, "kimg": kimg})`` to the other loggers (those with ``writes_metrics_jsonl``
  already hold the lines; the W&B logger plots every key against ``kimg``), protocols in the W&B
  config/summary. At test time also a printed table, ``test_metrics.json`` and a W&B table. Checkpoints
  keep the latest values with their protocols (the callback's ``state_dict``).
"""
from __future__ import annotations

import logging
import math
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from callbacks.dashboard import log_table, record_protocols
from metrics.jsonl import append_jsonl
from metrics.records import format_table, write_json_atomic
from metrics.refstats import ReferenceStatsCache
from metrics.registry import check_metric_samplers, metric_entry
from metrics.specs import MetricSpec, parse_specs
from metrics.suite import MetricSuite, MetricValue

log = logging.getLogger(__name__)

TEST_FILE = "test_metrics.json"


def writes_metrics_jsonl(logger) -> bool:
    """Whether ``logger`` writes ``metrics.jsonl`` itself (it sets ``writes_metrics_jsonl = True``)."""
    return getattr(logger, "writes_metrics_jsonl", False) is True


def run_dir(trainer: pl.Trainer) -> Path | None:
    """The run directory: the Trainer's ``default_root_dir`` (the working directory unless given)."""
    root = getattr(trainer, "default_root_dir", None)
    return None if root is None else Path(root)


def module_metric_samplers(pl_module) -> dict[str, list[str]]:
    """The module's ``metric_samplers()`` (metric kind -> default sampler names), ``{}`` without one."""
    declare = getattr(pl_module, "metric_samplers", None)
    if not callable(declare):
        return {}
    return check_metric_samplers(declare(), type(pl_module).__name__)


class MissingMetricAsset(FileNotFoundError):
    """A non-optional metric needs a pretrained file that is not in the cache."""


@contextmanager
def isolated_eval(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode + ``no_grad`` + forked RNG states; restores every submodule's ``training`` flag."""
    flags = [(m, m.training) for m in module.modules()]
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            module.eval()
            yield
    finally:
        for m, flag in flags:
            m.training = flag
        random.setstate(py_state)
        np.random.set_state(np_state)


class MetricsCallback(pl.Callback):
    """Compute ``metrics`` (name -> options, see :mod:`metrics.specs`) on the module's samplers.

    Args:
        metrics: mapping of metric name (a registered kind, :func:`metrics.registry.metric_kinds`: ``fid``,
            ``kid``, ``intra_lpips``, ``lpips_diversity``, ``lpips_align``, ``reconstruction``,
            ``latent_smoothness``, ``nn_lpips``, ``clip_text``, ``clip_direction``; ``kind:label`` for a
            second instance) to its options.
        every_kimg: evaluate whenever training crosses a multiple of this many kimg (None: test only).
        samplers: sampler names to evaluate (None: all); a metric's own ``samplers`` overrides it.
            Metrics that need a particular kind of sampler (``latent_smoothness``: a path sampler,
            ``reconstruction``: a paired one) ignore it and keep their default (see above).
        batch_size: images rendered/embedded per batch.
        on_test: evaluate in ``trainer.test`` (the test harness).
        at_fit_start: also evaluate once before the first training step (a baseline at kimg 0).
        cache_dir: reference-stat cache folder (default ``<cache root>/refstats``).
        progress: show tqdm bars (rank zero).
    """

    def __init__(self, metrics: dict[str, Any], every_kimg: float | None = None, samplers: list[str] | None = None,
                 batch_size: int = 16, on_test: bool = True, at_fit_start: bool = False,
                 cache_dir: str | None = None, progress: bool = True):
        super().__init__()
        if every_kimg is not None and not (isinstance(every_kimg, (int, float)) and every_kimg > 0):
            raise ValueError(f"every_kimg must be a positive number or null, got {every_kimg!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.specs: dict[str, MetricSpec] = parse_specs(dict(metrics))
        if samplers is not None:
            for spec in self.specs.values():
                # metrics that need a particular kind of sampler keep their own default (MetricSuite.targets)
                if spec.samplers is None and metric_entry(spec.kind).sampler_need.generic:
                    spec.samplers = list(samplers)
        self.every_kimg = every_kimg
        self.batch_size = batch_size
        self.on_test = on_test
        self.at_fit_start = at_fit_start
        self.cache_dir = cache_dir
        self.progress = progress
        self.skipped: dict[str, str] = {}
        self._suite: MetricSuite | None = None
        self._next_kimg: float | None = None
        self._checked = False
        self.last_values: list[MetricValue] = []
        self.last_records: list[dict] = []

    # ------------------------------------------------------------------ checkpoint: last values + protocols
    def state_dict(self) -> dict[str, Any]:
        """Saved in Lightning checkpoints: the latest values with their full protocols."""
        return {"last_records": self.last_records}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_records = list(state_dict.get("last_records", []))

    # ------------------------------------------------------------------ start-up asset check
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._checked:
            self.check_assets(trainer.is_global_zero)
            self._checked = True

    def check_assets(self, warn: bool = True) -> None:
        """Resolve every needed file now: raise for required metrics, skip optional ones with a warning."""
        from models.assets import resolve

        for name, spec in list(self.specs.items()):
            for asset in metric_entry(spec.kind).required_assets(spec):
                try:
                    resolve(asset)
                except FileNotFoundError as e:
                    if not spec.optional:
                        raise MissingMetricAsset(
                            f"metric {name!r} cannot run: {e}\n(or mark the metric `optional: true` in the "
                            f"metrics callback config to skip it with a warning)") from e
                    self.skipped[name] = asset
                    del self.specs[name]
                    if warn:
                        rank_zero_warn(f"metric {name!r} skipped: pretrained file {asset!r} is missing; get it "
                                       f"with `python -m models.assets fetch {asset}`")
                    break

    # ------------------------------------------------------------------ schedule
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        kimg = self._kimg(pl_module)
        if self.every_kimg is not None:
            self._next_kimg = (math.floor(kimg / self.every_kimg + 1e-9) + 1) * self.every_kimg
        if self.at_fit_start:
            self.evaluate(trainer, pl_module, stage="fit")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._next_kimg is None or not self.specs:
            return
        kimg = self._kimg(pl_module)
        if kimg + 1e-9 >= self._next_kimg:
            self._next_kimg = (math.floor(kimg / self.every_kimg + 1e-9) + 1) * self.every_kimg
            self.evaluate(trainer, pl_module, stage="fit")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_test:
            values = self.evaluate(trainer, pl_module, stage="test")
            if trainer.is_global_zero:
                self._report_test(trainer, pl_module, values)

    # ------------------------------------------------------------------ evaluation
    @staticmethod
    def _kimg(pl_module) -> float:
        return float(getattr(pl_module, "kimg", 0.0) or 0.0)

    def suite(self, pl_module) -> MetricSuite:
        if self._suite is None:
            cache = ReferenceStatsCache(self.cache_dir, show_progress=self.progress) if self.cache_dir else None
            self._suite = MetricSuite(self.specs, pl_module.device, self.batch_size, cache, self.progress)
        return self._suite

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> list[MetricValue]:
        """Run every metric (all ranks), then record on rank zero. Returns the values (on every rank)."""
        if not self.specs:
            return []
        samplers_fn = getattr(pl_module, "samplers", None)
        if samplers_fn is None:
            raise TypeError(f"{type(pl_module).__name__} has no samplers() method (name -> models.sampler.Sampler)")
        datamodule = getattr(trainer, "datamodule", None)
        reference_fn = getattr(datamodule, "reference_set", None)
        defaults = module_metric_samplers(pl_module)
        t0 = time.perf_counter()
        with isolated_eval(pl_module):
            values = self.suite(pl_module).evaluate(samplers_fn(), reference_fn, defaults)
        self.last_values = values
        self.last_records = [dict(v.record(), stage=stage, kimg=self._kimg(pl_module)) for v in values]
        if trainer.is_global_zero:
            self._record(trainer, pl_module, values, stage, time.perf_counter() - t0)
        return values

    def _record(self, trainer, pl_module, values: list[MetricValue], stage: str, seconds: float) -> None:
        kimg = self._kimg(pl_module)
        directory = run_dir(trainer)
        for v in values:
            record = dict(kind="metric", **v.record(), stage=stage, kimg=kimg, step=trainer.global_step,
                          time=time.time())
            append_jsonl(directory, record)
        scalars = {v.key: v.value for v in values if v.value is not None and math.isfinite(v.value)}
        record_protocols(trainer, {v.key: v.protocol.to_dict() for v in values})
        for lg in trainer.loggers:
            if not writes_metrics_jsonl(lg):  # those lines are written above, with their protocol
                lg.log_metrics(dict(scalars, kimg=kimg), step=trainer.global_step)
        log.info("metrics at %.1f kimg (%s, %.1fs): %s", kimg, stage, seconds,
                 ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

    def _report_test(self, trainer, pl_module, values: list[MetricValue]) -> None:
        rows = [{"metric": v.key.split("/", 1)[0], "sampler": v.sampler, "value": v.value} for v in values]
        table = format_table(rows, ["metric", "sampler", "value"])
        print(f"\nTest metrics ({len(values)} values)\n{table}\n", flush=True)
        for name, asset in self.skipped.items():
            print(f"skipped {name}: missing pretrained file {asset!r}")
        directory = run_dir(trainer)
        if directory is not None:
            payload = {"kimg": self._kimg(pl_module), "values": {v.key: v.value for v in values},
                       "records": [v.record() for v in values], "skipped": self.skipped}
            path = write_json_atomic(directory / TEST_FILE, payload)
            log.info("test metrics written to %s", path)
        log_table(trainer, "test_metrics", ["metric", "sampler", "value", "key"],
                  [[r["metric"], r["sampler"], r["value"], v.key] for r, v in zip(rows, values)])
