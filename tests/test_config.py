"""Config composition and strict validation (launch/config.py, launch/schema.py; DESIGN.md contract 6)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml

from launch.config import compose, to_container
from launch.errors import ConfigError
from launch.run import prepare
from launch.schema import Registries, validate

ROOT = Path(__file__).resolve().parents[1]


class TinyMethod(pl.LightningModule):
    def __init__(self, resolution: int, g_lr: float = 0.002, d_lr: float = 0.002, channels: dict | None = None):
        super().__init__()


class TinyData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 4, path: str | None = None):
        super().__init__()


class TinyCallback(pl.Callback):
    def __init__(self, every_kimg: float = 1.0, n: int = 16):
        super().__init__()


REGISTRIES = Registries(methods={"tiny": TinyMethod, "stylegan2": TinyMethod},
                        datamodules={"tinydata": TinyData}, callbacks={"samples": TinyCallback})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    write(tmp_path / "parent.yaml", """
        seed: 1
        method: tiny
        model: {resolution: 16, g_lr: 0.1}
        data: {name: tinydata, batch_size: 8}
        trainer: {max_steps: 10}
        callbacks: {samples: {every_kimg: 2.0}}
    """)
    return write(tmp_path / "exp.yaml", """
        extends: parent.yaml
        seed: 2
        model: {d_lr: 0.5}
    """)


def plan_errors(config_path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        validate(to_container(compose(config_path, overrides)), REGISTRIES)
    return str(info.value)


def test_merge_precedence_base_parent_experiment_cli(experiment: Path):
    cfg = to_container(compose(experiment, ["seed=3", "trainer.devices=2", "model.channels={4: 32, 8: 16}"]))
    assert cfg["seed"] == 3                                    # CLI > experiment (2) > parent (1) > base (0)
    assert cfg["model"] == {"resolution": 16, "g_lr": 0.1, "d_lr": 0.5, "channels": {4: 32, 8: 16}}
    assert cfg["data"] == {"name": "tinydata", "batch_size": 8}
    assert cfg["trainer"]["max_steps"] == 10 and cfg["trainer"]["devices"] == 2       # parent, CLI
    assert cfg["trainer"]["precision"] == "32-true" and cfg["logger"]["wandb"]["mode"] == "offline"  # base
    assert cfg["experiment"] == "exp" and "extends" not in cfg
    plan = validate(cfg, REGISTRIES)
    assert plan.method_cls is TinyMethod and plan.data_kwargs == {"batch_size": 8}
    assert [(name, cls) for name, cls, _ in plan.callbacks] == [("samples", TinyCallback)]


def test_null_callback_disables_inherited(experiment: Path):
    assert to_container(compose(experiment, ["callbacks.samples=null"]))["callbacks"] == {}


@pytest.mark.parametrize("override, message", [
    ("model.lr_g=1", "unknown key 'model.lr_g': did you mean 'model.g_lr'? valid keys: model.resolution, "
                     "model.g_lr, model.d_lr, model.channels"),
    ("data.batchsize=2", "unknown key 'data.batchsize': did you mean 'data.batch_size'?"),
    ("trainer.max_step=5", "unknown key 'trainer.max_step': did you mean 'trainer.max_steps'"),
    ("callbacks.samples.evry_kimg=5", "unknown key 'callbacks.samples.evry_kimg': did you mean "
                                      "'callbacks.samples.every_kimg'?"),
    ("chekpoint.every_kimg=1", "unknown key 'chekpoint': did you mean 'checkpoint'?"),
    ("logger.wandb.projet=x", "unknown key 'logger.wandb.projet': did you mean 'logger.wandb.project'?"),
    ("logger.wandb.mode=ofline", "got 'ofline': did you mean 'offline'"),
    ("checkpoint.every_kimgs=1", "unknown key 'checkpoint.every_kimgs': did you mean 'checkpoint.every_kimg'?"),
    ("method=tiyn", "unknown method 'tiyn': did you mean 'tiny'?"),
    ("data.name=tinydta", "unknown datamodule 'tinydta': did you mean 'tinydata'?"),
    ("callbacks.sample={}", "unknown callback 'sample': did you mean 'samples'?"),
    ("mode=tset", "did you mean 'test'?"),
    ("trainer.logger=false", "'trainer.logger' is set by the launcher; use the 'logger' section"),
    ("model.resolution=null", ""),  # null is a value: the key exists, so this one is valid
])
def test_typos_name_the_key_and_suggest(experiment: Path, override: str, message: str):
    if not message:
        validate(to_container(compose(experiment, [override])), REGISTRIES)
        return
    assert message in plan_errors(experiment, override)


def test_all_errors_are_reported_together_and_required_args_are_checked(tmp_path: Path):
    exp = write(tmp_path / "e.yaml", "method: tiny\ndata: {name: tinydata}\nmodel: {g_lrr: 1}\n")
    text = plan_errors(exp, "trainer.max_step=1", "logger.wandb.tags=x")
    assert "missing required key 'model.resolution' (TinyMethod has no default for it)" in text
    assert "'model.g_lrr'" in text and "'trainer.max_step'" in text
    assert "'logger.wandb.tags' must be a list of strings" in text


def test_missing_value_is_named(tmp_path: Path):
    exp = write(tmp_path / "e.yaml", "model: {resolution: 8}\n")  # method and data.name stay '???'
    with pytest.raises(ConfigError, match=r"missing required value\(s\) 'data.name', 'method'"):
        compose(exp)
    with pytest.raises(ConfigError, match="missing required value"):
        compose(exp, ["method=tiny", "model.checkpoint=???", "data.name=x"])


def test_bad_files_and_overrides(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        compose(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        compose(write(tmp_path / "bad.yaml", "model: {a: 1\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        compose(write(tmp_path / "list.yaml", "- 1\n"))
    with pytest.raises(ConfigError, match="'extends: missing.yaml' not found"):
        compose(write(tmp_path / "orphan.yaml", "extends: missing.yaml\n"))
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        compose(write(tmp_path / "b.yaml", "extends: a.yaml\n"))
    with pytest.raises(ConfigError, match="must look like key=value"):
        compose(write(tmp_path / "ok.yaml", "method: tiny\n"), ["trainer.max_steps"])


def test_ckpt_path_last_needs_output_dir(experiment: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="ckpt_path=last needs the run directory"):
        prepare(compose(experiment, ["ckpt_path=last"]), REGISTRIES)
    with pytest.raises(ConfigError, match="no checkpoint at"):
        prepare(compose(experiment, ["ckpt_path=last", f"output_dir={tmp_path}/run"]), REGISTRIES)
    prep = prepare(compose(experiment, [f"output_dir={tmp_path}/run"]), REGISTRIES)
    assert prep.run_dir == tmp_path / "run" and prep.config["output_dir"] == str(tmp_path / "run")
    default = prepare(compose(experiment), REGISTRIES).run_dir
    assert default.parent == Path("runs") and default.name.endswith("_exp")


def test_every_registry_entry_imports_as_the_right_kind():
    """A registry typo (module or class name) fails here, not in a user's run."""
    import pytorch_lightning as pl
    from callbacks import CALLBACKS
    from datamodules import DATAMODULES
    from launch.registry import import_object
    from lightning_modules import METHODS
    assert {"stylegan2", "mixdl", "nada"} <= set(METHODS) and {"toy", "images", "latents"} <= set(DATAMODULES)
    assert {"samples", "metrics"} <= set(CALLBACKS)
    for registry, base in ((METHODS, pl.LightningModule), (DATAMODULES, pl.LightningDataModule),
                           (CALLBACKS, pl.Callback)):
        for name, spec in registry.items():
            cls = import_object(spec)
            assert isinstance(cls, type) and issubclass(cls, base), (name, spec)


def test_cli_dry_run_prints_resolved_yaml(tmp_path: Path):
    exp = write(tmp_path / "dry.yaml", DRY_RUN_CONFIG)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    ok = subprocess.run([sys.executable, str(ROOT / "train.py"), str(exp), "model.g_lr=0.01", "--dry-run"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    printed = yaml.safe_load(ok.stdout)
    assert printed["model"] == {"resolution": 16, "g_lr": 0.01} and printed["experiment"] == "dry"
    assert printed["trainer"]["max_epochs"] == -1 and printed["output_dir"].startswith("runs/")
    assert not (tmp_path / "runs").exists()  # a dry run creates nothing


def test_cli_config_error_exits_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture):
    import train
    exp = write(tmp_path / "dry.yaml", DRY_RUN_CONFIG)
    assert train.main([str(exp), "model.lr_g=1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config:") and "Traceback" not in err
    assert "unknown key 'model.lr_g': did you mean 'model.g_lr'?" in err


DRY_RUN_CONFIG = """
    method: tests.test_config:TinyMethod
    model: {resolution: 16}
    data: {name: tests.test_config:TinyData}
"""
