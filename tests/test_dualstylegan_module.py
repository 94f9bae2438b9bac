"""DualStyleGAN Stages II and III as a LightningModule: loss terms against their formulas, the mixing-layer
schedule, what trains (extrinsic path and D only), the res-only EMA, samplers and export, start-up errors,
resume exactness and 2-process DDP."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.dualstylegan import DualStyleGANModule, default_mixing_layers
from models import checkpoints
from models import dualstylegan as dsg
from models.stylegan2 import Generator
from models.style_codes import StyleCodes, StyleCodesError
from tests.helpers_gan import (PARENT_ARCH, RandomImages, assert_ddp_ranks_identical,  # noqa: F401
                               assert_resume_matches, cpu_trainer, one_thread, save_parent)

ARCH = PARENT_ARCH
N_LATENT = 6
NAMES = [f"s{i}.png" for i in range(5)]
FAST_GAN = {"r1_interval": 2, "pl_interval": 2, "ema_kimg": 0.01}


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    return save_parent(tmp_path_factory.mktemp("parent") / "parent.pt", ARCH)


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("styles")
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):
        arr = rng.integers(0, 255, (20, 20, 3)).astype(np.uint8)
        arr[..., i % 3] = 220
        Image.fromarray(arr).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    gen = torch.Generator().manual_seed(3)
    table = StyleCodes(NAMES, torch.randn(5, N_LATENT, 16, generator=gen), torch.randn(5, N_LATENT, 16, generator=gen))
    return table.save(tmp_path_factory.mktemp("codes") / "codes.pt")


@pytest.fixture(scope="module")
def stage2_export(parent, tmp_path_factory):
    """A Stage II product (untrained extrinsic path, perturbed so that it matters) to start Stage III from."""
    module = structure(parent)
    with torch.no_grad():
        for block in module.g_ema.modres_blocks():
            block.conv1[0].weight.mul_(30)
        module.generator.load_state_dict(module.g_ema.state_dict())
    return module.export(tmp_path_factory.mktemp("stage2") / "generator.pt")


def structure(parent, **kwargs) -> DualStyleGANModule:
    options = dict(generator=str(parent), res_index=2, vgg="random", seed=0, gan=FAST_GAN)
    return DualStyleGANModule(**{**options, **kwargs})


def style(init, codes, styles, **kwargs) -> DualStyleGANModule:
    options = dict(stage="style", init=str(init), codes=None if codes is None else str(codes), styles=str(styles),
                   vgg="random",
                   identity="random", seed=0, gan=FAST_GAN)
    return DualStyleGANModule(**{**options, **kwargs})


trainer = cpu_trainer


def vgg(module, images):
    return dict(zip(("relu1_1", "relu2_1", "relu3_1"), module.vgg(images)))


def naive_cx(x, y, h=0.2):
    """CX written out position by position (sample-coupled centring by y's batch/space mean)."""
    mu = y.mean(dim=(0, 2, 3), keepdim=True)
    out = []
    for b in range(x.shape[0]):
        xs = F.normalize((x[b] - mu[0]).flatten(1).T, dim=1)  # [P, C]
        ys = F.normalize((y[b] - mu[0]).flatten(1).T, dim=1)  # [Q, C]
        d = 1 - xs @ ys.T
        d_rel = d / (d.min(dim=1, keepdim=True).values + 1e-5)
        w = torch.exp((1 - d_rel) / h)
        cx = (w / w.sum(dim=1, keepdim=True)).max(dim=0).values.mean()
        out.append(-torch.log(cx + 1e-5))
    return torch.stack(out).mean()


# ---------------------------------------------------------------------------------------------- Stage II
def test_structure_losses_follow_their_formulas(parent):
    module = structure(parent)
    gen = torch.Generator().manual_seed(1)
    fake, target, real = (torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1 for _ in range(3))
    terms = module.structure_terms(fake, target)
    torch.testing.assert_close(terms["adv"], F.softplus(-module.discriminator(fake)).mean())
    f, t = vgg(module, fake), vgg(module, target)
    perc = sum((f[k] - t[k]).abs().mean() for k in f)
    torch.testing.assert_close(terms["perc"], perc)
    d_loss, _ = module.discriminator_loss(real, fake)
    expected_d = 0.1 * (F.softplus(-module.discriminator(real)).mean() + F.softplus(module.discriminator(fake)).mean())
    torch.testing.assert_close(d_loss, expected_d)
    # the phase loss: lambda_adv 0.1 and lambda_perc 0.5 per layer
    module.reseed()
    loss, logs = module.generator_loss(module.step_inputs(2))
    torch.testing.assert_close(loss, 0.1 * logs["loss/adv"] + 0.5 * logs["loss/perc"])
    assert set(logs) == {"loss/G_main", "loss/adv", "loss/perc"}


def test_mixing_layer_schedule(parent):
    assert default_mixing_layers(6, 18) == [7, 6, 5]  # the reference at 1024 px
    module = structure(parent, total_kimg=3.6)
    assert module.mixing_layers == [3, 2, 1]
    torch.testing.assert_close(torch.tensor(module.schedule_kimg), torch.tensor([0.3, 0.3]))
    assert [module.mixing_layer(k) for k in (0.0, 0.29, 0.3, 0.59, 0.6, 99.0)] == [3, 3, 2, 2, 1, 1]
    assert structure(parent).schedule_kimg == pytest.approx([1.2, 1.2])  # 300 iterations at batch 4 each
    explicit = structure(parent, mixing_layers=[4, 2], schedule_kimg=[0.5, 2.0])
    assert [explicit.mixing_layer(k) for k in (0.4, 0.5, 10.0)] == [4, 2, 2]
    # the target mixes z1 below l and z2 from l on; e = mapping(z2) off the encoder steps
    explicit.nimg, explicit.iteration = 600, 1
    explicit.reseed()
    inputs = explicit.step_inputs(2)
    assert inputs.kind == "structure" and inputs.e.shape == (2, 16)
    torch.testing.assert_close(inputs.target[:, :2], inputs.latent[:, :2])
    torch.testing.assert_close(inputs.target[:, 2:], inputs.e[:, None].expand(-1, N_LATENT - 2, -1))
    with pytest.raises(ValueError, match="mixing_layers"):
        structure(parent, mixing_layers=[6])
    with pytest.raises(ValueError, match="schedule_kimg"):
        structure(parent, schedule_kimg=[1.0, 1.0, 1.0, 1.0])



def test_encoder_steps_use_the_w_plus_code_of_g_z2(parent, tmp_path):
    from models.encoders import encoder_for, save_encoder

    torch.manual_seed(4)
    source = checkpoints.load_generator(str(parent))
    path = save_encoder(tmp_path / "encoder.pt", encoder_for(source, "B", stem_channels=8, max_channels=16))
    module = structure(parent, encoder=str(path))
    for iteration, encoded in ((0, True), (1, False), (4, True)):
        module.iteration = iteration
        module.reseed()
        inputs = module.step_inputs(2)
        if not encoded:
            assert inputs.e.shape == (2, 16)  # mapping(z2)
            continue
        assert inputs.e.shape == (2, N_LATENT, 16)
        # replay the draws: z1, z2, then the noise of g(w2)
        module.reseed()
        _z1, z2 = module.sample_z(2), module.sample_z(2)
        w2 = module.intrinsic.style(z2)
        with torch.no_grad():
            image = module.intrinsic([w2], input_is_latent=True, noise=module.sample_noise(2))[0]
            torch.testing.assert_close(inputs.e, module.encoder(image))
    wrong = save_encoder(tmp_path / "wrong.pt", encoder_for(Generator(16, 8, 2, channels=ARCH["channels"]), "B",
                                                            stem_channels=8, max_channels=16))
    with pytest.raises(ValueError, match=r"W\+ \[6, 8\]"):
        structure(parent, encoder=str(wrong))

def test_only_the_extrinsic_path_and_d_train_and_ema_covers_res_only(parent):
    module = structure(parent, total_kimg=0.008)
    intrinsic = {k: v.clone() for k, v in module.intrinsic.state_dict().items()}
    g0 = {k: v.clone() for k, v in module.generator.state_dict().items()}
    d0 = {k: v.clone() for k, v in module.discriminator.state_dict().items()}
    ema0 = {k: v.clone() for k, v in module.g_ema.state_dict().items()}
    trainer().fit(module, RandomImages(n=8, batch_size=4))
    assert module.iteration == 2
    assert module.g_ema.generator is module.intrinsic  # one frozen copy, shared
    assert not any(p.requires_grad for p in module.intrinsic.parameters())
    for k, v in intrinsic.items():
        assert torch.equal(v, module.intrinsic.state_dict()[k]), k
    assert not any(k.startswith("generator.generator.") for k in module.state_dict())
    changed = lambda before, net: {k for k, v in before.items() if not torch.equal(v, net.state_dict()[k])}  # noqa
    assert changed(g0, module.generator) >= {k for k in g0 if k.startswith("res.0.")}
    assert any(k.startswith("style.") for k in changed(g0, module.generator))  # T_s trains
    assert changed(d0, module.discriminator)
    ema_changed = changed(ema0, module.g_ema)
    assert ema_changed and all(k.startswith("res.") for k in ema_changed)  # the reference: G_ema.style frozen
    with_style = structure(parent, total_kimg=0.008, ema_style=True)
    trainer().fit(with_style, RandomImages(n=8, batch_size=4))
    assert any(k.startswith("style.") for k in changed(ema0, with_style.g_ema))


# ---------------------------------------------------------------------------------------------- Stage III
def test_style_losses_follow_their_formulas(stage2_export, codes, styles):
    module = style(stage2_export, codes, styles)
    gen = torch.Generator().manual_seed(2)
    fake, exemplar, content = (torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1 for _ in range(3))
    terms = module.style_terms(fake, exemplar, content, paired=True)
    f, s = vgg(module, fake), vgg(module, exemplar)
    torch.testing.assert_close(terms["adv"], F.softplus(-module.discriminator(fake)).mean())
    torch.testing.assert_close(terms["perc"], 0.5 * (f["relu2_1"] - s["relu2_1"]).abs().mean()
                               + 1.0 * (f["relu3_1"] - s["relu3_1"]).abs().mean())
    torch.testing.assert_close(terms["cx"], naive_cx(f["relu3_1"], s["relu3_1"]), atol=1e-5, rtol=1e-5)
    fm = sum(F.mse_loss(f[k].mean(dim=(2, 3)), s[k].mean(dim=(2, 3))) for k in ("relu2_1", "relu3_1"))
    torch.testing.assert_close(terms["fm"], fm)
    a, b = module.identity_net.embed(fake), module.identity_net.embed(content)
    torch.testing.assert_close(terms["id"], (1 - F.cosine_similarity(a, b)).mean(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(terms["reg"], sum(p.norm() for p in module.generator.res.parameters()))
    assert "perc" not in module.style_terms(fake, exemplar, content, paired=False)
    # phase totals: the weighted sums of their own terms (unpaired: no perceptual term)
    weights = {"adv": 1.0, "perc": 1.0, "cx": 0.25, "fm": 0.25, "id": 1.0, "reg": 0.01}
    for paired in (False, True):
        module.reseed()
        inputs = module.style_inputs(2, paired=paired)
        assert inputs.kind == ("paired" if paired else "unpaired")
        loss, logs = module.generator_loss(inputs)
        names = {k[5:] for k in logs if k != "loss/G_main"}
        assert names == set(weights) - (set() if paired else {"perc"})
        torch.testing.assert_close(loss, sum(weights[k] * logs[f"loss/{k}"] for k in names))


def test_paired_helper_and_the_id_content_image(stage2_export, codes, styles, monkeypatch):
    module = style(stage2_export, codes, styles, content_redraw=False)
    table = StyleCodes.load(codes)
    module.reseed()
    rows, latent, e = module.draw_codes(3)
    torch.testing.assert_close(latent[:, :4], table.intrinsic[rows][:, :4])  # structure rows kept
    assert not torch.equal(latent[:, 4:], table.intrinsic[rows][:, 4:])  # colour rows (>= res_index+2) re-drawn
    jitter = e - table.extrinsic[rows]
    assert 0.03 < float(jitter.std()) < 0.3  # sigma 0.1 in W+
    images = module.style_images(rows)
    assert images.shape == (3, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    # content_redraw=False: C is g of exactly Ŷ's intrinsic input and noise
    seen = {}
    real_terms, real_noise = module.style_terms, module.sample_noise
    monkeypatch.setattr(module, "style_terms", lambda fake, ex, content, paired: seen.update(content=content)
                        or real_terms(fake, ex, content, paired))
    monkeypatch.setattr(module, "sample_noise", lambda n: seen.setdefault("noise", real_noise(n)))
    inputs = module.style_inputs(2, paired=False)
    module.generator_loss(inputs)
    with torch.no_grad():
        expected = module.intrinsic([inputs.latent], input_is_latent=True, noise=seen["noise"])[0]
    torch.testing.assert_close(seen["content"], expected, atol=0, rtol=0)
    # content_redraw=True (the reference): a fresh crossover of the same two codes and fresh noise
    redraw = style(stage2_export, codes, styles, content_redraw=True, gan={**FAST_GAN, "mixing_prob": 1.0})
    redraw.reseed()
    inputs = redraw.style_inputs(2, paired=False)
    assert len(inputs.w_list) == 2
    noise = redraw.sample_noise(2)
    fixed = redraw.intrinsic([inputs.latent], input_is_latent=True, noise=noise)[0]
    assert not torch.allclose(redraw.content_image(inputs, noise), fixed)



def test_paired_steps_show_d_the_exemplars_and_adam_carries_over(parent, codes, styles, monkeypatch, tmp_path):
    stage2 = structure(parent, total_kimg=0.008)
    trainer(default_root_dir=tmp_path / "s2").fit(stage2, RandomImages(n=8, batch_size=4))
    export = tmp_path / "s2" / "generator.pt"
    assert set(torch.load(export, weights_only=True)["optimizers"]) == {"g", "d"}
    steps = {}
    for carry in (True, False):
        module = style(export, codes, styles, total_kimg=0.004, carry_optimizers=carry)
        reals = []
        original = module.discriminator_loss
        monkeypatch.setattr(module, "discriminator_loss", lambda real, fake, _r=reals, _o=original:
                            _r.append(real.clone()) or _o(real, fake))
        data = RandomImages(n=4, batch_size=2)
        trainer().fit(module, data)
        assert module.iteration == 2
        opt_g = module.optimizers()[0].optimizer if hasattr(module.optimizers()[0], "optimizer") \
            else module.optimizers()[0]
        steps[carry] = int(next(iter(opt_g.state.values()))["step"])
        torch.testing.assert_close(reals[0], data.images[:2])  # unpaired step: the data batch
        exemplars = module.style_images(range(len(NAMES)))
        assert all(any(torch.equal(row, ex) for ex in exemplars) for row in reals[1])  # paired: S_k
    assert steps[False] == 3 and steps[True] == 6  # G_main + G_reg, G_main per stage; the reference's g_optim

def test_samplers_export_and_init_round_trip(stage2_export, codes, styles, tmp_path):
    module = style(stage2_export, codes, styles, sample_styles=["s1.png", "s3"])
    init = dsg.load(stage2_export)
    for key, value in init.state_dict().items():
        assert torch.equal(value, module.g_ema.state_dict()[key]), key
    assert list(module.samplers()) == ["style/s1", "style/s3", "intrinsic"]
    assert list(style(stage2_export, codes, styles).samplers())[:4] == [f"style/s{i}" for i in range(4)]
    from models.sampler import seeded_normal

    z = seeded_normal([0, 1], 5, 16)
    with torch.no_grad():
        e = StyleCodes.load(codes).extrinsic[3:4].expand(2, -1, -1)
        expected = module.g_ema([module.intrinsic.style(z)], e, input_is_latent=True, randomize_noise=False,
                                interp_weights=[0.75] * 3 + [1.0] * 3)[0].clamp(-1, 1)
    torch.testing.assert_close(module.samplers()["style/s3"].render([0, 1], 5), expected)
    path = module.export(tmp_path / "generator.pt")
    loaded = checkpoints.load(path, networks=("d",))
    assert loaded.extra["style_codes"]["names"] == NAMES and loaded.extra["stage"] == "style"
    assert loaded.d is not None and "dualstylegan_train" in loaded.extra
    again = dsg.load(path)
    for key, value in module.g_ema.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_start_up_errors_are_clear(parent, stage2_export, codes, styles, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        style(stage2_export, tmp_path / "missing.pt", styles)
    other = tmp_path / "other"
    other.mkdir()
    (other / "s0.png").write_bytes((styles / "s0.png").read_bytes())
    with pytest.raises(StyleCodesError, match=r"4 of its 5 file names are not in .*s1.png"):
        style(stage2_export, codes, other)
    wide = StyleCodes(NAMES, torch.zeros(5, N_LATENT, 8), torch.zeros(5, N_LATENT, 8)).save(tmp_path / "wide.pt")
    with pytest.raises(StyleCodesError, match=r"W\+ \[6, 8\].*\[6, 16\]"):
        style(stage2_export, wide, styles)
    with pytest.raises(ValueError, match="model.codes"):
        style(stage2_export, None, styles)
    with pytest.raises(ValueError, match="model.generator .* or model.init"):
        DualStyleGANModule(vgg="random")
    with pytest.raises(ValueError, match="res_index"):
        style(stage2_export, codes, styles, res_index=4)


# ---------------------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("stage", ["structure", "style"])
def test_resume_reproduces_the_uninterrupted_run(parent, stage2_export, codes, styles, tmp_path, stage):
    def build():
        return structure(parent) if stage == "structure" else style(stage2_export, codes, styles)

    assert_resume_matches(build, lambda: RandomImages(n=4, batch_size=2), tmp_path)


def test_ddp_ranks_end_with_identical_parameters(stage2_export, codes, styles, tmp_path):
    module = style(stage2_export, codes, styles, gan={"r1_interval": 2, "pl_interval": 2})
    assert_ddp_ranks_identical(module, RandomImages(n=8, batch_size=2), tmp_path)


def test_a_missing_identity_network_is_a_clear_error_and_none_turns_the_term_off(stage2_export, codes, styles,
                                                                                  monkeypatch, tmp_path):
    monkeypatch.setenv("STYLESHIFT_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(FileNotFoundError, match=r"model.identity=none.*\n.*identity-arcface-ir-se50"):
        style(stage2_export, codes, styles, identity="auto")
    module = style(stage2_export, codes, styles, identity="none")
    module.reseed()
    _, logs = module.generator_loss(module.style_inputs(2, paired=True))
    assert module.identity_net is None and "loss/id" not in logs
