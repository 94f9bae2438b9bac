"""Adversarial losses and penalties against their formulas (docs/methods/stylegan2.md, "Training algorithm")."""

import numpy as np
import pytest
import torch
from torch import nn

from losses.adversarial import (d_logistic_loss, g_nonsaturating_loss, path_length_penalty,
                                path_lengths, r1_penalty, update_pl_mean)
from tests.helpers_gan import one_thread  # noqa: F401 (autouse fixture)


def _softplus(x):
    return np.log1p(np.exp(x))


def test_logistic_losses_equal_softplus_formula():
    real = torch.tensor([[2.0], [-1.0], [0.5]])
    fake = torch.tensor([[-3.0], [0.25], [1.5]])
    expected_d = _softplus(fake.numpy()).mean() + _softplus(-real.numpy()).mean()
    expected_g = _softplus(-fake.numpy()).mean()
    assert d_logistic_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert g_nonsaturating_loss(fake).item() == pytest.approx(expected_g, rel=1e-6)
    # large logits stay finite (softplus, not log(1 + exp))
    assert torch.isfinite(d_logistic_loss(torch.tensor([-200.0]), torch.tensor([200.0])))


class TinyD(nn.Module):
    """A per-sample nonlinear critic (no batch interaction), float64."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1).double()
        self.head = nn.Linear(4 * 6 * 6, 1).double()

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def test_r1_equals_finite_difference_gradient_norm():
    d = TinyD()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    penalty = r1_penalty(d(x.requires_grad_()), x)
    # central differences of D(x_b) with respect to every pixel of sample b
    eps = 1e-6
    flat = x.detach().flatten(1)
    norms = []
    for b in range(2):
        pert = flat[b].repeat(2 * flat.shape[1], 1)
        idx = torch.arange(flat.shape[1])
        pert[2 * idx, idx] += eps
        pert[2 * idx + 1, idx] -= eps
        out = d(pert.view(-1, 3, 6, 6)).view(-1, 2)
        grad = (out[:, 0] - out[:, 1]) / (2 * eps)
        norms.append(grad.pow(2).sum().item())
    assert penalty.item() == pytest.approx(float(np.mean(norms)), rel=1e-6)


def test_r1_is_differentiable_in_the_weights():
    # D(x) = s * <a, x>: grad_x = s a, penalty = s^2 ||a||^2, d penalty / d s = 2 s ||a||^2
    a = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    s = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    penalty = r1_penalty((s * (a * x).flatten(1).sum(1)).unsqueeze(1), x)
    assert penalty.item() == pytest.approx(1.5 ** 2 * a.pow(2).sum().item(), rel=1e-12)
    (ds,) = torch.autograd.grad(penalty, s)
    assert ds.item() == pytest.approx(2 * 1.5 * a.pow(2).sum().item(), rel=1e-12)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(torch.zeros(1, 1), torch.zeros(1, 3, 4, 4))


def _tiny_generator(size=16):
    from models.stylegan2 import Generator

    torch.manual_seed(0)
    g = Generator(size, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16}).double().eval()
    for i, conv in enumerate([g.conv1, *g.convs]):  # non-zero noise strengths make noise matter
        conv.noise.weight.data.fill_(0.1 * (i + 1))
    return g


class SmoothSynthesis(nn.Module):
    """W+ [B, 3, 4] -> image [B, 3, 5, 5] through a smooth map (tanh MLP), float64."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(12, 16).double()
        self.b = nn.Linear(16, 75).double()

    def forward(self, latent):
        return self.b(torch.tanh(self.a(latent.flatten(1)))).view(-1, 3, 5, 5)


def test_path_lengths_equal_finite_difference_jacobian():
    synth = SmoothSynthesis()
    gen = torch.Generator().manual_seed(2)
    w_plus = torch.randn(3, 3, 4, dtype=torch.float64, generator=gen)
    y = torch.randn(3, 3, 5, 5, dtype=torch.float64, generator=gen) / 5.0
    latent = w_plus.clone().requires_grad_(True)
    ours = path_lengths(synth(latent), latent, noise=y)

    eps = 1e-6
    expected = []
    with torch.no_grad():
        for b in range(3):
            pert = w_plus[b].reshape(-1).repeat(24, 1)
            idx = torch.arange(12)
            pert[2 * idx, idx] += eps
            pert[2 * idx + 1, idx] -= eps
            imgs = synth(pert.view(-1, 3, 4)).reshape(12, 2, -1)
            jty = ((imgs[:, 0] - imgs[:, 1]) / (2 * eps) * y[b].reshape(1, -1)).sum(1)  # (J^T y)_i
            expected.append(jty.view(3, 4).pow(2).sum(1).mean().sqrt().item())
    assert ours.detach().numpy() == pytest.approx(np.array(expected), rel=1e-7)


def test_path_lengths_on_stylegan2_equal_full_jacobian_contraction():
    g = _tiny_generator(size=8)
    g.fused_modconv = False
    gen = torch.Generator().manual_seed(2)
    w_plus = torch.randn(1, g.n_latent, g.style_dim, dtype=torch.float64, generator=gen)
    noise = [torch.randn(1, 1, *b.shape[-2:], dtype=torch.float64, generator=gen) for b in g.stored_noise()]
    y = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=gen) / 8.0

    def synth(latent):
        return g([latent], input_is_latent=True, noise=noise)[0]

    latent = w_plus.clone().requires_grad_(True)
    ours = path_lengths(synth(latent), latent, noise=y)
    jac = torch.autograd.functional.jacobian(synth, w_plus, vectorize=True)  # [1, 3, 8, 8, 1, L, D]
    jty = torch.einsum("bchw,bchwnld->nld", y, jac)
    expected = jty.pow(2).sum(-1).mean(-1).sqrt()
    torch.testing.assert_close(ours.detach(), expected, rtol=1e-6, atol=0)  # demodulation runs in fp32


def test_path_length_default_noise_is_scaled_normal_from_generator():
    g = _tiny_generator()
    latent = torch.randn(2, g.n_latent, g.style_dim, dtype=torch.float64).requires_grad_(True)
    img = g([latent], input_is_latent=True, randomize_noise=False)[0]
    drawn = path_lengths(img, latent, generator=torch.Generator().manual_seed(5))
    y = torch.randn(img.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) / 16.0
    explicit = path_lengths(img, latent, noise=y)
    torch.testing.assert_close(drawn, explicit)


def test_path_length_running_mean_and_penalty_formula():
    lengths = torch.tensor([1.0, 3.0])
    new_mean = update_pl_mean(torch.tensor(0.0), lengths.mean(), decay=0.01)
    assert new_mean.item() == pytest.approx(0.02)
    penalty = path_length_penalty(lengths, new_mean)
    assert penalty.item() == pytest.approx(((1 - 0.02) ** 2 + (3 - 0.02) ** 2) / 2)
    # the running mean converges to a constant length
    mean = torch.tensor(0.0, dtype=torch.float64)
    for _ in range(2000):
        mean = update_pl_mean(mean, torch.tensor(2.0, dtype=torch.float64), decay=0.01)
    assert mean.item() == pytest.approx(2.0, rel=1e-6)
