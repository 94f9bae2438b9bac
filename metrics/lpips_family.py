"""The LPIPS family of metrics (docs/metrics.md, "The LPIPS family").

* :func:`load_lpips`: ``lpips.LPIPS`` with the package's calibrated linear heads and the torchvision
  ImageNet trunk loaded from the asset registry (``lpips-alex`` / ``lpips-vgg`` / ``lpips-squeeze``);
  never downloads. ``trunk=None`` keeps a random trunk (tests only).
* :class:`LPIPSDistance`: batched LPIPS on uint8 images, converted to [-1, 1] (the package's input range;
  feeding [0, 1] is a classic mistake that inflates similarity), optionally resized first.
* :func:`intra_cluster_lpips`: CDC's intra-cluster LPIPS (Ojha et al. 2021; docs/metrics.md, "Intra-cluster
  LPIPS (CDC)"): assign every generated image to its nearest training image by LPIPS (ties -> lowest index),
  keep at most ``cluster_size`` members per cluster in a seeded random order, average LPIPS over all
  unordered member pairs per cluster, then average over clusters (clusters with < 2 members are dropped).
* :func:`pairwise_diversity`: mean LPIPS over all unordered pairs of samples (MixDL ``compute_lpips.py``).
* :func:`reconstruction_scores`: LPIPS, PSNR, SSIM (torchmetrics) and MSE between reconstructions and targets.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metrics.features import sha256_file, sha256_module

LPIPS_NETS = ("alex", "vgg", "squeeze")


def lpips_asset(net: str) -> str:
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {LPIPS_NETS}")
    return f"lpips-{net}"


def load_trunk_state(trunk: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a torchvision ``alexnet``/``vgg16``/``squeezenet1_1`` state dict into an lpips trunk.

    The lpips trunks re-slice torchvision's ``features`` Sequential keeping each layer's index as its
    name (``slice2.3`` is ``features.3``), so ``features.<i>.<p>`` maps to ``slice<k>.<i>.<p>``.
    """
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    mapped = {}
    for key in trunk.state_dict():
        _, index, param = key.split(".", 2)
        src = f"features.{index}.{param}"
        if src not in state:
            raise KeyError(f"trunk weights lack {src!r} (needed for {key!r}); is this a torchvision "
                           f"{type(trunk).__name__} state dict?")
        if state[src].shape != trunk.state_dict()[key].shape:
            raise ValueError(f"trunk weight {src} has shape {tuple(state[src].shape)}, "
                             f"expected {tuple(trunk.state_dict()[key].shape)}")
        mapped[key] = state[src]
    trunk.load_state_dict(mapped, strict=True)


def load_lpips(net: str = "vgg", trunk: str | os.PathLike | None = "auto",
               device: torch.device | str = "cpu") -> tuple[torch.nn.Module, str, str]:
    """``(model, name, sha256)``: frozen ``lpips.LPIPS(net)`` in eval mode.

    ``trunk="auto"`` resolves ``lpips-<net>`` through ``models.assets``; a path loads that file;
    ``None`` leaves the trunk random (name gets a ``-randtrunk`` suffix so it never passes for the real one).
    """
    import lpips

    name = lpips_asset(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision 'pretrained' deprecation
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    if trunk is None:
        name += "-randtrunk"
        sha = sha256_module(model)
    else:
        if trunk == "auto":
            from models.assets import resolve

            trunk = resolve(name)
        state = torch.load(Path(trunk), map_location="cpu", weights_only=True)
        load_trunk_state(model.net, state)
        sha = sha256_file(trunk)
    model = model.to(device).eval().requires_grad_(False)
    return model, name, sha


@dataclass
class LPIPSDistance:
    """Batched LPIPS between uint8 image batches (``resolution``: bilinear antialiased resize first,
    as CDC's ``Resize(256)``; ``None`` keeps the native size)."""

    model: torch.nn.Module
    name: str
    sha256: str
    resolution: int | None = None
    batch_size: int = 16

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def resize(self) -> str:
        return "none" if self.resolution is None else f"bilinear{self.resolution}"

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W] -> float [-1, 1] on the model's device (resized if configured)."""
        if images.dtype != torch.uint8:
            raise TypeError("LPIPSDistance.prepare takes uint8 images (quantize generated images first)")
        x = images.to(self.device).float() / 127.5 - 1.0
        if self.resolution is not None and x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False, antialias=True)
        return x

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS of prepared pairs ``a[i], b[i]`` -> float64 ``[B]`` (on CPU)."""
        if a.shape != b.shape:
            raise ValueError(f"LPIPS pairs need equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
        out = [self.model(a[s:s + self.batch_size], b[s:s + self.batch_size]).flatten()
               for s in range(0, a.shape[0], self.batch_size)]
        return torch.cat(out).double().cpu() if out else torch.zeros(0, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Intra-cluster LPIPS (CDC)


def nearest_center(dist: LPIPSDistance, images: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of the LPIPS-nearest center for each prepared image (ties -> lowest index, as argmin)."""
    n, k = images.shape[0], centers.shape[0]
    d = dist(images.repeat_interleave(k, 0), centers.repeat(n, 1, 1, 1)).view(n, k)
    return torch.from_numpy(np.argmin(d.numpy(), axis=1))


def select_members(assignment: np.ndarray, num_clusters: int, cluster_size: int, seed: int) -> list[np.ndarray]:
    """Per cluster: the member indices in a ``RandomState(seed)`` permutation, cut to ``cluster_size``.

    One generator is used for the clusters in order ``0..K-1``, so the selection is a pure function of
    ``(assignment, cluster_size, seed)``.
    """
    rng = np.random.RandomState(seed)
    assignment = np.asarray(assignment)
    return [rng.permutation(np.flatnonzero(assignment == c))[:cluster_size] for c in range(num_clusters)]


def cluster_pairs(members: list[np.ndarray]) -> list[tuple[int, int, int]]:
    """All ``(cluster, i, j)`` with ``i < j`` positions within each cluster's member list."""
    return [(c, int(m[i]), int(m[j])) for c, m in enumerate(members)
            for i in range(len(m)) for j in range(i + 1, len(m))]


@dataclass
class IntraLPIPSResult:
    value: float
    std: float
    cluster_means: list[float]
    cluster_sizes: list[int] = field(default_factory=list)


def summarize_clusters(sums: np.ndarray, counts: np.ndarray, sizes: list[int]) -> IntraLPIPSResult:
    """Mean over clusters of per-cluster mean pair distance; clusters without pairs are NaN and dropped."""
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    valid = means[~np.isnan(means)]
    if valid.size == 0:
        raise ValueError("intra-cluster LPIPS undefined: no cluster has 2 or more members")
    return IntraLPIPSResult(float(valid.mean()), float(valid.std()), means.tolist(), list(sizes))


def intra_cluster_lpips(dist: LPIPSDistance, images: torch.Tensor, centers: torch.Tensor,
                        cluster_size: int = 50, seed: int = 0) -> IntraLPIPSResult:
    """CDC intra-cluster LPIPS of uint8 ``images`` around uint8 training ``centers`` (one process)."""
    gen = dist.prepare(images)
    cen = dist.prepare(centers)
    assign = nearest_center(dist, gen, cen).numpy()
    members = select_members(assign, cen.shape[0], cluster_size, seed)
    pairs = cluster_pairs(members)
    sums, counts = np.zeros(cen.shape[0]), np.zeros(cen.shape[0])
    if pairs:
        c, i, j = (np.array(v) for v in zip(*pairs))
        d = dist(gen[torch.from_numpy(i)], gen[torch.from_numpy(j)]).numpy()
        np.add.at(sums, c, d)
        np.add.at(counts, c, 1)
    return summarize_clusters(sums, counts, [len(m) for m in members])


# --------------------------------------------------------------------------------------------------
# Diversity and reconstruction


def all_pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def pairwise_diversity(dist: LPIPSDistance, images: torch.Tensor) -> float:
    """Mean LPIPS over all unordered pairs of uint8 ``images`` (MixDL's diversity)."""
    if images.shape[0] < 2:
        raise ValueError("pairwise diversity needs at least 2 images")
    x = dist.prepare(images)
    i, j = (torch.tensor(v) for v in zip(*all_pairs(images.shape[0])))
    return float(dist(x[i], x[j]).mean())


def reconstruction_scores(dist: LPIPSDistance, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image ``lpips``, ``psnr`` (dB, [0, 1] scale), ``ssim`` ([0, 1] scale, torchmetrics defaults)
    and ``mse`` ([-1, 1] scale) between uint8 reconstructions ``pred`` and uint8 ``target``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if pred.shape != target.shape:
        raise ValueError(f"reconstruction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    p01, t01 = pred.double() / 255.0, target.double() / 255.0
    psnr = peak_signal_noise_ratio(p01, t01, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(p01, t01, data_range=1.0, reduction="none")
    mse = ((p01 - t01) * 2).pow(2).mean(dim=(1, 2, 3))
    lp = dist(dist.prepare(pred), dist.prepare(target))
    return {"lpips": lp, "psnr": psnr.cpu(), "ssim": ssim.cpu(), "mse": mse.cpu()}
