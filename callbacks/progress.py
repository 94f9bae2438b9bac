"""The console progress bar of training: kimg against ``total_kimg``, rate, ETA and the main losses.

README, "Progress". Lightning's own bar counts batches of one "epoch" ("Epoch 212: 0/2"), which says nothing
about a GAN run that stops at ``total_kimg``. :class:`KimgProgressBar` keeps one bar for the whole fit: its
position is the module's images-seen counter (``module.kimg``), its total ``module.total_kimg``; the rate
is measured over this launch only (a resumed run does not count the kimg it started from as done in no
time), and the ETA is what is left at that rate (:func:`kimg_progress`). The postfix shows a few losses:
the logged values whose names match ``losses`` (``fnmatch`` patterns, ``loss/*`` by default), at most
``max_losses`` of them. A module without a ``kimg`` counter gets Lightning's per-epoch bar.

The launcher adds this bar unless ``trainer.enable_progress_bar`` is false; ``callbacks.progress: {...}``
sets its options.
"""
from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


@dataclass(frozen=True)
class KimgProgress:
    """Where a run stands: ``kimg`` of ``total`` (None: no limit), ``rate`` in kimg/s over this launch
    (None until measurable) and ``eta_s``, the seconds left at that rate (None without a total or rate)."""

    kimg: float
    total: float | None
    rate: float | None
    eta_s: float | None

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(self.kimg / self.total, 1.0)


def kimg_progress(kimg: float, total_kimg: float | None, start_kimg: float, elapsed_s: float) -> KimgProgress:
    """The progress of a run at ``kimg`` that was at ``start_kimg`` ``elapsed_s`` seconds ago (this launch)."""
    done = kimg - start_kimg
    rate = done / elapsed_s if elapsed_s > 0 and done > 0 else None
    eta = None
    if total_kimg is not None and rate is not None:
        eta = max(total_kimg - kimg, 0.0) / rate
    return KimgProgress(float(kimg), None if total_kimg is None else float(total_kimg), rate, eta)


def format_duration(seconds: float | None) -> str:
    """``1:02:03`` (hours:minutes:seconds), ``2d 03:04:05`` past a day, ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else clock


def format_progress(p: KimgProgress) -> str:
    """``12.345/16 kimg, 0.512 kimg/s, ETA 0:00:07`` (no total: ``12.345 kimg, 0.512 kimg/s``)."""
    where = f"{p.kimg:.3f}/{p.total:g} kimg" if p.total is not None else f"{p.kimg:.3f} kimg"
    rate = f"{p.rate:.3g} kimg/s" if p.rate is not None else "? kimg/s"
    return f"{where}, {rate}" + (f", ETA {format_duration(p.eta_s)}" if p.total is not None else "")


def pick_losses(metrics: dict[str, Any], patterns: Sequence[str], limit: int) -> dict[str, float]:
    """Up to ``limit`` scalar entries of ``metrics`` matching ``patterns`` (pattern order, then name order)."""
    out: dict[str, float] = {}
    for pattern in patterns:
        for key in sorted(metrics):
            if len(out) >= limit:
                return out
            if key not in out and fnmatch.fnmatchcase(key, pattern):
                value = metrics[key]
                try:
                    out[key] = float(value)
                except (TypeError, ValueError):
                    continue
    return out


class KimgProgressBar(TQDMProgressBar):
    """One bar per fit in kimg (see the module docstring).

    Args:
        losses: ``fnmatch`` patterns of the logged values to show (``["loss/*"]``).
        max_losses: at most this many of them.
        refresh_rate: update the bar every this many batches.
    """

    # ``set_description`` ends the description with ": "; tqdm prefixes ``{postfix}`` with ", ", so the text goes
    # into ``{unit}`` (unused otherwise in this format)
    BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {unit}"

    def __init__(self, losses: Sequence[str] = ("loss/*",), max_losses: int = 4, refresh_rate: int = 1,
                 process_position: int = 0) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=True)
        self.losses = [str(p) for p in losses]
        self.max_losses = int(max_losses)
        self._start: tuple[float, float] | None = None  # (kimg, time) at the start of this launch
        self._counting = False

    @staticmethod
    def _counts_kimg(pl_module: Any) -> bool:
        return isinstance(getattr(pl_module, "kimg", None), (int, float))

    def progress(self, pl_module: Any, now: float | None = None) -> KimgProgress:
        kimg = float(pl_module.kimg)
        start_kimg, start_time = self._start if self._start is not None else (kimg, time.monotonic())
        elapsed = (time.monotonic() if now is None else now) - start_time
        return kimg_progress(kimg, getattr(pl_module, "total_kimg", None), start_kimg, elapsed)

    def postfix(self, trainer: "pl.Trainer", p: KimgProgress) -> str:
        text = format_progress(p)
        losses = pick_losses(dict(trainer.callback_metrics), self.losses, self.max_losses)
        return ", ".join([text, *(f"{k}={v:.4g}" for k, v in losses.items())])

    def _update(self, trainer: "pl.Trainer", pl_module: Any, now: float | None = None) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        p = self.progress(pl_module, now)
        if p.total is not None:
            bar.total = 1000  # per mille: tqdm draws the bar; the text is ours
            bar.n = int(round(1000 * (p.fraction or 0.0)))
        else:
            bar.total = None
            bar.n = 0
        bar.unit = self.postfix(trainer, p)
        bar.refresh()

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_train_start(trainer, pl_module)
        self._counting = self._counts_kimg(pl_module)
        if self._counting:
            self._start = (float(pl_module.kimg), time.monotonic())
            self.train_progress_bar.set_description("train")
            self._update(trainer, pl_module)

    def on_train_epoch_start(self, trainer: "pl.Trainer", *args: Any) -> None:
        if not self._counting:
            super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._counting:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if (batch_idx + 1) % self.refresh_rate == 0 or trainer.should_stop:
            self._update(trainer, pl_module)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self._counting:
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self._counting:
            return super().on_validation_end(trainer, pl_module)
        self.val_progress_bar.close()
        self.reset_dataloader_idx_tracker()
        if self._train_progress_bar is not None and trainer.state.fn == "fit":
            self._update(trainer, pl_module)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._counting:
            self._update(trainer, pl_module)
        super().on_train_end(trainer, pl_module)


__all__ = ["KimgProgress", "KimgProgressBar", "kimg_progress", "format_duration", "format_progress", "pick_losses"]
