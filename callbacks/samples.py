"""Fixed-seed sample grids of every sampler of a module (README, "Where outputs go").

Every ``every_kimg`` thousand images (the module's ``kimg`` counter), at the start of training and at
its end, each sampler of ``pl_module.samplers()`` renders images ``0..n-1`` of stream ``seed``. Because
samplers are deterministic in ``(indices, seed)``, a grid shows the same latents at every step and after a
resume. Files, under the run directory ``trainer.default_root_dir`` (the launcher passes the run
directory; a bare ``Trainer()`` uses the working directory, as Lightning does for its own files)::

    samples/<sampler>/kimg000012.png     one per interval and sampler (``kimg000012.500.png`` if
                                         ``every_kimg`` is not a whole number)
    samples/<sampler>_latest.png         the newest grid of each sampler
    samples/latest.png                   the newest grid of the first (main) sampler

Grids are logged to W&B (``samples/<sampler>``, with ``kimg``) when a WandbLogger is attached. Rendering
runs on rank zero only, in eval mode, under ``no_grad``, with the global RNG states saved and restored,
and the modules' train/eval modes restored afterwards. Samplers of kind ``"strip"`` (ordered paths) are
laid out as rows of ``nrow`` frames (default: all ``n`` in one row).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import WandbLogger
from torchvision.utils import make_grid

from callbacks.metrics import isolated_eval, run_dir
from metrics.features import quantize

log = logging.getLogger(__name__)


def grid_image(images: torch.Tensor, nrow: int) -> np.ndarray:
    """A HxWx3 uint8 grid of images in [-1, 1], ``nrow`` images per row."""
    grid = make_grid(quantize(images.detach().cpu()), nrow=nrow, padding=2, pad_value=0)
    return grid.permute(1, 2, 0).numpy()


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a PNG atomically (readers never see a half-written ``latest.png``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


class SampleGridCallback(pl.Callback):
    """Write and log fixed-seed sample grids of every sampler every ``every_kimg``.

    Args:
        every_kimg: interval in thousands of images seen (the module's ``kimg``); > 0.
        n: images per grid.
        seed: stream seed of the samplers (stored in the checkpoint so a resume reuses it).
        nrow: images per row (default ``ceil(sqrt(n))``; strips default to ``n``).
        batch_size: rendering batch size.
        on_train_end: also write a grid when training ends.
        samplers: names of the samplers to render (default: all).
    """

    def __init__(self, every_kimg: float = 4.0, n: int = 16, seed: int = 0, nrow: int | None = None,
                 batch_size: int = 16, on_train_end: bool = True, samplers: list[str] | None = None):
        if every_kimg <= 0:
            raise ValueError(f"every_kimg must be > 0, got {every_kimg}")
        if n < 1 or batch_size < 1 or (nrow is not None and nrow < 1):
            raise ValueError(f"n, batch_size and nrow must be >= 1, got {n}, {batch_size}, {nrow}")
        self.every_kimg = float(every_kimg)
        self.n, self.seed, self.nrow, self.batch_size = int(n), int(seed), nrow, int(batch_size)
        self.at_train_end = on_train_end
        self.sampler_names = None if samplers is None else list(samplers)
        self._last_tick: int | None = None

    # ------------------------------------------------------------------------------ rendering
    def _samplers(self, pl_module: pl.LightningModule) -> dict:
        if not hasattr(pl_module, "samplers"):
            raise TypeError(f"{type(pl_module).__name__} has no samplers() (name -> models.sampler.Sampler)")
        samplers = pl_module.samplers()
        if self.sampler_names is None:
            return samplers
        unknown = [name for name in self.sampler_names if name not in samplers]
        if unknown:
            raise KeyError(f"unknown sampler(s) {unknown}; the module has {list(samplers)}")
        return {name: samplers[name] for name in self.sampler_names}

    def render(self, pl_module: pl.LightningModule) -> dict[str, np.ndarray]:
        """The grid of every sampler as HxWx3 uint8 arrays (no files, no logging)."""
        grids = {}
        with isolated_eval(pl_module):
            for name, sampler in self._samplers(pl_module).items():
                images = sampler(self.n, self.seed, batch_size=self.batch_size)
                if sampler.kind == "strip":
                    nrow = self.nrow or self.n
                else:
                    nrow = self.nrow or max(1, math.ceil(math.sqrt(self.n)))
                grids[name] = grid_image(images, nrow)
        return grids

    def _file_name(self, kimg: float) -> str:
        if self.every_kimg.is_integer():
            return f"kimg{int(math.floor(kimg + 1e-9)):06d}.png"
        return f"kimg{kimg:010.3f}.png"

    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, np.ndarray]:
        """Render every sampler, write the PNGs under ``<run dir>/samples`` and log them to W&B."""
        grids = self.render(pl_module)
        kimg = float(getattr(pl_module, "kimg", 0.0))
        directory = run_dir(trainer)
        if directory is not None:
            root = directory / "samples"
            for index, (name, array) in enumerate(grids.items()):
                if ".." in Path(name).parts or Path(name).is_absolute():
                    raise ValueError(f"sampler name {name!r} is not a relative path")
                save_png(array, root / name / self._file_name(kimg))
                save_png(array, root / f"{name}_latest.png")
                if index == 0:
                    save_png(array, root / "latest.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                record: dict[str, Any] = {f"samples/{name}": wandb.Image(array, caption=f"kimg {kimg:.1f}")
                                          for name, array in grids.items()}
                record.update({"kimg": kimg, "trainer/global_step": trainer.global_step})
                logger.experiment.log(record)
        return grids

    # ------------------------------------------------------------------------------ hooks
    def _tick(self, kimg: float) -> int:
        return int(math.floor(kimg / self.every_kimg + 1e-9))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        kimg = float(getattr(pl_module, "kimg", 0.0))
        if self._last_tick is None or self._last_tick != self._tick(kimg):
            self._last_tick = self._tick(kimg)
            if trainer.is_global_zero:
                self.write(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        tick = self._tick(float(getattr(pl_module, "kimg", 0.0)))
        if self._last_tick is not None and tick <= self._last_tick:
            return
        self._last_tick = tick
        if trainer.is_global_zero:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_train_end and trainer.is_global_zero:
            grids = self.write(trainer, pl_module)
            directory = run_dir(trainer)
            if directory is not None:
                log.info("sample grids of %s in %s", ", ".join(grids), directory / "samples")

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "n": self.n, "last_tick": self._last_tick}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("seed", self.seed) != self.seed:
            log.warning("sample grid seed %s from the checkpoint replaces %s so grids stay comparable",
                        state_dict["seed"], self.seed)
        self.seed = int(state_dict.get("seed", self.seed))
        self._last_tick = state_dict.get("last_tick")
