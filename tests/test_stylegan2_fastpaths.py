"""The fast paths of the backbone (docs/methods/stylegan2.md, "Fast paths") against a plain, slow statement
of the same math written here: per-sample modulated weights, zero-insertion upsampling, padded blurs,
every gain applied as written in the paper. Everything runs in float64, so any difference beyond
rounding (1e-5 here) is a bug, not noise. Forward, parameter gradients and the R1 double backward."""
import math
import time

import pytest
import torch
import torch.nn.functional as F

from models.stylegan2 import Discriminator, Generator
from models.stylegan2_layers import ModulatedConv2d, fused_policy

TOL = 1e-5
SQRT2 = math.sqrt(2)
TINY = dict(size=16, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 8})
BIG = dict(size=256, style_dim=16, n_mlp=2, channels={4: 8, 8: 8, 16: 8, 32: 8, 64: 8, 128: 4, 256: 4})


# ------------------------------------------------------------------------------------ reference math
def _kernel(dtype):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=dtype)
    k = k[:, None] * k[None, :]
    return k / k.sum()


def ref_upfirdn(x, k, up=1, down=1, pad=(0, 0)):
    b, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(b, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    wk = torch.flip(k, [0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, wk, stride=down, groups=c)


def ref_linear(sd, prefix, x, lr_mul=1.0, act=False):
    w, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    out = x @ (w * (lr_mul / math.sqrt(w.shape[1]))).t() + b * lr_mul
    return F.leaky_relu(out, 0.2) * SQRT2 if act else out


def ref_modconv(sd, prefix, x, wcode, demod=True, up=False):
    weight = sd[f"{prefix}.weight"][0]
    o, i, k, _ = weight.shape
    s = ref_linear(sd, f"{prefix}.modulation", wcode)
    outs = []
    for n in range(x.shape[0]):
        wn = weight / math.sqrt(i * k * k) * s[n].view(1, i, 1, 1)
        if demod:
            wn = wn / torch.sqrt(wn.square().sum([1, 2, 3], keepdim=True) + 1e-8)
        if up:  # zero-insert, true convolution with the (flipped) weight, then the x4 blur
            y = ref_upfirdn(x[n:n + 1], torch.ones(1, 1, dtype=x.dtype), up=2, pad=(0, -1))
            y = F.conv2d(F.pad(y, [2, 2, 2, 2]), torch.flip(wn, [2, 3]))
            y = ref_upfirdn(y, _kernel(x.dtype) * 4, pad=(1, 1))
        else:
            y = F.conv2d(x[n:n + 1], wn, padding=k // 2)
        outs.append(y)
    return torch.cat(outs)


def ref_generator(sd, cfg, z, noise, clamp=None):
    """Image from z, with explicit noise maps (None entries: no noise)."""
    x = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
    for i in range(cfg["n_mlp"]):
        x = ref_linear(sd, f"style.{i + 1}", x, lr_mul=0.01, act=True)
    w = x

    def styled(prefix, h, nz, up=False):
        h = ref_modconv(sd, f"{prefix}.conv", h, w, up=up)
        if nz is not None:
            h = h + sd[f"{prefix}.noise.weight"] * nz
        h = F.leaky_relu(h + sd[f"{prefix}.activate.bias"].view(1, -1, 1, 1), 0.2) * SQRT2
        return h if clamp is None else h.clamp(-clamp, clamp)

    def to_rgb(prefix, h, skip):
        out = ref_modconv(sd, f"{prefix}.conv", h, w, demod=False) + sd[f"{prefix}.bias"]
        if clamp is not None:
            out = out.clamp(-clamp, clamp)
        if skip is not None:
            out = out + ref_upfirdn(skip, _kernel(h.dtype) * 4, up=2, pad=(2, 1))
        return out

    h = sd["input.input"].repeat(z.shape[0], 1, 1, 1)
    h = styled("conv1", h, noise[0])
    skip = to_rgb("to_rgb1", h, None)
    n_up = int(math.log2(cfg["size"])) - 2
    for k in range(n_up):
        h = styled(f"convs.{2 * k}", h, noise[2 * k + 1], up=True)
        h = styled(f"convs.{2 * k + 1}", h, noise[2 * k + 2])
        skip = to_rgb(f"to_rgbs.{k}", h, skip)
    return skip


def ref_convlayer(sd, prefix, x, k, down=False, act=True, clamp=None):
    if down:
        p = 2 + (k - 1)
        x = ref_upfirdn(x, _kernel(x.dtype), pad=((p + 1) // 2, p // 2))
        idx, stride, padding = 1, 2, 0
    else:
        idx, stride, padding = 0, 1, k // 2
    w = sd[f"{prefix}.{idx}.weight"]
    x = F.conv2d(x, w / math.sqrt(w.shape[1] * k * k), stride=stride, padding=padding)
    if not act:
        return x
    x = F.leaky_relu(x + sd[f"{prefix}.{idx + 1}.bias"].view(1, -1, 1, 1), 0.2) * SQRT2
    return x if clamp is None else x.clamp(-clamp, clamp)


def ref_discriminator(sd, size, x, clamp=None):
    h = ref_convlayer(sd, "convs.0", x, 1, clamp=clamp)
    for blk in range(1, int(math.log2(size)) - 1):
        p = f"convs.{blk}"
        r = ref_convlayer(sd, f"{p}.conv2", ref_convlayer(sd, f"{p}.conv1", h, 3, clamp=clamp), 3, down=True,
                          clamp=clamp)
        h = (r + ref_convlayer(sd, f"{p}.skip", h, 1, down=True, act=False)) / SQRT2
    b, c, hh, ww = h.shape
    g = min(b, 4)
    sd_ = torch.sqrt(h.view(g, -1, 1, c, hh, ww).var(0, unbiased=False) + 1e-8).mean([2, 3, 4])
    h = torch.cat([h, sd_.view(-1, 1, 1, 1).repeat(g, 1, hh, ww)], 1)
    h = ref_convlayer(sd, "final_conv", h, 3, clamp=clamp)
    h = ref_linear(sd, "final_linear.0", h.reshape(b, -1), act=True)
    return ref_linear(sd, "final_linear.1", h)


# ------------------------------------------------------------------------------------ helpers
def _perturbed(net):
    torch.manual_seed(1)
    with torch.no_grad():  # non-trivial noise strengths, biases and mapping weights
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.double()


def _ref_params(net):
    sd = {k: v.detach().clone().requires_grad_(v.dtype.is_floating_point) for k, v in net.state_dict().items()}
    return sd


def _assert_close(a, b, what):
    err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
    assert err <= TOL, f"{what}: relative max diff {err:.2e}"


def _grads_close(net, sd, what):
    for name, p in net.named_parameters():
        if sd[name].grad is None:  # the loss does not depend on it (e.g. ToRGB bias under path length)
            assert p.grad is None or not p.grad.any(), name
            continue
        assert p.grad is not None, name
        _assert_close(p.grad, sd[name].grad, f"{what} grad {name}")


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("cfg", [TINY, BIG], ids=["16px", "256px"])
@pytest.mark.parametrize("fused", [True, False, "auto"])
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_generator_forward_and_grads_match_reference(cfg, fused, clamp):
    torch.manual_seed(0)
    g = _perturbed(Generator(**cfg, conv_clamp=clamp))
    g.fused_modconv = fused
    sd = _ref_params(g)
    batch = 1 if cfg is BIG else 3
    z = torch.randn(batch, cfg["style_dim"], dtype=torch.float64)
    stored = g.stored_noise()
    noise = [torch.randn(batch, 1, *n.shape[-2:], dtype=torch.float64) for n in stored]
    for mode, nz_ours, nz_ref in (("const", None, stored), ("random", noise, noise),
                                  ("none", None, [None] * len(stored))):
        with torch.no_grad():
            out = g([z], noise=nz_ours, noise_mode=mode)[0]
            ref = ref_generator(sd, cfg, z, nz_ref, clamp)
        _assert_close(out, ref, f"no-grad forward {mode}")
    target = torch.randn_like(ref)
    out = g([z], noise=noise)[0]
    (out * target).sum().backward()
    ref = ref_generator(sd, cfg, z, noise, clamp)
    (ref * target).sum().backward()
    _assert_close(out, ref, "forward with grad")
    _grads_close(g, sd, "G")


@pytest.mark.parametrize("size,channels", [(16, {4: 16, 8: 8, 16: 8}), (64, {4: 8, 8: 8, 16: 4, 32: 4, 64: 4})])
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_discriminator_forward_grads_and_r1_match_reference(size, channels, clamp):
    torch.manual_seed(0)
    d = _perturbed(Discriminator(size, channels=channels, conv_clamp=clamp))
    sd = _ref_params(d)
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        _assert_close(d(x), ref_discriminator(sd, size, x, clamp), "no-grad forward")
    for net, fwd in ((d, lambda t: d(t)), (None, lambda t: ref_discriminator(sd, size, t, clamp))):
        t = x.clone().requires_grad_(True)
        logits = fwd(t)
        (grad,) = torch.autograd.grad(logits.sum(), t, create_graph=True)
        (F.softplus(logits).mean() + grad.square().sum()).backward()
        if net is None:
            ref_logits, ref_grad = logits, grad
        else:
            ours_logits, ours_grad = logits, grad
    _assert_close(ours_logits, ref_logits, "logits")
    _assert_close(ours_grad, ref_grad, "R1 input gradient")
    _grads_close(d, sd, "D (loss + R1)")


def test_path_length_double_backward_matches_reference():
    torch.manual_seed(0)
    g = _perturbed(Generator(**TINY))
    g.fused_modconv = "auto"
    sd = _ref_params(g)
    z = torch.randn(2, TINY["style_dim"], dtype=torch.float64)
    noise = [torch.randn(2, 1, *n.shape[-2:], dtype=torch.float64) for n in g.stored_noise()]
    target = torch.randn(2, 3, 16, 16, dtype=torch.float64)

    def pl(fwd):
        zz = z.clone().requires_grad_(True)
        img = fwd(zz)
        (gz,) = torch.autograd.grad((img * target).sum(), zz, create_graph=True)
        gz.square().sum().backward()
        return gz

    a = pl(lambda zz: g([zz], noise=noise)[0])
    b = pl(lambda zz: ref_generator(sd, TINY, zz, noise))
    _assert_close(a, b, "path-length gradient")
    _grads_close(g, sd, "G (path length)")


def test_fused_policy_table():
    # B = 1: fused wherever the activations outweigh the modulated weight
    assert not fused_policy(1, 512, 512, 8, 3, False, "cpu", False)      # 8 px, 512 ch: weight dominates
    assert fused_policy(1, 256, 256, 128, 3, False, "cpu", False)
    assert fused_policy(1, 512, 256, 64, 3, True, "cpu", False)          # 64 -> 128 up-conv
    # batched transposed convs: non-fused unless the activations dominate by far
    assert not fused_policy(4, 512, 256, 64, 3, True, "cpu", False)
    assert fused_policy(4, 256, 128, 128, 3, True, "cpu", False)
    # on CPU the same choice with and without gradients: a network and its frozen copy agree bit for bit
    for args in [(1, 512, 512, 64, 3, False), (1, 512, 256, 64, 3, True), (4, 512, 256, 64, 3, True),
                 (2, 256, 256, 128, 3, False), (8, 512, 512, 8, 3, False)]:
        assert fused_policy(*args, "cpu", True) == fused_policy(*args, "cpu", False)
    # CUDA keeps NVIDIA's rule: grouped for inference, shared-weight while training
    assert fused_policy(8, 512, 512, 8, 3, False, "cuda", False)
    assert not fused_policy(1, 128, 128, 256, 3, False, "cuda", True)


def test_auto_is_passed_to_the_layers():
    g = Generator(**TINY)
    assert g._use_fused() == "auto"
    g.fused_modconv = False
    assert g._use_fused() is False


@pytest.mark.slow  # inductor compiles C++ on the first call: about 2 minutes on a loaded 2-core CPU
def test_compile_switch_gives_equal_outputs():
    import copy

    torch.manual_seed(0)
    g = _perturbed(Generator(**TINY)).float()
    d = _perturbed(Discriminator(16, channels=TINY["channels"])).float()
    gc = copy.deepcopy(g)
    dc = copy.deepcopy(d)
    gc.use_compile = dc.use_compile = True
    z = torch.randn(2, TINY["style_dim"])
    with torch.no_grad():
        ref_img = g([z], noise_mode="const")[0]
        t0 = time.perf_counter()
        img = gc([z], noise_mode="const")[0]
        logits = dc(img)
        elapsed = time.perf_counter() - t0
        print(f"compile time (tiny G + D, first call): {elapsed:.1f} s")
        assert (img - ref_img).abs().max() < 1e-5
        assert (logits - d(ref_img)).abs().max() < 1e-5
    assert copy.deepcopy(gc).use_compile  # an EMA copy keeps the switch and nothing compiled
    assert set(gc.state_dict()) == set(g.state_dict())
    assert Generator(**TINY, compile=True).use_compile


def test_demodulation_with_zero_filters_has_finite_gradients_and_equal_modes():
    """A zero 3x3 filter (pruned or zero-initialised) gives the formula's d, bit-equal with and without
    gradients, and finite gradients."""
    torch.manual_seed(0)
    conv = ModulatedConv2d(4, 3, 3, 8).double()
    with torch.no_grad():
        conv.weight[0, 1, 2].zero_()
        conv.weight[0, 0].zero_()
    s = torch.randn(2, 4, dtype=torch.float64)
    want = torch.rsqrt((s[:, None, :] ** 2 * (conv.weight[0] * conv.scale).pow(2).sum([2, 3])[None]).sum(2) + 1e-8)
    with torch.no_grad():
        d_nograd = conv.demodulation(s)
    d_grad = conv.demodulation(s)
    torch.testing.assert_close(d_nograd, want, rtol=1e-12, atol=0)
    assert torch.equal(d_grad, d_nograd)
    d_grad.sum().backward()
    assert torch.isfinite(conv.weight.grad).all()
