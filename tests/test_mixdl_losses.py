"""MixDL distance losses, coefficient samplers, W mixing and D heads (docs/methods/mixdl.md)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses.mixdl import (d_distance_loss, g_distance_loss, sample_feature_layers,
                          similarity_kl)
from models.mixdl_heads import (DistanceProjectionHead, PatchHeads, patch_features, patch_logits,
                                patch_map_layout, penultimate_features)
from models.mixup import (dirichlet_coefficients, gaussian_softmax_coefficients, make_coefficient_sampler,
                          mix_latents, uniform_coefficients)


# --- direct, loop-based reference of the documented formulas (plain Python floats) -----------------

def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    u, v = u.flatten().tolist(), v.flatten().tolist()
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(r) for r in row]
    return [x / sum(e) for x in e]


def _reference_kl(sim: list[list[float]], alpha: torch.Tensor, reduction: str) -> float:
    """sum_ij q_ij (log q_ij - log p_ij), q = softmax(alpha_i), p = softmax(sim_i); then reduced."""
    m, b = alpha.shape
    total = 0.0
    for i in range(m):
        p = _softmax(sim[i])
        q = _softmax(alpha[i].tolist())
        for j in range(b):
            total += q[j] * (math.log(q[j]) - math.log(p[j]))
    return {"mean": total / (m * b), "batchmean": total / m, "sum": total}[reduction]


def _reference_g_loss(mix_feats, anchor_feats, alpha, layers, reduction):
    m, b = alpha.shape
    sim = [[_cos(mix_feats[layers[i]][i], anchor_feats[layers[i]][j]) for j in range(b)] for i in range(m)]
    return _reference_kl(sim, alpha, reduction)


def _reference_d_loss(proj, alpha, reduction):
    b = alpha.shape[1]
    sim = [[_cos(proj[b + i], proj[j]) for j in range(b)] for i in range(alpha.shape[0])]
    return _reference_kl(sim, alpha, reduction)


@pytest.fixture
def g_case():
    """Three generator layers of different shapes, B = M = 4, fixed tensors (float64)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 4, 4), (8, 8, 8), (2, 16, 16)]
    anchors = [torch.randn(4, *s, generator=g, dtype=torch.float64) for s in shapes]
    # mixes correlate with anchor 0 / 1 so the similarity profiles are not flat
    mixes = [0.6 * a[[0, 1, 1, 0]] + torch.randn(4, *s, generator=g, dtype=torch.float64)
             for a, s in zip(anchors, shapes)]
    alpha = dirichlet_coefficients(4, 4, generator=torch.Generator().manual_seed(1)).double()
    return mixes, anchors, alpha


# --- G-side distance loss ------------------------------------------------------------------------

@pytest.mark.parametrize("layers", [[2, 0, 2, 1], [1, 1, 1, 1], [0, 1, 2, 0]])
def test_g_distance_loss_matches_loop_reference(g_case, layers):
    mixes, anchors, alpha = g_case
    got = g_distance_loss(mixes, anchors, alpha, torch.tensor(layers))
    want = _reference_g_loss(mixes, anchors, alpha, layers, "mean")
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-14)


def test_g_distance_loss_uses_each_rows_own_layer(g_case):
    mixes, anchors, alpha = g_case
    base = g_distance_loss(mixes, anchors, alpha, torch.tensor([2, 0, 2, 1]))
    other = g_distance_loss(mixes, anchors, alpha, torch.tensor([2, 0, 1, 1]))
    assert other.item() == pytest.approx(_reference_g_loss(mixes, anchors, alpha, [2, 0, 1, 1], "mean"), rel=1e-10)
    assert abs(base.item() - other.item()) > 1e-6


def test_reduction_mean_is_the_released_semantics_not_batchmean(g_case):
    mixes, anchors, alpha = g_case
    layers = torch.tensor([2, 0, 2, 1])
    mean = g_distance_loss(mixes, anchors, alpha, layers)  # default
    batchmean = g_distance_loss(mixes, anchors, alpha, layers, reduction="batchmean")
    total = g_distance_loss(mixes, anchors, alpha, layers, reduction="sum")
    ref_mean = _reference_g_loss(mixes, anchors, alpha, layers.tolist(), "mean")
    ref_batchmean = _reference_g_loss(mixes, anchors, alpha, layers.tolist(), "batchmean")
    assert mean.item() == pytest.approx(ref_mean, rel=1e-10)
    assert batchmean.item() == pytest.approx(ref_batchmean, rel=1e-10)
    assert mean.item() != pytest.approx(ref_batchmean, rel=1e-3)  # off by the factor B = 4
    assert total.item() == pytest.approx(16 * mean.item(), rel=1e-10)


def test_target_is_softmax_of_coefficients():
    alpha = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    # the worked example of docs/methods/mixdl.md: alpha = e1 with B = 4 gives a flat target ~(0.47, 0.18, 0.18, 0.18)
    assert torch.softmax(alpha[0], 0).tolist() == pytest.approx([0.4754, 0.1749, 0.1749, 0.1749], abs=1e-4)
    # similarities equal to alpha -> p = softmax(alpha) = q -> zero loss; alpha itself is not the target
    assert similarity_kl(alpha.clone(), alpha).item() == pytest.approx(0.0, abs=1e-12)
    sims_equal_to_target_alpha = torch.log(alpha.clamp_min(1e-6))  # softmax(sims) == alpha (approx.)
    assert similarity_kl(sims_equal_to_target_alpha, alpha).item() > 1e-3


def test_g_distance_loss_gradients_reach_both_branches(g_case):
    mixes, anchors, alpha = g_case
    mixes = [m.clone().requires_grad_() for m in mixes]
    anchors = [a.clone().requires_grad_() for a in anchors]
    g_distance_loss(mixes, anchors, alpha, torch.tensor([2, 0, 2, 1])).backward()
    for layer in (0, 1, 2):
        assert mixes[layer].grad.abs().sum() > 0 and anchors[layer].grad.abs().sum() > 0


def test_g_distance_loss_rejects_bad_input(g_case):
    mixes, anchors, alpha = g_case
    with pytest.raises(ValueError, match="out of range"):
        g_distance_loss(mixes, anchors, alpha, torch.tensor([3, 0, 0, 0]))
    with pytest.raises(ValueError, match="integer tensor"):
        g_distance_loss(mixes, anchors, alpha, torch.tensor([1.0, 0, 0, 0]))
    with pytest.raises(ValueError, match="coeffs"):
        g_distance_loss(mixes, anchors, alpha[:, :3], torch.tensor([1, 0, 0, 0]))
    with pytest.raises(ValueError, match="reduction"):
        g_distance_loss(mixes, anchors, alpha, torch.tensor([1, 0, 0, 0]), reduction="batch_mean")


def test_sample_feature_layers_range_and_seed():
    layers = sample_feature_layers(4000, 13, generator=torch.Generator().manual_seed(3))
    assert layers.min().item() == 1 and layers.max().item() == 11  # U{1..11} at 256 px (13 layers)
    again = sample_feature_layers(4000, 13, generator=torch.Generator().manual_seed(3))
    assert torch.equal(layers, again)
    with pytest.raises(ValueError):
        sample_feature_layers(4, 2)


# --- D-side distance loss ------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
def test_d_distance_loss_matches_loop_reference(reduction):
    g = torch.Generator().manual_seed(5)
    proj = torch.randn(8, 16, generator=g, dtype=torch.float64)  # cat[anchors (4), mixes (4)]
    proj[4:] += 0.8 * proj[[2, 0, 3, 3]]
    alpha = gaussian_softmax_coefficients(4, 4, generator=g).double()
    got = d_distance_loss(proj[4:], proj[:4], alpha, reduction=reduction)
    assert got.item() == pytest.approx(_reference_d_loss(proj, alpha, reduction), rel=1e-10, abs=1e-14)
    other = "batchmean" if reduction == "mean" else "mean"
    assert got.item() != pytest.approx(_reference_d_loss(proj, alpha, other), rel=1e-3)


def test_d_distance_loss_rejects_bad_shapes():
    with pytest.raises(ValueError):
        d_distance_loss(torch.randn(4, 3, 2), torch.randn(4, 6), torch.full((4, 4), 0.25))
    with pytest.raises(ValueError):
        d_distance_loss(torch.randn(4, 6), torch.randn(4, 6), torch.full((4, 3), 1 / 3))


# --- coefficient samplers and mixing -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dirichlet", "gaussian", "uniform"])
def test_coefficient_rows_are_on_the_simplex_with_mean_one_over_b(kind):
    alpha = make_coefficient_sampler(kind)(20000, 4, generator=torch.Generator().manual_seed(7))
    assert alpha.shape == (20000, 4)
    assert (alpha >= 0).all()
    assert torch.allclose(alpha.sum(1), torch.ones(20000), atol=1e-5)
    assert torch.allclose(alpha.mean(0), torch.full((4,), 0.25), atol=0.01)


@pytest.mark.parametrize("concentration", [0.5, 1.0, 2.0])
def test_dirichlet_variance_matches_concentration(concentration):
    b = 4
    alpha = dirichlet_coefficients(40000, b, concentration, generator=torch.Generator().manual_seed(11))
    want = (1 / b) * (1 - 1 / b) / (b * concentration + 1)  # Var of a symmetric Dirichlet component
    assert alpha.var(0).mean().item() == pytest.approx(want, rel=0.05)


def test_dirichlet_seed_reproducible():
    a = dirichlet_coefficients(4, 4, generator=torch.Generator().manual_seed(123))
    b = dirichlet_coefficients(4, 4, generator=torch.Generator().manual_seed(123))
    c = dirichlet_coefficients(4, 4, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_make_coefficient_sampler_by_name():
    assert make_coefficient_sampler("uniform") is uniform_coefficients
    assert make_coefficient_sampler("gaussian") is gaussian_softmax_coefficients
    a = make_coefficient_sampler("dirichlet", 0.5)(3, 4, generator=torch.Generator().manual_seed(9))
    b = dirichlet_coefficients(3, 4, 0.5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown"):
        make_coefficient_sampler("dirichelt")
    with pytest.raises(ValueError, match="only applies"):
        make_coefficient_sampler("gaussian", concentration=0.5)
    with pytest.raises(ValueError):
        make_coefficient_sampler("dirichlet", concentration=0.0)


def test_mix_latents_shape_and_convexity():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 32, generator=g)
    alpha = dirichlet_coefficients(6, 4, generator=g)
    mixed = mix_latents(w, alpha)
    assert mixed.shape == (6, 32)
    explicit = torch.stack([sum(alpha[i, j] * w[j] for j in range(4)) for i in range(6)])
    assert torch.allclose(mixed, explicit, atol=1e-6)
    lo, hi = w.min(0).values, w.max(0).values  # convex combinations stay inside the anchors' box
    assert (mixed >= lo - 1e-6).all() and (mixed <= hi + 1e-6).all()
    assert torch.allclose(mix_latents(w, torch.eye(4)), w)  # one-hot rows reproduce the anchors


def test_mix_latents_rejects_wplus_and_bad_coeffs():
    with pytest.raises(ValueError, match="W\\+"):
        mix_latents(torch.randn(4, 8, 32), torch.full((4, 4), 0.25))
    with pytest.raises(ValueError, match="coeffs"):
        mix_latents(torch.randn(4, 32), torch.full((4, 3), 1 / 3))


# --- discriminator heads -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_d():
    from models.stylegan2 import Discriminator
    torch.manual_seed(0)
    return Discriminator(32, channels={4: 32, 8: 32, 16: 16, 32: 16}).eval()


def test_patch_map_layout_follows_the_reference_pattern(tiny_d):
    from models.stylegan2 import Discriminator
    # at 256 px: block(64->32).conv2, block(32->16).conv1, .conv2, block(16->8).conv1 (docs/methods/mixdl.md)
    big = Discriminator(256, channels={r: 8 for r in (4, 8, 16, 32, 64, 128, 256)})
    assert [(m.block, m.stage, m.resolution) for m in patch_map_layout(big)] == [
        (3, "conv2", 32), (4, "conv1", 32), (4, "conv2", 16), (5, "conv1", 16)]
    # the same pattern one octave down for a 32 px D
    layout = patch_map_layout(tiny_d, resolutions=(16, 8))
    assert [(m.block, m.stage, m.resolution, m.channels) for m in layout] == [
        (1, "conv2", 16, 16), (2, "conv1", 16, 16), (2, "conv2", 8, 32), (3, "conv1", 8, 32)]
    with pytest.raises(ValueError, match="resolutions"):
        patch_map_layout(tiny_d)  # 32 px D has only 3 maps at (32, 16)


def test_patch_features_match_the_discriminator_blocks(tiny_d):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = patch_features(tiny_d, x, resolutions=(16, 8))
        _, block_outs = tiny_d(x, return_feats=True)
        want = [tiny_d.convs[1].conv2(tiny_d.convs[1].conv1(block_outs[0])),
                tiny_d.convs[2].conv1(block_outs[1]),
                tiny_d.convs[2].conv2(tiny_d.convs[2].conv1(block_outs[1])),
                tiny_d.convs[3].conv1(block_outs[2])]
        partial = patch_features(tiny_d, x, resolutions=(16, 8), upto=1)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 16), (2, 16, 16, 16), (2, 32, 8, 8), (2, 32, 8, 8)]
    for got, ref in zip(maps, want):
        assert torch.allclose(got, ref, atol=1e-5)
    assert len(partial) == 2 and torch.allclose(partial[1], maps[1])


def test_patch_heads_are_leaky_relu_convs(tiny_d):
    heads = PatchHeads.for_discriminator(tiny_d, resolutions=(16, 8))
    plain = PatchHeads(heads.in_channels, leaky_logits=False)
    for h_leaky, h_plain in zip(heads.heads, plain.heads):  # same conv weights, bias moved into the conv
        h_plain[0].weight.data.copy_(h_leaky[0].weight.data)
        h_plain[0].bias.data.copy_(torch.randn(1))
        h_leaky[1].bias.data.copy_(h_plain[0].bias.data)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        maps = patch_features(tiny_d, x, resolutions=(16, 8))
        for k, feat in enumerate(maps):
            out, ref = heads(feat, k), plain(feat, k)
            assert out.shape == (2, 1, feat.shape[2], feat.shape[3])
            assert torch.allclose(out, F.leaky_relu(ref, 0.2) * math.sqrt(2), atol=1e-5)
        assert torch.allclose(patch_logits(tiny_d, heads, x, 2, resolutions=(16, 8)), heads(maps[2], 2))
    with pytest.raises(ValueError):
        heads(maps[0], 2)  # 16-channel map into a 32-channel head
    with pytest.raises(ValueError):
        heads(maps[0], 4)


def test_projection_head_on_penultimate_feature():
    from models.stylegan2 import Discriminator
    torch.manual_seed(1)
    tiny_d = Discriminator(32, channels={4: 32, 8: 32, 16: 16, 32: 16})
    head = DistanceProjectionHead(32)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(6))  # cat[anchors, mixes]
    logits, feats = tiny_d(x, return_feats=True)
    h = penultimate_features(tiny_d, feats[-1])
    assert h.shape == (8, 32)
    assert torch.allclose(tiny_d.final_linear[1](h), logits, atol=1e-5)  # h is D's penultimate layer
    u = head(h)
    lin = head.sim_linear
    assert torch.allclose(u, h @ (lin.weight * lin.scale).t() + lin.bias, atol=1e-5)  # linear, no activation
    alpha = dirichlet_coefficients(4, 4, generator=torch.Generator().manual_seed(0))
    loss = d_distance_loss(u[4:], u[:4], alpha)
    loss.backward()
    assert head.sim_linear.weight.grad.abs().sum() > 0
    assert tiny_d.final_linear[0].weight.grad.abs().sum() > 0
    assert tiny_d.final_linear[1].weight.grad is None  # the unused logit gets no gradient
