"""MixDL's memorization and latent-smoothness metrics in the metrics callback (Kong et al. 2022; README,
"Evaluation"): ``nn_lpips`` and ``latent_smoothness`` specs, their default samplers (the module's
``metric_samplers()``, else every path sampler), the logged keys (protocol encoded, smoothness as two
values) and values equal to calling the metric functions directly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from callbacks.metrics import MetricsCallback
from models.sampler import PathSampler
from metrics.lpips_family import LPIPSDistance, load_lpips
from metrics.memorization import nearest_training_lpips
from metrics.smoothness import latent_smoothness
from metrics.specs import parse_spec
from metrics.suite import RANDOM_WEIGHTS_SEED, MetricSuite
from models.sampler import latent_sampler, seeded_normal
from tests.helpers_metrics import TinyRenderer, tensor_reference, tiny_sampler

TRAIN = torch.from_numpy(np.random.RandomState(3).randint(0, 256, (4, 3, 32, 32), dtype=np.uint8))
FULL = torch.from_numpy(np.random.RandomState(4).randint(0, 256, (12, 3, 32, 32), dtype=np.uint8))
LPIPS_OPTS = {"net": "alex", "trunk": "random", "resolution": None}  # random trunk: no pretrained file
METRICS = {"nn_lpips": dict(LPIPS_OPTS, num_gen=6), "latent_smoothness": dict(LPIPS_OPTS, num_gen=3)}
NN_KEY = "nn_lpips6@lpips-alex-randtrunk@none/ema"
SMOOTH_KEYS = {f"smoothness_{k}3@lpips-alex-randtrunk@none/interpolation" for k in ("mean", "uniformity")}


def path_sampler(renderer: TinyRenderer, frames: int = 5) -> PathSampler:
    """Straight paths between seeded latents: path p runs from z(2p) to z(2p + 1) in ``frames`` frames."""

    def render(indices, seed):
        paths = [int(i) // frames for i in indices]
        t = torch.tensor([(int(i) % frames) / (frames - 1) for i in indices])[:, None]
        za = seeded_normal([2 * p for p in paths], seed, renderer.z_dim)
        zb = seeded_normal([2 * p + 1 for p in paths], seed, renderer.z_dim)
        return renderer(torch.lerp(za, zb, t))

    return PathSampler(render=render, kind="strip", frames_per_path=frames)


class TinyMixDL(pl.LightningModule):
    """The sampler layout of the MixDL module: ``ema`` (independent samples) and ``interpolation`` (W paths)."""

    def __init__(self, with_paths: bool = True):
        super().__init__()
        self.renderer = TinyRenderer(seed=0)
        self.with_paths = with_paths

    def test_step(self, batch, batch_idx):
        pass

    def samplers(self):
        out = {"ema": latent_sampler(self.renderer, self.renderer.z_dim)}
        if self.with_paths:
            out["interpolation"] = path_sampler(self.renderer)
        return out

    def metric_samplers(self):
        """As MixDL: latent smoothness runs on the W-path sampler."""
        return {"latent_smoothness": ["interpolation"]} if self.with_paths else {}


class TinyFewShotData(pl.LightningDataModule):
    def test_dataloader(self):
        return DataLoader([torch.zeros(1)], batch_size=1)

    def reference_set(self, which="full"):
        return tensor_reference(TRAIN if which == "train" else FULL, f"tiny:{which}", which)


def standin_lpips(batch_size: int) -> LPIPSDistance:
    """The suite's ``trunk: random`` network: ``lpips.LPIPS(net='alex', pnet_rand=True)`` built under seed 0."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model, name, sha = load_lpips("alex", trunk=None)
    return LPIPSDistance(model, name, sha, resolution=None, batch_size=batch_size)


def run_test(tmp_path, metrics, module=None, samplers=("ema",)):
    cb = MetricsCallback(metrics=metrics, samplers=list(samplers) if samplers else None, batch_size=8,
                         progress=False)
    module = module or TinyMixDL()
    pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[cb], enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=tmp_path).test(module, datamodule=TinyFewShotData(), verbose=False)
    return cb, module


def test_callback_logs_nn_lpips_and_smoothness_equal_to_direct_calls(tmp_path):
    cb, module = run_test(tmp_path, METRICS)  # callback samplers [ema]: smoothness still takes interpolation
    records = {r["key"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    assert set(records) == {NN_KEY} | SMOOTH_KEYS
    assert set(json.loads((tmp_path / "test_metrics.json").read_text())["values"]) == {NN_KEY} | SMOOTH_KEYS

    dist = standin_lpips(batch_size=8)
    samplers = module.samplers()
    nn = nearest_training_lpips(dist, samplers["ema"], TRAIN, num_gen=6, seed=0, batch_size=3, show_progress=False)
    smooth = latent_smoothness(dist, samplers["interpolation"], 3, seed=0, batch_paths=2, show_progress=False)

    r = records[NN_KEY]
    assert r["value"] == pytest.approx(nn.value, rel=1e-6) and r["metric"] == "nn_lpips"
    assert r["extras"]["modes"] == nn.modes and r["extras"]["match_counts"] == nn.match_counts
    assert r["extras"]["std"] == pytest.approx(nn.std, rel=1e-6, abs=1e-12) and r["extras"]["num_centers"] == 4
    assert r["protocol"]["reference"]["which"] == "train" and r["protocol"]["reference"]["length"] == 4
    assert r["protocol"]["extractor_sha256"] == dist.sha256 and r["protocol"]["num_gen"] == 6

    mean = records["smoothness_mean3@lpips-alex-randtrunk@none/interpolation"]
    unif = records["smoothness_uniformity3@lpips-alex-randtrunk@none/interpolation"]
    assert mean["value"] == pytest.approx(smooth.mean, rel=1e-6) and mean["metric"] == "smoothness_mean"
    assert unif["value"] == pytest.approx(smooth.uniformity, rel=1e-6) and unif["metric"] == "smoothness_uniformity"
    assert smooth.mean > 0 and smooth.uniformity > 0
    assert mean["protocol_digest"] == unif["protocol_digest"]  # one protocol, two logged values
    assert mean["protocol"]["options"]["frames_per_path"] == 5 and mean["protocol"]["num_gen"] == 3
    for k in ("cv", "max_share", "endpoint"):
        assert mean["extras"][k] == pytest.approx(getattr(smooth, k), rel=1e-6)
    assert (mean["extras"]["num_paths"], mean["extras"]["steps"]) == (3, 4) and "mean" not in mean["extras"]


def test_defaults_keys_and_sampler_choice():
    nn, sm = parse_spec("nn_lpips", {}), parse_spec("latent_smoothness", {})
    assert (nn.num_gen, nn.centers, nn.net, sm.num_gen, sm.net) == (1000, "train", "vgg", 500, "vgg")
    with pytest.raises(ValueError, match="'centers' must be one of"):
        parse_spec("nn_lpips", {"centers": "shots"})
    with pytest.raises(ValueError, match="did you mean 'num_gen'"):
        parse_spec("latent_smoothness", {"numgen": 5})
    # Default protocol (VGG, 256 px, training centers) -> bare keys; departures show up in the key.
    suite = MetricSuite({"latent_smoothness": parse_spec("latent_smoothness", dict(LPIPS_OPTS, num_gen=2)),
                         "nn_lpips:full": parse_spec("nn_lpips:full", dict(LPIPS_OPTS, num_gen=2, centers="full"))},
                        batch_size=4, show_progress=False)
    suite._lpips[("alex", "random", None)] = dist = standin_lpips(batch_size=4)
    plain = {"ema": tiny_sampler(seed=1)}  # a module without a path sampler: no smoothness value
    values = suite.evaluate(plain, TinyFewShotData().reference_set)
    assert [v.key for v in values] == ["nn_lpips2_full@lpips-alex-randtrunk@none+full/ema"]
    from metrics.protocol import MetricProtocol

    default = MetricProtocol("nn_lpips", 1000, "lpips-vgg", resize="bilinear256", reference={"which": "train"})
    assert default.key("ema") == "nn_lpips1k/ema"
    named = MetricSuite({"s": parse_spec("latent_smoothness", dict(LPIPS_OPTS, num_gen=2, samplers=["ema"]))},
                        show_progress=False)
    named._lpips[("alex", "random", None)] = dist
    with pytest.raises(TypeError, match="frames_per_path"):  # a named non-path sampler is an error
        named.evaluate(plain, None)


def test_mixdl_configs_build_both_metrics():
    from launch.config import compose
    from launch.run import prepare

    for config, overrides in (("configs/mixdl/toy.yaml", []), ("configs/mixdl/obama.yaml", ["data.path=/tmp/x"])):
        kwargs = next(kw for name, _, kw in prepare(compose(config, overrides)).plan.callbacks if name == "metrics")
        specs = MetricsCallback(**kwargs).specs
        assert specs["latent_smoothness"].samplers == ["interpolation"] and specs["nn_lpips"].samplers == ["ema"]
        assert specs["nn_lpips"].centers == "train" and specs["nn_lpips"].optional
