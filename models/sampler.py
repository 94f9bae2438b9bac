"""The sampler contract: named, deterministic image sources (docs/adding_a_method.md, "Samplers").

A :class:`Sampler` renders image ``i`` of a stream identified by ``seed`` the same way on every
machine and every rank: the latent of image ``i`` is drawn from ``numpy.random.RandomState(seed + i)``
(NVIDIA's ``generate.py`` convention), so a metric that splits indices across DDP ranks sees exactly
the images a single process would see.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

RenderFn = Callable[[Sequence[int], int], torch.Tensor]


def seeded_normal(indices: Sequence[int], seed: int, dim: int) -> torch.Tensor:
    """Latents ``z_i ~ N(0, I_dim)`` with ``z_i`` drawn from ``RandomState(seed + i)``; shape [len(indices), dim]."""
    rows = [np.random.RandomState((seed + int(i)) % 2**32).randn(dim) for i in indices]
    return torch.from_numpy(np.stack(rows)).float()


@dataclass
class Sampler:
    """A named image source: ``render(indices, seed) -> images [B, 3, H, W] in [-1, 1]``.

    ``render`` must be a pure function of ``(indices, seed)`` and the current weights; callers put the
    networks in eval mode and run it under ``torch.no_grad()``. ``kind`` tells dashboards how to show it
    (``"grid"`` for independent samples, ``"strip"`` for ordered paths such as interpolations).
    ``truncation`` is the psi the images are rendered at (None: not a truncated latent sampler); metric
    protocols record it, so values at different psi never mix.
    """

    render: RenderFn
    kind: str = "grid"
    truncation: float | None = None

    def batches(self, n: int, seed: int, batch_size: int = 16,
                indices: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        """Yield the images of ``indices`` (default ``range(n)``) in batches of ``batch_size``."""
        idx = list(range(n)) if indices is None else list(indices)
        for start in range(0, len(idx), batch_size):
            yield self.render(idx[start:start + batch_size], seed)

    def __call__(self, n: int, seed: int, batch_size: int = 16) -> torch.Tensor:
        """All ``n`` images of stream ``seed`` concatenated on the batch axis."""
        return torch.cat(list(self.batches(n, seed, batch_size)), dim=0)


@dataclass
class DomainSampler(Sampler):
    """One domain of a multi-domain generator; image ``i`` shares its latent with image ``i`` of ``source``.

    ``score(x_source, x_domain) -> [B]`` is the domain's own task score of each image pair (lower = more of
    the domain; None: the domain has none); ``prompt`` is ``(source_text, target_text)`` for a domain
    described by text. Metrics compare every domain against every score and prompt (leakage).
    """

    source: str = "base"
    domain: str = ""
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    prompt: tuple[str, str] | None = None


@dataclass
class StyleSampler(Sampler):
    """Exemplar-based style transfer (DualStyleGAN; docs/metrics.md, "Style transfer"): image ``i`` is the content
    of image ``i`` of the sampler named ``content`` (the same latent without the style) rendered in the style of
    the exemplar ``exemplar``.

    ``exemplar_image() -> [1, 3, H, W]`` in [-1, 1] is the exemplar itself (None: not available, e.g. no style
    folder); ``reference(indices, seed) -> [B, 3, H, W]`` renders the content images directly and takes
    precedence over ``content`` (e.g. real content photos that no sampler renders).
    """

    content: str = "intrinsic"
    exemplar: str = ""
    exemplar_image: Callable[[], torch.Tensor] | None = None
    reference: RenderFn | None = None


def latent_sampler(generate: Callable[[torch.Tensor], torch.Tensor], z_dim: int,
                   device: torch.device | str | Callable[[], torch.device] = "cpu",
                   kind: str = "grid", truncation: float | None = None) -> Sampler:
    """A sampler that feeds seeded ``z`` [B, z_dim] to ``generate(z) -> images``.

    ``device`` may be a callable so the sampler follows a module moved between devices after creation;
    ``truncation`` is the psi ``generate`` renders at (recorded in metric protocols).
    """

    def render(indices: Sequence[int], seed: int) -> torch.Tensor:
        dev = device() if callable(device) else device
        z = seeded_normal(indices, seed, z_dim).to(dev)
        return generate(z)

    return Sampler(render=render, kind=kind, truncation=truncation)


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


__all__ = ["Sampler", "PathSampler", "DomainSampler", "StyleSampler", "seeded_normal", "latent_sampler", "path_latents",
           "w_interpolation_sampler"]
