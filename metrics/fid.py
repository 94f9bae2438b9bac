"""Fréchet Inception Distance and Kernel Inception Distance (docs/metrics.md, "FID and KID").

* FID: ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})`` in float64. The trace of the matrix
  square root is computed as ``sum sqrt(eig(S1^{1/2} S2 S1^{1/2}))`` with symmetric eigen-solvers in
  torch (runs on the GPU when the stats live there; no ``scipy.linalg.sqrtm``, which is slow on CPU and
  unstable for near-singular products). ``S1^{1/2} S2 S1^{1/2}`` is similar to ``S1 S2`` and PSD, so its
  eigenvalues are the (real, non-negative) eigenvalues of ``S1 S2``.
* KID: the unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over
  ``num_subsets`` random subsets of size ``m = min(n_gen, n_ref, subset_size)`` (NVIDIA/clean-fid
  formula). The subsets come from ``numpy.random.RandomState(seed)``, drawn in clean-fid's order
  (reference subset, then generated subset), so the value is reproducible and independent of world size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metrics.stats import FeatureStats


def _sqrtm_psd(mat: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((mat + mat.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mu1, mu2, sigma1, sigma2))
    sigma2 = sigma2.to(sigma1.device)
    mu2 = mu2.to(mu1.device)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics have different shapes: {tuple(mu1.shape)} vs {tuple(mu2.shape)}")
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not torch.isfinite(a).all():
            raise ValueError(f"{name} contains NaN/inf")
    diff = mu1 - mu2
    root1 = _sqrtm_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    value = diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return float(value)


def fid_from_stats(gen: FeatureStats, ref: FeatureStats) -> float:
    """FID between two accumulated (and reduced) :class:`FeatureStats`."""
    if gen.dim != ref.dim:
        raise ValueError(f"feature dims differ: generated {gen.dim} vs reference {ref.dim}; "
                         "were they made by the same extractor?")
    return frechet_distance(gen.mean(), gen.cov(), ref.mean(), ref.cov())


def fid_from_features(feats1, feats2) -> float:
    """FID between two feature arrays ``[n, D]`` (mean and unbiased covariance in float64)."""
    stats = []
    for f in (feats1, feats2):
        s = FeatureStats()
        s.append(torch.as_tensor(np.asarray(f)))
        stats.append(s)
    return fid_from_stats(*stats)


@dataclass(frozen=True)
class KIDResult:
    value: float
    std: float
    subset_size: int
    num_subsets: int


def kernel_inception_distance(feats_gen, feats_ref, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0, device: torch.device | str | None = None) -> KIDResult:
    """KID between generated and reference features ``[n, D]`` with fixed-seed subsets (see module doc)."""
    gen = torch.as_tensor(np.asarray(feats_gen) if not torch.is_tensor(feats_gen) else feats_gen)
    ref = torch.as_tensor(np.asarray(feats_ref) if not torch.is_tensor(feats_ref) else feats_ref)
    device = device or gen.device
    gen, ref = gen.to(device, torch.float64), ref.to(device, torch.float64)
    if gen.ndim != 2 or ref.ndim != 2 or gen.shape[1] != ref.shape[1]:
        raise ValueError(f"KID needs [n, D] features of equal D, got {tuple(gen.shape)} and {tuple(ref.shape)}")
    d = gen.shape[1]
    m = min(gen.shape[0], ref.shape[0], subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(num_subsets):
        x = ref[torch.from_numpy(rng.choice(ref.shape[0], m, replace=False)).to(device)]
        y = gen[torch.from_numpy(rng.choice(gen.shape[0], m, replace=False)).to(device)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        t = (a.sum() - a.diagonal().sum()) / (m - 1) - b.sum() * 2 / m
        values.append(float(t) / m)
    vals = np.array(values, dtype=np.float64)
    return KIDResult(float(vals.mean()), float(vals.std()), m, num_subsets)
