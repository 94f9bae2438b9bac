"""Streaming float64 feature statistics (docs/metrics.md, "FID and KID" and "Distributed evaluation").

:class:`FeatureStats` keeps the three sufficient statistics of FID, each in float64: the count, the sum
of features and the sum of their outer products. They combine across DDP ranks by a plain sum, so a
sharded evaluation equals a single-process one up to float64 summation order. KID needs the features
themselves; with ``capture_all=True`` they are kept with their global sample indices and gathered in
index order, so fixed-seed KID subsets pick the same samples at any world size.
"""
from __future__ import annotations

import numpy as np
import torch

from metrics import ddp


class FeatureStats:
    """Accumulate features ``[B, D]`` into float64 ``n``, ``sum`` and ``outer`` (and optionally keep them)."""

    def __init__(self, capture_all: bool = False):
        self.capture_all = capture_all
        self.n = 0
        self.sum: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None
        self._feats: list[torch.Tensor] = []
        self._indices: list[torch.Tensor] = []
        self.reduced = False

    @property
    def dim(self) -> int | None:
        return None if self.sum is None else int(self.sum.shape[0])

    def append(self, feats: torch.Tensor, indices: torch.Tensor | list[int] | None = None) -> None:
        """Add a batch of features; ``indices`` are the samples' global indices (needed to gather in order)."""
        if feats.ndim != 2:
            raise ValueError(f"features must be [B, D], got {tuple(feats.shape)}")
        f = feats.detach().to(torch.float64)
        if not torch.isfinite(f).all():
            raise ValueError("feature extractor produced NaN/inf features")
        if self.sum is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        elif f.shape[1] != self.sum.shape[0]:
            raise ValueError(f"feature dim changed from {self.sum.shape[0]} to {f.shape[1]}")
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f
        if self.capture_all:
            if indices is None:
                start = self.n - f.shape[0]
                indices = torch.arange(start, self.n)
            self._feats.append(feats.detach().cpu())
            self._indices.append(torch.as_tensor(indices, dtype=torch.long).cpu())

    def reduce(self) -> "FeatureStats":
        """Combine over DDP ranks in place (sum the sums, gather captured features by index)."""
        if self.reduced:
            return self
        if ddp.is_distributed():
            dims = torch.cat(ddp.all_gather_rows(torch.tensor([-1 if self.dim is None else self.dim])))
            dim = int(dims.max().item())
            if dim < 0:
                raise ValueError("no features were accumulated on any rank")
            if self.sum is None:  # this rank's shard was empty (fewer samples than ranks)
                self.sum = torch.zeros(dim, dtype=torch.float64)
                self.outer = torch.zeros(dim, dim, dtype=torch.float64)
            n = ddp.all_reduce_sum(torch.tensor([self.n], dtype=torch.float64))
            self.n = int(n.item())
            self.sum = ddp.all_reduce_sum(self.sum)
            self.outer = ddp.all_reduce_sum(self.outer)
            if self.capture_all:
                idx = torch.cat(self._indices) if self._indices else torch.zeros(0, dtype=torch.long)
                feats = torch.cat(self._feats) if self._feats else torch.zeros(0, dim)
                idx, feats = ddp.gather_by_index(idx, feats)
                self._indices, self._feats = [idx], [feats]
        self.reduced = True
        return self

    def mean(self) -> torch.Tensor:
        self._check()
        return self.sum / self.n

    def cov(self) -> torch.Tensor:
        """Unbiased covariance ``(sum x x^T - n mu mu^T) / (n - 1)`` (same normalisation as ``np.cov``)."""
        self._check()
        if self.n < 2:
            raise ValueError("covariance needs at least 2 samples")
        mu = self.mean()
        return (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)

    def features(self) -> torch.Tensor:
        """All captured features ``[n, D]`` (float64) in global index order."""
        if not self.capture_all:
            raise RuntimeError("features were not captured; create FeatureStats(capture_all=True)")
        self._check()
        idx = torch.cat(self._indices)
        feats = torch.cat(self._feats)
        return feats[torch.argsort(idx)].to(torch.float64)

    def _check(self) -> None:
        if self.sum is None or self.n == 0:
            raise ValueError("no features were accumulated")

    # --- serialisation for the reference-stat cache (plain arrays, no pickles) ---
    def to_arrays(self) -> dict[str, np.ndarray]:
        self._check()
        arrays = {"n": np.array(self.n, dtype=np.int64), "sum": self.sum.cpu().numpy(),
                  "outer": self.outer.cpu().numpy()}
        if self.capture_all:
            arrays["features"] = self.features().numpy()
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "FeatureStats":
        stats = cls(capture_all="features" in arrays)
        stats.n = int(arrays["n"])
        stats.sum = torch.from_numpy(np.asarray(arrays["sum"], dtype=np.float64)).clone()
        stats.outer = torch.from_numpy(np.asarray(arrays["outer"], dtype=np.float64)).clone()
        if stats.capture_all:
            feats = torch.from_numpy(np.asarray(arrays["features"])).clone()
            stats._feats, stats._indices = [feats], [torch.arange(feats.shape[0])]
        stats.reduced = True
        return stats
