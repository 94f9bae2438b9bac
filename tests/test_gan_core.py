"""The StyleGAN2 training core: optimizers, EMA, counters, lazy phases, NaN guard, resume, DDP, bf16
(docs/methods/stylegan2.md, "Training algorithm"; docs/architecture.md, "GAN training inside
Lightning")."""
from __future__ import annotations

import math
import tempfile

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_modules.ema import ema_beta, make_ema, update_ema
from lightning_modules.gan import StyleGAN2Core, lazy_adam_kwargs
from lightning_modules.stylegan2 import StyleGAN2Module
from tests.helpers_gan import TINY, grouped, RandomImages, SaveState, one_thread  # noqa: F401 (autouse fixture)


def tiny_module(**kwargs) -> StyleGAN2Module:
    torch.manual_seed(0)
    return StyleGAN2Module(**grouped(**{**TINY, "seed": 0, **kwargs}))


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=tempfile.mkdtemp(prefix="styleshift-test-"))  # generator.pt goes there
    return pl.Trainer(**{**defaults, **kwargs})


class LossRecorder(pl.Callback):
    def __init__(self):
        self.history = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.history.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("loss/")})


# ---------------------------------------------------------------------------------------------- formulas
def test_lazy_regularization_adam_correction():
    g = lazy_adam_kwargs(0.002, (0.0, 0.99), 4)
    d = lazy_adam_kwargs(0.002, (0.0, 0.99), 16)
    assert g["lr"] == pytest.approx(0.0016) and g["betas"] == pytest.approx((0.0, 0.99 ** 0.8))
    assert g["betas"][1] == pytest.approx(0.991992, abs=1e-6)  # docs/methods/stylegan2.md
    assert d["lr"] == pytest.approx(0.002 * 16 / 17) and d["betas"][1] == pytest.approx(0.990585, abs=1e-6)
    with pytest.raises(ValueError):
        lazy_adam_kwargs(0.002, (0.0, 0.99), 0)

    module = tiny_module()
    opt_g, opt_d = module.configure_optimizers()
    assert opt_g.defaults["lr"] == pytest.approx(0.0016) and opt_d.defaults["lr"] == pytest.approx(0.002 * 16 / 17)
    optimized = {id(p) for opt in (opt_g, opt_d) for group in opt.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in [*module.generator.parameters(), *module.discriminator.parameters()]}
    assert not optimized & {id(p) for p in module.g_ema.parameters()}  # EMA excluded


def test_ema_beta_formula():
    assert ema_beta(32, 10) == pytest.approx(0.5 ** (32 / 10_000)) == pytest.approx(0.997784, abs=1e-6)
    # ramp-up: half-life min(ema_kimg * 1000, cur_nimg * rampup)
    assert ema_beta(32, 10, cur_nimg=1000, ema_rampup=0.05) == pytest.approx(0.5 ** (32 / 50))
    assert ema_beta(32, 10, cur_nimg=10 ** 7, ema_rampup=0.05) == pytest.approx(0.5 ** (32 / 10_000))
    with pytest.raises(ValueError):
        ema_beta(32, 0)


def test_ema_update_one_step_by_hand():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = make_ema(net)
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    old = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(8, 3))  # changes the BatchNorm running statistics (buffers)
    update_ema(ema, net, beta=0.9)
    for name, p in net.named_parameters():
        torch.testing.assert_close(dict(ema.named_parameters())[name], 0.9 * old[name] + 0.1 * p.detach())
    for name, b in net.named_buffers():
        assert torch.equal(dict(ema.named_buffers())[name], b)  # buffers copied (NVIDIA)


# ---------------------------------------------------------------------------------------------- training
def test_kimg_counting_lazy_phases_and_total_kimg():
    module = tiny_module(r1_interval=2, pl_interval=3, total_kimg=0.020)  # 20 images = 5 batches of 4
    phases = []
    original = module.step

    def recording(opt, phase, *args):
        phases.append((module.iteration, phase))
        return original(opt, phase, *args)

    module.step = recording
    trainer(max_epochs=10).fit(module, RandomImages(n=8, seed=123))
    assert module.nimg == 20 and module.kimg == pytest.approx(0.020) and module.iteration == 5
    assert [i for i, p in phases if p == "D_reg"] == [0, 2, 4]
    assert [i for i, p in phases if p == "G_reg"] == [0, 3]
    assert [i for i, p in phases if p == "D_main"] == [0, 1, 2, 3, 4] == [i for i, p in phases if p == "G_main"]
    assert float(module.pl_mean) > 0  # running mean moved from 0


def test_ema_tracks_generator_during_training():
    module = tiny_module(ema_kimg=0.004)  # beta = 0.5 per batch of 4
    g_ema_before = [p.clone() for p in module.g_ema.parameters()]
    trainer(max_steps=2).fit(module, RandomImages(n=4, seed=123))  # one iteration = 2 optimizer steps
    # after one iteration: p_ema = 0.5 * p_ema0 + 0.5 * p1
    for e0, e1, p1 in zip(g_ema_before, module.g_ema.parameters(), module.generator.parameters()):
        torch.testing.assert_close(e1, 0.5 * e0 + 0.5 * p1)
    assert not module.g_ema.training


def test_style_mixing_uses_torch_rng_per_iteration():
    module = tiny_module(mixing_prob=1.0)
    module.reseed()
    a, ia = module.mixing_styles(2)
    module.reseed()
    b, ib = module.mixing_styles(2)
    assert ia == ib and 1 <= ia < module.generator.n_latent and torch.equal(a[0], b[0]) and len(a) == 2
    module.iteration += 1
    module.reseed()
    c, _ = module.mixing_styles(2)
    assert not torch.equal(a[0], c[0])
    assert len(tiny_module(mixing_prob=0.0).mixing_styles(2)[0]) == 1


def test_nan_guard_raises_with_phase_and_kimg():
    module = tiny_module()
    module.discriminator.register_forward_hook(lambda mod, inp, out: out * float("nan"))
    with pytest.raises(FloatingPointError, match=r"non-finite loss in phase D_main at kimg 0\.000"):
        trainer(max_steps=2).fit(module, RandomImages(n=4, seed=123))


def test_nan_guard_catches_non_finite_gradients():
    module = tiny_module()
    module.discriminator.final_linear[1].weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite gradients in phase D_main"):
        trainer(max_steps=2).fit(module, RandomImages(n=4, seed=123))


def test_nan_guard_skip_leaves_weights_unchanged():
    module = tiny_module(nan_policy="skip", pl_weight=0.0)
    module.discriminator.register_forward_hook(lambda mod, inp, out: out * float("nan"))
    before = {k: v.clone() for k, v in [*module.generator.state_dict().items(),
                                        *(("d." + k, v) for k, v in module.discriminator.state_dict().items())]}
    with pytest.warns(RuntimeWarning, match="optimizer step skipped"):
        trainer(max_epochs=1).fit(module, RandomImages(n=4, seed=123))  # skipped steps do not count in max_steps
    after = {**module.generator.state_dict(), **{"d." + k: v for k, v in module.discriminator.state_dict().items()}}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert module.nan_skips == 3  # D_main, D_reg, G_main


def test_resume_equals_uninterrupted_run(tmp_path):
    full, rec_full = tiny_module(r1_interval=2, pl_interval=2), LossRecorder()
    trainer(max_epochs=4, callbacks=[rec_full]).fit(full, RandomImages(n=8, seed=123))

    first = tiny_module(r1_interval=2, pl_interval=2)
    t1 = trainer(max_epochs=2)
    t1.fit(first, RandomImages(n=8, seed=123))
    t1.save_checkpoint(tmp_path / "half.ckpt")

    torch.manual_seed(99)  # a different global RNG state must not matter
    resumed, rec_resumed = StyleGAN2Module(**grouped(**TINY, seed=0, r1_interval=2, pl_interval=2)), LossRecorder()
    trainer(max_epochs=4, callbacks=[rec_resumed]).fit(resumed, RandomImages(n=8, seed=123),
                                                       ckpt_path=tmp_path / "half.ckpt")
    assert resumed.nimg == full.nimg == 32 and resumed.iteration == 8
    assert len(rec_resumed.history) == 4 and [row.keys() for row in rec_resumed.history] == \
        [row.keys() for row in rec_full.history[4:]]
    for resumed_row, full_row in zip(rec_resumed.history, rec_full.history[4:]):
        assert list(resumed_row.values()) == pytest.approx(list(full_row.values()), rel=1e-6)
    full_sd, resumed_sd = full.state_dict(), resumed.state_dict()
    assert full_sd.keys() == resumed_sd.keys() and any(k.startswith("g_ema.") for k in full_sd)
    for key in full_sd:
        torch.testing.assert_close(resumed_sd[key], full_sd[key], rtol=0, atol=1e-6, msg=key)



def test_ddp_two_processes_end_with_identical_parameters(tmp_path):
    module = tiny_module(r1_interval=2, pl_interval=2)
    t = trainer(devices=2, strategy="ddp_fork_find_unused_parameters_true", max_epochs=2,
                callbacks=[SaveState(tmp_path)])
    t.fit(module, RandomImages(n=16, seed=123))  # 2 batches per rank per epoch
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    initial = tiny_module(r1_interval=2, pl_interval=2).state_dict()
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert not torch.equal(rank0["generator.style.1.weight"], initial["generator.style.1.weight"])  # trained
    assert float(rank0["pl_mean"]) > 0


def test_bf16_mixed_runs_finite_with_fp32_penalties():
    module = tiny_module(r1_interval=1, pl_interval=1)
    dtypes = set()
    module.discriminator.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    recorder = LossRecorder()
    trainer(precision="bf16-mixed", max_steps=4, callbacks=[recorder]).fit(module, RandomImages(n=8, seed=123))
    assert {torch.bfloat16, torch.float32} <= dtypes  # main phases in bf16, R1 in fp32
    assert recorder.history and all(math.isfinite(v) for row in recorder.history for v in row.values())
    assert {"loss/D_reg", "loss/G_reg"} <= set(recorder.history[-1])
    assert all(p.dtype == torch.float32 for p in module.parameters())


def test_fp16_precision_is_refused():
    with pytest.raises(ValueError, match="use bf16-mixed"):
        trainer(precision="16-true", max_steps=2).fit(tiny_module(), RandomImages(n=4, seed=123))


def test_core_validates_arguments():
    for bad in ({"nan_policy": "ignore"}, {"gan": {"mixing_prob": 1.5}}, {"gan": {"r1_interval": 0}},
                {"total_kimg": 0}, {"gan": {"r1_gama": 1.0}}):
        with pytest.raises(ValueError):
            StyleGAN2Core(**bad)
