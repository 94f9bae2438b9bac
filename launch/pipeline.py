"""Pipelines: several stages, each a run of its own, in order: ``python train.py PIPELINE.yaml``.

README, "Pipelines". A pipeline file has a top-level ``stages`` mapping (in order) instead of a ``method``::

    pipeline: dualstylegan_cartoon        # the pipeline's name (default: the file's stem)
    output_dir: runs/dualstylegan_cartoon # default: runs/<pipeline>
    vars: {styles: ???}                   # set on the command line: vars.styles=/data/cartoon
    stages:
      finetune:  {config: stylegan2/finetune.yaml, overrides: {data.path: $styles}}
      destylize: {command: destylize, args: {styles: /data/cartoon, finetuned: "@finetune", ...}}
      structure: {config: dualstylegan/cartoon_structure.yaml}
      style:     {config: dualstylegan/cartoon_style.yaml, overrides: {model.init: "@structure",
                                                                        model.codes: "@destylize"}}

A ``train`` stage (``config`` + ``overrides``) runs ``train.py`` into ``<output_dir>/<stage>/`` with
``ckpt_path=auto``; its product is the method's export there (its ``product_file``: ``generator.pt``,
``encoder.pt``, ...). A ``command`` stage runs one of :data:`COMMANDS` (``destylize``: ``python -m
launch.destylize``, product ``<stage dir>/codes.pt``; ``toy_styles``: the toy style folder) with ``args`` as
``--key value`` flags (``true``: a bare flag). A value ``"@name"`` is the product of the earlier stage
``name``; a value ``$name`` is the pipeline variable ``name`` (``vars``, set or overridden on the command line
with ``vars.name=value``; ``???`` must be set). Each stage runs in its own process; a stage that finished
writes ``stage.json`` (its product) and is skipped when the same command runs again, an unfinished one resumes
(train stages from their last checkpoint, ``destylize`` from its partial table). Other overrides given on the
command line apply to every train stage.
``--dry-run`` composes and validates every stage (products of earlier stages stand in as paths) and prints the plan.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from launch.config import CONFIGS_DIR
from launch.errors import ConfigError

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
STAGE_FILE = "stage.json"
PIPELINE_KEYS = ("pipeline", "output_dir", "vars", "stages")
#: command stages: name -> (module run with ``python -m``, product file name in the stage directory, its flag)
COMMANDS: dict[str, tuple[str, str, str]] = {"destylize": ("launch.destylize", "codes.pt", "out"),
                                              "toy_styles": ("launch.toy_styles", "styles", "out")}


@dataclass
class Stage:
    name: str
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    run_dir: Path = Path()
    #: file name of a train stage's product: its method's ``product_file`` (None: the run directory itself)
    product_file: str | None = "generator.pt"

    @property
    def product(self) -> Path:
        if self.command is not None:
            return self.run_dir / COMMANDS[self.command][1]
        return self.run_dir / self.product_file if self.product_file else self.run_dir

    def done(self) -> bool:
        path = self.run_dir / STAGE_FILE
        if not path.is_file():
            return False
        try:
            return json.loads(path.read_text()).get("status") == "finished" and self.product.exists()
        except (OSError, ValueError):
            return False


def is_pipeline(config_path: str | Path) -> bool:
    """True for a YAML file with a top-level ``stages`` mapping."""
    try:
        data = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "stages" in data


def _config_path(value: str) -> str:
    path = Path(value)
    if path.is_file():
        return str(path)
    if (CONFIGS_DIR / path).is_file():
        return str(CONFIGS_DIR / path)
    raise ConfigError(f"stage config {value}: no such file (paths are relative to the working directory or "
                      f"{CONFIGS_DIR})")


def split_vars(overrides: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``vars.name=value`` overrides (pipeline variables) apart from the stage overrides."""
    values, rest = {}, []
    for item in overrides:
        key, sep, value = item.partition("=")
        if key.startswith("vars.") and sep:
            values[key[len("vars."):]] = value
        else:
            rest.append(item)
    return values, rest


def load_pipeline(config_path: str | Path, variables: Mapping[str, str] | None = None
                  ) -> tuple[str, Path, list[Stage]]:
    """The pipeline's name, output directory and stages (validated: names, kinds, references; ``$var`` values
    replaced by the pipeline's ``vars`` updated with ``variables``)."""
    path = Path(config_path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the pipeline ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a pipeline file is a mapping with 'stages'")
    unknown = sorted(set(data) - set(PIPELINE_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown pipeline key(s) {unknown}; a pipeline has {list(PIPELINE_KEYS)}")
    name = str(data.get("pipeline") or path.stem)
    output_dir = Path(data.get("output_dir") or Path("runs") / name)
    declared = data.get("vars") or {}
    if not isinstance(declared, dict):
        raise ConfigError(f"{path}: 'vars' must be a mapping of name -> value")
    values = {**declared, **dict(variables or {})}
    unknown_vars = sorted(set(variables or {}) - set(declared))
    if unknown_vars:
        raise ConfigError(f"{path}: unknown pipeline variable(s) {unknown_vars}; its vars: {sorted(declared)}")
    entries = _substitute(data.get("stages"), values, path)
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: 'stages' must be a non-empty mapping of stage name -> stage")
    stages: list[Stage] = []
    for stage_name, entry in entries.items():
        where = f"{path}: stage {stage_name!r}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping ({{config: ...}} or {{command: ...}})")
        bad = sorted(set(entry) - {"config", "overrides", "command", "args"})
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {bad}; a stage has config + overrides, or command + args")
        if ("config" in entry) == ("command" in entry):
            raise ConfigError(f"{where} needs exactly one of 'config' (a train stage) or 'command'")
        if "command" in entry and entry["command"] not in COMMANDS:
            raise ConfigError(f"{where}: unknown command {entry['command']!r}; commands: {sorted(COMMANDS)}")
        for key in ("overrides", "args"):
            if not isinstance(entry.get(key, {}), dict):
                raise ConfigError(f"{where}: '{key}' must be a mapping")
        stage = Stage(str(stage_name), config=_config_path(entry["config"]) if "config" in entry else None,
                      overrides=dict(entry.get("overrides") or {}), command=entry.get("command"),
                      args=dict(entry.get("args") or {}), run_dir=output_dir / str(stage_name))
        earlier = [s.name for s in stages]
        for value in [*stage.overrides.values(), *stage.args.values()]:
            if isinstance(value, str) and value.startswith("@") and value[1:] not in earlier:
                raise ConfigError(f"{where}: {value!r} is not an earlier stage (earlier: {earlier or 'none'})")
        stages.append(stage)
    return name, output_dir, stages


def _substitute(value: Any, values: Mapping[str, Any], path: Path) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, values, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values, path) for v in value]
    if isinstance(value, str) and value.startswith("$"):
        name = value[1:]
        if name not in values:
            raise ConfigError(f"{path}: {value} is not a pipeline variable; its vars: {sorted(values)}")
        if values[name] in (None, "???"):
            raise ConfigError(f"{path}: pipeline variable {name!r} is not set: add vars.{name}=... to the command")
        return values[name]
    return value


def _resolve(value: Any, stages: Mapping[str, Stage]) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        return str(stages[value[1:]].product)
    return value


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def stage_argv(stage: Stage, stages: Mapping[str, Stage], cli_overrides: Sequence[str]) -> list[str]:
    """The command line of one stage (a fresh Python process)."""
    if stage.command is not None:
        module, product, flag = COMMANDS[stage.command]
        argv = [sys.executable, "-m", module]
        for key, value in stage.args.items():
            value = _resolve(value, stages)
            option = "--" + str(key).replace("_", "-")
            if value is True:
                argv.append(option)
            elif value not in (False, None):
                argv += [option, _value(value)]
        return argv + [f"--{flag}", str(stage.product)]
    overrides = [f"{k}={_value(_resolve(v, stages))}" for k, v in stage.overrides.items()]
    return [sys.executable, str(ROOT / "train.py"), str(stage.config), *overrides, *cli_overrides,
            f"output_dir={stage.run_dir}", "ckpt_path=auto"]


def check_stages(stages: Sequence[Stage], cli_overrides: Sequence[str]) -> None:
    """Compose and validate every train stage's config (without the machine checks that need earlier products)."""
    from launch.config import compose
    from launch.run import prepare

    by_name = {s.name: s for s in stages}
    for stage in stages:
        if stage.config is None:
            continue
        overrides = [f"{k}={_value(_resolve(v, by_name))}" for k, v in stage.overrides.items()]
        try:
            prepared = prepare(compose(stage.config, [*overrides, *cli_overrides, f"output_dir={stage.run_dir}",
                                                      "ckpt_path=auto"]))
        except ConfigError as err:
            raise ConfigError(f"stage {stage.name!r}: {err}") from None
        stage.product_file = getattr(prepared.plan.method_cls, "product_file", None)


def run_pipeline(config_path: str | Path, cli_overrides: Sequence[str] = (), dry_run: bool = False) -> int:
    """Run (or with ``dry_run`` check and print) the stages in order; the first failing stage's exit status."""
    from launch.sweep import run_child

    variables, cli_overrides = split_vars(cli_overrides)
    name, output_dir, stages = load_pipeline(config_path, variables)
    check_stages(stages, cli_overrides)
    by_name = {s.name: s for s in stages}
    if dry_run:
        for stage in stages:
            state = "done" if stage.done() else ("resume" if stage.run_dir.exists() else "new")
            print(f"{state:7s} {stage.name}: {' '.join(stage_argv(stage, by_name, cli_overrides)[1:])}")
        return 0
    for i, stage in enumerate(stages):
        if stage.done():
            log.info("pipeline %s [%d/%d] %s: finished earlier (%s), skipped", name, i + 1, len(stages), stage.name,
                     stage.product)
            continue
        log.info("pipeline %s [%d/%d] %s: %s", name, i + 1, len(stages), stage.name,
                 "resuming" if stage.run_dir.exists() else "starting")
        stage.run_dir.mkdir(parents=True, exist_ok=True)
        code = run_child(stage_argv(stage, by_name, cli_overrides))
        if code != 0:
            log.error("pipeline %s: stage %s stopped with status %d; the same command resumes it", name,
                      stage.name, code)
            return code
        if not stage.product.exists():
            raise ConfigError(f"stage {stage.name!r} finished without its product {stage.product}")
        (stage.run_dir / STAGE_FILE).write_text(json.dumps({"status": "finished", "product": str(stage.product),
                                                            "time": time.time()}))
    log.info("pipeline %s: every stage finished; products in %s", name, output_dir)
    return 0


__all__ = ["Stage", "COMMANDS", "is_pipeline", "split_vars", "load_pipeline", "stage_argv", "check_stages",
           "run_pipeline"]
