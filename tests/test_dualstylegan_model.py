"""DualStyleGAN generator (models.dualstylegan) and its Stage III losses (losses.contextual, losses.dualstylegan).

Tiny networks on CPU; the 1024-px parameter counts are taken from a network built on the meta device.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses.contextual import contextual_loss
from losses.dualstylegan import feature_matching_loss, l2_regularization, perceptual_l1_loss
from models import checkpoints
from models.checkpoint_formats.errors import CheckpointError
from models.dualstylegan import (INFERENCE_WEIGHTS, AdaResBlock, DualStyleGAN, default_res_index, load,
                                 load_official, official_state_dict, part_counts, save, weight_preset)
from models.stylegan2 import Generator

TINY = dict(size=32, style_dim=32, n_mlp=8, channels={4: 32, 8: 24, 16: 16, 32: 16})


def tiny(res_index: int | None = None, seed: int = 0) -> DualStyleGAN:
    torch.manual_seed(seed)
    return DualStyleGAN(Generator(**TINY), res_index=res_index)


def codes(model: DualStyleGAN, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, model.style_dim, generator=gen)
    with torch.no_grad():
        e = model.to_wplus(torch.randn(batch, model.n_latent, model.style_dim, generator=gen))
    return z, e


def render(model: DualStyleGAN, z, e, **kwargs) -> torch.Tensor:
    return model([z], e, randomize_noise=False, **kwargs)[0]


def intrinsic(model: DualStyleGAN, latent: torch.Tensor) -> torch.Tensor:
    return model.generator([latent], input_is_latent=True, randomize_noise=False)[0]


def perturb(model: DualStyleGAN, scale: float = 30.0) -> None:
    """Make the extrinsic path matter: ModRes convs far from their 0.01-scaled init, T_c away from identity."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for block in model.modres_blocks():
            block.conv1[0].weight.mul_(scale)
            block.conv2[0].weight.mul_(scale)
        for layer in model.colour_transforms():
            layer.weight.add_(0.3 * math.sqrt(model.style_dim) * torch.randn(layer.weight.shape, generator=gen))


# ------------------------------------------------------------------------------------------ architecture
def test_part_counts_at_1024_match_the_paper_table():
    with torch.device("meta"):
        model = DualStyleGAN(Generator(1024))
    assert model.res_index == 6 and model.structure_layers == 2 and len(model.res) == 18
    c = d = 512
    modres = 2 * (9 * c * c + c) + 2 * (d * 2 * c + 2 * c)  # two ConvLayers + two AdaIN linears
    colour = d * d + d
    structure = 2 * (d * d + d)
    counts = part_counts(model)
    assert counts["modres"] == 7 * modres == 40_391_680
    assert counts["colour"] == 11 * colour == 2_889_216
    assert counts["structure"] == structure == 525_312
    assert counts["extrinsic"] == 43_806_208
    assert (round(modres / 1e6, 2), round(colour / 1e6, 3), round(structure / 1e6, 2)) == (5.77, 0.263, 0.53)
    assert (round(counts["modres"] / 1e6, 1), round(counts["colour"] / 1e6, 2)) == (40.4, 2.89)
    assert round(counts["extrinsic"] / 1e6, 1) == 43.8
    assert round(counts["intrinsic"] / 1e6) == 30
    assert all(isinstance(b, AdaResBlock) and b.conv1[0].weight.shape[0] == 512 for b in model.modres_blocks())


def test_modres_channels_follow_the_backbone_and_split_rules():
    model = tiny(res_index=4)
    assert [b.conv1[0].weight.shape[0] for b in model.modres_blocks()] == [32, 24, 24, 16, 16]
    assert len(model.colour_transforms()) == model.n_latent - 5 == 3
    assert {default_res_index(s) for s in (32, 64)} == {2} and default_res_index(128) == default_res_index(256) == 4
    assert default_res_index(512) == default_res_index(1024) == 6
    assert tiny(res_index=3).res_index == 2  # rounded down to even, as the official code does
    with pytest.raises(ValueError):
        tiny(res_index=8)  # no colour layer left (n_latent = 8)


def test_adaresblock_init_and_weight():
    torch.manual_seed(0)
    block = AdaResBlock(8, 16)
    for adain in (block.adain1, block.adain2):
        assert torch.equal(adain.affine.bias, torch.cat([torch.ones(8), torch.zeros(8)]))
        assert isinstance(adain.affine, torch.nn.Linear)
    assert block.conv1[0].weight.std() < 0.02 and block.conv2[0].weight.std() < 0.02
    h, s = torch.randn(2, 8, 6, 6), torch.randn(2, 16)
    assert block(h, s, 0.0) is h
    r = block.residual(h, s)
    assert torch.allclose(block(h, s, 0.3), h + 0.3 * r, atol=1e-6)
    assert r.norm() < 0.05 * h.norm()  # near-zero residual at init


# ------------------------------------------------------------------------------------------ forward semantics
def test_init_is_close_to_style_mixing_and_exact_without_the_extrinsic_path():
    model = tiny()
    z, e = codes(model)
    r = model.res_index
    latent = model.generator.styles_to_latent([z])
    mixed = intrinsic(model, torch.cat([latent[:, :r + 1], e[:, r + 1:]], 1))
    plain = intrinsic(model, latent)
    out = render(model, z, e)
    gap = (out - mixed).norm() / (plain - mixed).norm()
    assert 0 < gap < 0.15  # DS3: approximate only (0.01-scaled ModRes, 0.01 N noise in T_c)
    assert torch.equal(render(model, z, e, interp_weights=[0.0] * model.n_latent), plain)
    assert torch.equal(render(model, z, e, use_res=False), plain)
    assert torch.equal(render(model, z, None, use_res=False), plain)
    assert torch.equal(render(model, z, e, fuse_index=0), plain)


def test_layer_map_against_hooks_on_the_intrinsic_generator():
    """Reference: the plain generator with ModRes added after each StyledConv of a structure index (hooks) and
    the blended colour codes in its W+ input."""
    model = tiny(res_index=4)
    perturb(model)
    z, e = codes(model)
    gen = torch.Generator().manual_seed(3)
    w = torch.rand(model.n_latent, generator=gen).tolist()
    w[2] = 0.0
    g, r = model.generator, model.res_index
    latent = g.styles_to_latent([z])
    with torch.no_grad():
        s = model.style(e.reshape(-1, model.style_dim)).reshape(e.shape)
        rows = [latent[:, k] if k <= r else w[k] * model.res[k](e[:, k]) + (1 - w[k]) * latent[:, k]
                for k in range(model.n_latent)]
        consumers = [g.conv1, *g.convs]
        hooks = [consumers[k].register_forward_hook(
            lambda mod, inp, out, k=k: out + w[k] * model.res[k].residual(out, s[:, k])) for k in range(r + 1)]
        try:
            reference = intrinsic(model, torch.stack(rows, 1))
        finally:
            for h in hooks:
                h.remove()
        out = render(model, z, e, interp_weights=w)
        assert torch.allclose(out, reference, atol=1e-5)
        assert (out - intrinsic(model, latent)).abs().max() > 0.1  # the extrinsic path does change the image
        # colour only with w = 1: exactly the generator fed T_c,k(e_k) at the colour indices
        colour_rows = [latent[:, k] if k <= r else model.res[k](e[:, k]) for k in range(model.n_latent)]
        assert torch.equal(render(model, z, e, interp_weights=model.weights("color")),
                           intrinsic(model, torch.stack(colour_rows, 1)))
        # fuse_index = res_index leaves the colour layers intrinsic = the structure-only preset
        structure_only = render(model, z, e, interp_weights=model.weights("structure"))
        assert torch.equal(render(model, z, e, fuse_index=r), structure_only)
        # W code broadcast, Z+ input and two-code mixing follow the backbone
        e1 = e[:, 0]
        assert torch.equal(render(model, z, e1), render(model, z, e1[:, None].expand_as(e).contiguous()))
        zp = torch.randn(2, model.n_latent, model.style_dim, generator=gen)
        assert torch.allclose(render(model, zp, e, z_plus_latent=True),
                              render(model, model.to_wplus(zp), e, input_is_latent=True), atol=1e-6)
        z2 = torch.randn(2, model.style_dim, generator=gen)
        both, lat = model([z, z2], e, inject_index=3, randomize_noise=False, return_latents=True)
        assert torch.equal(lat, g.styles_to_latent([z, z2], inject_index=3))
        assert torch.equal(both, render(model, lat, e, input_is_latent=True))
    with pytest.raises(ValueError):
        render(model, z, e, interp_weights=[1.0] * 18)


def test_gradients_reach_only_the_extrinsic_path():
    model = tiny().train()
    assert not model.generator.training and not any(p.requires_grad for p in model.generator.parameters())
    assert set(model.state_dict()) == {k for k in model.state_dict() if k.startswith(("style.", "res."))}
    n_gen = sum(1 for _ in model.generator.parameters())
    assert not {id(p) for p in model.parameters()} & {id(p) for p in model.generator.parameters()} and n_gen
    z, e = codes(model)
    render(model, z, e).square().mean().backward()
    assert all(p.grad is None for p in model.generator.parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------ presets
def test_weight_presets():
    assert weight_preset("full", 18, 6, 0.5) == [0.5] * 18
    assert weight_preset("structure", 18, 6) == [1.0] * 7 + [0.0] * 11
    assert weight_preset("color", 18, 6, 0.8) == weight_preset("colour", 18, 6, 0.8) == [0.0] * 7 + [0.8] * 11
    assert INFERENCE_WEIGHTS == [0.75] * 7 + [1.0] * 11
    assert tiny().weights("structure") == [1.0] * 3 + [0.0] * 5
    with pytest.raises(ValueError):
        weight_preset("style", 18, 6)
    with pytest.raises(ValueError):
        weight_preset("full", 18, 5)


# ------------------------------------------------------------------------------------------ files
def test_save_load_roundtrip(tmp_path):
    model = tiny()
    perturb(model)
    z, e = codes(model)
    path = save(tmp_path / "dsg.pt", model)
    loaded = load(path)
    assert loaded.config() == model.config()
    with torch.no_grad():
        assert torch.equal(render(loaded, z, e, interp_weights=INFERENCE_WEIGHTS[-8:]),
                           render(model, z, e, interp_weights=INFERENCE_WEIGHTS[-8:]))
    plain = checkpoints.load_generator(path)  # the export is also a plain StyleGAN2 file: the intrinsic path
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.generator.state_dict().values()))


def official_layout(model: DualStyleGAN) -> dict[str, torch.Tensor]:
    """The released files' key names, written independently of the module's own map."""
    names = {"conv1.": "conv.", "conv2.": "conv2.", "adain1.affine.": "norm.style.", "adain2.affine.": "norm2.style."}
    out = {f"generator.{k}": v.clone() for k, v in model.generator.state_dict().items()}
    for key, value in model.state_dict().items():
        parts = key.split(".", 2)
        if parts[0] == "res" and int(parts[1]) <= model.res_index:
            old = next(o for n, o in names.items() if parts[2].startswith(n))
            key = f"res.{parts[1]}.{old}{parts[2][len(next(n for n in names if parts[2].startswith(n))):]}"
        out[key] = value.clone()
    return out


def test_official_layout_loads_and_renders_equal(tmp_path):
    model = tiny(res_index=4)
    perturb(model)
    sd = official_layout(model)
    assert "res.0.norm2.style.weight" in sd and "res.4.conv.1.bias" in sd and "res.5.weight" in sd
    assert set(sd) == set(official_state_dict(model))
    torch.save({"g_ema": sd, "g": sd}, tmp_path / "cartoon.pt")
    loaded = load_official(tmp_path / "cartoon.pt")
    assert loaded.res_index == 4 and loaded.structure_layers == 2
    z, e = codes(model)
    with torch.no_grad():
        assert torch.equal(render(loaded, z, e), render(model, z, e))


def test_file_errors_name_the_file(tmp_path):
    for reader in (load, load_official):
        with pytest.raises(FileNotFoundError, match="missing.pt"):
            reader(tmp_path / "missing.pt")
    model = tiny()
    sd = official_layout(model)
    torch.save({"g_ema": sd}, tmp_path / "official.pt")
    with pytest.raises(CheckpointError, match="load_official"):
        load(tmp_path / "official.pt")
    torch.save({"g_ema": model.generator.state_dict()}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="plain.pt.*not a DualStyleGAN"):
        load_official(tmp_path / "plain.pt")
    torch.save({"weights": sd}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt.*'g_ema'"):
        load_official(tmp_path / "other.pt")
    bad = dict(sd, **{"res.1.norm.style.weight": torch.zeros(3, 3)})
    torch.save({"g_ema": bad}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt.*res\.1\.adain1\.affine\.weight"):
        load_official(tmp_path / "bad.pt")
    checkpoints.save(tmp_path / "stylegan.pt", g_ema=model.generator)
    with pytest.raises(CheckpointError, match="stylegan.pt.*not a DualStyleGAN export"):
        load(tmp_path / "stylegan.pt")


# ------------------------------------------------------------------------------------------ losses
def naive_cx(x: torch.Tensor, y: torch.Tensor, h: float = 0.2) -> torch.Tensor:
    """The formula entry by entry: i runs over positions of x, j over positions of y."""
    mu = y.mean(dim=(0, 2, 3))
    losses = []
    for b in range(x.shape[0]):
        xs = [(v - mu) / (v - mu).norm() for v in x[b].flatten(1).t()]
        ys = [(v - mu) / (v - mu).norm() for v in y[b].flatten(1).t()]
        d = torch.tensor([[1 - float(xi @ yj) for yj in ys] for xi in xs], dtype=torch.float64)
        cx = torch.zeros_like(d)
        for i in range(len(xs)):
            d_rel = d[i] / (d[i].min() + 1e-5)
            w = torch.exp((1 - d_rel) / h)
            cx[i] = w / w.sum()
        score = torch.stack([cx[:, j].max() for j in range(len(ys))]).mean()
        losses.append(-torch.log(score + 1e-5))
    return torch.stack(losses).mean()


def test_contextual_loss_against_the_formula_and_chunks():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64) + 0.5
    full = contextual_loss(x, y)
    assert torch.allclose(full, naive_cx(x, y), atol=1e-9)
    assert torch.allclose(contextual_loss(x, y, band_width=0.5), naive_cx(x, y, 0.5), atol=1e-9)
    xg = x.clone().requires_grad_(True)
    contextual_loss(xg, y).backward()
    for chunk in (1, 5, 12, 50):
        xc = x.clone().requires_grad_(True)
        loss = contextual_loss(xc, y, chunk_size=chunk)
        loss.backward()
        assert torch.allclose(loss, full, atol=1e-12) and torch.allclose(xc.grad, xg.grad, atol=1e-12)
    # invariants: identical feature sets score better than different ones; a common shift cancels (centring by y)
    assert contextual_loss(y, y) < full
    shift = torch.randn(1, 5, 1, 1, generator=gen, dtype=torch.float64)
    assert torch.allclose(contextual_loss(x + shift, y + shift), full, atol=1e-9)


def test_stage3_losses_against_their_formulas():
    gen = torch.Generator().manual_seed(0)
    fx = [torch.randn(2, 4, 5, 5, generator=gen), torch.randn(2, 6, 3, 3, generator=gen)]
    fy = [torch.randn(2, 4, 5, 5, generator=gen), torch.randn(2, 6, 3, 3, generator=gen)]
    fm = sum(F.mse_loss(a.mean((2, 3)), b.mean((2, 3))) for a, b in zip(fx, fy))
    assert torch.allclose(feature_matching_loss(fx, fy), fm)
    perc = 0.5 * F.l1_loss(fx[0], fy[0]) + 1.0 * F.l1_loss(fx[1], fy[1])
    assert torch.allclose(perceptual_l1_loss(fx, fy), perc)
    model = tiny()
    params = list(model.res.parameters())
    expected = sum(math.sqrt(float((p.detach().double() ** 2).sum())) for p in params)
    reg = l2_regularization(params)
    assert math.isclose(reg.detach().item(), expected, rel_tol=1e-5)
    reg.backward()
    nonzero = [p for p in params if p.detach().norm() > 0]  # the zero-initialised biases have no direction
    assert len(nonzero) > len(params) / 2
    assert all(torch.allclose(p.grad, p.detach() / p.detach().norm(), atol=1e-6) for p in nonzero)
    with pytest.raises(ValueError):
        feature_matching_loss(fx, fy[:1])
