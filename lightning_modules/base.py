"""The base of every method: run plumbing written once (docs/adding_a_method.md).

:class:`MethodModule` owns what every method needs and no paper describes:

* **Counters.** ``nimg`` (images or latents trained on, summed over ranks), ``kimg`` (the logging x-axis and
  the unit of schedules, ``total_kimg``, checkpoints and metric intervals) and ``iteration``; Lightning's
  ``global_step`` counts every optimizer step and is not used.
* **Randomness.** :attr:`rng`, a ``torch.Generator`` re-seeded at every iteration from ``(seed, global rank,
  iteration)`` (:meth:`reseed`): a step is a pure function of the weights, the batch and the counters, so a
  resumed run reproduces an uninterrupted one and DDP ranks draw different samples.
* **Non-finite values.** :meth:`step` runs one optimizer step of a named phase: it checks the loss (agreed
  across DDP ranks) and the gradients, then with ``nan_policy="raise"`` raises ``FloatingPointError`` naming
  the phase, kimg and losses, with ``"skip"`` drops the step with a warning and counts it (``nan_skips``);
  a phase skipped ``max_consecutive_skips`` times in a row stops the run (:class:`NonFiniteError`).
* **Frozen networks** (:meth:`hold`, :mod:`models.frozen`): outside ``parameters()``, ``state_dict()`` and
  optimizers, always eval, moved with the module.
* **Checkpoint state** under one key (:data:`STATE_KEY`): counters and seed, plus :meth:`extra_state`.
* **Mean W** of a generator (:meth:`mean_w`, 4096 fixed z, cached), the truncation centre of samplers.
* **Eval steps** are no-ops: metric callbacks evaluate :meth:`samplers`.
* **Export.** At the end of ``fit`` the method's product (a generator, a mapper, an encoder, ...) is written
  by :meth:`export` into the run directory, ``trainer.default_root_dir`` (rank zero).

A method subclasses this (or :class:`lightning_modules.gan.StyleGAN2Core` when it trains a discriminator),
builds its networks in ``__init__``, writes ``training_step`` in the words of its paper, and overrides
:meth:`samplers`, :meth:`export` and, where it has them, :meth:`extra_state` / :meth:`load_extra_state`.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor, nn

from lightning_modules.seeding import step_seed
from models.frozen import HoldsFrozen
from models.sampler import Sampler

log = logging.getLogger(__name__)

# Frozen networks (and the EMA copy of GAN methods) are in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

NAN_POLICIES = ("raise", "skip")
GRAD_RESETS = ("zero", "none")
STATE_KEY = "method_state"
LEGACY_STATE_KEYS = ("gan_core", "nada", "nada_mapper")  # checkpoints written before STATE_KEY
MEAN_W_SAMPLES = 4096
MEAN_W_SEED = 0


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient stopped training (``nan_policy="raise"``, or too many skips in a row).

    The message names the phase, kimg and losses and the config key to change; ``train.py`` prints it
    without a traceback.
    """


class OptimizerGroup:
    """Optimizers used as one in :meth:`MethodModule.step`: ``param_groups`` concatenated, ``zero_grad`` and
    ``step`` applied to each; each keeps its own state (and its own entry in Lightning checkpoints)."""

    def __init__(self, *optimizers):
        if not optimizers:
            raise ValueError("OptimizerGroup needs at least one optimizer")
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


class MethodModule(HoldsFrozen, pl.LightningModule):
    """Run plumbing of every method (see the module docstring).

    Args:
        seed: base seed of the per-iteration randomness (None: ``torch.initial_seed()`` at setup, i.e. the
            launcher's ``seed``).
        nan_policy: ``"raise"`` or ``"skip"`` on a non-finite loss or gradient.
        max_consecutive_skips: with ``nan_policy="skip"``, stop with :class:`NonFiniteError` when one phase
            skipped this many steps in a row (a successful step of the phase resets its count); None: no limit.
        total_kimg: stop training after this many thousand images (None: the Trainer's own limits).
        grad_reset: how gradients are cleared before each backward. ``"zero"`` (default, the official
            implementations' ``zero_grad()`` of PyTorch 1.x): gradient tensors are zeroed and kept, so Adam
            keeps stepping (with its momentum, advancing its step count) a parameter that got no gradient
            this iteration once it had one - e.g. a layer NADA did not select, a MixDL patch head not drawn.
            ``"none"`` (``set_to_none``): such parameters are left untouched by the optimizer.
    """

    #: file name of the product :meth:`export` writes into the run directory (None: nothing to export)
    product_file: str | None = None
    #: precisions ``trainer.fit`` accepts (None: any)
    supported_precisions: Sequence[str] | None = None
    #: why other precisions are refused (shown in the error)
    precision_note: str = ""

    def __init__(self, *, seed: int | None = None, nan_policy: str = "raise", total_kimg: float | None = None,
                 grad_reset: str = "zero", max_consecutive_skips: int | None = 10):
        super().__init__()
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        if max_consecutive_skips is not None and (isinstance(max_consecutive_skips, bool)
                                                  or not isinstance(max_consecutive_skips, int)
                                                  or max_consecutive_skips < 1):
            raise ValueError(f"max_consecutive_skips must be a positive integer or None, got {max_consecutive_skips!r}")
        self.max_consecutive_skips = max_consecutive_skips
        #: steps skipped in a row, per phase (reset by a successful step of that phase)
        self.consecutive_skips: dict[str, int] = {}
        if grad_reset not in GRAD_RESETS:
            raise ValueError(f"grad_reset must be one of {GRAD_RESETS}, got {grad_reset!r}")
        self.grad_reset = grad_reset
        if total_kimg is not None and not total_kimg > 0:
            raise ValueError(f"total_kimg must be > 0 or None, got {total_kimg}")
        self.automatic_optimization = False
        self.seed, self.nan_policy, self.total_kimg = seed, nan_policy, total_kimg
        self.nimg = 0
        self.iteration = 0
        self.nan_skips = 0
        self._base_seed: int | None = seed
        self._rng: torch.Generator | None = None
        self._mean_w_cache: dict[int, tuple[tuple, Tensor]] = {}

    # ------------------------------------------------------------------------------ counters
    @property
    def kimg(self) -> float:
        """Thousands of images (or latents) trained on, all ranks together."""
        return self.nimg / 1000.0

    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def _global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0

    # ------------------------------------------------------------------------------ randomness
    @property
    def rng(self) -> torch.Generator:
        """The generator of the current iteration (on the module's device)."""
        if self._rng is None or self._rng.device != self.device:
            self.reseed()
        return self._rng

    def reseed(self) -> None:
        """Seed :attr:`rng` from ``(seed, global_rank, iteration)``."""
        if self._base_seed is None:
            self._base_seed = int(torch.initial_seed())
        if self._rng is None or self._rng.device != self.device:
            self._rng = torch.Generator(device=self.device)
        self._rng.manual_seed(step_seed(self._base_seed, self._global_rank(), self.iteration))

    @property
    def base_seed(self) -> int:
        """The run's base seed (``seed``, else ``torch.initial_seed()`` when first needed)."""
        if self._base_seed is None:
            self._base_seed = int(torch.initial_seed())
        return self._base_seed

    # ------------------------------------------------------------------------------ optimizer steps
    def step(self, optimizer, phase: str, loss_fn: Callable[..., tuple[Tensor, dict]], logs: dict,
             *args: Any) -> Tensor | None:
        """One optimizer step of ``phase``: ``loss, phase_logs = loss_fn(*args)``, finite checks, backward, step.

        ``phase_logs`` are merged into ``logs``. Returns the detached loss, or None when the step was skipped
        (``nan_policy="skip"``). ``optimizer`` may be an :class:`OptimizerGroup`.
        """
        loss, phase_logs = loss_fn(*args)
        logs.update(phase_logs)
        if not self._agreed_finite(loss):
            self._non_finite(phase, "loss", phase_logs)
            return None
        optimizer.zero_grad(set_to_none=self.grad_reset == "none")
        if self._trainer is not None:
            self.manual_backward(loss)
        else:  # outside a Trainer (benchmarks, notebooks)
            loss.backward()
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            optimizer.zero_grad(set_to_none=self.grad_reset == "none")
            self._non_finite(phase, "gradients", phase_logs)
            return None
        optimizer.step()
        self.consecutive_skips.pop(phase, None)
        return loss.detach()

    def _agreed_finite(self, loss: Tensor) -> bool:
        bad = (~torch.isfinite(loss.detach())).any().float()
        if self._world_size() > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return float(bad) == 0.0

    def _non_finite(self, phase: str, what: str, phase_logs: dict) -> None:
        values = {k: float(v.detach()) if isinstance(v, Tensor) else v for k, v in phase_logs.items()}
        message = (f"non-finite {what} in phase {phase} at kimg {self.kimg:.3f} "
                   f"(iteration {self.iteration}): {values}")
        if self.nan_policy == "raise":
            raise NonFiniteError(message + " - set model.nan_policy=skip to skip such steps")
        self.nan_skips += 1
        in_a_row = self.consecutive_skips[phase] = self.consecutive_skips.get(phase, 0) + 1
        limit = self.max_consecutive_skips
        if limit is not None and in_a_row >= limit:
            raise NonFiniteError(
                f"{message}; phase {phase} skipped {in_a_row} steps in a row (model.max_consecutive_skips="
                f"{limit}): training has diverged and would go on without updating. Lower the learning rate, "
                f"or raise model.max_consecutive_skips (null: no limit)")
        rank_zero_warn(f"{message}; optimizer step skipped ({self.nan_skips} so far, {in_a_row} in a row for "
                       f"{phase}; the run stops at model.max_consecutive_skips={limit})", category=RuntimeWarning)

    # ------------------------------------------------------------------------------ end of an iteration
    def end_iteration(self, batch_size: int, logs: dict[str, Tensor]) -> None:
        """Count ``batch_size`` items per rank, call :meth:`on_iteration_end`, log ``logs`` and ``kimg``, and
        stop at ``total_kimg``."""
        self.nimg += int(batch_size) * self._world_size()
        self.iteration += 1
        self.on_iteration_end()
        if self.nan_skips:
            logs["nan_skips"] = torch.tensor(float(self.nan_skips))
        self.log_dict({k: v.detach().float() if isinstance(v, Tensor) else float(v) for k, v in logs.items()},
                      on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("kimg", self.kimg, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
        if self.total_kimg is not None and self.kimg >= self.total_kimg:
            self.trainer.should_stop = True

    def on_iteration_end(self) -> None:
        """Called after the counters advanced (no-op): schedules, extra bookkeeping."""

    # ------------------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.supported_precisions is not None:
            precision = str(self.trainer.precision)
            if precision not in self.supported_precisions:
                note = f" ({self.precision_note})" if self.precision_note else ""
                raise ValueError(f"precision {precision!r} is not supported by {type(self).__name__}{note}; "
                                 f"supported: {', '.join(self.supported_precisions)}")
        self.base_seed  # noqa: B018 - fixes the seed before the first step

    def on_train_start(self) -> None:
        """With ``grad_reset="zero"``, a parameter that had a gradient before holds a zero gradient tensor;
        gradients are not in checkpoints, so after a resume they are re-created for every parameter the
        optimizers hold a state for (it was stepped before), keeping a resumed run equal to an uninterrupted one."""
        if self.grad_reset != "zero":
            return
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is None and optimizer.state.get(p):
                        p.grad = torch.zeros_like(p)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """No-op: metric callbacks evaluate the samplers."""

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """No-op: metric callbacks evaluate the samplers."""

    # ------------------------------------------------------------------------------ checkpoint state
    def extra_state(self) -> dict[str, Any]:
        """Method-specific plain state saved with the counters (override together with :meth:`load_extra_state`)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        skips = {"consecutive_skips": dict(self.consecutive_skips)} if self.consecutive_skips else {}
        checkpoint[STATE_KEY] = {"nimg": self.nimg, "iteration": self.iteration, "nan_skips": self.nan_skips,
                                 "base_seed": self._base_seed, **skips, **self.extra_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:
            state = next((checkpoint[k] for k in LEGACY_STATE_KEYS if k in checkpoint), None)
        if state is None:
            raise KeyError(f"checkpoint has no {STATE_KEY!r} entry (kimg counters, seed): it was not written by "
                           f"a StyleShift method module")
        self.nimg, self.iteration = int(state["nimg"]), int(state.get("iteration", 0))
        self.nan_skips = int(state.get("nan_skips", 0))
        self.consecutive_skips = {str(k): int(v) for k, v in (state.get("consecutive_skips") or {}).items()}
        self._base_seed = state.get("base_seed", self._base_seed)
        self._mean_w_cache = {}
        self.load_extra_state(state)

    def load_state_dict(self, *args, **kwargs):
        self._mean_w_cache = {}
        return super().load_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def mean_w(self, generator: nn.Module) -> Tensor:
        """Mean of ``generator``'s W over 4096 fixed z (seed 0), ``[1, style_dim]``: rosinality's
        ``mean_latent(4096)`` with a fixed seed, so truncated samples are deterministic. Cached until the
        counters, the weights (``load_state_dict``) or the device change."""
        key = (self.nimg, self.iteration, self.device)
        cached = self._mean_w_cache.get(id(generator))
        if cached is None or cached[0] != key:
            z = torch.randn(MEAN_W_SAMPLES, generator.style_dim, generator=torch.Generator().manual_seed(MEAN_W_SEED))
            cached = (key, generator.style(z.to(self.device)).mean(0, keepdim=True))
            self._mean_w_cache[id(generator)] = cached
        return cached[1]

    def samplers(self) -> dict[str, Sampler]:
        """Named deterministic image sources (docs/adding_a_method.md, "Samplers"); none by default."""
        return {}

    def metric_samplers(self) -> dict[str, list[str]]:
        """Default samplers of metric kinds that need a particular one (e.g. a path sampler for latent
        smoothness): ``{metric kind: [sampler names]}``; other metrics run on every fitting sampler."""
        return {}

    # ------------------------------------------------------------------------------ export
    @property
    def run_dir(self) -> Path | None:
        """The run directory: the Trainer's ``default_root_dir`` (None when no Trainer is attached)."""
        return Path(self._trainer.default_root_dir) if self._trainer is not None else None

    def export(self, path: Path) -> Path | None:
        """Write the method's product to ``path`` (override; returns the written path)."""
        return None

    @rank_zero_only
    def on_fit_end(self) -> None:
        if self.product_file is None or self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.export(self.run_dir / self.product_file)
        if path is not None:
            log.info("%s: %.3f kimg (%d iterations); exported to %s", type(self).__name__, self.kimg,
                     self.iteration, path)


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (for summaries)."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["MethodModule", "OptimizerGroup", "NonFiniteError", "NAN_POLICIES", "GRAD_RESETS", "STATE_KEY",
           "MEAN_W_SAMPLES", "MEAN_W_SEED",
           "count_parameters"]
