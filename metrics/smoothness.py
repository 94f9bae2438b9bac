"""Latent smoothness along W paths: is the latent space smooth or "stair-like"?
(docs/metrics.md, "Latent smoothness")

MixDL's ``ppl_uniformity.py`` walks straight paths ``w(t) = lerp(w_a, w_b, t)`` in W with step
``eps = 1 / T`` and measures the perceptual distance of consecutive frames, PPL-style::

    d_pk = LPIPS(G(w_p(k eps)), G(w_p((k + 1) eps))) / eps^2          k = 0 .. T-1, path p = 0 .. P-1

    mean        = mean_pk d_pk                                     (average perceptual speed)
    uniformity  = mean_p std_k d_pk                                (the reference's per-path std, averaged)
    endpoint    = mean_p LPIPS(G(w_a), G(w_b))                     (how far apart the path ends are)

A generator that memorised its training images jumps from one image to the next somewhere along the path
and is flat elsewhere: high ``uniformity`` (and a large share of the path's distance in one step). Two
scale-free summaries are added because ``uniformity`` grows with ``mean``:

    cv          = mean_p (std_k d_pk / mean_k d_pk)                (0 = constant speed)
    max_share   = mean_p (max_k d_pk / sum_k d_pk)                 (1 / T = constant speed, 1 = one jump)

Standard deviations are population ones (``ddof = 0``). The frames come from a path sampler: ``T + 1``
consecutive images per path (``frames_per_path``), path ``p`` = images ``p (T+1) .. p (T+1) + T`` of the
sampler's seeded stream (``models.sampler.w_interpolation_sampler``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from metrics import ddp
from metrics.streams import progress, render_uint8

DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["SmoothnessResult", "segment_distances", "summarize_paths", "latent_smoothness"]


@dataclass
class SmoothnessResult:
    mean: float
    uniformity: float
    cv: float
    max_share: float
    endpoint: float
    num_paths: int
    steps: int

    def as_dict(self) -> dict:
        return asdict(self)


def segment_distances(distance: DistanceFn, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances of consecutive frames [P, T] and of each path's end points [P].

    ``frames`` [P, T+1, C, H, W] are prepared images (e.g. ``LPIPSDistance.prepare``); ``distance(a, b)``
    returns one value per pair of rows.
    """
    if frames.dim() != 5 or frames.shape[1] < 2:
        raise ValueError(f"frames must be [paths, frames >= 2, C, H, W], got {tuple(frames.shape)}")
    p, f = frames.shape[:2]
    a = frames[:, :-1].reshape(p * (f - 1), *frames.shape[2:])
    b = frames[:, 1:].reshape(p * (f - 1), *frames.shape[2:])
    segments = torch.as_tensor(distance(a, b), dtype=torch.float64).reshape(p, f - 1)
    ends = torch.as_tensor(distance(frames[:, 0], frames[:, -1]), dtype=torch.float64).reshape(p)
    return segments, ends


def summarize_paths(segments: np.ndarray | torch.Tensor, endpoint: np.ndarray | torch.Tensor) -> SmoothnessResult:
    """The summaries of the module docstring from raw segment distances [P, T] (step ``1 / T``)."""
    seg = np.asarray(segments, dtype=np.float64)
    ends = np.asarray(endpoint, dtype=np.float64).reshape(-1)
    if seg.ndim != 2 or seg.shape[0] < 1 or seg.shape[1] < 1 or ends.shape[0] != seg.shape[0]:
        raise ValueError(f"need segments [P, T] and endpoint [P], got {seg.shape} and {ends.shape}")
    if not (np.isfinite(seg).all() and np.isfinite(ends).all()):
        raise ValueError("path distances contain NaN/inf; refusing to summarize them")
    steps = seg.shape[1]
    speed = seg * steps ** 2  # d / eps^2 with eps = 1 / T
    std = speed.std(axis=1)
    mean_p = speed.mean(axis=1)
    total = seg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(mean_p > 0, std / np.where(mean_p > 0, mean_p, 1.0), 0.0)
        share = np.where(total > 0, seg.max(axis=1) / np.where(total > 0, total, 1.0), 1.0 / steps)
    return SmoothnessResult(mean=float(speed.mean()), uniformity=float(std.mean()), cv=float(cv.mean()),
                            max_share=float(share.mean()), endpoint=float(ends.mean()),
                            num_paths=int(seg.shape[0]), steps=int(steps))


@torch.no_grad()
def latent_smoothness(dist, sampler, num_paths: int, seed: int = 0, batch_paths: int = 4,
                      show_progress: bool = True) -> SmoothnessResult:
    """Latent smoothness of ``num_paths`` paths of a path sampler, paths sharded over DDP ranks.

    ``dist`` is a :class:`metrics.lpips_family.LPIPSDistance` (``prepare`` + batched call); ``sampler``
    needs ``frames_per_path`` (see the module docstring). Images are quantized to uint8 first, like every
    other metric. All ranks must call this together; the result is the same on every rank.
    """
    frames = getattr(sampler, "frames_per_path", None)
    if not isinstance(frames, int) or frames < 2:
        raise TypeError(f"latent smoothness needs a path sampler with frames_per_path >= 2 (e.g. the "
                        f"'interpolation' sampler), got {type(sampler).__name__} with frames_per_path={frames!r}")
    if num_paths < 1:
        raise ValueError(f"num_paths must be >= 1, got {num_paths}")
    mine = ddp.shard(num_paths)
    chunks = [mine[s:s + batch_paths] for s in range(0, len(mine), batch_paths)]
    seg_rows, end_rows = [], []
    for chunk in progress(chunks, len(chunks), "latent smoothness", show_progress):
        indices = [p * frames + k for p in chunk for k in range(frames)]
        images = dist.prepare(render_uint8(sampler, indices, seed))
        seg, ends = segment_distances(dist, images.reshape(len(chunk), frames, *images.shape[1:]))
        seg_rows.append(seg.cpu())
        end_rows.append(ends.cpu())
    t = frames - 1
    local_idx = torch.tensor(mine, dtype=torch.long)
    if mine:
        local = torch.cat([torch.cat(seg_rows), torch.cat(end_rows)[:, None]], 1)
    else:
        local = torch.zeros(0, t + 1, dtype=torch.float64)
    _, rows = ddp.gather_by_index(local_idx, local)
    return summarize_paths(rows[:, :t].numpy(), rows[:, t].numpy())
