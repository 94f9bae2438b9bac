"""The NADA latent mapper (spec nada_expansion.md §A8): mapper network, StyleCLIP preprocessing, the loss
against its formula, the identity slot (present / absent) and a short run."""
from __future__ import annotations

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


def test_levels_mapper_maps_each_code_alone_and_zeroes_disabled_levels():
    torch.manual_seed(0)
    mapper = LevelsMapper(style_dim=8, n_latent=10, medium=False)
    w = torch.randn(2, 10, 8)
    out = mapper(w)
    assert out.shape == (2, 10, 8)
    assert torch.equal(out[:, 4:8], torch.zeros(2, 4, 8)) and out[:, :4].abs().sum() > 0 and out[:, 8:].abs().sum() > 0
    moved = w.clone()
    moved[:, 9] += 1.0
    changed = (mapper(moved) != out).any(dim=(0, 2))
    assert changed.tolist() == [False] * 9 + [True]
    # per code: PixelNorm then the EqualLinear stack on that code's vector
    code = w[1, 2]
    sub = mapper.course_mapping.mapping
    expected = code * torch.rsqrt((code ** 2).mean() + 1e-8)
    for layer in list(sub)[1:]:
        pre = F.linear(expected, layer.weight * layer.scale) + layer.bias * layer.lr_mul
        expected = F.leaky_relu(pre, 0.2) * 2 ** 0.5
    torch.testing.assert_close(out[1, 2], expected)
    assert {k.split(".")[0] for k in mapper.state_dict()} == {"course_mapping", "fine_mapping"}
    assert "course_mapping.mapping.1.weight" in mapper.state_dict()
    assert isinstance(build_mapper("single", 8, 10), SingleMapper)
    with pytest.raises(ValueError, match="expected W\\+"):
        mapper(torch.randn(2, 9, 8))


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
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=LatentDataModule(z_dim=32, batch_size=2, steps_per_epoch=10))
    assert all(torch.equal(v, module.decoder.state_dict()[k]) for k, v in decoder.items())
    assert any(not torch.equal(v, module.mapper.state_dict()[k]) for k, v in mapper.items())
    assert set(module.state_dict()) == {f"mapper.{k}" for k in mapper}  # no CLIP, no generator
    saved = torch.load(tmp_path / "mapper.pt", weights_only=True)
    again = build_mapper(saved["config"]["mapper"], saved["config"]["style_dim"], saved["config"]["n_latent"])
    again.load_state_dict(saved["mapper"])
    w = torch.randn(2, 8, 32)
    assert torch.equal(again(w), module.mapper(w))
    edited = module.samplers()["edited"](2, seed=0)
    assert edited.shape == (2, 3, 32, 32) and not torch.equal(edited, module.samplers()["unedited"](2, seed=0))
