"""Domain-guided encoder E of In-Domain GAN Inversion (models/encoders.py; Zhu et al., ECCV 2020)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.encoders import (DomainGuidedEncoder, EncoderFileError, EncoderResBlock, ShiftBatchNorm, build_encoder,
                             encoder_config, encoder_for, load_encoder, save_encoder)
from models.stylegan2 import Generator
from models.stylegan2_layers import EqualLinear

TINY = dict(stem_channels=4, max_channels=16)

# Widths of the stem and of each block at 256 px (independent of the implementation's formula).
WIDTHS_256 = {"A": [64, 128, 256, 512, 1024, 1024, 1024], "B": [64, 128, 256, 512, 512, 512, 512]}
EXACT_256 = {"A": {"conv": 47_863_040, "fc": 117_447_680}, "B": {"conv": 16_670_272, "fc": 58_741_760}}


def conv_params(k: int, cin: int, cout: int, bias: bool) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def bn_params(variant: str, c: int) -> int:
    return c if variant == "A" else 2 * c  # A: learned shift only; B: scale and shift


def expected_counts(variant: str, widths: list[int], n_latent: int, style_dim: int) -> dict[str, int]:
    """Layer-by-layer parameter count of the architecture described in the module docstring."""
    stem_k, stem_bias = (3, False) if variant == "A" else (5, True)
    conv = conv_params(stem_k, 3, widths[0], stem_bias) + bn_params(variant, widths[0])
    for cin, cout in zip(widths[:-1], widths[1:]):
        hidden = min(cin, cout)
        conv += conv_params(3, cin, hidden, True) + bn_params(variant, hidden)
        conv += conv_params(3, hidden, cout, True) + bn_params(variant, cout)
        if cin != cout:
            conv += conv_params(1, cin, cout, False) + bn_params(variant, cout)
    out = n_latent * style_dim
    fc = widths[-1] * 16 * out + (out if variant == "B" else 0) + bn_params(variant, out)
    return {"conv": conv, "fc": fc}


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module", params=["A", "B"])
def meta_256(request):
    """Full-size encoders at 256 px / 14 x 512 on the meta device (shapes and counts, no memory)."""
    with torch.device("meta"):
        return build_encoder(request.param, resolution=256, n_latent=14, style_dim=512)


@pytest.mark.parametrize("variant", ["A", "B"])
@pytest.mark.parametrize("resolution", [8, 16, 32, 64])
def test_output_shape_tiny(variant, resolution):
    n_latent = 2 * int(math.log2(resolution)) - 2
    enc = build_encoder(variant, resolution=resolution, n_latent=n_latent, style_dim=8, **TINY)
    codes = enc(torch.rand(3, 3, resolution, resolution) * 2 - 1)
    assert codes.shape == (3, n_latent, 8)
    assert torch.isfinite(codes).all()
    assert len(enc.blocks) == int(math.log2(resolution // 4))
    enc.eval()
    with torch.no_grad():
        assert enc(torch.zeros(1, 3, resolution, resolution)).shape == (1, n_latent, 8)


def test_default_n_latent_and_variant():
    enc = build_encoder(resolution=32, style_dim=8, **TINY)
    assert enc.variant == "B" and enc.n_latent == 8  # StyleGAN2: 2 log2(R) - 2
    assert build_encoder("a", resolution=32, style_dim=8, **TINY).variant == "A"


def test_stage_shapes_256(meta_256):
    enc = meta_256
    codes, feats = enc(torch.empty(2, 3, 256, 256, device="meta"), return_features=True)
    assert codes.shape == (2, 14, 512)
    widths = WIDTHS_256[enc.variant]
    assert [tuple(f.shape) for f in feats] == [(2, c, 256 >> i, 256 >> i) for i, c in enumerate(widths)]
    assert tuple(feats[-1].shape[1:]) == ((1024 if enc.variant == "A" else 512), 4, 4)
    assert list(enc.channels) == widths


def test_parameter_counts_256(meta_256):
    enc = meta_256
    variant = enc.variant
    conv = numel(enc.stem) + numel(enc.blocks)
    fc = numel(enc.head)
    assert conv + fc == numel(enc)
    assert {"conv": conv, "fc": fc} == expected_counts(variant, WIDTHS_256[variant], 14, 512) == EXACT_256[variant]
    assert enc.parameter_counts() == {"conv": conv, "fc": fc, "total": conv + fc}
    if variant == "A":
        # quoted as ~47.8 M conv + ~117.4 M FC = ~165 M (47,863,040 truncates to 47.8 M; weights alone 47.85 M)
        assert math.floor(conv / 1e5) / 10 == 47.8
        assert round(fc / 1e6, 1) == 117.4
        assert round((conv + fc) / 1e6) == 165
        assert enc.head.fc.weight.shape == (14 * 512, 1024 * 4 * 4)
    else:
        assert round(fc / 1e6, 1) == 58.7
        assert enc.head.fc.weight.shape == (14 * 512, 512 * 4 * 4)


@pytest.mark.parametrize("variant", ["A", "B"])
def test_counts_formula_tiny(variant):
    enc = build_encoder(variant, resolution=64, n_latent=10, style_dim=8, stem_channels=3, max_channels=10)
    widths = [3, 6, 10, 10, 10]
    assert list(enc.channels) == widths
    assert enc.parameter_counts()["conv"] == expected_counts(variant, widths, 10, 8)["conv"]
    assert enc.parameter_counts()["fc"] == expected_counts(variant, widths, 10, 8)["fc"]


def _norms(enc: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_variant_a_batch_norm_has_no_scale():
    enc = build_encoder("A", resolution=32, n_latent=8, style_dim=8, **TINY)
    norms = _norms(enc)
    shifts = [m for m in enc.modules() if isinstance(m, ShiftBatchNorm)]
    assert norms and len(shifts) == len(norms)
    for bn in norms:
        assert not bn.affine and bn.weight is None and bn.bias is None
        assert bn.momentum == 0.1 and bn.eps == 1e-5 and bn.track_running_stats
    for shift in shifts:
        assert [name for name, _ in shift.named_parameters()] == ["bias"]
        assert torch.equal(shift.bias, torch.zeros_like(shift.bias))
    assert isinstance(enc.head.fc, EqualLinear) and enc.head.fc.bias is None
    assert enc.stem[0].bias is None and enc.stem[0].kernel_size == (3, 3)


def test_variant_b_batch_norm_is_affine():
    enc = build_encoder("B", resolution=32, n_latent=8, style_dim=8, **TINY)
    assert not any(isinstance(m, ShiftBatchNorm) for m in enc.modules())
    for bn in _norms(enc):
        assert bn.affine and bn.weight.requires_grad and bn.bias.requires_grad
        assert bn.momentum == 0.1 and bn.eps == 1e-5
    assert isinstance(enc.head.fc, nn.Linear) and enc.head.fc.bias is not None
    assert enc.stem[0].kernel_size == (5, 5) and enc.stem[0].bias is not None


def test_initialisation():
    torch.manual_seed(0)
    for variant in "AB":
        enc = build_encoder(variant, resolution=16, n_latent=4, style_dim=64, stem_channels=64, max_channels=64)
        conv = enc.blocks[0].conv1
        assert abs(conv.weight.std().item() - 0.02) < 2e-3
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
        fc = enc.head.fc
        if variant == "A":  # equalized lr: N(0, 1) stored, 1 / sqrt(fan_in) applied in forward
            assert abs(fc.weight.std().item() - 1.0) < 0.02
            assert fc.scale == pytest.approx(1 / math.sqrt(64 * 16))
        else:
            assert abs(fc.weight.std().item() - 0.02) < 2e-3


def _randomise_norms(enc: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for bn in _norms(enc):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            if bn.affine:
                bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
                bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
        for m in enc.modules():
            if isinstance(m, ShiftBatchNorm):
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))


def _bn_ref(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """Eval-mode batch norm written out: (x - mean) / sqrt(var + eps) * gamma + beta."""
    bn = norm.norm if isinstance(norm, ShiftBatchNorm) else norm
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + 1e-5)
    if isinstance(norm, ShiftBatchNorm):
        return y + norm.bias.view(shape)
    return y * bn.weight.view(shape) + bn.bias.view(shape)


@pytest.mark.parametrize("variant", ["A", "B"])
@pytest.mark.parametrize("cin,cout", [(4, 8), (8, 8)])
def test_res_block_matches_written_out_formula(variant, cin, cout):
    gen = torch.Generator().manual_seed(1)
    block = EncoderResBlock(cin, cout, variant).eval()
    _randomise_norms(block, gen)
    with torch.no_grad():
        for p in block.parameters():
            if p.ndim == 1 and p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen))  # conv biases
    x = torch.randn(2, cin, 8, 8, generator=gen)
    lrelu = lambda t: torch.where(t >= 0, t, 0.2 * t)  # noqa: E731
    pooled = (x[..., ::2, ::2] + x[..., 1::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, 1::2]) / 4
    h1 = F.conv2d(pooled, block.conv1.weight, block.conv1.bias, padding=1)
    h1 = lrelu(_bn_ref(h1, block.norm1)) if variant == "A" else _bn_ref(lrelu(h1), block.norm1)
    h2 = F.conv2d(h1, block.conv2.weight, block.conv2.bias, padding=1)
    h2 = lrelu(_bn_ref(h2, block.norm2)) if variant == "A" else _bn_ref(lrelu(h2), block.norm2)
    if cin != cout:
        conv, norm = block.shortcut[0], block.shortcut[1]
        assert conv.bias is None and conv.kernel_size == (1, 1)
        skip = _bn_ref(F.conv2d(pooled, conv.weight), norm)
        skip = lrelu(skip) if variant == "A" else skip
    else:
        assert isinstance(block.shortcut, nn.Identity)
        skip = pooled
    with torch.no_grad():
        torch.testing.assert_close(block(x), h2 + skip)
    assert block.conv1.out_channels == min(cin, cout)


@pytest.mark.parametrize("variant", ["A", "B"])
def test_stem_and_head_match_written_out_formula(variant):
    gen = torch.Generator().manual_seed(2)
    enc = build_encoder(variant, resolution=8, n_latent=2, style_dim=3, stem_channels=4, max_channels=8).eval()
    _randomise_norms(enc, gen)
    x = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    lrelu = lambda t: torch.where(t >= 0, t, 0.2 * t)  # noqa: E731
    stem_conv, stem_norm = enc.stem[0], enc.stem[2 if variant == "B" else 1]
    s = F.conv2d(x, stem_conv.weight, stem_conv.bias, padding=stem_conv.kernel_size[0] // 2)
    s = _bn_ref(lrelu(s), stem_norm) if variant == "B" else lrelu(_bn_ref(s, stem_norm))
    with torch.no_grad():
        codes, feats = enc(x, return_features=True)
        torch.testing.assert_close(feats[0], s)
        flat = feats[-1].reshape(2, -1)
        if variant == "A":
            pre = flat @ (enc.head.fc.weight / math.sqrt(flat.shape[1])).t()
        else:
            pre = flat @ enc.head.fc.weight.t() + enc.head.fc.bias
        torch.testing.assert_close(codes, _bn_ref(pre, enc.head.norm).view(2, 2, 3))


@pytest.mark.parametrize("variant", ["A", "B"])
def test_train_and_eval_batch_norm(variant):
    torch.manual_seed(3)
    enc = build_encoder(variant, resolution=16, n_latent=6, style_dim=8, **TINY)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    # train: batch statistics, running stats updated with momentum 0.1
    stem_norm = enc.stem[2] if variant == "B" else enc.stem[1].norm
    before = stem_norm.running_mean.clone()
    with torch.no_grad():
        pre = enc.stem[0](x)
        if variant == "B":
            pre = F.leaky_relu(pre, 0.2)
        full = enc(x)
        torch.testing.assert_close(stem_norm.running_mean, 0.9 * before + 0.1 * pre.mean(dim=(0, 2, 3)))
        part = enc(x[:3])
    assert not torch.allclose(full[:3], part, atol=1e-4)  # depends on the batch
    assert stem_norm.num_batches_tracked.item() == 2
    # eval: running stats, each code independent of the rest of its batch, stats frozen
    enc.eval()
    stats = {k: v.clone() for k, v in enc.state_dict().items()}
    with torch.no_grad():
        full = enc(x)
        torch.testing.assert_close(enc(x[:3]), full[:3])
        torch.testing.assert_close(enc(x[4:5]), full[4:5])
        torch.testing.assert_close(enc(torch.cat([x[2:3], torch.randn(5, 3, 16, 16)]))[0], full[2])
    for k, v in enc.state_dict().items():
        assert torch.equal(v, stats[k]), k


def test_gradients_reach_every_parameter():
    for variant in "AB":
        enc = build_encoder(variant, resolution=16, n_latent=6, style_dim=8, **TINY)
        enc(torch.rand(4, 3, 16, 16) * 2 - 1).square().mean().backward()
        for name, p in enc.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_sync_batch_norm_conversion_keeps_shift():
    enc = build_encoder("A", resolution=16, n_latent=6, style_dim=8, **TINY)
    count = enc.parameter_counts()["total"]
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(enc)
    shifts = [m for m in converted.modules() if isinstance(m, ShiftBatchNorm)]
    assert shifts and all(isinstance(s.norm, nn.SyncBatchNorm) and not s.norm.affine for s in shifts)
    assert converted.parameter_counts()["total"] == count
    enc_b = nn.SyncBatchNorm.convert_sync_batchnorm(build_encoder("B", resolution=16, n_latent=6, style_dim=8, **TINY))
    assert all(isinstance(m, nn.SyncBatchNorm) for m in _norms(enc_b))


def test_encoder_for_generator_feeds_w_plus():
    torch.manual_seed(4)
    g = Generator(16, style_dim=8, n_mlp=1, channels={4: 8, 8: 8, 16: 8}).eval()
    for variant in "AB":
        enc = encoder_for(g, variant, **TINY)
        assert (enc.resolution, enc.n_latent, enc.style_dim) == (16, g.n_latent, 8)
        codes = enc(torch.rand(2, 3, 16, 16) * 2 - 1)
        assert codes.shape == (2, g.n_latent, 8)
        image, _ = g([codes], input_is_latent=True, noise_mode="const")
        assert image.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("kwargs,match", [
    (dict(resolution=12), "power of two"), (dict(resolution=4), "power of two"),
    (dict(resolution=2048), "power of two"), (dict(resolution=16, variant="C"), "variant"),
    (dict(resolution=16, max_channels=0), "max_channels"),
])
def test_invalid_configuration(kwargs, match):
    kwargs = {"n_latent": 4, "style_dim": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        DomainGuidedEncoder(**kwargs)


def test_wrong_input_shape():
    enc = build_encoder("B", resolution=16, n_latent=6, style_dim=8, **TINY)
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\]"):
        enc(torch.zeros(2, 3, 32, 32))


@pytest.mark.parametrize("variant", ["A", "B"])
def test_save_and_load_round_trip(tmp_path, variant):
    torch.manual_seed(5)
    enc = build_encoder(variant, resolution=16, n_latent=6, style_dim=8, **TINY)
    enc(torch.rand(4, 3, 16, 16) * 2 - 1)  # non-trivial running stats
    path = save_encoder(tmp_path / "run" / "encoder.pt", enc, variant=variant, widths=TINY, kimg=1.5)
    assert path == tmp_path / "run" / "encoder.pt" and path.is_file()
    loaded, config = load_encoder(path)
    assert not loaded.training
    assert config == {**encoder_config(enc), "metadata": {"kimg": 1.5}}
    assert (config["variant"], config["n_latent"], config["style_dim"]) == (variant, 6, 8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), enc.eval()(x), rtol=0, atol=0)
    assert list(tmp_path.joinpath("run").iterdir()) == [path]  # no temporary file left


def test_save_checks_and_load_errors(tmp_path):
    enc = build_encoder("B", resolution=16, n_latent=6, style_dim=8, **TINY)
    with pytest.raises(ValueError, match="variant"):
        save_encoder(tmp_path / "e.pt", enc, variant="A")
    with pytest.raises(ValueError, match="max_channels"):
        save_encoder(tmp_path / "e.pt", enc, widths={"max_channels": 32})
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(EncoderFileError, match="not an encoder file") as info:
        load_encoder(bad)
    assert str(bad) in str(info.value)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a torch file")
    with pytest.raises(EncoderFileError, match="cannot read"):
        load_encoder(junk)
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "missing.pt")
