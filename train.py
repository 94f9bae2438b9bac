"""Launch a StyleShift experiment: ``python train.py CONFIG [key=value ...] [--dry-run]``.

DESIGN.md contract 6. ``CONFIG`` is merged over ``configs/base.yaml``; ``key=value`` overrides use dotted
keys (``trainer.max_steps=100 model.g_lr=0.001``); ``--dry-run`` prints the resolved, validated config
and exits. Configuration errors are printed without a traceback (exit status 2).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

WANDB_USER_ERRORS = ("UsageError", "AuthenticationError", "CommError")  # login / network problems
PROJECT_PACKAGES = ("models", "losses", "metrics", "lightning_modules", "datamodules", "callbacks", "launch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__.splitlines()[0],
        epilog="examples:\n  python train.py configs/demo.yaml\n"
               "  python train.py configs/demo.yaml trainer.max_steps=200 logger.wandb.mode=disabled\n"
               "  python train.py runs/<run>/config.yaml ckpt_path=last",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML file (merged over configs/base.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


def setup_logging() -> None:
    """INFO on the main process, warnings only on the other DDP processes (spec: logs on rank zero)."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from launch.config import compose, to_yaml
    from launch.errors import ConfigError
    from launch.run import execute, prepare

    try:
        prepared = prepare(compose(args.config, args.overrides))
        if args.dry_run:
            print(to_yaml(prepared.config), end="")
            return 0
        return execute(prepared)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        # The project's own missing-file errors (models.assets.AssetMissingError, a metric's missing
        # weights) already say which file, where to get it and where to put it: no traceback.
        if type(err).__module__.split(".")[0] not in PROJECT_PACKAGES:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        if not (type(err).__module__.startswith("wandb") and type(err).__name__ in WANDB_USER_ERRORS):
            raise
        print(f"error: W&B: {err} (or run offline: logger.wandb.mode=offline)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
