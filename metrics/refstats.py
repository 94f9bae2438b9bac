"""Reference-statistics cache and its CLI (issue "Evaluation" §2; spec frameworks.md §4.1 item 4).

Reference statistics (float64 ``n``/``sum``/``outer`` and, for KID, the features) are computed once per
(dataset content, extractor weights, resize, x-flip) and stored under ``<cache root>/refstats/``. The
key is a sha256 of those fields: the dataset's ``content_hash`` (not its path), the extractor's name and
weight hash, the resize and the x-flip. Files are plain ``.npz`` arrays (loaded with
``allow_pickle=False``) holding their own metadata and a checksum of the arrays; a file that fails to
load, belongs to another key or fails its checksum is reported and rebuilt. Writes are atomic
(temporary file + ``os.replace``). Under DDP rank 0 loads or computes and broadcasts to the other ranks.

CLI::

    python -m metrics.refstats compute --data DIR --resolution R [--which full|train] [--features]
    python -m metrics.refstats compute --toy [--resolution R] [--toy-images N]
    python -m metrics.refstats verify [--data DIR --resolution R | --toy]   # checksums (+ recompute)
    python -m metrics.refstats list
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
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


# --------------------------------------------------------------------------------------------------
# CLI


def _reference_from_args(args) -> ReferenceSet:
    if args.toy:
        from datamodules.toy import ToyDataModule

        kwargs = {"resolution": args.resolution} if args.resolution else {}
        if args.toy_images:
            kwargs["num_images"] = args.toy_images
        dm = ToyDataModule(**kwargs)
    else:
        if not args.data or not args.resolution:
            raise SystemExit("name a dataset: --data DIR_OR_ZIP --resolution R, or --toy")
        from datamodules.images import ImageDataModule

        dm = ImageDataModule(path=args.data, resolution=args.resolution)
    dm.setup("fit")
    return dm.reference_set(args.which)


def _cmd_compute(args, cache: ReferenceStatsCache) -> int:
    from metrics.features import build_extractor

    extractor = build_extractor(args.extractor, device=args.device)  # fails fast on a missing weights file
    reference = _reference_from_args(args)
    t0 = time.perf_counter()
    stats = cache.get(reference, extractor, need_features=args.features)
    action = "computed" if cache.computed else "already cached"
    print(f"{reference.name}: {stats.n} images, dim {stats.dim}, {action} in {time.perf_counter() - t0:.2f}s "
          f"-> {cache.path_for(reference, extractor)}")
    return 0


def _cmd_verify(args, cache: ReferenceStatsCache) -> int:
    bad = 0
    for path, _meta, err in cache.entries():
        print(f"{'OK     ' if err is None else 'CORRUPT'} {path.name}" + (f"  ({err})" if err else ""))
        bad += err is not None
    if args.data or args.toy:
        from metrics.features import build_extractor

        extractor = build_extractor(args.extractor, device=args.device)
        reference = _reference_from_args(args)
        path = cache.path_for(reference, extractor)
        if not path.exists():
            print(f"MISSING {path.name}: no cached stats for {reference.name} with {extractor.name}")
            return 1
        cached = FeatureStats.from_arrays(read_entry(path, cache_fields(reference, extractor))[0])
        fresh = reference_stats_direct(reference, extractor, cache.batch_size)
        err = float(max((cached.mean() - fresh.mean()).abs().max(), (cached.cov() - fresh.cov()).abs().max()))
        ok = cached.n == fresh.n and err <= 1e-6 * max(1.0, float(fresh.cov().abs().max()))
        print(f"{'MATCH  ' if ok else 'DIFFERS'} {path.name}: recomputed stats differ by {err:.3g} (max abs)")
        bad += not ok
    return 1 if bad else 0


def _cmd_list(args, cache: ReferenceStatsCache) -> int:
    rows = cache.entries()
    if not rows:
        print(f"no reference stats under {cache.root}")
        return 0
    print(f"{'file':<60} {'images':>7} {'extractor':<22} {'resize':<18} {'features':<8} created")
    for path, meta, err in rows:
        if err:
            print(f"{path.name:<60} CORRUPT: {err}")
            continue
        f = meta["fields"]
        print(f"{path.name:<60} {f['length']:>7} {f['extractor']:<22} {f['resize']:<18} "
              f"{str(meta.get('has_features', '?')):<8} {meta['created']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metrics.refstats", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("compute", "verify", "list"))
    parser.add_argument("--data", help="image folder or dataset zip")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--toy", action="store_true", help="use the procedural toy dataset")
    parser.add_argument("--toy-images", type=int, help="number of toy images (default: the datamodule's)")
    parser.add_argument("--which", default="full", choices=("full", "train"))
    parser.add_argument("--extractor", default="inception")
    parser.add_argument("--features", action="store_true", help="also keep the features (needed by KID)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache", help="cache folder (default: <STYLESHIFT_CACHE>/refstats)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = {"compute": _cmd_compute, "verify": _cmd_verify, "list": _cmd_list}[args.command]
    try:
        return command(args, ReferenceStatsCache(args.cache, batch_size=args.batch_size))
    except (FileNotFoundError, ValueError, KeyError) as e:  # bad paths, missing weights, bad options
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
