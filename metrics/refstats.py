"""Reference-statistics cache (README, "Evaluation"; clean-fid's reference statistics, Parmar et al. 2022).

Reference statistics (float64 ``n``/``sum``/``outer`` and, for KID, the features) are computed once per
(dataset content, extractor weights, resize, x-flip) and stored under ``<cache root>/refstats/``. The
key is a sha256 of those fields: the dataset's ``content_hash`` (not its path), the extractor's name and
weight hash, the resize and the x-flip. Files are plain ``.npz`` arrays (loaded with
``allow_pickle=False``) holding their own metadata and a checksum of the arrays; a file that fails to
load, belongs to another key or fails its checksum is reported and rebuilt. Writes are atomic
(temporary file + ``os.replace``). Under DDP rank 0 loads or computes and broadcasts to the other ranks.

The command line (``python -m launch.refstats compute | verify | list``) lives in :mod:`launch.refstats`,
because it builds datamodules.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from metrics import ddp
from metrics.features import FeatureExtractor
from metrics.reference import ReferenceSet
from metrics.stats import FeatureStats
from metrics.streams import reference_stats_direct

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_ARRAYS = ("n", "sum", "outer", "features")


class CorruptCacheFile(ValueError):
    """A cache file exists but cannot be trusted (unreadable, wrong key or bad checksum)."""


def default_root() -> Path:
    """``<models.assets.cache_root()>/refstats`` (honours ``STYLESHIFT_CACHE``)."""
    from models.assets import cache_root

    return Path(cache_root()) / "refstats"


def cache_fields(reference: ReferenceSet, extractor: FeatureExtractor) -> dict:
    """The fields that identify one reference-statistics entry."""
    return {"format": FORMAT_VERSION, "content_hash": reference.content_hash, "length": len(reference),
            "xflip": bool(reference.xflip), "extractor": extractor.name,
            "extractor_sha256": extractor.sha256, "resize": extractor.resize}


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in _ARRAYS:
        if name in arrays:
            a = np.ascontiguousarray(arrays[name])
            h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def write_entry(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Atomically write ``arrays`` + ``meta`` (JSON, with the arrays' checksum) to ``path``."""
    meta = dict(meta, checksum=_checksum(arrays), created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    payload = dict(arrays, meta=np.frombuffer(json.dumps(meta, sort_keys=True, default=str).encode(), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_entry(path: Path, expect_fields: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Load and validate one cache file; raise :class:`CorruptCacheFile` if it cannot be trusted."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "meta"}
            meta = json.loads(bytes(z["meta"]).decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CorruptCacheFile(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    if meta.get("checksum") != _checksum(arrays):
        raise CorruptCacheFile(f"{path}: checksum mismatch (file modified or truncated)")
    if expect_fields is not None and meta.get("fields") != expect_fields:
        raise CorruptCacheFile(f"{path}: written for another dataset/extractor")
    return arrays, meta


class ReferenceStatsCache:
    """``get(reference, extractor)`` -> :class:`FeatureStats`, computed at most once per key.

    ``computed`` and ``loaded`` count what happened (the cache tests and the logs use them).
    """

    def __init__(self, root: str | os.PathLike | None = None, batch_size: int = 64, show_progress: bool = True):
        self.root = Path(root) if root is not None else default_root()
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.computed = 0
        self.loaded = 0

    def path_for(self, reference: ReferenceSet, extractor: FeatureExtractor) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", reference.name).strip("-")[:48] or "reference"
        return self.root / f"{safe}-{cache_key(cache_fields(reference, extractor))}.npz"

    def get(self, reference: ReferenceSet, extractor: FeatureExtractor, need_features: bool = False) -> FeatureStats:
        """Reference stats (with features if ``need_features``); rank 0 loads/computes, all ranks receive."""
        arrays = self._get_rank_zero(reference, extractor, need_features) if ddp.is_rank_zero() else None
        arrays = ddp.broadcast_object(arrays)
        return FeatureStats.from_arrays(arrays)

    def _get_rank_zero(self, reference, extractor, need_features) -> dict[str, np.ndarray]:
        if extractor.sha256 is None:
            log.info("extractor %s has no weight hash; reference stats are not cached", extractor.name)
            return self._compute(reference, extractor, need_features)
        fields = cache_fields(reference, extractor)
        path = self.path_for(reference, extractor)
        if path.exists():
            t0 = time.perf_counter()
            try:
                arrays, _ = read_entry(path, fields)
                if not need_features or "features" in arrays:
                    self.loaded += 1
                    log.info("reference stats %s loaded from %s in %.2fs", reference.name, path,
                             time.perf_counter() - t0)
                    return arrays
                log.info("cached reference stats %s lack features (needed for KID); recomputing", path)
            except CorruptCacheFile as e:
                log.warning("corrupt reference-stat cache file, rebuilding it: %s", e)
                path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        arrays = self._compute(reference, extractor, need_features)
        write_entry(path, arrays, {"fields": fields, "reference": reference.name, "info": reference.info,
                                   "has_features": "features" in arrays})
        log.info("reference stats %s computed in %.2fs and cached at %s", reference.name,
                 time.perf_counter() - t0, path)
        return arrays

    def _compute(self, reference, extractor, need_features) -> dict[str, np.ndarray]:
        self.computed += 1
        stats = reference_stats_direct(reference, extractor, self.batch_size, capture_all=need_features,
                                       show_progress=self.show_progress)
        return stats.to_arrays()

    def entries(self) -> list[tuple[Path, dict | None, str | None]]:
        """``(path, meta or None, error or None)`` for every cache file."""
        out = []
        for path in sorted(self.root.glob("*.npz")) if self.root.is_dir() else []:
            try:
                _, meta = read_entry(path)
                out.append((path, meta, None))
            except CorruptCacheFile as e:
                out.append((path, None, str(e)))
        return out


if __name__ == "__main__":  # the CLI builds datamodules, so it lives in the launcher
    import sys

    print("the reference-statistics CLI is `python -m launch.refstats compute | verify | list`", file=sys.stderr)
    sys.exit(2)
