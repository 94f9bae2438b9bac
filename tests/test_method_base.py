"""The method core: MethodModule plumbing, the frozen-network holder, one generator loader, and the example
method of docs/adding_a_method.md trained for a few steps."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from datamodules.latents import LatentDataModule
from lightning_modules.base import STATE_KEY, MethodModule
from lightning_modules.config_groups import GANSettings, GeneratorSpec, coerce_group
from models import checkpoints
from models.frozen import HoldsFrozen, requires_grad, trainable
from models.stylegan2 import Generator
from tests.helpers_gan import one_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
ARCH = {"resolution": 16, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16}, "init_seed": 0}


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return pl.Trainer(**{**defaults, **kwargs})


# ---------------------------------------------------------------------------------------------- frozen holder
class Owner(HoldsFrozen):
    def __init__(self, pinned: torch.dtype | None = None):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.hold("teacher", nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)), dtype=pinned)


def test_frozen_network_is_outside_parameters_state_dict_and_optimizers():
    owner = Owner()
    teacher_ids = {id(p) for p in owner.teacher.parameters()}
    assert teacher_ids and not teacher_ids & {id(p) for p in owner.parameters()}
    assert set(owner.state_dict()) == {"head.weight", "head.bias"}
    assert not any(p.requires_grad for p in owner.teacher.parameters())
    assert "teacher" not in dict(owner.named_modules())
    # gradients flow through the frozen network to its input, not into its weights
    x = torch.randn(3, 4, requires_grad=True)
    owner.teacher(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in owner.teacher.parameters())
    # re-assigning the attribute keeps the new network frozen and unregistered
    owner.teacher = nn.Linear(4, 4)
    assert "teacher" not in owner._modules and not owner.teacher.weight.requires_grad
    assert owner.held_networks() == {"teacher": owner.teacher}


def test_frozen_network_stays_eval_and_follows_moves_and_the_dtype_policy():
    owner = Owner().train()
    assert owner.head.training and not owner.teacher.training
    assert not any(m.training for m in owner.teacher.modules())
    owner.to(torch.float64)
    assert owner.head.weight.dtype == torch.float64 and owner.teacher[0].weight.dtype == torch.float64
    pinned = Owner(pinned=torch.float32).to(torch.float64)
    assert pinned.head.weight.dtype == torch.float64 and pinned.teacher[0].weight.dtype == torch.float32
    owner.to("meta")
    assert owner.teacher[0].weight.is_meta and owner.head.weight.is_meta


def test_trainable_restores_flags_and_requires_grad_sets_them():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    b.bias.requires_grad_(False)
    with trainable([b], [a]):
        assert not any(p.requires_grad for p in a.parameters()) and all(p.requires_grad for p in b.parameters())
    assert all(p.requires_grad for p in a.parameters()) and not b.bias.requires_grad
    requires_grad([a, b], False)
    assert not any(p.requires_grad for m in (a, b) for p in m.parameters())


# ---------------------------------------------------------------------------------------------- base module
class Regression(MethodModule):
    """The smallest method: fits ``w`` to 3, with an optional NaN on a given iteration."""

    product_file = "product.pt"

    def __init__(self, nan_at: int | None = None, **base):
        super().__init__(**base)
        self.w = nn.Parameter(torch.zeros(()))
        self.hold("teacher", nn.Linear(2, 2))
        self.nan_at, self.draws = nan_at, []

    def loss(self, z):
        loss = (self.w - 3.0) ** 2 + 0 * z.sum()
        if self.iteration == self.nan_at:
            loss = loss * float("nan")
        return loss, {"loss/fit": loss}

    def training_step(self, z, batch_idx):
        self.reseed()
        self.draws.append(float(torch.rand((), generator=self.rng)))
        logs = {}
        self.step(self.optimizers(), "fit", self.loss, logs, z)
        self.end_iteration(z.shape[0], logs)

    def configure_optimizers(self):
        return torch.optim.SGD([self.w], lr=0.1)

    def export(self, path):
        torch.save({"w": self.w.detach()}, path)
        return path


def latents(batch_size: int = 2):
    return LatentDataModule(z_dim=2, batch_size=batch_size, steps_per_epoch=100, seed=0)


class Probe(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        assert pl_module.training and not pl_module.teacher.training


def test_counters_logging_total_kimg_state_and_export(tmp_path):
    module = Regression(seed=5, total_kimg=0.006)  # 3 iterations of 2 latents
    t = trainer(tmp_path, callbacks=[Probe()])
    t.fit(module, latents())
    assert (module.nimg, module.iteration, module.kimg) == (6, 3, 0.006)
    assert float(module.w.detach()) == pytest.approx(3.0 * (1 - 0.8 ** 3))  # three SGD steps on (w - 3)^2, lr 0.1
    assert t.callback_metrics["kimg"] == pytest.approx(0.006)
    assert torch.load(tmp_path / "product.pt")["w"] == module.w.detach()
    assert module.run_dir == tmp_path
    # one state key; frozen networks are not in the checkpoint
    t.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt[STATE_KEY] == {"nimg": 6, "iteration": 3, "nan_skips": 0, "base_seed": 5}
    assert set(ckpt["state_dict"]) == {"w"}
    again = Regression(seed=5)
    again.on_load_checkpoint(ckpt)
    assert (again.nimg, again.iteration) == (6, 3)


def test_randomness_is_a_function_of_seed_rank_and_iteration(tmp_path):
    a, b, c = Regression(seed=1, total_kimg=0.006), Regression(seed=1, total_kimg=0.006), Regression(seed=2,
                                                                                                    total_kimg=0.006)
    for i, m in enumerate((a, b, c)):
        trainer(tmp_path / str(i)).fit(m, latents())
    assert a.draws == b.draws and a.draws != c.draws and len(set(a.draws)) == 3


def test_nan_policy_raise_and_skip_for_any_method(tmp_path):
    with pytest.raises(FloatingPointError, match="phase fit at kimg 0.002 .iteration 1."):
        trainer(tmp_path / "a").fit(Regression(nan_at=1, total_kimg=0.006), latents())
    skipping = Regression(nan_at=1, nan_policy="skip", total_kimg=0.006)
    with pytest.warns(RuntimeWarning, match="optimizer step skipped"):
        trainer(tmp_path / "b").fit(skipping, latents())
    assert skipping.nan_skips == 1 and skipping.iteration == 3
    assert float(skipping.w.detach()) == pytest.approx(3.0 * (1 - 0.8 ** 2))  # two real steps
    with pytest.raises(ValueError, match="nan_policy"):
        Regression(nan_policy="ignore")


def test_mean_w_is_the_mean_of_4096_fixed_latents_and_is_cached():
    module = Regression()
    g = Generator(16, style_dim=8, n_mlp=1, channels={4: 8, 8: 8, 16: 8})
    expected = g.style(torch.randn(4096, 8, generator=torch.Generator().manual_seed(0))).mean(0, keepdim=True)
    torch.testing.assert_close(module.mean_w(g), expected)
    first = module.mean_w(g)
    assert module.mean_w(g) is first  # cached
    module.iteration += 1
    again = module.mean_w(g)
    assert again is not first and torch.equal(again, first)  # recomputed after a step (the weights may move)


# ---------------------------------------------------------------------------------------------- groups, loader
def test_config_groups_merge_defaults_and_name_unknown_keys():
    spec = coerce_group(GeneratorSpec, "stylegan2-ffhq-256", "model.generator")
    assert spec.checkpoint == "stylegan2-ffhq-256" and spec.which == "g_ema"
    gan = coerce_group(GANSettings, {"r1_gamma": 1.0}, "model.gan", GANSettings(ema_kimg=1.25))
    assert (gan.r1_gamma, gan.ema_kimg, gan.g_lr) == (1.0, 1.25, 0.002)
    with pytest.raises(ValueError, match="'model.gan.r1_gama': did you mean 'model.gan.r1_gamma'"):
        coerce_group(GANSettings, {"r1_gama": 1.0}, "model.gan")
    with pytest.raises(ValueError, match="'model.gan' must be a mapping"):
        coerce_group(GANSettings, "fast", "model.gan")
    assert coerce_group(GeneratorSpec, {"channels": {"4": 8}}, "g").channels == {4: 8}


def test_one_generator_loader_picks_g_ema_and_falls_back(tmp_path):
    spec = coerce_group(GeneratorSpec, ARCH, "model.generator")
    g = spec.generator()
    other = Generator(16, style_dim=32, n_mlp=2, channels=ARCH["channels"])
    checkpoints.save(tmp_path / "both.pt", g_ema=g, g=other)
    checkpoints.save(tmp_path / "g_only.pt", g=other)
    loaded = checkpoints.load_generator(tmp_path / "both.pt")
    assert torch.equal(loaded.input.input, g.input.input) and not loaded.training
    assert torch.equal(checkpoints.load_generator(tmp_path / "both.pt", "g").input.input, other.input.input)
    assert torch.equal(checkpoints.load_generator(tmp_path / "g_only.pt").input.input, other.input.input)
    from_file = coerce_group(GeneratorSpec, str(tmp_path / "both.pt"), "model.generator").generator()
    assert all(torch.equal(a, b) for a, b in zip(from_file.state_dict().values(), g.state_dict().values()))
    with pytest.raises(ValueError, match="model.generator.style_dim=64 disagrees"):
        coerce_group(GeneratorSpec, {"checkpoint": str(tmp_path / "both.pt"), "style_dim": 64}, "g").generator()
    # init_seed makes a new generator reproducible, independent of the global RNG
    torch.manual_seed(123)
    assert torch.equal(spec.generator().input.input, g.input.input)


# ---------------------------------------------------------------------------------------------- the example
def example_method() -> type:
    """The ``ColorShift`` class of docs/adding_a_method.md, imported from the page's code."""
    page = (ROOT / "docs" / "adding_a_method.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    source = next(b for b in blocks if "class ColorShift(MethodModule)" in b)
    module = types.ModuleType("colorshift_example")
    sys.modules[module.__name__] = module
    exec(compile(source, "docs/adding_a_method.md", "exec"), module.__dict__)  # noqa: S102 - our own docs
    return module.ColorShift


def test_the_documented_example_method_trains_and_exports(tmp_path):
    ColorShift = example_method()
    module = ColorShift(generator={**ARCH, "resolution": 16}, total_kimg=0.024, seed=0)
    z = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = module.loss(z)[1]["loss/color"]
    trainer(tmp_path).fit(module, LatentDataModule(z_dim=32, batch_size=4, steps_per_epoch=100, seed=0))
    with torch.no_grad():
        after = module.loss(z)[1]["loss/color"]
    assert module.iteration == 6 and after < before
    assert {k for k in module.state_dict() if not k.startswith("g_train.")} == {"color"}  # no frozen source
    assert not module.g_source.training
    exported = checkpoints.load(tmp_path / "generator.pt")
    assert all(torch.equal(a, b) for a, b in zip(exported.g_ema.state_dict().values(),
                                                  module.g_train.state_dict().values()))
    # the launcher validates its keys (groups and base keys through **base) like any method's
    from launch.schema import check_signature

    errors: list[str] = []
    check_signature("model", {"generator": ARCH, "color": [1, 0, 0], "total_kimg": 1, "lambda_sorce": 1}, ColorShift,
                    errors)
    assert len(errors) == 1 and "lambda_source" in errors[0], errors
