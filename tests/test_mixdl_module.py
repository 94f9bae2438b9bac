"""MixDL LightningModule: iteration schedule, losses wired as docs/methods/mixdl.md, ablation
switches, W-space mixing, optimizers, exact resume with the patch heads, samplers, configs."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_modules.mixdl import MixDLModule
from models.sampler import path_latents
from models.mixup import uniform_coefficients
from models.sampler import seeded_normal
from tests.helpers_gan import SaveState, grouped, one_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"resolution": 16, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16},
        "patch_resolutions": (16, 8, 4), "interpolation_steps": 4}


def tiny(**kwargs) -> MixDLModule:
    torch.manual_seed(0)
    return MixDLModule(**grouped(**{**TINY, "seed": 0, **kwargs}))


def images(batches: int = 2, batch_size: int = 4) -> DataLoader:
    gen = torch.Generator().manual_seed(123)
    data = torch.rand(batches * batch_size, 3, 16, 16, generator=gen) * 2 - 1
    return DataLoader(data, batch_size=batch_size, shuffle=False, drop_last=True)


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=tempfile.mkdtemp(prefix="styleshift-test-"))  # generator.pt goes there
    return pl.Trainer(**{**defaults, **kwargs})


def record(module: MixDLModule) -> tuple[list, list]:
    """Per phase ``(iteration, phase, loss function)`` and per iteration the logged values."""
    phases, logged = [], []
    original_phase, original_log = module.step, module.log_dict

    def phase(opt, name, loss_fn, logs, *args):
        phases.append((module.iteration, name, loss_fn.__name__))
        return original_phase(opt, name, loss_fn, logs, *args)

    def log_dict(values, **kwargs):
        logged.append({k: float(v) for k, v in values.items()})
        return original_log(values, **kwargs)

    module.step, module.log_dict = phase, log_dict
    return phases, logged


# ---------------------------------------------------------------------------------------------- schedule
def test_mixup_every_second_iteration_with_patch_r1_and_plain_r1():
    module = tiny(r1_interval=3, pl_interval=2)
    phases, logged = record(module)
    trainer(max_epochs=3).fit(module, images(batches=2))  # 6 iterations
    assert module.iteration == 6
    d_main = {i: fn for i, p, fn in phases if p == "D_main"}
    g_main = {i: fn for i, p, fn in phases if p == "G_main"}
    assert d_main == {i: "mixup_discriminator_loss" if i % 2 == 0 else "discriminator_loss" for i in range(6)}
    assert g_main == {i: "mixup_generator_loss" if i % 2 == 0 else "generator_loss" for i in range(6)}
    # R1 every 3 iterations: on the patch head at the mixup iteration 0, image-level at the plain iteration 3
    assert [(i, fn) for i, p, fn in phases if p == "D_reg"] == [(0, "mixup_discriminator_reg"),
                                                                (3, "discriminator_reg")]
    assert [i for i, p, _ in phases if p == "G_reg"] == [0, 2, 4]
    for i, logs in enumerate(logged):
        mixup_keys = {"loss/G_distance", "loss/D_distance", "loss/G_patch", "loss/D_patch"}
        if i % 2 == 0:
            assert mixup_keys <= set(logs) and "loss/G_main" not in logs and "D/real_logits" not in logs
            # the totals are the adversarial terms plus the weighted KL terms (kl_wt 1000, d_kl_wt 1)
            assert logs["loss/G_mixup"] == pytest.approx(logs["loss/G_patch"] + 1000 * logs["loss/G_distance"],
                                                         rel=1e-5)
            assert logs["loss/D_mixup"] == pytest.approx(logs["loss/D_patch"] + logs["loss/D_distance"], rel=1e-5)
            assert logs["loss/G_distance"] > 0 and logs["loss/D_distance"] > 0
        else:
            assert not mixup_keys & set(logs) and {"loss/G_main", "loss/D_main"} <= set(logs)


@pytest.mark.parametrize("every, expected", [(3, [0, 3]), (1, [0, 1, 2, 3]), (0, [])])
def test_mixup_frequency_switch(every, expected):
    module = tiny(mixup_every=every, r1_interval=16, pl_weight=0.0)
    phases, _ = record(module)
    trainer(max_epochs=2).fit(module, images(batches=2))
    assert [i for i, p, fn in phases if fn == "mixup_discriminator_loss"] == expected
    assert [i for i, p, fn in phases if fn == "mixup_generator_loss"] == expected


def test_distance_loss_switches():
    for kwargs, absent in (({"g_distance": False}, "loss/G_distance"), ({"d_distance": False}, "loss/D_distance")):
        module = tiny(pl_weight=0.0, **kwargs)
        _, logged = record(module)
        trainer(max_steps=1).fit(module, images(batches=1))
        logs = logged[0]
        assert absent not in logs
        if kwargs == {"g_distance": False}:
            assert logs["loss/G_mixup"] == pytest.approx(logs["loss/G_patch"]) and "loss/D_distance" in logs
        else:
            assert logs["loss/D_mixup"] == pytest.approx(logs["loss/D_patch"]) and "loss/G_distance" in logs


def test_coefficient_sampler_switch_uses_the_iteration_generator():
    module = tiny(coefficients="uniform")
    module.reseed()
    alpha = module.mixing_coefficients(4)
    expected = uniform_coefficients(4, 4, generator=torch.Generator().manual_seed(module.rng.initial_seed()))
    torch.testing.assert_close(alpha, expected)
    dirichlet = tiny(concentration=0.25)
    dirichlet.reseed()
    rows = dirichlet.mixing_coefficients(4)
    torch.testing.assert_close(rows.sum(1), torch.ones(4))
    assert not torch.allclose(rows, alpha)


# ---------------------------------------------------------------------------------------------- mixing in W
@pytest.mark.parametrize("shared", [False, True])
def test_mixes_are_alpha_times_w_in_w_space_with_a_fresh_alpha_for_the_g_step(shared):
    """The released G step draws its own alpha (``train_mixdl.py``); ``shared_alpha`` reuses the D step's."""
    module = tiny(pl_weight=0.0, shared_alpha=shared)
    calls, alphas = [], []
    original_synth, original_coeffs = module.synthesize, module.mixing_coefficients

    def synthesize(w, return_feats=False):
        calls.append(w.detach().clone())
        return original_synth(w, return_feats)

    def coefficients(n):
        alphas.append(original_coeffs(n))
        return alphas[-1]

    module.synthesize, module.mixing_coefficients = synthesize, coefficients
    trainer(max_steps=1).fit(module, images(batches=1))
    assert len(alphas) == (1 if shared else 2)
    alpha_d, alpha_g = alphas[0], alphas[-1]
    assert shared or not torch.allclose(alpha_d, alpha_g)
    assert [tuple(w.shape) for w in calls] == [(8, 32), (4, 32), (8, 32)]  # D: [w; aw], G adv: aw, G dist: [w; aw]
    torch.testing.assert_close(calls[0][4:], alpha_d @ calls[0][:4])
    torch.testing.assert_close(calls[2][4:], alpha_g @ calls[2][:4])  # the G-side distance uses the G step's alpha
    assert not torch.allclose(calls[0][:4], calls[2][:4])  # the G-side loss draws its own z


# ---------------------------------------------------------------------------------------------- optimizers
def test_optimizers_and_which_networks_each_phase_updates():
    module = tiny(pl_weight=0.0, r1_interval=16)
    opt_g, opt_d, opt_patch = module.configure_optimizers()
    ids = lambda m: {id(p) for p in m.parameters()}  # noqa: E731
    in_opt = lambda o: {id(p) for g in o.param_groups for p in g["params"]}  # noqa: E731
    assert in_opt(opt_g) == ids(module.generator)
    assert in_opt(opt_d) == ids(module.discriminator) | ids(module.distance_head)
    assert in_opt(opt_patch) == ids(module.patch_heads)
    assert opt_patch.defaults["lr"] == opt_d.defaults["lr"] == pytest.approx(0.002 * 16 / 17)
    assert opt_g.defaults["lr"] == pytest.approx(0.002 * 4 / 5)

    heads = [p.clone() for p in module.patch_heads.parameters()]
    proj = [p.clone() for p in module.distance_head.parameters()]
    trainer(max_steps=1).fit(module, images(batches=1))  # one mixup iteration
    # each D call draws one head: the drawn heads moved, by their own optimizer
    assert any(not torch.equal(a, b) for a, b in zip(heads, module.patch_heads.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(proj, module.distance_head.parameters()))
    assert all(p.requires_grad for p in module.parameters() if not any(p is q for q in module.g_ema.parameters()))

    plain = tiny(mixup_every=0, pl_weight=0.0)
    heads = [p.clone() for p in plain.patch_heads.parameters()]
    trainer(max_epochs=1).fit(plain, images(batches=2))
    assert all(torch.equal(a, b) for a, b in zip(heads, plain.patch_heads.parameters()))


# ---------------------------------------------------------------------------------------------- resume
def test_resume_reproduces_the_uninterrupted_run_with_patch_heads(tmp_path):
    kwargs = dict(r1_interval=2, pl_interval=2, diffaugment="color,translation,cutout")
    full = tiny(**kwargs)
    _, logged_full = record(full)
    t_full = trainer(max_epochs=4)
    t_full.fit(full, images(batches=2))

    first = tiny(**kwargs)
    t1 = trainer(max_epochs=2)
    t1.fit(first, images(batches=2))
    t1.save_checkpoint(tmp_path / "half.ckpt")
    ckpt = torch.load(tmp_path / "half.ckpt", weights_only=False)
    assert len(ckpt["optimizer_states"]) == 3 and ckpt["optimizer_states"][2]["state"]  # e_optim saved
    assert any(k.startswith("patch_heads.") for k in ckpt["state_dict"])

    torch.manual_seed(99)  # the global RNG must not matter
    resumed = MixDLModule(**grouped(**TINY, seed=0, **kwargs))
    _, logged_resumed = record(resumed)
    t2 = trainer(max_epochs=4)
    t2.fit(resumed, images(batches=2), ckpt_path=tmp_path / "half.ckpt")
    assert resumed.iteration == full.iteration == 8
    assert len(logged_resumed) == 4 and len(logged_full) == 8
    for row_resumed, row_full in zip(logged_resumed, logged_full[4:]):
        assert row_resumed == pytest.approx(row_full, rel=1e-6)
    full_sd, resumed_sd = full.state_dict(), resumed.state_dict()
    assert full_sd.keys() == resumed_sd.keys()
    for key in full_sd:
        torch.testing.assert_close(resumed_sd[key], full_sd[key], rtol=0, atol=1e-6, msg=key)
    assert len(t_full.optimizers) == len(t2.optimizers) == 3
    for opt_full, opt_resumed in zip(t_full.optimizers, t2.optimizers):  # G, D + sim_linear, patch heads
        state_full, state_resumed = opt_full.state_dict()["state"], opt_resumed.state_dict()["state"]
        assert state_full.keys() == state_resumed.keys() and state_full
        for index, entry in state_full.items():
            for name in ("step", "exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(state_resumed[index][name], entry[name], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- samplers
def test_samplers_interpolation_paths_are_straight_in_w_and_end_on_ema_samples():
    module = tiny()
    samplers = module.samplers()
    assert set(samplers) == {"ema", "interpolation"}
    strip = samplers["interpolation"]
    assert strip.kind == "strip" and strip.frames_per_path == 5
    with torch.no_grad():
        frames = strip.render(list(range(10)), seed=7)  # 2 paths x 5 frames
        ema = samplers["ema"].render([0, 1, 2, 3], seed=7)
        torch.testing.assert_close(frames[[0, 4, 5, 9]], ema, atol=1e-5, rtol=0)
        w = path_latents(module.g_ema, list(range(5)), 7, 5)
        ends = module.g_ema.style(seeded_normal([0, 1], 7, 32))
        torch.testing.assert_close(w[2], 0.5 * (ends[0] + ends[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(w[1], 0.75 * ends[0] + 0.25 * ends[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(strip.render([6, 3], seed=7), frames[[6, 3]], atol=1e-5, rtol=0)


def test_diffaugment_is_applied_to_d_inputs_and_reproducible():
    module = tiny(diffaugment="translation,cutout")
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    module.reseed()
    a = module.augment(x)
    module.reseed()
    assert torch.equal(a, module.augment(x)) and not torch.equal(a, x)
    assert torch.equal(tiny().augment(x), x)


def test_bad_arguments_raise():
    for bad in ({"mixup_every": -1}, {"kl_reduction": "batch"}, {"coefficients": "dirchlet"},
                {"coefficients": "gaussian", "concentration": 0.5}, {"g_kl_weight": -1.0},
                {"g_distance": "yes"}, {"patch_resolutions": (64,)}, {"interpolation_steps": 0},
                {"diffaugment": "colour"}):
        with pytest.raises(ValueError):
            tiny(**bad)


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs/mixdl").glob("*.yaml")))
def test_mixdl_configs_validate(name):
    from launch.config import compose
    from launch.run import prepare

    prep = prepare(compose(ROOT / "configs/mixdl" / f"{name}.yaml", [] if name == "toy" else ["data.path=x"]))
    assert prep.config["method"] == "mixdl"
    if name != "toy":
        model, data = prep.config["model"], prep.config["data"]
        assert (model["generator"]["resolution"], data["batch_size"], data["fewshot"],
                model["total_kimg"]) == (256, 4, 10, 600)
    metrics = prep.config["callbacks"]["metrics"]
    for _, cls, kwargs in prep.plan.callbacks:  # metric specs parse (names, options)
        if cls.__name__ == "MetricsCallback":
            cls(**kwargs)
    assert metrics["samplers"] == ["ema"]


# ---------------------------------------------------------------------------------------------- DDP

def test_ddp_ranks_end_with_identical_parameters(tmp_path):
    """Ranks draw different z, alpha and patch heads; DDP averages the gradients of all three optimizers."""
    module = tiny(r1_interval=2, pl_interval=2)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    t = trainer(devices=2, strategy="ddp_fork_find_unused_parameters_true", max_epochs=1,
                callbacks=[SaveState(tmp_path)])
    t.fit(module, images(batches=4))  # 2 iterations per rank: one mixup, one plain
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert not torch.equal(rank0["distance_head.sim_linear.weight"], initial["distance_head.sim_linear.weight"])
