"""``MetricsCallback`` inside Lightning (README, "Evaluation"): scheduled evaluation every N kimg with jsonl
records (in the Trainer's ``default_root_dir``) whose keys encode the protocol and never collide, values
equal to a direct computation, training RNG and train/eval flags untouched, the test harness's table and
JSON, start-up asset checks, config validation and the W&B offline run."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from callbacks.metrics import MetricsCallback, MissingMetricAsset, isolated_eval
from metrics.fid import fid_from_stats
from metrics.streams import generated_stats, reference_stats_direct
from models.sampler import latent_sampler
from tests.helpers_metrics import TinyRenderer, standin_extractor, tensor_reference

EXTRACTOR = "tests.helpers_metrics:standin_native"
REF_IMAGES = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (40, 3, 32, 32), dtype=np.uint8))


class TinyGAN(pl.LightningModule):
    """Counts images like the GAN core (``kimg``); its samplers render from fixed random renderers."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)
        self.renderer = TinyRenderer(seed=0)
        self.source = TinyRenderer(seed=0, offset=0.4)
        self.nimg, self.steps_seen = 0, 0

    @property
    def kimg(self) -> float:
        return self.nimg / 1000

    def training_step(self, batch, batch_idx):
        self.nimg += batch.shape[0]
        self.steps_seen += 1
        return self.layer(torch.randn(2, 4)).pow(2).mean() + 0 * batch.mean()  # consumes the global RNG

    def test_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def samplers(self):
        return {"ema": latent_sampler(self.renderer, 8), "source": latent_sampler(self.source, 8)}


class TinyData(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader([torch.rand(3, 32, 32) * 2 - 1 for _ in range(32)], batch_size=4)

    def test_dataloader(self):
        return DataLoader([torch.zeros(1)], batch_size=1)

    def reference_set(self, which="full"):
        return tensor_reference(REF_IMAGES[:5] if which == "train" else REF_IMAGES, f"tiny:{which}", which)


METRICS = {
    "fid": {"num_gen": 36, "extractor": EXTRACTOR},
    "fid:vs_train": {"num_gen": 36, "extractor": EXTRACTOR, "reference": "train"},
    "kid": {"num_gen": 36, "extractor": EXTRACTOR, "subset_size": 5, "num_subsets": 3},
    "lpips_diversity": {"num_gen": 3, "net": "alex", "trunk": "random", "resolution": None},
}
KEYS = {f"{m}/{s}" for s in ("ema", "source")
        for m in ("fid36@standin@none", "fid36_train@standin@none+vs_train", "kid36@standin@none",
                  "lpips_diversity3@lpips-alex-randtrunk@none")}


def trainer(tmp_path, callbacks, max_steps=8, logger=False):
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)


def fit(tmp_path, callbacks):
    pl.seed_everything(0)
    module = TinyGAN()
    trainer(tmp_path, callbacks).fit(module, datamodule=TinyData())
    return module


def test_fit_writes_protocol_records_every_n_kimg(tmp_path):
    cb = MetricsCallback(metrics=METRICS, every_kimg=0.016, batch_size=8, progress=False)
    module = fit(tmp_path, [cb])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["kimg"] for r in records}) == [0.016, 0.032]  # 4 images per step, 8 steps
    assert {r["key"] for r in records} == KEYS and len(records) == 2 * len(KEYS)
    digests: dict[str, set] = {}
    for r in records:
        digests.setdefault(r["key"], set()).add(r["protocol_digest"])
        assert r["kind"] == "metric" and r["stage"] == "fit" and len(r["protocol"]["extractor_sha256"]) == 64
        assert r["protocol"]["quantization"].startswith("x*127.5+128")
    assert all(len(d) == 1 for d in digests.values())  # one protocol per key
    full = next(r for r in records if r["key"] == "fid36@standin@none/ema")
    train = next(r for r in records if r["key"] == "fid36_train@standin@none+vs_train/ema")
    assert full["protocol"]["reference"]["length"] == 40 and train["protocol"]["reference"]["length"] == 5

    ex = standin_extractor(resize="none")
    expected = fid_from_stats(generated_stats(latent_sampler(module.renderer, 8), ex, 36, 0, 8, show_progress=False),
                              reference_stats_direct(TinyData().reference_set("full"), ex, show_progress=False))
    assert full["value"] == pytest.approx(expected, rel=1e-9)

    saved = cb.state_dict()["last_records"]  # what a Lightning checkpoint keeps
    assert {r["key"] for r in saved} == KEYS and all(r["kimg"] == 0.032 and "protocol" in r for r in saved)

    baseline = fit(tmp_path / "no_callback", [])  # metrics must not change training randomness
    assert torch.equal(baseline.layer.weight, module.layer.weight)


def test_isolated_eval_restores_rng_and_flags():
    module = TinyGAN().train()
    module.source.eval()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with isolated_eval(module):
        assert not module.training and not torch.is_grad_enabled()
        torch.rand(10)
        np.random.rand(3)
    assert torch.equal(torch.rand(3), expected)
    assert module.training and module.renderer.training and not module.source.training


def test_test_harness_prints_table_and_writes_json(tmp_path, capsys):
    cb = MetricsCallback(metrics=METRICS, batch_size=8, progress=False)
    module = TinyGAN()
    trainer(tmp_path, [cb]).test(module, datamodule=TinyData(), verbose=False)
    out = capsys.readouterr().out
    assert "Test metrics" in out and "fid36_train@standin@none+vs_train" in out and "lpips_diversity3" in out
    payload = json.loads((tmp_path / "test_metrics.json").read_text())
    assert set(payload["values"]) == KEYS
    assert all(np.isfinite(v) for v in payload["values"].values())
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert {json.loads(line)["stage"] for line in lines} == {"test"}


def test_wandb_offline_run_holds_metric_keys_and_protocols(tmp_path):
    from pytorch_lightning.loggers import WandbLogger

    logger = WandbLogger(project="styleshift-tests", save_dir=str(tmp_path), offline=True)
    cb = MetricsCallback(metrics={"fid": METRICS["fid"]}, batch_size=8, progress=False)
    module = TinyGAN()
    trainer(tmp_path, [cb], logger=logger).test(module, datamodule=TinyData(), verbose=False)
    exp = logger.experiment
    value = cb.last_values[0].value
    assert exp.summary["fid36@standin@none/ema"] == pytest.approx(value)
    assert exp.summary["protocol/fid36@standin@none/ema"]["extractor"] == "standin"
    assert exp.config["metric_protocols"]["fid36@standin@none/source"]["num_gen"] == 36
    run_dir = Path(exp.dir).parent
    exp.finish()
    import wandb

    wandb.teardown()  # waits until the offline record log is flushed
    raw = next(run_dir.glob("run-*.wandb")).read_bytes()  # the offline run's record log
    assert b"fid36@standin@none/ema" in raw and b"metric_protocols" in raw
    tables = list((run_dir / "files" / "media" / "table").glob("test_metrics_*.table.json"))
    assert len(tables) == 1 and "fid36@standin@none/source" in tables[0].read_text()


def test_missing_asset_fails_before_training(tmp_path):
    cb = MetricsCallback(metrics={"fid": {"num_gen": 8}}, every_kimg=0.004, progress=False)  # Inception
    module = TinyGAN()
    with pytest.raises(MissingMetricAsset,
                       match="(?s)metric 'fid' cannot run.*inception-2015-12-05.*models.assets fetch.*optional: true"):
        trainer(tmp_path, [cb]).fit(module, datamodule=TinyData())
    assert module.steps_seen == 0


def test_optional_metric_with_missing_asset_is_skipped_with_one_warning(tmp_path):
    metrics = {"fid": {"num_gen": 8, "optional": True}, "lpips_diversity": METRICS["lpips_diversity"]}
    cb = MetricsCallback(metrics=metrics, every_kimg=0.008, batch_size=8, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = fit(tmp_path, [cb])
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(messages) == 1 and "python -m models.assets fetch inception-2015-12-05" in messages[0]
    assert module.steps_seen == 8 and cb.skipped == {"fid": "inception-2015-12-05"}
    keys = {json.loads(line)["key"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()}
    assert keys == {"lpips_diversity3@lpips-alex-randtrunk@none/ema",
                    "lpips_diversity3@lpips-alex-randtrunk@none/source"}


@pytest.mark.parametrize("metrics, match", [
    ({"fid": {"num_gen": 8, "refrence": "full"}}, "'refrence' \\(did you mean 'reference'\\?\\)"),
    ({"fdi": {}}, "unknown metric 'fdi' \\(did you mean 'fid'\\?\\)"),
    ({"kid": {"subset_size": 1}}, "subset_size"),
    ({"clip_text": {}}, "'text'"),
    ({"intra_lpips": {"net": "alexnet"}}, "'net' must be one of"),
])
def test_config_errors_name_the_key(metrics, match):
    with pytest.raises(ValueError, match=match):
        MetricsCallback(metrics=metrics)
