"""Config composition and strict validation (launch/config.py, launch/schema.py): keys, value types,
config groups and the ``**kwargs`` chain of method constructors."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import pytest
import pytorch_lightning as pl
import torch
import yaml
from omegaconf import OmegaConf

from launch.config import CONFIGS_DIR, compose, experiment_chain, read_yaml, to_container
from launch.errors import ConfigError
from launch.run import prepare
from launch.schema import Registries, check_signature, constructor_params, validate
from lightning_modules.config_check import value_errors
from lightning_modules.config_groups import GANSettings, GeneratorSpec, coerce_group

ROOT = Path(__file__).resolve().parents[1]


class TinyBase(pl.LightningModule):
    def __init__(self, *, seed: int | None = None, nan_policy: str = "raise", total_kimg: float | None = None):
        super().__init__()


class TinyCore(TinyBase):
    def __init__(self, gan: GANSettings | Mapping[str, Any] | None = None, **base: Any):
        super().__init__(**base)


class TinyMethod(TinyCore):
    """The shape of the real methods: own keys, two groups, ``**base`` forwarded up two levels."""

    def __init__(self, width: int, generator: GeneratorSpec | Mapping[str, Any] | str | None = None,
                 gan: GANSettings | Mapping[str, Any] | None = None, *, kind: Literal["a", "b"] = "a",
                 sizes: Sequence[int] = (32, 16), **base: Any):
        super().__init__(gan=gan, **base)


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
        model: {width: 16, generator: {resolution: 16}, gan: {g_lr: 0.1}}
        data: {name: tinydata, batch_size: 8}
        trainer: {max_steps: 10}
        callbacks: {samples: {every_kimg: 2.0}}
    """)
    return write(tmp_path / "exp.yaml", """
        extends: parent.yaml
        seed: 2
        model: {gan: {d_lr: 0.5}}
    """)


def plan_errors(config_path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        validate(to_container(compose(config_path, overrides)), REGISTRIES)
    return str(info.value)


def test_merge_precedence_base_parent_experiment_cli(experiment: Path):
    cfg = to_container(compose(experiment, ["seed=3", "trainer.devices=2", "model.generator.channels={4: 32, 8: 16}"]))
    assert cfg["seed"] == 3                                    # CLI > experiment (2) > parent (1) > base (0)
    assert cfg["model"] == {"width": 16, "generator": {"resolution": 16, "channels": {4: 32, 8: 16}},
                            "gan": {"g_lr": 0.1, "d_lr": 0.5}}             # groups merge key by key
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
    ("model.totl_kimg=1", "unknown key 'model.totl_kimg': did you mean 'model.total_kimg'? valid keys: "
                          "model.width, model.generator, model.gan, model.kind, model.sizes, model.seed, "
                          "model.nan_policy, model.total_kimg"),
    ("model.gan.lr_g=1", "unknown key 'model.gan.lr_g': did you mean 'model.gan.g_lr'? valid keys: model.gan.g_lr, "
                         "model.gan.d_lr, model.gan.betas,"),
    ("model.generator.resolutoin=8", "unknown key 'model.generator.resolutoin': did you mean "
                                     "'model.generator.resolution'?"),
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
    ("model.generator.resolution=null", ""),  # null is a value the key's type allows: valid
    ("model.total_kimg=null", ""),
    ("model.total_kimg=2", ""),           # keys of the **base chain: TinyBase's
    ("model.seed=1", ""),
    ("model.gan.r1_gamma=0", ""),         # an int is a float
    ("model.generator=ckpt.pt", ""),      # the generator group's string shorthand
])
def test_typos_name_the_key_and_suggest(experiment: Path, override: str, message: str):
    if not message:
        validate(to_container(compose(experiment, [override])), REGISTRIES)
        return
    assert message in plan_errors(experiment, override)


def test_all_errors_are_reported_together_and_required_args_are_checked(tmp_path: Path):
    exp = write(tmp_path / "e.yaml", "method: tiny\ndata: {name: tinydata}\nmodel: {gan: {g_lrr: 1}}\n")
    text = plan_errors(exp, "trainer.max_step=1", "logger.wandb.tags=x", "model.gan.r1_gamma=abc",
                       "model.total_kimg=abc", "data.batch_size=eight", "callbacks.samples.n=2.5", "model.kind=c",
                       "model.sizes=[8, x]", "model.generator.channels={4: 1.5}", "model.gen=1")
    assert "missing required key 'model.width' (TinyMethod has no default for it)" in text
    assert "'model.gan.g_lrr'" in text and "'trainer.max_step'" in text and "'model.gen'" in text
    assert "'logger.wandb.tags' must be a list of strings" in text
    assert "'model.gan.r1_gamma' must be a float, got 'abc' (str)" in text                # group field
    assert "'model.total_kimg' must be a float or null, got 'abc' (str)" in text          # **base chain key
    assert "'data.batch_size' must be an integer, got 'eight' (str)" in text              # datamodule key
    assert "'callbacks.samples.n' must be an integer, got 2.5 (float)" in text             # callback key
    assert "'model.kind' must be one of 'a', 'b', got 'c' (str)" in text
    assert "'model.sizes[1]' must be an integer, got 'x' (str)" in text
    assert "'model.generator.channels.4' must be an integer, got 1.5 (float)" in text
    assert len(text.splitlines()) == 1 + 12


def test_missing_value_is_named(tmp_path: Path):
    exp = write(tmp_path / "e.yaml", "model: {width: 8}\n")  # method and data.name stay '???'
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
    ok = subprocess.run([sys.executable, str(ROOT / "train.py"), str(exp), "model.gan.g_lr=0.01", "--dry-run"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    printed = yaml.safe_load(ok.stdout)
    assert printed["model"] == {"width": 16, "gan": {"g_lr": 0.01}} and printed["experiment"] == "dry"
    assert printed["trainer"]["max_epochs"] == -1 and printed["output_dir"].startswith("runs/")
    assert not (tmp_path / "runs").exists()  # a dry run creates nothing


def test_cli_config_error_exits_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture):
    import train
    exp = write(tmp_path / "dry.yaml", DRY_RUN_CONFIG)
    assert train.main([str(exp), "model.gan.lr_g=1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config:") and "Traceback" not in err
    assert "unknown key 'model.gan.lr_g': did you mean 'model.gan.g_lr'?" in err


DRY_RUN_CONFIG = """
    method: tests.test_config:TinyMethod
    model: {width: 16}
    data: {name: tests.test_config:TinyData}
"""


# ------------------------------------------------------------------------------------ value types
@pytest.mark.parametrize("value, hint, ok", [
    (3, int, True), (True, int, False), (3.0, int, False), ("3", int, False),
    (3, float, True), (0.5, float, True), (False, float, False), ("abc", float, False),
    (True, bool, True), (1, bool, False), ("x", str, True), (1, str, False),
    (None, Optional[int], True), (None, int, False), (2, int | None, True),
    ("b", Literal["a", "b"], True), ("c", Literal["a", "b"], False),
    ([1, 2], Sequence[int], True), ((0, 0.99), Sequence[float], True), ([1, "x"], list[int], False),
    ("ab", Sequence[str], False), ([0.0, 0.99], tuple[float, float], True), ([1.0], tuple[float, float], False),
    ({4: 64, 8: 32}, dict[int, int], True), ({"4": 64}, dict[int, int], True), ({"x": 64}, dict[int, int], False),
    ({4: 64.5}, dict[int, int], False), ({"a": [1]}, Mapping[str, Any], True), ([1], Mapping[str, Any], False),
    (True, bool | Sequence[str], True), (["a"], bool | Sequence[str], True), ("a", bool | Sequence[str], False),
    ("float32", torch.dtype, True), (object(), Any, True),           # what YAML cannot express: not checked
])
def test_value_types(value: Any, hint: Any, ok: bool):
    assert (value_errors(value, hint, "model.x") == []) is ok


def test_type_errors_name_the_key_and_the_expected_type():
    assert value_errors("abc", float, "model.gan.r1_gamma") == ["'model.gan.r1_gamma' must be a float, got 'abc' (str)"]
    assert value_errors([16, "a"], Sequence[int], "model.p") == ["'model.p[1]' must be an integer, got 'a' (str)"]
    assert value_errors("x", float | None, "k") == ["'k' must be a float or null, got 'x' (str)"]
    assert value_errors(None, float, "k", none_ok=True) == []  # a parameter whose default is None


def test_hints_that_do_not_resolve_are_skipped():
    namespace: dict = {}
    exec("from __future__ import annotations\n"
         "class Late(pl.LightningModule):\n"
         "    def __init__(self, a: NotImportedHere = None, b: int = 0):\n"
         "        super().__init__()\n", {"pl": pl, "__name__": "late_module"}, namespace)
    params = {p.name: p for p in constructor_params(namespace["Late"])[0]}
    assert params["a"].hint is Any and params["b"].hint is int
    errors: list[str] = []
    check_signature("model", {"a": "anything", "b": "x"}, namespace["Late"], errors)
    assert errors == ["'model.b' must be an integer, got 'x' (str)"]


# ------------------------------------------------------------------------------------ **kwargs chain
def test_kwargs_chain_collects_keys_up_the_mro():
    params, complete = constructor_params(TinyMethod)
    assert complete and [(p.name, p.owner) for p in params] == [
        ("width", "TinyMethod"), ("generator", "TinyMethod"), ("gan", "TinyMethod"), ("kind", "TinyMethod"),
        ("sizes", "TinyMethod"), ("seed", "TinyBase"), ("nan_policy", "TinyBase"), ("total_kimg", "TinyBase")]


def test_kwargs_chain_reports_required_keys_and_may_stay_open():
    class NeedsDepth(pl.LightningModule):
        def __init__(self, *, depth: int, scale: float = 1.0):
            super().__init__()

    class Child(NeedsDepth):
        def __init__(self, width: int = 1, **base):
            super().__init__(**base)

    class Forwards(pl.LightningModule):  # LightningModule(**kwargs) ends at a mixin taking no keywords
        def __init__(self, width: int = 1, **kwargs):
            super().__init__(**kwargs)

    def factory(width: int = 1, **kwargs):  # a plain function: its **kwargs go nowhere checkable
        return width

    errors: list[str] = []
    check_signature("model", {"scale": "big", "deptth": 2}, Child, errors)
    assert any(e.startswith("missing required key 'model.depth' (") and e.endswith("NeedsDepth has no default for it)")
               for e in errors), errors
    assert "'model.scale' must be a float, got 'big' (str)" in errors
    assert "unknown key 'model.deptth': did you mean 'model.depth'? valid keys: model.width, model.depth, " \
           "model.scale" in errors
    assert len(errors) == 3
    assert constructor_params(Forwards) == (constructor_params(Forwards)[0], True)
    errors = []
    check_signature("model", {"anything": 1}, Forwards, errors)
    assert errors == ["unknown key 'model.anything': valid keys: model.width"]
    assert constructor_params(factory)[1] is False
    errors = []
    check_signature("model", {"anything": 1, "width": "w"}, factory, errors)
    assert errors == ["'model.width' must be an integer, got 'w' (str)"]  # known keys are still type-checked


# ------------------------------------------------------------------------------------ groups
def test_group_string_shorthand_accepted_or_refused(experiment: Path):
    validate(to_container(compose(experiment, ["model.generator=stylegan2-ffhq-256"])), REGISTRIES)
    text = plan_errors(experiment, "model.gan=fast", "model.generator=5")
    assert "'model.gan' must be a mapping of GANSettings keys, got 'fast' (str): GANSettings has no string " \
           "shorthand (valid keys: model.gan.g_lr," in text
    assert "'model.generator' must be a mapping of GeneratorSpec keys or a string (shorthand for " \
           "{checkpoint: ...}) or null, got 5 (int)" in text


def test_coerce_group_checks_types_for_direct_construction():
    with pytest.raises(ValueError, match=r"'model\.gan\.r1_gamma' must be a float, got 'abc' \(str\)"):
        coerce_group(GANSettings, {"r1_gamma": "abc"}, "model.gan")
    with pytest.raises(ValueError, match=r"unknown key 'model\.gan\.r1_gama': did you mean 'model\.gan\.r1_gamma'\?"):
        coerce_group(GANSettings, {"r1_gama": 1.0}, "model.gan")
    with pytest.raises(ValueError, match="GANSettings has no string shorthand"):
        coerce_group(GANSettings, "fast", "model.gan")
    assert coerce_group(GeneratorSpec, "x.pt", "model.generator").checkpoint == "x.pt"
    defaults = GANSettings(ema_kimg=1.25)
    assert coerce_group(GANSettings, {"r1_gamma": 0}, "model.gan", defaults) == GANSettings(ema_kimg=1.25, r1_gamma=0)


def test_composing_a_group_string_and_mapping(tmp_path: Path):
    def model(text: str, *overrides: str) -> dict:
        path = write(tmp_path / "g.yaml", f"method: tiny\ndata: {{name: tinydata}}\nmodel: {text}\n")
        return to_container(compose(path, overrides, methods=REGISTRIES.methods))["model"]

    mapping = "{width: 1, generator: {resolution: 32, style_dim: 64}}"
    string = "{width: 1, generator: a.pt}"
    assert model(mapping, "model.generator=b.pt")["generator"] == "b.pt"            # a string replaces a mapping
    assert model(string, "model.generator=b.pt")["generator"] == "b.pt"
    assert model(string, "model.generator.which=g")["generator"] == {"checkpoint": "a.pt", "which": "g"}
    assert model(string, "model.generator={which: g}")["generator"] == {"checkpoint": "a.pt", "which": "g"}
    assert model(mapping, "model.generator.n_mlp=2")["generator"] == {"resolution": 32, "style_dim": 64, "n_mlp": 2}
    with pytest.raises(ConfigError, match=r"missing required value\(s\) 'model.generator.checkpoint'"):
        model("{width: 1, generator: '???'}", "model.generator.which=g")   # a required checkpoint stays required


# ------------------------------------------------------------------------------------ the real methods
def missing_placeholders(path: Path) -> list[str]:
    """``key=<placeholder>`` for each ``???`` a config leaves to the command line (paths, checkpoints)."""
    cfg = OmegaConf.merge(read_yaml(CONFIGS_DIR / "base.yaml"), *experiment_chain(path))
    return [f"{key}=/nonexistent/{key.split('.')[-1]}" for key in sorted(OmegaConf.missing_keys(cfg))]


CONFIG_FILES = sorted(p for p in CONFIGS_DIR.rglob("*.yaml") if p.name != "base.yaml")


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[str(p.relative_to(CONFIGS_DIR)) for p in CONFIG_FILES])
def test_every_config_dry_runs(path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """``--dry-run`` of every shipped config is valid (required values given; no weights are loaded). Its
    pre-flight may only miss what this machine lacks: the placeholder paths, pretrained files, GPUs."""
    import train
    from launch.pipeline import is_pipeline
    monkeypatch.chdir(ROOT)
    if is_pipeline(path):  # every stage composes and validates once its variables are set
        declared = yaml.safe_load(path.read_text()).get("vars") or {}
        placeholders = [f"vars.{k}=/nonexistent/{k}" for k, v in declared.items() if v == "???"]
        assert train.main([str(path), *placeholders, "--dry-run"]) == 0, capsys.readouterr().err
        return
    status = train.main([str(path), *missing_placeholders(path), "--dry-run"])
    out, err = capsys.readouterr()
    if status == 0:
        assert yaml.safe_load(out)["method"]
        return
    assert status == 2 and err.startswith("error: cannot start the run:"), err
    problems = [line.strip() for line in err.splitlines()[1:] if line.startswith("  '")]
    assert problems and all(p.startswith(("'data.", "'model.", "'callbacks.", "'trainer.accelerator'"))
                            for p in problems), err
    assert all("does not exist" in p or "pretrained asset" in p or "requested, but this machine has none" in p
               or "metric" in p for p in problems), err


@pytest.mark.parametrize("path, override, expected", [
    ("demo.yaml", "model.generator=stylegan2-ffhq-256", "stylegan2-ffhq-256"),     # file: mapping
    ("stylegan2/finetune.yaml", "model.generator=foo.pt", "foo.pt"),                # file: string
    ("stylegan2/finetune.yaml", "model.generator.which=g", {"checkpoint": "stylegan2-ffhq-256", "which": "g"}),
])
def test_real_generator_group_overrides(path: str, override: str, expected: Any):
    config = prepare(compose(CONFIGS_DIR / path, [override, *missing_placeholders(CONFIGS_DIR / path)])).config
    assert config["model"]["generator"] == expected


def test_real_methods_report_every_problem_at_once():
    with pytest.raises(ConfigError) as info:
        prepare(compose(CONFIGS_DIR / "demo.yaml", [
            "model.gan.r1_gama=1", "model.gan.r1_gamma=abc", "model.totl_kimg=1", "model.total_kimg=abc",
            "model.seed=x", "data.batch_size=eight", "callbacks.metrics.metrics.fdi={}",
            "callbacks.samples.evry_kimg=1"]))
    text = str(info.value)
    for part in ("unknown key 'model.gan.r1_gama': did you mean 'model.gan.r1_gamma'?",
                 "'model.gan.r1_gamma' must be a float, got 'abc' (str)",
                 "unknown key 'model.totl_kimg': did you mean 'model.total_kimg'?",
                 "'model.total_kimg' must be a float or null, got 'abc' (str)",
                 "'model.seed' must be an integer or null, got 'x' (str)",
                 "'data.batch_size' must be an integer, got 'eight' (str)",
                 "unknown key 'callbacks.samples.evry_kimg': did you mean 'callbacks.samples.every_kimg'?",
                 "'callbacks.metrics.metrics.fdi': "):
        assert part in text, (part, text)


def test_real_group_shorthand_refused_for_gan():
    with pytest.raises(ConfigError, match="'model.gan' must be a mapping of GANSettings keys, got 'fast'"):
        prepare(compose(CONFIGS_DIR / "demo.yaml", ["model.gan=fast"]))
    config = prepare(compose(CONFIGS_DIR / "demo.yaml", ["model.seed=3", "model.total_kimg=2"])).config
    assert (config["model"]["seed"], config["model"]["total_kimg"]) == (3, 2)   # keys of MethodModule


def test_overrides_reach_into_lists_by_index():
    toy = CONFIGS_DIR / "expansion" / "toy.yaml"
    base = ["model.generator=g.pt"]
    for key in ("model.tasks[1].name", "model.tasks.1.name"):
        cfg = compose(toy, [*base, f"{key}=mirrored", "model.tasks[0].color=[0, 1, 0]"])
        assert [t["name"] for t in cfg.model.tasks] == ["red", "mirrored"]
        assert list(cfg.model.tasks[0].color) == [0, 1, 0] and cfg.model.tasks[0].type == "color"
    with pytest.raises(ConfigError, match="list of 2 entries; '5' is not an index"):
        compose(toy, [*base, "model.tasks.5.name=x"])


def test_preflight_checks_the_input_files_and_style_folder_a_method_reads(tmp_path):
    from launch.preflight import model_asset_problems

    (tmp_path / "codes.pt").write_bytes(b"x")
    model = {"stage": "style", "init": str(tmp_path / "missing.pt"), "codes": str(tmp_path / "codes.pt"),
             "styles": str(tmp_path / "nostyles"), "encoder": "B"}
    problems = model_asset_problems(model)
    assert any(p.startswith("'model.init'") and "does not exist" in p for p in problems)
    assert any(p.startswith("'model.styles'") for p in problems)
    assert not any("'model.codes'" in p or "'model.encoder'" in p for p in problems)  # present; a variant name


def test_list_overrides_compose_with_a_shorthand_overridden_by_a_mapping(tmp_path):
    (tmp_path / "base.yaml").write_text((CONFIGS_DIR / "base.yaml").read_text())
    (tmp_path / "parent.yaml").write_text("method: stylegan2\nmodel: {generator: a.pt, tasks: [{name: x}]}\n"
                                          "data: {name: toy}\n")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\nmodel: {generator: {which: g}}\n")
    cfg = compose(tmp_path / "child.yaml", ["model.tasks[0].name=y"], configs_dir=tmp_path)
    assert cfg.model.generator == {"checkpoint": "a.pt", "which": "g"} and list(cfg.model.tasks) == [{"name": "y"}]


def test_a_mapping_over_a_list_in_the_files_is_a_config_error(tmp_path):
    (tmp_path / "base.yaml").write_text((CONFIGS_DIR / "base.yaml").read_text())
    (tmp_path / "parent.yaml").write_text("method: stylegan2\nmodel: {tasks: [{name: x}]}\ndata: {name: toy}\n")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\nmodel: {tasks: {name: y}}\n")
    with pytest.raises(ConfigError, match="cannot merge configs"):
        compose(tmp_path / "child.yaml", ["seed=1"], configs_dir=tmp_path)
