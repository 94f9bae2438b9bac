"""Sweeps: ``python train.py CONFIG key=a,b other=x,y --multirun`` trains every combination.

README, "Sweeps". An override whose value has commas at its top level (``model.gan.r1_gamma=1,10``) is a
sweep axis; commas inside brackets, braces or quotes do not split (``model.channels={4: 32, 8: 16}``,
``tags=[a,b]``, ``name='a,b'``). The points are the cartesian product of the axes, the first axis varying
slowest. Each point is a sibling run directory under the sweep's directory (``output_dir``, default
``runs/<experiment>-sweep``), named from the varied keys and values (``r1_gamma=1,seed=0``; the last part
of a dotted key, the whole key when two axes would share it).

Every point's config is composed, validated and pre-flighted before the first run starts. The points then
run one after another, each in its own ``train.py`` process (a run's state - W&B, signal handlers, DDP,
global RNGs - never leaks into the next). A point that finished writes ``sweep_status.json`` into its
directory; running the same command again skips finished points (their settings must still match, else
the sweep refuses to mix them), resumes unfinished ones from ``checkpoints/last.ckpt`` (the exact resume of
``ckpt_path=last``) and starts the rest. Ctrl-C or SIGTERM goes to the running point, which saves and
stops; the sweep then stops too. After every point, ``sweep.csv`` in the sweep directory is rewritten: one
row per point with its status, the varied values and the last value of every metric in its
``metrics.jsonl``; the same table is printed as Markdown at the end.
"""
from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from launch.checkpointing import CHECKPOINT_DIR, LAST
from launch.errors import ConfigError

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
STATUS_FILE = "sweep_status.json"
SUMMARY_FILE = "sweep.csv"
#: keys the sweep sets itself for every point
MANAGED_KEYS = ("output_dir", "ckpt_path")
_OPEN, _CLOSE = "[{(", "]})"


def split_top_level(value: str) -> list[str]:
    """``value`` split at commas outside brackets, braces, parentheses and quotes (``"1,[2,3]"`` ->
    ``["1", "[2,3]"]``)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(value):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


@dataclass
class SweepSpec:
    """The overrides common to every point (``fixed``) and the sweep axes ``[(key, [values])]``."""

    fixed: list[str]
    axes: list[tuple[str, list[str]]]

    def points(self) -> list[list[tuple[str, str]]]:
        keys = [k for k, _ in self.axes]
        return [list(zip(keys, combo)) for combo in itertools.product(*(v for _, v in self.axes))]


def parse_sweep(overrides: Sequence[str]) -> SweepSpec:
    """Separate the sweep axes from the other overrides (see the module docstring)."""
    fixed: list[str] = []
    axes: list[tuple[str, list[str]]] = []
    for item in overrides:
        if item.startswith("~") or "=" not in item:
            fixed.append(item)
            continue
        key, value = item.split("=", 1)
        values = split_top_level(value)
        if len(values) == 1:
            fixed.append(item)
            continue
        if any(not v.strip() for v in values):
            raise ConfigError(f"sweep override {item!r} has an empty value (write key=a,b,c)")
        if key in MANAGED_KEYS:
            raise ConfigError(f"'{key}' cannot be swept: the sweep sets it for each run")
        if key in (k for k, _ in axes):
            raise ConfigError(f"sweep key '{key}' is given twice")
        axes.append((key, values))
    for item in fixed:
        key = item.split("=", 1)[0].lstrip("~")
        if key == "ckpt_path":
            raise ConfigError("--multirun resumes its runs itself: drop ckpt_path (run the same sweep command "
                              "again to resume it)")
    if not axes:
        raise ConfigError("--multirun needs at least one override with several values, e.g. seed=0,1")
    return SweepSpec(fixed, axes)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """The last part of each dotted key, or the whole key where two keys would share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+\-=,\[\]{}:@]", "_", text)


def point_name(point: Sequence[tuple[str, str]], names: dict[str, str]) -> str:
    """``r1_gamma=1,seed=0``: the directory name of a point."""
    return ",".join(f"{names[k]}={_safe(v)}" for k, v in point)


# ------------------------------------------------------------------------------------------ planning
@dataclass
class Point:
    """One run of the sweep: its varied values, directory, overrides and what happens to it."""

    values: list[tuple[str, str]]
    run_dir: Path
    overrides: list[str]
    action: str  # "new" | "restart" (--reuse-dir) | "resume" | "skip"
    status: str = "pending"
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def argv_extra(self) -> list[str]:
        return ["--reuse-dir"] if self.action == "restart" else []


def read_status(run_dir: Path) -> dict:
    try:
        status = json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def _settings(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("ckpt_path", "provenance")}


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def sweep_dir(config_path: str | Path, spec: SweepSpec) -> Path:
    """The sweep's directory: ``output_dir`` of the config or command line, else ``runs/<experiment>-sweep``."""
    from launch.config import compose

    first = [f"{k}={v}" for k, v in spec.points()[0]]
    cfg = compose(config_path, [*spec.fixed, *first])
    if cfg.get("output_dir"):
        return Path(str(cfg.output_dir))
    return Path("runs") / f"{cfg.experiment}-sweep"


def plan(config_path: str | Path, overrides: Sequence[str]) -> tuple[Path, SweepSpec, list[Point]]:
    """Every point of the sweep, composed, validated and pre-flighted; all problems in one ConfigError."""
    from launch.config import compose, to_container
    from launch.run import prepare
    from launch.rundir import CONFIG_FILE, previous_run

    spec = parse_sweep(overrides)
    parent = sweep_dir(config_path, spec)
    fixed = [o for o in spec.fixed if o.split("=", 1)[0] != "output_dir"]
    names = short_names([k for k, _ in spec.axes])
    points: list[Point] = []
    problems: list[str] = []
    for values in spec.points():
        name = point_name(values, names)
        run_dir = parent / name
        base = [*fixed, *(f"{k}={v}" for k, v in values), f"output_dir={run_dir}"]
        finished = read_status(run_dir).get("status") == "finished"
        resumes = not finished and (run_dir / CHECKPOINT_DIR / LAST).is_file()
        action = "skip" if finished else "resume" if resumes else "restart" if previous_run(run_dir) else "new"
        point_overrides = base + (["ckpt_path=last"] if resumes else [])
        try:
            cfg = compose(config_path, point_overrides)
            if cfg.logger.wandb.get("name") is None and "logger.wandb.name" not in {o.split("=", 1)[0] for o in base}:
                point_overrides.append(f"logger.wandb.name={parent.name}/{name}")
                cfg = compose(config_path, point_overrides)
            if to_container(cfg).get("mode") != "fit":
                raise ConfigError("--multirun trains: mode must be fit")
            prep = prepare(cfg, preflight=not finished, reuse_dir=action == "restart")
            if finished:
                saved = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
                changed = _differences(_settings(saved), _settings(prep.config))
                if changed:
                    raise ConfigError(f"{run_dir} holds a finished run with other settings ({', '.join(changed[:6])});"
                                      f" choose another output_dir for this sweep")
        except ConfigError as err:
            problems += [f"[{name}] {p}" for p in err.problems]
            continue
        points.append(Point(values, run_dir, point_overrides, action,
                            status="finished" if finished else "pending"))
    if problems:
        raise ConfigError.of(problems, "invalid sweep")
    return parent, spec, points


# ------------------------------------------------------------------------------------------ summary
def final_metrics(run_dir: Path) -> dict[str, Any]:
    """The last value of every scalar and metric in ``run_dir/metrics.jsonl`` (plus the last ``kimg``)."""
    from launch.jsonl import read_jsonl

    path = run_dir / "metrics.jsonl"
    out: dict[str, Any] = {}
    if not path.is_file():
        return out
    for record in read_jsonl(path):
        if record.get("kind") == "scalars":
            out.update(record.get("metrics") or {})
            if record.get("kimg") is not None:
                out["kimg"] = record["kimg"]
        elif record.get("kind") == "metric" and "key" in record:
            out[record["key"]] = record.get("value")
    return out


def summary_rows(points: Sequence[Point], names: dict[str, str]) -> tuple[list[str], list[dict]]:
    rows = []
    for p in points:
        row = {"run": p.run_dir.name, "status": p.status, **{names[k]: v for k, v in p.values}}
        row.update({k: v for k, v in final_metrics(p.run_dir).items() if k not in row})
        rows.append(row)
    fixed = ["run", "status", *(names[k] for k, _ in points[0].values)] if points else ["run", "status"]
    metrics = sorted({k for r in rows for k in r} - set(fixed))
    return fixed + metrics, rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def write_summary(parent: Path, columns: list[str], rows: list[dict]) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / SUMMARY_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row.get(c)) for c in columns})
    os.replace(tmp, path)
    return path


def markdown_table(columns: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ running
def _status_of(code: int) -> str:
    if code == 0:
        return "finished"
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        return "interrupted"
    return f"failed ({code})"


def run_point(config_path: str | Path, point: Point) -> int:
    """``train.py`` for one point in its own process (own session: the sweep forwards signals once)."""
    return run_child([sys.executable, str(ROOT / "train.py"), str(config_path), *point.overrides,
                      *point.argv_extra])


def run_child(argv: Sequence[str]) -> int:
    """Run ``argv`` in its own session, forwarding SIGINT, SIGTERM and SIGUSR1 to it; its exit status."""
    child = subprocess.Popen(list(argv), start_new_session=True)
    forwarded: dict[int, Any] = {}

    def forward(signum: int, frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        forwarded[sig] = signal.signal(sig, forward)
    try:
        return child.wait()
    finally:
        for sig, handler in forwarded.items():
            signal.signal(sig, handler)


def run_sweep(config_path: str | Path, overrides: Sequence[str], dry_run: bool = False) -> int:
    """Plan, validate and run a sweep (see the module docstring); returns the exit status."""
    parent, spec, points = plan(config_path, overrides)
    names = short_names([k for k, _ in spec.axes])
    counts = {a: sum(p.action == a for p in points) for a in ("new", "restart", "resume", "skip")}
    log.info("sweep %s: %d runs (%s)", parent, len(points), ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    if dry_run:
        for p in points:
            print(f"{p.action:8s} {p.run_dir}")
        return 0
    exit_status = 0
    for i, point in enumerate(points):
        if point.action == "skip":
            log.info("[%d/%d] %s: finished earlier, skipped", i + 1, len(points), point.run_dir.name)
            continue
        log.info("[%d/%d] %s: %s", i + 1, len(points), point.run_dir.name,
                 {"new": "starting", "restart": "starting over (--reuse-dir)", "resume": "resuming"}[point.action])
        code = run_point(config_path, point)
        point.status = _status_of(code)
        if point.run_dir.is_dir():
            (point.run_dir / STATUS_FILE).write_text(json.dumps({"status": point.status, "exit_code": code,
                                                                  "time": time.time()}))
        write_summary(parent, *summary_rows(points, names))
        if point.status == "interrupted":
            exit_status = code
            log.warning("sweep stopped; run the same command again to resume it")
            break
        if code != 0:
            exit_status = 1
    columns, rows = summary_rows(points, names)
    path = write_summary(parent, columns, rows)
    print(markdown_table(columns, rows))
    log.info("sweep summary: %s", path)
    return exit_status


__all__ = ["split_top_level", "parse_sweep", "SweepSpec", "Point", "plan", "run_sweep", "final_metrics",
           "summary_rows", "write_summary", "markdown_table", "short_names", "point_name", "STATUS_FILE",
           "SUMMARY_FILE"]
