"""``MetricsCallback`` (registry name ``metrics``): every configured metric on every sampler, during
training every N kimg and at test time (issue "Evaluation" §5; DESIGN.md contracts 3-5).

YAML::

    callbacks:
      metrics:
        every_kimg: 50            # null: only at test time
        samplers: null            # null = every sampler of the module (e.g. [ema] or [source, adapted])
        metrics:                  # schema: metrics/specs.py
          fid: {num_gen: 5000, reference: full, optional: true}
          kid: {num_gen: 5000}
          intra_lpips: {num_gen: 1000, net: vgg, optional: true}
          nn_lpips: {num_gen: 1000, net: vgg, centers: train, optional: true}
          latent_smoothness: {num_gen: 500, net: vgg, optional: true}   # on the interpolation sampler

* **Start-up check.** ``setup`` resolves every pretrained file the metrics need through
  ``models.assets``. A missing file is an error before training begins, unless the metric is
  ``optional: true``: then it is skipped with one warning naming the file and how to fetch it.
* **Evaluation.** On all ranks together (samples are sharded without duplicates, results reduced
  exactly), with the module in eval mode, under ``no_grad``, inside a forked RNG (torch, CUDA, numpy,
  python) so training randomness is unchanged; each submodule's train/eval flag is restored exactly.
  Samplers render with what the module chose for them (the EMA generator for the GAN modules).
* **Output** (rank zero): one ``{"kind": "metric", "key", "value", "protocol", ...}`` line per value in
  ``run_dir/metrics.jsonl``, ``log_metrics({key: value, "kimg": kimg})`` to the other loggers (W&B),
  protocols in the W&B config/summary.
  At test time also a printed table, ``run_dir/test_metrics.json`` and a W&B table. Checkpoints keep
  the latest values with their protocols (the callback's ``state_dict``).
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

from callbacks.dashboard import define_kimg_axes, log_table, record_protocols
from launch.jsonl import append_jsonl
from metrics.records import format_table, write_json_atomic
from metrics.refstats import ReferenceStatsCache
from metrics.specs import MetricSpec, parse_specs
from metrics.suite import MetricSuite, MetricValue

log = logging.getLogger(__name__)

TEST_FILE = "test_metrics.json"


def _writes_metrics_jsonl(logger) -> bool:
    try:
        from launch.loggers import JsonlLogger
    except ImportError:
        return False
    return isinstance(logger, JsonlLogger)


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
        metrics: mapping of metric name (``fid``, ``kid``, ``intra_lpips``, ``lpips_diversity``,
            ``lpips_align``, ``reconstruction``, ``latent_smoothness``, ``nn_lpips``, ``clip_text``,
            ``clip_direction``; ``kind:label`` for a second instance) to its options.
        every_kimg: evaluate whenever training crosses a multiple of this many kimg (None: test only).
        samplers: sampler names to evaluate (None: all); a metric's own ``samplers`` overrides it.
            ``reconstruction`` and ``latent_smoothness`` ignore it (their default is the module's
            ``reconstruction`` / ``interpolation`` sampler).
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
                # reconstruction / latent smoothness keep their own default sampler (see MetricSuite._targets)
                if spec.samplers is None and spec.kind not in ("reconstruction", "latent_smoothness"):
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
            for asset in spec.required_assets():
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
            raise TypeError(f"{type(pl_module).__name__} has no samplers() method (DESIGN.md contract 3)")
        datamodule = getattr(trainer, "datamodule", None)
        reference_fn = getattr(datamodule, "reference_set", None)
        t0 = time.perf_counter()
        with isolated_eval(pl_module):
            values = self.suite(pl_module).evaluate(samplers_fn(), reference_fn)
        self.last_values = values
        self.last_records = [dict(v.record(), stage=stage, kimg=self._kimg(pl_module)) for v in values]
        if trainer.is_global_zero:
            self._record(trainer, pl_module, values, stage, time.perf_counter() - t0)
        return values

    def _record(self, trainer, pl_module, values: list[MetricValue], stage: str, seconds: float) -> None:
        kimg = self._kimg(pl_module)
        run_dir = getattr(pl_module, "run_dir", None)
        for v in values:
            record = dict(kind="metric", **v.record(), stage=stage, kimg=kimg, step=trainer.global_step,
                          time=time.time())
            append_jsonl(run_dir, record)
        scalars = {v.key: v.value for v in values if v.value is not None and math.isfinite(v.value)}
        define_kimg_axes(trainer, scalars)
        record_protocols(trainer, {v.key: v.protocol.to_dict() for v in values})
        for lg in trainer.loggers:
            if not _writes_metrics_jsonl(lg):  # those lines are written above, with their protocol
                lg.log_metrics(dict(scalars, kimg=kimg), step=trainer.global_step)
        log.info("metrics at %.1f kimg (%s, %.1fs): %s", kimg, stage, seconds,
                 ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

    def _report_test(self, trainer, pl_module, values: list[MetricValue]) -> None:
        rows = [{"metric": v.key.split("/", 1)[0], "sampler": v.sampler, "value": v.value} for v in values]
        table = format_table(rows, ["metric", "sampler", "value"])
        print(f"\nTest metrics ({len(values)} values)\n{table}\n", flush=True)
        for name, asset in self.skipped.items():
            print(f"skipped {name}: missing pretrained file {asset!r}")
        run_dir = getattr(pl_module, "run_dir", None)
        if run_dir is not None:
            payload = {"kimg": self._kimg(pl_module), "values": {v.key: v.value for v in values},
                       "records": [v.record() for v in values], "skipped": self.skipped}
            path = write_json_atomic(Path(run_dir) / TEST_FILE, payload)
            log.info("test metrics written to %s", path)
        log_table(trainer, "test_metrics", ["metric", "sampler", "value", "key"],
                  [[r["metric"], r["sampler"], r["value"], v.key] for r, v in zip(rows, values)])
