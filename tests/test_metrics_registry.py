"""The metric registry (README, "Evaluation"): one entry per kind (spec class, runner, assets, sampler need)
read by ``parse_spec``, the suite and the callback; a new metric is one registration; which samplers a
metric runs on (own ``samplers`` > callback selection for generic metrics > the module's
``metric_samplers()`` > every fitting sampler); the callback's run directory is the Trainer's
``default_root_dir`` and loggers marked ``writes_metrics_jsonl`` are not sent the values again."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from torch.utils.data import DataLoader

from callbacks.metrics import MetricsCallback
from metrics.jsonl import append_jsonl, read_jsonl
from metrics.registry import (ANY_SAMPLER, DOMAIN_SAMPLER, PAIRED_SAMPLER, PATH_SAMPLER, SamplerNeed,
                              check_metric_samplers, metric_entry, metric_kinds, register_metric, unregister_metric)
from metrics.specs import MetricSpec, parse_spec
from metrics.streams import render_uint8
from metrics.suite import MetricRun, MetricSuite, MetricValue, metric_protocol
from models.sampler import Sampler, latent_sampler
from tests.helpers_metrics import TinyRenderer, tensor_reference, tiny_sampler
from tests.test_metrics_registry_mixdl import LPIPS_OPTS, path_sampler

BUILTIN = ["clip_direction", "clip_domains", "clip_text", "domain_leakage", "fid", "identity_similarity",
           "intra_lpips", "kid", "latent_smoothness", "lpips_align", "lpips_diversity", "nn_lpips", "reconstruction",
           "style_similarity"]


# ------------------------------------------------------------------------------ a metric in one registration
@dataclass
class MeanPixelSpec(MetricSpec):
    kind: ClassVar[str] = "test_mean_pixel"
    num_gen: int = 4
    asset: str | None = None

    def required_assets(self) -> list[str]:
        return [self.asset] if self.asset else []


GRID_ONLY = SamplerNeed("grid", "independent samples (kind 'grid')", lambda s: getattr(s, "kind", None) == "grid")


def run_mean_pixel(run: MetricRun, spec: MeanPixelSpec, targets: list[str]) -> list[MetricValue]:
    out = []
    for name in targets:
        value = float(render_uint8(run.samplers[name], list(range(spec.num_gen)), spec.seed).float().mean())
        proto = metric_protocol(spec, "none", None, "none", run.samplers[name], None, {})
        out.append(MetricValue(proto.key(name), value, spec.kind, name, proto))
    return out


@pytest.fixture
def mean_pixel():
    register_metric("test_mean_pixel", MeanPixelSpec, run_mean_pixel, sampler_need=GRID_ONLY)
    yield metric_entry("test_mean_pixel")
    unregister_metric("test_mean_pixel")


def test_builtin_kinds_and_their_sampler_needs():
    assert [k for k in metric_kinds() if not k.startswith("test_")] == BUILTIN
    needs = {k: metric_entry(k).sampler_need for k in BUILTIN}
    assert needs["latent_smoothness"] is PATH_SAMPLER and needs["reconstruction"] is PAIRED_SAMPLER
    assert needs["domain_leakage"] is DOMAIN_SAMPLER and needs["clip_domains"] is DOMAIN_SAMPLER
    special = ("latent_smoothness", "reconstruction", "domain_leakage", "clip_domains", "identity_similarity",
               "style_similarity")
    assert all(needs[k] is ANY_SAMPLER for k in BUILTIN if k not in special)
    assert metric_entry("kid").prepare is not None and metric_entry("fid").runner is metric_entry("kid").runner
    for kind in BUILTIN:
        entry = metric_entry(kind)
        assert entry.kind == kind and entry.spec_cls.kind == kind
    assert metric_entry("fid").required_assets(parse_spec("fid", {})) == ["inception-2015-12-05"]
    assert PATH_SAMPLER(path_sampler(TinyRenderer())) and not PATH_SAMPLER(tiny_sampler())
    assert PAIRED_SAMPLER(Sampler(render=lambda i, s: None, kind="paired")) and not PAIRED_SAMPLER(tiny_sampler())
    with pytest.raises(KeyError, match="unknown metric 'fdi' \\(did you mean 'fid'\\?\\)"):
        metric_entry("fdi")


def test_a_new_metric_is_one_registration(mean_pixel, tmp_path):
    assert "test_mean_pixel" in metric_kinds()
    spec = parse_spec("test_mean_pixel:a", {"num_gen": 3})
    assert isinstance(spec, MeanPixelSpec) and spec.label == "a"
    with pytest.raises(ValueError, match="did you mean 'num_gen'"):
        parse_spec("test_mean_pixel", {"numgen": 3})
    samplers = {"ema": tiny_sampler(seed=1), "strip": Sampler(tiny_sampler(seed=2).render, kind="strip")}
    values = MetricSuite({"m": spec}, show_progress=False).evaluate(samplers, None)
    assert [v.key for v in values] == ["test_mean_pixel3+a/ema"]  # its need: grid samplers only
    expected = float(render_uint8(samplers["ema"], [0, 1, 2], 0).float().mean())
    assert values[0].value == pytest.approx(expected)
    # the callback resolves the entry's assets at start-up: an optional metric with a missing file is skipped
    cb = MetricsCallback(metrics={"test_mean_pixel": {"asset": str(tmp_path / "missing.bin"), "optional": True}},
                         progress=False)
    cb.check_assets(warn=False)
    assert cb.skipped == {"test_mean_pixel": str(tmp_path / "missing.bin")} and not cb.specs


def test_registration_errors(mean_pixel):
    with pytest.raises(ValueError, match="already registered"):
        register_metric("test_mean_pixel", MeanPixelSpec, lambda run, spec, targets: [])
    register_metric("test_mean_pixel", MeanPixelSpec, run_mean_pixel, sampler_need=GRID_ONLY)  # re-import: fine
    with pytest.raises(ValueError, match="has kind 'test_mean_pixel'"):
        register_metric("other_kind", MeanPixelSpec, run_mean_pixel)
    with pytest.raises(TypeError, match="SamplerNeed"):
        register_metric("test_mean_pixel", MeanPixelSpec, run_mean_pixel, sampler_need="path", replace=True)

    @register_metric("test_mean_pixel", MeanPixelSpec, replace=True)  # decorator form
    def zero(run, spec, targets):
        return []

    entry = metric_entry("test_mean_pixel")
    assert entry.runner is zero and entry.sampler_need is ANY_SAMPLER


def test_target_precedence_own_then_module_then_fitting_samplers():
    samplers = {"ema": tiny_sampler(seed=1), "interpolation": path_sampler(TinyRenderer()),
                "paths2": path_sampler(TinyRenderer(seed=1)), "recon": Sampler(tiny_sampler().render, kind="paired")}
    suite = MetricSuite({}, show_progress=False)
    smooth, recon, fid = (parse_spec("latent_smoothness", {}), parse_spec("reconstruction", {}),
                          parse_spec("fid", {}))
    assert suite.targets(smooth, samplers) == ["interpolation", "paths2"]  # every path sampler
    assert suite.targets(recon, samplers) == ["recon"]  # every paired sampler
    assert suite.targets(fid, samplers) == list(samplers)
    declared = {"latent_smoothness": ["paths2"], "fid": ["ema"]}
    assert suite.targets(smooth, samplers, declared) == ["paths2"]
    assert suite.targets(fid, samplers, declared) == ["ema"]
    own = parse_spec("latent_smoothness", {"samplers": ["interpolation"]})
    assert suite.targets(own, samplers, declared) == ["interpolation"]
    with pytest.raises(KeyError, match="metric_samplers\\(\\)\\['latent_smoothness'\\]: unknown sampler"):
        suite.targets(smooth, samplers, {"latent_smoothness": ["nope"]})
    with pytest.raises(KeyError, match="metric 'latent_smoothness': unknown sampler"):
        suite.targets(parse_spec("latent_smoothness", {"samplers": ["nope"]}), samplers)


def test_metric_samplers_declarations_are_validated():
    assert check_metric_samplers(None) == {} and check_metric_samplers({"fid": ("ema",)}) == {"fid": ["ema"]}
    with pytest.raises(ValueError, match="Mod.metric_samplers\\(\\): unknown metric 'latent_smothness' "
                                         "\\(did you mean 'latent_smoothness'\\?\\)"):
        check_metric_samplers({"latent_smothness": ["interpolation"]}, "Mod")
    with pytest.raises(TypeError, match="list of sampler names"):
        check_metric_samplers({"fid": "ema"})
    with pytest.raises(TypeError, match="mapping"):
        check_metric_samplers(["fid"])


# ------------------------------------------------------------------------------ inside the callback
class TwoPaths(pl.LightningModule):
    """Two path samplers; optionally declares that latent smoothness runs on ``interpolation`` only."""

    def __init__(self, declare: bool):
        super().__init__()
        self.renderer = TinyRenderer(seed=0)
        self.declare = declare
        self.kimg = 0.0

    def test_step(self, batch, batch_idx):
        pass

    def samplers(self):
        return {"ema": latent_sampler(self.renderer, self.renderer.z_dim),
                "interpolation": path_sampler(self.renderer), "reverse": path_sampler(TinyRenderer(seed=1))}

    def metric_samplers(self):
        return {"latent_smoothness": ["interpolation"]} if self.declare else {}


class Data(pl.LightningDataModule):
    def test_dataloader(self):
        return DataLoader([torch.zeros(1)], batch_size=1)

    def reference_set(self, which="full"):
        return tensor_reference(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), f"zeros:{which}", which)


class RecordingLogger(Logger):
    def __init__(self, marked: bool):
        super().__init__()
        self.writes_metrics_jsonl = marked
        self.logged: list[dict] = []

    name = property(lambda self: "recording")
    version = property(lambda self: 0)

    def log_metrics(self, metrics, step=None):
        self.logged.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def run_callback(module, metrics, samplers=("ema",), **trainer_kwargs):
    cb = MetricsCallback(metrics=metrics, samplers=list(samplers), batch_size=8, progress=False)
    pl.Trainer(accelerator="cpu", devices=1, callbacks=[cb], enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, **trainer_kwargs).test(module, datamodule=Data(), verbose=False)
    return cb


@pytest.mark.parametrize("declare, expected", [(True, {"interpolation"}), (False, {"interpolation", "reverse"})])
def test_callback_uses_the_module_declaration_else_every_path_sampler(tmp_path, declare, expected):
    metrics = {"latent_smoothness": dict(LPIPS_OPTS, num_gen=2), "lpips_diversity": dict(LPIPS_OPTS, num_gen=2)}
    cb = run_callback(TwoPaths(declare), metrics, logger=False, default_root_dir=tmp_path)
    smooth = {v.sampler for v in cb.last_values if v.metric.startswith("smoothness_")}
    assert smooth == expected  # the callback's samplers=[ema] applies to generic metrics only
    assert {v.sampler for v in cb.last_values if v.metric == "lpips_diversity"} == {"ema"}
    keys = {r["key"] for r in read_jsonl(tmp_path / "metrics.jsonl")}
    assert keys == {v.key for v in cb.last_values}


def test_run_dir_is_the_trainers_root_and_marked_loggers_get_no_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a bare Trainer's default_root_dir is the working directory
    marked, plain = RecordingLogger(True), RecordingLogger(False)
    cb = run_callback(TwoPaths(True), {"lpips_diversity": dict(LPIPS_OPTS, num_gen=2)}, logger=[marked, plain])
    (value,) = cb.last_values
    assert [r["key"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [value.key]
    assert json.loads((tmp_path / "test_metrics.json").read_text())["values"] == {value.key: value.value}
    assert not any(value.key in d for d in marked.logged)
    assert {value.key: value.value, "kimg": 0.0} in plain.logged


def test_jsonl_is_written_on_global_rank_zero_only(tmp_path, monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert append_jsonl(tmp_path, {"a": 1}) is None and not (tmp_path / "metrics.jsonl").exists()
    monkeypatch.setenv("RANK", "0")  # RANK (global) takes precedence over LOCAL_RANK
    assert read_jsonl(append_jsonl(tmp_path, {"a": 1})) == [{"a": 1}]
    import launch.jsonl

    assert launch.jsonl.append_jsonl is append_jsonl  # the launcher's import path re-exports the one writer
