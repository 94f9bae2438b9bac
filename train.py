"""Launch a StyleShift experiment: ``python train.py CONFIG [key=value ...] [--dry-run] [--reuse-dir] [--multirun]``.

docs/architecture.md, "Run directories". A pipeline file (top-level ``stages``) runs its stages in order
(``launch.pipeline``). ``CONFIG`` is merged over ``configs/base.yaml``; ``key=value``
overrides use dotted keys (``trainer.max_steps=100 model.gan.g_lr=0.001``). Before anything starts, the
config is validated and the machine is checked (data paths, pretrained files, devices, the run
directory); ``--dry-run`` does exactly that and prints the resolved config. Errors the user can fix are
printed without a traceback: exit status 2 for the config and what it points to, 1 for problems found
once the run started (a non-finite loss, unreadable data). ``--debug`` (or ``STYLESHIFT_DEBUG=1``) shows
their tracebacks too.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

WANDB_USER_ERRORS = ("UsageError", "AuthenticationError", "CommError")  # login / network problems
PROJECT_PACKAGES = ("models", "losses", "metrics", "lightning_modules", "datamodules", "callbacks", "launch")
DEBUG_ENV = "STYLESHIFT_DEBUG"


def config_method(path) -> str | None:
    """The ``method:`` an experiment file sets, itself or through its ``extends`` chain (``"pipeline"`` for a
    pipeline file; None if unreadable)."""
    from launch.config import experiment_chain
    from launch.pipeline import is_pipeline

    if is_pipeline(path):
        return "pipeline"
    try:
        chain = experiment_chain(path)
    except Exception:  # noqa: BLE001 - a broken file is listed without a method, not a crash of --help
        return None
    method = None
    for layer in chain:
        value = layer.get("method") if "method" in layer else None
        if isinstance(value, str) and value != "???":
            method = value
    return method


def configs_by_method(configs_dir=None) -> dict[str, list[str]]:
    """``{method: [config paths]}`` of ``configs/*.yaml`` and ``configs/*/*.yaml`` (base.yaml left out),
    paths relative to the repository root; files without a method under ``"?"``."""
    from pathlib import Path

    from launch.config import CONFIGS_DIR

    root = Path(configs_dir or CONFIGS_DIR)
    files = [p for p in sorted(root.glob("*.yaml")) if p.name != "base.yaml"] + sorted(root.glob("*/*.yaml"))
    groups: dict[str, list[str]] = {}
    for path in files:
        rel = path.relative_to(root.parent).as_posix()
        groups.setdefault(config_method(path) or "?", []).append(rel)
    return dict(sorted(groups.items()))


def configs_epilog() -> str:
    lines = ["experiment configs, by method:"]
    for method, paths in configs_by_method().items():
        lines.append(f"  {method}:")
        lines += [f"    {p}" for p in paths]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = sys.argv[1:] if argv is None else argv
    wants_help = any(a in ("-h", "--help") for a in args)  # the config listing reads every file: only for --help
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__.splitlines()[0],
        epilog="examples:\n  python train.py configs/demo.yaml\n"
               "  python train.py configs/demo.yaml trainer.max_steps=200 logger.wandb.mode=disabled\n"
               "  python train.py configs/demo.yaml '~callbacks.metrics'     # delete a key\n"
               "  python train.py runs/<run>/config.yaml ckpt_path=last"
               + ("\n\n" + configs_epilog() if wants_help else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML file (merged over configs/base.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config and the machine, print the resolved config and exit")
    parser.add_argument("--reuse-dir", action="store_true",
                        help="start a fresh fit in an output_dir that holds an earlier run (its files are "
                             "moved to <output_dir>/previous-<time>/)")
    parser.add_argument("--multirun", "-m", action="store_true",
                        help="sweep: run every combination of the overrides with comma-separated values "
                             "(key=a,b) into sibling run directories, then write sweep.csv; the same command "
                             "again skips finished runs and resumes unfinished ones")
    parser.add_argument("--debug", action="store_true",
                        help=f"show tracebacks for every error (also: {DEBUG_ENV}=1)")
    return parser.parse_args(args)


def setup_logging() -> None:
    """INFO on the main process, warnings only on the other DDP processes (spec: logs on rank zero)."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def user_error_status(err: BaseException) -> int | None:
    """The exit status of an error the user can fix (2: config, 1: runtime), None for anything else."""
    from launch.errors import ConfigError, RunError
    from lightning_modules.base import NonFiniteError

    if isinstance(err, ConfigError):
        return 2
    if isinstance(err, (RunError, NonFiniteError)):
        return 1
    package = type(err).__module__.split(".")[0]
    if type(err).__name__ == "MisconfigurationException" and package in ("lightning_fabric", "pytorch_lightning",
                                                                        "lightning"):
        return 2  # a Trainer setting Lightning refuses
    from models.checkpoint_formats.errors import CheckpointError
    if isinstance(err, CheckpointError):
        return 1  # an unreadable checkpoint file; the message names it
    if isinstance(err, FileNotFoundError) and package in PROJECT_PACKAGES:
        # The project's own missing-file errors (models.assets.AssetMissingError, a metric's missing
        # weights) already say which file, where to get it and where to put it.
        return 1
    if package == "wandb" and type(err).__name__ in WANDB_USER_ERRORS:
        return 1
    return None


def message(err: BaseException) -> str:
    text = str(err)
    if type(err).__module__.split(".")[0] == "wandb":
        text = f"W&B: {text} (or run offline: logger.wandb.mode=offline)"
    return f"error: {text}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    from launch.config import compose, to_yaml
    from launch.run import execute, prepare

    try:
        from launch.pipeline import is_pipeline
        if is_pipeline(args.config):
            if args.multirun or args.reuse_dir:
                from launch.errors import ConfigError
                raise ConfigError("a pipeline resumes each stage itself; --multirun and --reuse-dir do not apply "
                                  "(give it another output_dir to start over)")
            from launch.pipeline import run_pipeline
            return run_pipeline(args.config, args.overrides, dry_run=args.dry_run)
        if args.multirun:
            if args.reuse_dir:
                from launch.errors import ConfigError
                raise ConfigError("--reuse-dir does not apply to --multirun (a sweep resumes or restarts each run "
                                  "itself); give the sweep another output_dir to start over")
            from launch.sweep import run_sweep
            return run_sweep(args.config, args.overrides, dry_run=args.dry_run)
        prepared = prepare(compose(args.config, args.overrides), preflight=True, reuse_dir=args.reuse_dir)
        if args.dry_run:
            print(to_yaml(prepared.config), end="")
            return 0
        return execute(prepared)
    except Exception as err:  # noqa: BLE001 - user errors get a message, everything else its traceback
        status = user_error_status(err)
        if status is None or debug:
            raise
        hint = f"\n(for the traceback: --debug or {DEBUG_ENV}=1)" if status == 1 else ""
        print(message(err) + hint, file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
