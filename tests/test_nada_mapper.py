"""The NADA latent mapper: mapper network (PixelNorm across a level's codes, as StyleCLIP), its Ranger
optimizer against a re-statement of the reference update, StyleCLIP preprocessing, the loss against its
formula, the identity slot (present / absent) and a short run."""
from __future__ import annotations

import io
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from datamodules.latents import LatentDataModule
import lightning_modules.nada_mapper as nada_mapper
from lightning_modules.nada_mapper import NADAMapperModule
from losses.clip import styleclip_preprocess
from models.identity import ArcFaceIRSE50, load_arcface
from models.latent_mapper import LevelsMapper, SingleMapper, build_mapper
from tests.helpers_clip import TINY_CLIP_CONFIG

ARCH = {"size": 32, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16, 32: 16}}  # Generator keywords
GEN = {"resolution": 32, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16, 32: 16}}  # model.generator
CLIP = [{"name": "StyleShift-Test-CLIP", "pretrained": None, "config": TINY_CLIP_CONFIG, "seed": 0}]
TINY_ARCFACE = ((16, 1), (16, 1), (16, 1), (16, 1))


def make_module(**kwargs) -> NADAMapperModule:
    options = dict(generator=GEN, description="a sketch", clip_models=CLIP, identity=None, lambda_id=0.0)
    options.update(kwargs)
    return NADAMapperModule(**options)


def reference_sub_mapper(sub, codes):
    """StyleCLIP's ``Mapper`` forward on a group's codes ``[B, k, D]``: PixelNorm along dim 1 (across the k
    codes), then EqualLinear layers on the last dim with the bias added on the last dim (the reference's
    fused leaky ReLU for 3-D inputs)."""
    x = codes * torch.rsqrt(torch.mean(codes ** 2, dim=1, keepdim=True) + 1e-8)
    for layer in list(sub.mapping)[1:]:
        x = F.linear(x, layer.weight * layer.scale)
        x = F.leaky_relu(x + (layer.bias * layer.lr_mul).view(1, 1, -1), 0.2) * 2 ** 0.5
    return x


def per_code_sub_mapper(sub, code):
    """The ``mapper_norm="code"`` variant on one code ``[D]``: PixelNorm over its channels, then the stack."""
    x = code * torch.rsqrt((code ** 2).mean() + 1e-8)
    for layer in list(sub.mapping)[1:]:
        x = F.leaky_relu(F.linear(x, layer.weight * layer.scale) + layer.bias * layer.lr_mul, 0.2) * 2 ** 0.5
    return x


def randomize_biases(mapper):
    with torch.no_grad():
        for name, p in mapper.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 50.0)


def test_levels_mapper_normalizes_across_the_codes_of_each_level_as_the_reference():
    torch.manual_seed(0)
    mapper = LevelsMapper(style_dim=8, n_latent=10, medium=False)
    randomize_biases(mapper)
    w = torch.randn(2, 10, 8)
    out = mapper(w)
    assert out.shape == (2, 10, 8)
    assert torch.equal(out[:, 4:8], torch.zeros(2, 4, 8)) and out[:, :4].abs().sum() > 0 and out[:, 8:].abs().sum() > 0
    torch.testing.assert_close(out[:, :4], reference_sub_mapper(mapper.course_mapping, w[:, :4]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[:, 8:], reference_sub_mapper(mapper.fine_mapping, w[:, 8:]), rtol=1e-6, atol=1e-6)
    # a code moves every output of its level (the norm couples them), and only those
    moved = w.clone()
    moved[:, 9] += 1.0
    changed = (mapper(moved) != out).any(dim=(0, 2))
    assert changed.tolist() == [False] * 8 + [True, True]
    # the per-code variant with the same weights gives other outputs (the old behaviour fails this test)
    per_code = LevelsMapper(style_dim=8, n_latent=10, medium=False, norm="code")
    per_code.load_state_dict(mapper.state_dict())
    diff = (per_code(w) - out)[:, :4].norm() / out[:, :4].norm()
    assert diff > 0.1
    assert {k.split(".")[0] for k in mapper.state_dict()} == {"course_mapping", "fine_mapping"}
    assert "course_mapping.mapping.1.weight" in mapper.state_dict()
    single = build_mapper("single", 8, 10)
    assert isinstance(single, SingleMapper)
    torch.testing.assert_close(single(w), reference_sub_mapper(single.mapping, w), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="expected W\\+"):
        mapper(torch.randn(2, 9, 8))
    with pytest.raises(ValueError, match="mapper norm"):
        build_mapper("levels", 8, 10, norm="channel")


def test_code_norm_switch_maps_each_code_alone():
    torch.manual_seed(0)
    mapper = LevelsMapper(style_dim=8, n_latent=10, medium=False, norm="code")
    randomize_biases(mapper)
    w = torch.randn(2, 10, 8)
    out = mapper(w)
    moved = w.clone()
    moved[:, 9] += 1.0
    changed = (mapper(moved) != out).any(dim=(0, 2))
    assert changed.tolist() == [False] * 9 + [True]
    torch.testing.assert_close(out[1, 2], per_code_sub_mapper(mapper.course_mapping, w[1, 2]))
    torch.testing.assert_close(out[0, 9], per_code_sub_mapper(mapper.fine_mapping, w[0, 9]))
    module = make_module(mapper_norm="code")
    assert module.mapper.course_mapping.norm == "code" and make_module().mapper.fine_mapping.norm == "group"


def reference_ranger(params, grads, lr=0.5, betas=(0.95, 0.999), eps=1e-5, k=6, alpha=0.5, threshold=5):
    """StyleCLIP's Ranger (RAdam + Lookahead + gradient centralization) re-stated: ``params`` (tensors, not
    modified) after one step per entry of ``grads`` (a list of per-parameter gradient lists)."""
    beta1, beta2 = betas
    params = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    slow = [p.clone() for p in params]
    rho_inf = 2 / (1 - beta2) - 1
    for t, step_grads in enumerate(grads, start=1):
        rho = rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)
        for i, g in enumerate(step_grads):
            if g.dim() > 1:  # gradient centralization of weights (not of biases)
                g = g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            if rho > threshold:  # rectified adaptive step
                r = math.sqrt((1 - beta2 ** t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf / (rho_inf - 2))
                params[i] = params[i] - lr * r / (1 - beta1 ** t) * m[i] / (v[i].sqrt() + eps)
            else:  # momentum step while the variance is not tractable
                params[i] = params[i] - lr / (1 - beta1 ** t) * m[i]
            if t % k == 0:  # Lookahead
                slow[i] = slow[i] + alpha * (params[i] - slow[i])
                params[i] = slow[i].clone()
    return params


def random_grads(params, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen) + 3.0 * torch.rand(p.shape[:1] + (1,) * (p.dim() - 1),
                                                                     generator=gen) for p in params]
            for _ in range(steps)]


def test_ranger_steps_equal_the_reference_update():
    module = make_module()
    opt = module.configure_optimizers()
    assert isinstance(opt, nada_mapper.Ranger) and isinstance(opt, torch.optim.Optimizer)
    (group,) = opt.param_groups
    assert {k: group[k] for k in ("lr", "betas", "eps", "k", "alpha", "N_sma_threshhold", "weight_decay")} == {
        "lr": 0.5, "betas": (0.95, 0.999), "eps": 1e-5, "k": 6, "alpha": 0.5, "N_sma_threshhold": 5,
        "weight_decay": 0.0}
    assert opt.alpha == 0.5 and opt.centralize_gradients
    adam = make_module(optimizer="adam").configure_optimizers()
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="optimizer must be"):
        make_module(optimizer="sgd")

    # a tiny parameter pair (weight: centralized, bias: not), 7 steps: momentum steps 1-5, rectified 6-7,
    # Lookahead at 6
    torch.manual_seed(0)
    tiny = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(4))]
    start = [p.detach().clone() for p in tiny]
    grads = random_grads(tiny, 7)
    tiny_opt = nada_mapper.mapper_optimizer(tiny, "ranger", 0.5)
    for step_grads in grads:
        tiny_opt.zero_grad()
        for p, g in zip(tiny, step_grads):
            p.grad = g.clone()
        tiny_opt.step()
    expected = reference_ranger(start, grads)
    for p, e in zip(tiny, expected):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-6)
    # the check sees gradient centralization and Lookahead
    assert not torch.allclose(reference_ranger(start, grads, k=10 ** 6)[0], expected[0], atol=1e-3)
    plain = [torch.nn.Parameter(p.clone()) for p in start]
    plain_opt = nada_mapper.Ranger(plain, lr=0.5, centralize_gradients=False, **nada_mapper.RANGER_DEFAULTS)
    for step_grads in grads:
        for p, g in zip(plain, step_grads):
            p.grad = g.clone()
        plain_opt.step()
    assert not torch.allclose(plain[0].detach(), expected[0], atol=1e-3)
    torch.testing.assert_close(plain[1].detach(), expected[1], rtol=0, atol=1e-6)  # biases: no centralization

    # the module's own optimizer on the mapper, stepped through MethodModule.step (zero_grad, backward, step)
    params = list(module.mapper.parameters())
    start = [p.detach().clone() for p in params]
    grads = random_grads(params, 7, seed=1)
    loss_fn = lambda g: (sum((gi * p).sum() for gi, p in zip(g, params)), {})  # noqa: E731  (d loss / d p = g)
    for step_grads in grads:
        assert module.step(opt, "mapper", loss_fn, {}, step_grads) is not None
    for p, e in zip(params, reference_ranger(start, grads)):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-6)


def test_ranger_state_round_trips_and_zero_grad_set_to_none():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(4))]
    grads = random_grads(params, 7)
    opt = nada_mapper.mapper_optimizer(params)

    def run(opt, params, step_grads):
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()

    for step_grads in grads[:3]:
        run(opt, params, step_grads)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in params]}, buffer)
    for step_grads in grads[3:]:
        run(opt, params, step_grads)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as a Lightning checkpoint is read
    resumed = [torch.nn.Parameter(p) for p in saved["params"]]
    again = nada_mapper.mapper_optimizer(resumed)
    again.load_state_dict(saved["opt"])
    assert again.state[resumed[0]]["step"] == 3
    for step_grads in grads[3:]:  # crosses the Lookahead sync of step 6
        run(again, resumed, step_grads)
    for a, b in zip(params, resumed):
        assert torch.equal(a.detach(), b.detach())
    assert all(torch.equal(again.state[b][key], opt.state[a][key]) for a, b in zip(params, resumed)
               for key in ("exp_avg", "exp_avg_sq", "slow_buffer"))

    before = [p.detach().clone() for p in params]
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in params)
    opt.step()  # no gradients: nothing moves, no state advances
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, params)) and opt.state[params[0]]["step"] == 7


def test_styleclip_preprocessing_is_nearest_x7_then_average_pool():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    direct = F.avg_pool2d(x.repeat_interleave(7, dim=-1).repeat_interleave(7, dim=-2), kernel_size=64 // 32)
    assert direct.shape[-1] == 224
    torch.testing.assert_close(styleclip_preprocess(x, 224), direct, rtol=0, atol=1e-6)


def test_arcface_layout_matches_the_ir_se50_weights_file():
    with torch.device("meta"):
        net = ArcFaceIRSE50()
    sd = net.state_dict()
    assert sd["input_layer.0.weight"].shape == (64, 3, 3, 3)
    assert sd["body.0.res_layer.5.fc1.weight"].shape == (4, 64, 1, 1)
    assert sd["body.3.shortcut_layer.0.weight"].shape == (128, 64, 1, 1)
    assert "body.23.res_layer.5.fc2.weight" in sd and "body.24.res_layer.0.weight" not in sd
    assert sd["output_layer.3.weight"].shape == (512, 512 * 7 * 7) and "output_layer.4.running_var" in sd


def test_mapper_loss_equals_its_formula_with_the_identity_term(tmp_path, monkeypatch):
    torch.manual_seed(0)
    arcface = ArcFaceIRSE50(stages=TINY_ARCFACE).eval()
    path = tmp_path / "ir_se50_tiny.pth"
    torch.save(arcface.state_dict(), path)
    # the loader builds the full IR-SE50; a tiny one with the same layout stands in for it
    monkeypatch.setattr(nada_mapper, "load_arcface", lambda p: load_arcface(p, stages=TINY_ARCFACE))
    module = make_module(identity=str(path), lambda_id=0.1)
    with torch.no_grad():  # a trained mapper: non-zero edits
        for p in module.mapper.parameters():
            p.normal_(0, 50.0)
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    loss, terms = module.mapper_loss(z)
    assert set(terms) == {"clip", "latent", "norm", "id"}

    g, clip = module.decoder, module.clips[0]
    mean = g.style(torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))).mean(0, keepdim=True)
    w = (mean + 0.7 * (g.style(z) - mean)).unsqueeze(1).repeat(1, g.n_latent, 1)
    w_edit = w + 0.1 * module.mapper(w)
    x, _ = g([w], input_is_latent=True, randomize_noise=False)
    x_edit, _ = g([w_edit], input_is_latent=True, randomize_noise=False)
    with torch.no_grad():
        pool = lambda im: F.adaptive_avg_pool2d(F.interpolate(im, scale_factor=7, mode="nearest"), 64)  # noqa: E731
        e, e_edit = clip.model.encode_image(pool(x)), clip.model.encode_image(pool(x_edit))
        text = clip.model.encode_text(clip.tokenizer(["a sketch"]))
        l_clip = 1 - F.cosine_similarity(e_edit, text).mean()
        l_norm = ((e_edit.norm(dim=-1) - e.norm(dim=-1)) ** 2).mean()
        crop = lambda im: F.adaptive_avg_pool2d(F.adaptive_avg_pool2d(im, 256)[:, :, 35:223, 32:220], 112)  # noqa
        l_id = 1 - (arcface(crop(x_edit)) * arcface(crop(x))).sum(-1).mean()
        l_latent = ((w_edit - w) ** 2).mean()
    for key, value in (("clip", l_clip), ("norm", l_norm), ("id", l_id), ("latent", l_latent)):
        torch.testing.assert_close(terms[key].detach(), value, rtol=1e-4, atol=1e-5, msg=key)
    torch.testing.assert_close(loss.detach(), l_clip + 0.8 * l_latent + 0.1 * l_id + 0.5 * l_norm, rtol=1e-4, atol=1e-5)
    assert l_latent > 0 and l_id > 0


def test_missing_identity_file_skips_the_term_with_a_clear_warning():
    with pytest.warns(UserWarning, match="identity-arcface-ir-se50"):
        module = make_module(identity="identity-arcface-ir-se50", lambda_id=0.1)
    assert module.identity_net is None and module.lambdas["id"] == 0.0
    _, terms = module.mapper_loss(torch.randn(2, 32))
    assert "id" not in terms


def test_short_run_trains_only_the_mapper_and_exports_it(tmp_path):
    module = make_module()
    decoder = {k: v.clone() for k, v in module.decoder.state_dict().items()}
    mapper = {k: v.clone() for k, v in module.mapper.state_dict().items()}

    class CountHooks(pl.Callback):
        calls = 0

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            CountHooks.calls += 1

    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[CountHooks()])
    trainer.fit(module, datamodule=LatentDataModule(z_dim=32, batch_size=2, steps_per_epoch=10))
    assert isinstance(trainer.optimizers[0], nada_mapper.Ranger)
    assert CountHooks.calls == 2  # Ranger runs Lightning's closure (its hooks)
    assert all(torch.equal(v, module.decoder.state_dict()[k]) for k, v in decoder.items())
    assert any(not torch.equal(v, module.mapper.state_dict()[k]) for k, v in mapper.items())
    assert set(module.state_dict()) == {f"mapper.{k}" for k in mapper}  # no CLIP, no generator
    saved = torch.load(tmp_path / "mapper.pt", weights_only=True)
    assert saved["config"]["mapper_norm"] == "group"
    again = build_mapper(saved["config"]["mapper"], saved["config"]["style_dim"], saved["config"]["n_latent"],
                         norm=saved["config"]["mapper_norm"])
    again.load_state_dict(saved["mapper"])
    w = torch.randn(2, 8, 32)
    assert torch.equal(again(w), module.mapper(w))
    edited = module.samplers()["edited"](2, seed=0)
    assert edited.shape == (2, 3, 32, 32) and not torch.equal(edited, module.samplers()["unedited"](2, seed=0))
