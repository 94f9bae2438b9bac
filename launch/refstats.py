"""Command line of the reference-statistics cache (:mod:`metrics.refstats`; README, "Evaluation").

::

    python -m launch.refstats compute --data DIR --resolution R [--which full|train] [--features]
    python -m launch.refstats compute --toy [--resolution R] [--toy-images N]
    python -m launch.refstats verify [--data DIR --resolution R | --toy]   # checksums (+ recompute)
    python -m launch.refstats list

It lives in the launcher because it builds a datamodule to get the reference images; the cache itself
(:class:`metrics.refstats.ReferenceStatsCache`) knows only :class:`metrics.reference.ReferenceSet`.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from metrics.features import build_extractor
from metrics.reference import ReferenceSet
from metrics.refstats import ReferenceStatsCache, cache_fields, read_entry
from metrics.stats import FeatureStats
from metrics.streams import reference_stats_direct

PROG = "python -m launch.refstats"


def reference_from_args(args: argparse.Namespace) -> ReferenceSet:
    """The ``--which`` reference set of the toy datamodule (``--toy``) or of an image folder/zip."""
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


def cmd_compute(args: argparse.Namespace, cache: ReferenceStatsCache) -> int:
    extractor = build_extractor(args.extractor, device=args.device)  # fails fast on a missing weights file
    reference = reference_from_args(args)
    t0 = time.perf_counter()
    stats = cache.get(reference, extractor, need_features=args.features)
    action = "computed" if cache.computed else "already cached"
    print(f"{reference.name}: {stats.n} images, dim {stats.dim}, {action} in {time.perf_counter() - t0:.2f}s "
          f"-> {cache.path_for(reference, extractor)}")
    return 0


def cmd_verify(args: argparse.Namespace, cache: ReferenceStatsCache) -> int:
    """Check every file's checksum; with a dataset, also recompute its entry and compare."""
    bad = 0
    for path, _meta, err in cache.entries():
        print(f"{'OK     ' if err is None else 'CORRUPT'} {path.name}" + (f"  ({err})" if err else ""))
        bad += err is not None
    if args.data or args.toy:
        extractor = build_extractor(args.extractor, device=args.device)
        reference = reference_from_args(args)
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


def cmd_list(args: argparse.Namespace, cache: ReferenceStatsCache) -> int:
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


COMMANDS = {"compute": cmd_compute, "verify": cmd_verify, "list": cmd_list}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Compute, verify or list cached reference statistics.")
    parser.add_argument("command", choices=tuple(COMMANDS))
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
    try:
        return COMMANDS[args.command](args, ReferenceStatsCache(args.cache, batch_size=args.batch_size))
    except (FileNotFoundError, ValueError, KeyError) as e:  # bad paths, missing weights, bad options
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
