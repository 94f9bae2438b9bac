"""Plumbing of the MixDL training step and its interpolation sampler (spec idinvert_mixdl.md §2.3, §2.7).

* :class:`OptimizerGroup`: several optimizers stepped as one, so a training phase of the shared core
  (``StyleGAN2Core._phase``) can update D, its projection head and the patch heads together; the D phases
  of a mixup iteration step both ``d_optim`` and the patch heads' own optimizer (spec §2.3 "step both
  d_optim and e_optim").
* :func:`trainable`: which networks receive gradients in a phase (G frozen in D phases and vice versa).
* :class:`PathSampler` / :func:`w_interpolation_sampler`: straight paths in W between fixed z's, rendered
  frame by frame with the EMA generator (MixDL's interpolation strips and the latent-smoothness metric,
  ``ppl_uniformity.py``: step 1/steps along the segment w_a -> w_b).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from models.sampler import Sampler, seeded_normal

__all__ = ["OptimizerGroup", "trainable", "PathSampler", "w_interpolation_sampler", "path_latents"]


class OptimizerGroup:
    """Optimizers used as one: ``param_groups`` concatenated, ``zero_grad`` and ``step`` applied to each.

    Each optimizer keeps its own state (and its own entry in Lightning checkpoints).
    """

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


@contextmanager
def trainable(train: Iterable[nn.Module], frozen: Iterable[nn.Module]) -> Iterator[None]:
    """``requires_grad`` on for the parameters of ``train``, off for ``frozen``; restored afterwards."""
    train, frozen = list(train), list(frozen)
    saved = [(p, p.requires_grad) for m in [*train, *frozen] for p in m.parameters()]
    try:
        for m in frozen:
            m.requires_grad_(False)
        for m in train:
            m.requires_grad_(True)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def path_latents(generator: nn.Module, indices: Sequence[int], seed: int, frames_per_path: int) -> torch.Tensor:
    """W [len(indices), style_dim] of frames ``indices`` of stream ``seed``.

    Frame ``i`` lies on path ``p = i // frames_per_path`` at ``t = (i % frames_per_path) / (frames_per_path - 1)``:
    ``w = lerp(w_a, w_b, t)`` with ``w_a, w_b`` the mapped latents of images ``2p`` and ``2p + 1`` of the
    seeded stream (``models.sampler.seeded_normal``), so every frame is a pure function of ``(i, seed)``.
    """
    if frames_per_path < 2:
        raise ValueError(f"a path needs at least 2 frames, got {frames_per_path}")
    paths = sorted({int(i) // frames_per_path for i in indices})
    ends = [k for p in paths for k in (2 * p, 2 * p + 1)]
    device = next(generator.parameters()).device
    w = generator.style(seeded_normal(ends, seed, generator.style_dim).to(device))
    w_a, w_b = w[0::2], w[1::2]
    row = {p: r for r, p in enumerate(paths)}
    which = torch.tensor([row[int(i) // frames_per_path] for i in indices], device=device)
    t = torch.tensor([(int(i) % frames_per_path) / (frames_per_path - 1) for i in indices],
                     device=device, dtype=w.dtype).unsqueeze(1)
    return torch.lerp(w_a[which], w_b[which], t)


@dataclass
class PathSampler(Sampler):
    """A ``"strip"`` sampler whose images come in consecutive paths of ``frames_per_path`` frames."""

    frames_per_path: int = 11

    @property
    def steps(self) -> int:
        """Segments per path (the path step is ``1 / steps``)."""
        return self.frames_per_path - 1


def w_interpolation_sampler(generator: nn.Module, steps: int,
                            device: Callable[[], torch.device] | None = None) -> PathSampler:
    """Paths of ``steps + 1`` frames in W between fixed z's, rendered by ``generator`` with stored noise.

    ``generator`` is a rosinality-compatible generator (the EMA copy during training). Images are
    clamped to [-1, 1].
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"interpolation steps must be an integer >= 1, got {steps}")
    frames = int(steps) + 1

    def render(indices: Sequence[int], seed: int) -> torch.Tensor:
        w = path_latents(generator, indices, seed, frames)
        if device is not None:
            w = w.to(device())
        images, _ = generator([w], input_is_latent=True, randomize_noise=False)
        return images.clamp(-1, 1)

    return PathSampler(render=render, kind="strip", frames_per_path=frames)
