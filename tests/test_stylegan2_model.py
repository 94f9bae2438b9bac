"""Backbone invariants: resampling ops vs a direct upfirdn2d, fused vs non-fused modulation,
rosinality module layout and parameter counts, noise modes, features, bf16 (docs/methods/stylegan2.md)."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.stylegan2 import Discriminator, Generator
from models.stylegan2_ops import blur, downsample2d, make_kernel, upfirdn2d, upsample2d

TINY = dict(size=16, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16})


def upfirdn2d_loops(x, k, up, down, pad):
    """Direct definition (docs/methods/stylegan2.md, "Resampling"): zero-insert, pad/crop, true convolution,
    subsample."""
    b, c, h, w = x.shape
    u = torch.zeros(b, c, h * up, w * up, dtype=torch.float64)
    u[:, :, ::up, ::up] = x.double()
    p0, p1 = pad
    u = F.pad(u, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    u = u[:, :, max(-p0, 0):u.shape[2] - max(-p1, 0), max(-p0, 0):u.shape[3] - max(-p1, 0)]
    kh, kw = k.shape
    oh, ow = u.shape[2] - kh + 1, u.shape[3] - kw + 1
    out = torch.zeros(b, c, oh, ow, dtype=torch.float64)
    for i in range(kh):
        for j in range(kw):  # true convolution: kernel flipped
            out += u[:, :, i:i + oh, j:j + ow] * k[kh - 1 - i, kw - 1 - j].double()
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize("h", [7, 8])
def test_resampling_ops_match_direct_upfirdn(h):
    torch.manual_seed(0)
    x = torch.randn(2, 3, h, h)
    k = make_kernel([1, 3, 3, 1])
    k_asym = torch.rand(4, 4)  # catches a missing flip
    for kernel in (k * 4, k_asym):
        ref = upfirdn2d_loops(x, kernel, 2, 1, (2, 1))
        assert torch.allclose(upsample2d(x, kernel).double(), ref, atol=1e-5)
        assert torch.allclose(upfirdn2d(x, kernel, up=2, pad=(2, 1)).double(), ref, atol=1e-5)
        ref_blur = upfirdn2d_loops(x, kernel, 1, 1, (1, 1))
        assert torch.allclose(blur(x, kernel, (1, 1)).double(), ref_blur, atol=1e-5)
        ref_down = upfirdn2d_loops(x, kernel, 1, 2, (1, 1))
        assert torch.allclose(downsample2d(x, kernel, (1, 1)).double(), ref_down, atol=1e-5)
    assert upsample2d(x, k * 4).shape[-1] == 2 * h


def test_fused_and_nonfused_modulation_agree_and_grad():
    torch.manual_seed(0)
    g = Generator(**TINY)
    for p in g.parameters():  # non-trivial noise strengths and biases
        p.data.add_(0.1 * torch.randn_like(p))
    z = torch.randn(3, 32)
    outs = {}
    for fused in (True, False):
        g.fused_modconv = fused
        outs[fused] = g([z], randomize_noise=False)[0]
    assert (outs[True] - outs[False]).abs().max() < 1e-4
    g.fused_modconv = "auto"
    img, _ = g([z], randomize_noise=False)
    img.square().sum().backward()
    assert all(p.grad is not None for p in g.parameters())


def test_module_layout_matches_rosinality():
    g = Generator(**TINY)
    names = [n for n, _ in g.named_children()]
    assert names == ["style", "input", "conv1", "to_rgb1", "convs", "upsamples", "to_rgbs", "noises"]
    assert g.n_latent == 2 * int(math.log2(16)) - 2 == 6 and g.num_layers == 5
    assert len(g.convs) == 4 and len(g.to_rgbs) == 2 and len(g.upsamples) == 0
    keys = set(g.state_dict())
    for k in ["style.1.weight", "style.2.bias", "input.input", "conv1.conv.weight", "conv1.noise.weight",
              "conv1.conv.modulation.weight", "conv1.activate.bias", "to_rgb1.bias", "to_rgb1.conv.weight",
              "convs.0.conv.blur.kernel", "to_rgbs.0.upsample.kernel", "noises.noise_4"]:
        assert k in keys, k
    assert g.state_dict()["noises.noise_4"].shape == (1, 1, 16, 16)
    assert g.state_dict()["convs.0.conv.weight"].shape == (1, 32, 32, 3, 3)
    d_keys = set(Discriminator(16, channels=TINY["channels"]).state_dict())
    for k in ["convs.0.0.weight", "convs.0.1.bias", "convs.1.conv1.0.weight", "convs.1.conv2.0.kernel",
              "convs.1.conv2.1.weight", "convs.1.conv2.2.bias", "convs.1.skip.1.weight",
              "final_conv.0.weight", "final_linear.0.weight", "final_linear.1.bias"]:
        assert k in d_keys, k


def test_parameter_counts_match_published():
    """docs/methods/stylegan2.md: G 256/cm2 = 30,034,338 and D 256/cm2 = 28,864,129 parameters."""
    with torch.device("meta"):
        g = Generator(256, channel_multiplier=2)
        d = Discriminator(256, channel_multiplier=2)
        g1 = Generator(256, channel_multiplier=1)
    assert sum(p.numel() for p in g.parameters()) == 30_034_338
    assert sum(p.numel() for p in d.parameters()) == 28_864_129
    assert sum(p.numel() for p in g1.parameters()) == 24_767_458
    assert len(g.state_dict()) == 135


def test_noise_modes_truncation_mixing_and_feats():
    torch.manual_seed(1)
    g = Generator(**TINY).eval()
    for m in g.modules():
        if hasattr(m, "noise") and hasattr(m.noise, "weight"):
            m.noise.weight.data.fill_(0.5)
    z, z2 = torch.randn(2, 32), torch.randn(2, 32)
    with torch.no_grad():
        const1 = g([z], randomize_noise=False)[0]
        const2 = g([z], noise_mode="const")[0]
        rand1, rand2 = g([z])[0], g([z])[0]
        none = g([z], noise_mode="none")[0]
        zeros = g([z], noise=[torch.zeros(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2))
                              for i in range(g.num_layers)])[0]
        assert torch.equal(const1, const2)
        assert not torch.allclose(rand1, rand2)
        assert torch.allclose(none, zeros, atol=1e-6)
        # truncation psi=0 collapses every sample onto the truncation latent
        w_avg = g.mean_latent(64)
        t0 = g([z], truncation=0.0, truncation_latent=w_avg, noise_mode="none")[0]
        assert torch.allclose(t0[0], t0[1], atol=1e-6)
        # style mixing: rows < inject_index from z, the rest from z2
        _, lat = g([z, z2], inject_index=2, return_latents=True)
        w, w2 = g.get_latent(z), g.get_latent(z2)
        assert torch.allclose(lat[:, 1], w) and torch.allclose(lat[:, 2], w2)
        # W+ input equals the repeated W
        wplus = w.unsqueeze(1).repeat(1, g.n_latent, 1)
        a = g([wplus], input_is_latent=True, noise_mode="none")[0]
        b = g([w], input_is_latent=True, noise_mode="none")[0]
        assert torch.allclose(a, b, atol=1e-6)
        img, _, feats = g([z], return_feats=True, noise_mode="none")
    assert [f.shape[-1] for f in feats] == [4, 8, 8, 16, 16]
    assert torch.allclose(img, none, atol=1e-6)


def test_discriminator_feats_groups_and_clamp():
    torch.manual_seed(2)
    d = Discriminator(16, channels=TINY["channels"]).eval()
    x = torch.randn(4, 3, 16, 16)
    logits, feats = d(x, return_feats=True)
    assert logits.shape == (4, 1) and feats[-1].shape == (4, 32, 4, 4)
    assert torch.equal(logits, d(x))
    with pytest.raises(ValueError, match="divisible"):
        d(torch.randn(6, 3, 16, 16))
    d.stddev_group = None  # whole batch as one group works for any batch size
    assert d(torch.randn(6, 3, 16, 16)).shape == (6, 1)
    g = Generator(**TINY, conv_clamp=0.05).eval()
    with torch.no_grad():
        _, _, gf = g([torch.randn(2, 32)], return_feats=True)
    assert max(f.abs().max().item() for f in gf) <= 0.05 + 1e-7


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(3)
    g, d = Generator(**TINY), Discriminator(16, channels=TINY["channels"])
    z = torch.randn(4, 32)
    ref = g([z], noise_mode="none")[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = g([z], noise_mode="none")[0]
        logits = d(img)
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()
    rel = (img.float() - ref).abs().mean() / ref.abs().mean()
    assert rel < 0.05
    logits.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in g.parameters() if p.grad is not None)


def test_bad_channel_table_and_size():
    with pytest.raises(ValueError, match="lacks resolutions"):
        Generator(32, channels={4: 8, 8: 8, 16: 8})
    with pytest.raises(ValueError, match="power of two"):
        Generator(48)
