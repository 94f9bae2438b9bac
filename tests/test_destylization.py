"""DualStyleGAN's facial destylization and extrinsic-code refinement in W+ (models.destylization), the VGG19
feature network (models.vgg19) and the ``launch.destylize`` command, on 32-px networks with stand-in LPIPS /
identity / VGG trunks."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from metrics.lpips_family import load_lpips
from models import checkpoints
from models.destylization import (colour_start, destylize, layerwise_std, noise_regularization, normalize_noise_,
                                  projector_lr, refine_extrinsic)
from models.dualstylegan import DualStyleGAN
from models.encoders import encoder_for, save_encoder
from models.identity import ArcFaceIRSE50
from models.style_codes import StyleCodes
from models.stylegan2 import Generator
from models.vgg19 import VGG19Features
from tests.helpers_gan import one_thread  # noqa: F401 (autouse fixture)

ARCH = {"size": 32, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16, 32: 16}}
TINY_ARCFACE = ((16, 1), (16, 1), (16, 1), (16, 1))
WIDTHS = {"stem_channels": 8, "max_channels": 16}


@pytest.fixture(scope="module")
def nets():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        source = Generator(**ARCH).eval()
        with torch.no_grad():
            for name, p in source.named_parameters():
                if name.endswith("noise.weight"):
                    p.fill_(0.1)  # the noise maps matter
        finetuned = copy.deepcopy(source)
        with torch.no_grad():  # a "fine-tuned" copy: close to the source, not equal
            for p in finetuned.parameters():
                p.add_(0.05 * torch.randn_like(p))
        encoder = encoder_for(source, **WIDTHS).eval()
        with torch.no_grad():  # codes on the scale of the generator's W (std ~1)
            encoder.head.norm.running_var.fill_(1e-6)
        identity = ArcFaceIRSE50(stages=TINY_ARCFACE).eval()
    lpips, _, _ = load_lpips("vgg", None)
    return {"source": source, "finetuned": finetuned, "encoder": encoder, "lpips": lpips, "identity": identity}


def style_images(n: int = 3, seed: int = 1) -> torch.Tensor:
    """Smooth random RGB images [n, 3, 32, 32] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False).clamp(-1, 1)


def run(nets, images, names, **kwargs):
    batches = []
    options = dict(encoder=nets["encoder"], finetuned=nets["finetuned"], source=nets["source"], lpips=nets["lpips"],
                   identity=nets["identity"], steps=3, batch_size=2, on_batch=batches.append)
    options.update(kwargs)
    return destylize(images, names, **options), batches


# ---------------------------------------------------------------------------------------------- formulas
def test_projector_lr_schedule_equals_its_formula():
    base = 0.1
    assert projector_lr(0.0, base) == 0.0
    for t in (0.01, 0.025, 0.04):  # linear ramp-up over the first 5 %
        assert projector_lr(t, base) == pytest.approx(base * t / 0.05)
    for t in (0.05, 0.3, 0.75):  # plateau
        assert projector_lr(t, base) == pytest.approx(base)
    for t in (0.8, 0.9, 0.99):  # cosine ramp-down over the last 25 %
        assert projector_lr(t, base) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * (1 - (1 - t) / 0.25))))
    lrs = [projector_lr(i / 300, base) for i in range(300)]
    assert max(lrs) == pytest.approx(base) and lrs[-1] < 0.01 * base


def _autocorr_sq(n: np.ndarray) -> float:
    """(mean n[y, x] n[y, x-1])^2 + (mean n[y, x] n[y-1, x])^2 with wrap-around, written out."""
    h, w = n.shape
    right = sum(n[y, x] * n[y, (x - 1) % w] for y in range(h) for x in range(w)) / (h * w)
    down = sum(n[y, x] * n[(y - 1) % h, x] for y in range(h) for x in range(w)) / (h * w)
    return right ** 2 + down ** 2


def test_noise_penalty_and_renormalisation_equal_their_formulas():
    g = torch.Generator().manual_seed(0)
    noises = [torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 16, 16, generator=g)]
    expected = []
    for b in range(2):
        small = noises[0][b, 0].double().numpy()
        big = noises[1][b, 0].double().numpy()
        pooled = big.reshape(8, 2, 8, 2).mean(axis=(1, 3))  # 16 -> 8, then stop
        expected.append(_autocorr_sq(small) + _autocorr_sq(big) + _autocorr_sq(pooled))
    got = noise_regularization(noises)
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-9)
    # one image: the official batch-wide penalty is the same number
    one = [n[:1] for n in noises]
    official = sum((n * torch.roll(n, 1, 3)).mean() ** 2 + (n * torch.roll(n, 1, 2)).mean() ** 2 for n in one) + \
        sum((p * torch.roll(p, 1, 3)).mean() ** 2 + (p * torch.roll(p, 1, 2)).mean() ** 2
            for p in [one[1].reshape(1, 1, 8, 2, 8, 2).mean((3, 5))])
    torch.testing.assert_close(noise_regularization(one)[0], official)

    maps = [3 + 2 * torch.randn(3, 1, 8, 8, generator=g)]
    normalize_noise_(maps)
    torch.testing.assert_close(maps[0].mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(maps[0].flatten(1).std(dim=1), torch.ones(3))


def test_layerwise_regulariser_is_the_mean_std_over_w_plus_rows():
    w = torch.randn(2, 8, 5, generator=torch.Generator().manual_seed(0))
    mean = w.mean(dim=1, keepdim=True)
    std = ((w - mean) ** 2).sum(dim=1).div(8 - 1).sqrt()  # unbiased, over the rows, per channel
    torch.testing.assert_close(layerwise_std(w), std.mean(dim=1))
    same = torch.randn(1, 1, 5).expand(1, 8, 5)
    assert layerwise_std(same).abs().max() < 1e-6
    assert colour_start(6) == 8  # 1024 px: the official rows 8-17


# ---------------------------------------------------------------------------------------------- destylize
def test_codes_are_keyed_by_name_and_independent_of_input_order_and_batch(nets):
    images = style_images(3)
    names = ["c.png", "a.png", "b.png"]
    codes, pairs = run(nets, images, names)
    assert isinstance(codes, StyleCodes) and codes.names == names
    assert [b.names for b in pairs] == [["a.png", "b.png"], ["c.png"]]  # processed in sorted name order
    assert codes.intrinsic.shape == codes.extrinsic.shape == (3, 8, 32)
    perm = [2, 0, 1]
    shuffled, _ = run(nets, images[perm], [names[k] for k in perm])
    alone, (single,) = run(nets, images[1:2], ["a.png"], batch_size=1)
    for name in names:
        row = codes.index(name)
        torch.testing.assert_close(shuffled.intrinsic[shuffled.index(name)], codes.intrinsic[row], rtol=0, atol=0)
        torch.testing.assert_close(shuffled.extrinsic[shuffled.index(name)], codes.extrinsic[row], rtol=0, atol=0)
    # an image's objective and codes depend neither on the other images of its batch nor on the batch size
    # (codes compared loosely: Adam's first steps amplify rounding in near-zero gradient entries)
    torch.testing.assert_close(single.objective_start[0], pairs[0].objective_start[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(single.objective_end[0], pairs[0].objective_end[0], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(alone.intrinsic[0], codes.intrinsic[codes.index("a.png")], rtol=0, atol=2e-3)
    # deterministic; another seed draws other starting noise
    again, _ = run(nets, images, names)
    torch.testing.assert_close(again.intrinsic, codes.intrinsic, rtol=0, atol=0)
    other, _ = run(nets, images, names, seed=1)
    assert not torch.allclose(other.intrinsic, codes.intrinsic)


@pytest.mark.parametrize("center", ["mean", "zero"])
def test_colour_rows_come_from_e_and_the_intrinsic_code_is_e_of_x(nets, center):
    images = style_images(2, seed=2)
    codes, batches = run(nets, images, ["x.png", "y.png"], truncation=0.7, truncation_center=center)
    (batch,) = batches
    c = colour_start(2)  # 32 px: res_index 2
    enc, source = nets["encoder"], nets["source"]
    with torch.no_grad():
        e = enc(images)
        torch.testing.assert_close(codes.extrinsic, e)
        torch.testing.assert_close(codes.extrinsic[:, c:], e[:, c:], rtol=0, atol=0)
        torch.testing.assert_close(codes.intrinsic[:, c:], e[:, c:], rtol=0, atol=0)
        w_hat = batch.optimized.clone()
        assert not torch.allclose(w_hat[:, c:], e[:, c:])  # the optimisation moved the colour rows ...
        w_hat[:, c:] = e[:, c:]  # ... and the copy puts e's back before rendering X
        z = torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))
        w_bar = source.style(z).mean(0).view(1, 1, -1) if center == "mean" else torch.zeros(1, 1, 32)
        x = source([w_bar + 0.7 * (w_hat - w_bar)], input_is_latent=True, noise=batch.noises)[0]
        torch.testing.assert_close(batch.destylized, x)
        torch.testing.assert_close(codes.intrinsic[:, :c], enc(x)[:, :c])
    assert codes.meta["truncation_center"] == center and codes.meta["colour_from"] == c


def test_without_colour_preservation_the_intrinsic_code_is_all_of_e_of_x(nets):
    images = style_images(1, seed=3)
    codes, (batch,) = run(nets, images, ["s.png"], preserve_colour=False, identity=None, truncation=1.0)
    with torch.no_grad():
        x = nets["source"]([batch.optimized], input_is_latent=True, noise=batch.noises)[0]
        torch.testing.assert_close(codes.intrinsic, nets["encoder"](x))
    assert codes.meta["lambda_id"] == 0.0


def test_optimisation_lowers_the_objective_which_equals_its_formula(nets):
    images = style_images(2, seed=4)
    codes, (batch,) = run(nets, images, ["p.png", "q.png"], steps=25, lr=0.1)
    assert (batch.objective_end < batch.objective_start).all(), (batch.objective_start, batch.objective_end)
    # the final objective, recomputed from the optimised code and noise
    g, lp, idn = nets["finetuned"], nets["lpips"], nets["identity"]
    with torch.no_grad():
        y = g([batch.optimized], input_is_latent=True, noise=batch.noises)[0]
        f_s, f_y = idn.embed(images), idn.embed(y)
        expected = (lp(y, images).flatten() + 0.1 * (1 - (f_y * f_s).sum(-1)) + layerwise_std(batch.optimized)
                    + 1e5 * noise_regularization(batch.noises))
    torch.testing.assert_close(batch.objective_end, expected, rtol=1e-4, atol=1e-5)
    for noise in batch.noises:  # renormalised after every step
        torch.testing.assert_close(noise.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)


def test_images_are_read_lazily_one_batch_at_a_time(nets, tmp_path):
    images = style_images(3, seed=5)
    paths = []
    for k, img in enumerate(images):
        path = tmp_path / f"{k}.png"
        Image.fromarray(((img.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()).save(path)
        paths.append(path)
    reads: list[str] = []
    batches_seen: list[int] = []

    def loader(path, size):
        from models.destylization import load_style_image

        reads.append(path.name)
        return load_style_image(path, size)

    run(nets, paths, [p.name for p in paths], steps=1, loader=loader, identity=None,
        on_batch=lambda b: batches_seen.append(len(reads)))
    assert batches_seen == [2, 3]  # the second batch's file is read only after the first batch is done


# ---------------------------------------------------------------------------------------------- refinement
def test_refinement_lowers_its_loss_and_changes_only_the_extrinsic_codes(nets):
    images = style_images(2, seed=6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = DualStyleGAN(copy.deepcopy(nets["source"])).eval()
        with torch.no_grad():
            for p in model.res.parameters():
                p.add_(0.05 * torch.randn_like(p))
    codes, _ = run(nets, images, ["u.png", "v.png"], steps=2, identity=None)
    vgg = VGG19Features(("relu3_1",), weights=None)
    seen = []
    refined = refine_extrinsic(codes, images, model, nets["lpips"], vgg=vgg, steps=15, lr_colour=0.05,
                               lr_structure=0.0, batch_size=2, on_batch=seen.append)
    (batch,) = seen
    assert (batch.objective_end < batch.objective_start).all(), (batch.objective_start, batch.objective_end)
    assert refined.names == codes.names
    torch.testing.assert_close(refined.intrinsic, codes.intrinsic, rtol=0, atol=0)
    n_s = model.res_index + 1
    # structure rows (lr 0 here) are untouched, colour rows moved: two separate groups
    torch.testing.assert_close(refined.extrinsic[:, :n_s], codes.extrinsic[:, :n_s], rtol=0, atol=0)
    assert (refined.extrinsic[:, n_s:] - codes.extrinsic[:, n_s:]).abs().max() > 1e-4
    assert refined.meta["refined_extrinsic"]["steps"] == 15
    by_name = refine_extrinsic(codes, {"v.png": images[1], "u.png": images[0]}, model, nets["lpips"], vgg=vgg,
                               steps=15, lr_colour=0.05, lr_structure=0.0, batch_size=2)
    torch.testing.assert_close(by_name.extrinsic, refined.extrinsic, rtol=0, atol=0)
    # per-image objective (CX per image): an image's refinement does not depend on its batch. The objective is
    # compared tightly; the codes loosely, since Adam's first steps (~lr * sign(g)) amplify rounding in
    # near-zero gradient entries, while a coupled batch would move them by ~lr
    short = dict(vgg=vgg, steps=3, lr_colour=0.05)
    pair, single = [], []
    together = refine_extrinsic(codes, images, model, nets["lpips"], batch_size=2, on_batch=pair.append, **short)
    alone = refine_extrinsic(codes.subset(["v.png"]), images[1:], model, nets["lpips"], batch_size=1,
                             on_batch=single.append, **short)
    torch.testing.assert_close(single[0].objective_start[0], pair[0].objective_start[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone.extrinsic[0], together.extrinsic[1], rtol=0, atol=2e-3)


def test_vgg19_features_layers_normalisation_and_torchvision_weights(tmp_path):
    from torchvision.models import vgg19

    net = VGG19Features(weights=None)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    feats = net(x)
    assert [tuple(f.shape) for f in feats] == [(1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8)]
    assert not any(p.requires_grad for p in net.parameters()) and not net.train().training
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        reference = vgg19(weights=None).features[:12].eval()
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "vgg19.pth")
    loaded = VGG19Features(("relu3_1", "relu1_1"), weights=tmp_path / "vgg19.pth")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(((x + 1) / 2 - mean) / std)
        relu3_1, relu1_1 = loaded(x)
    torch.testing.assert_close(relu3_1, expected, rtol=1e-4, atol=1e-5)
    assert relu1_1.shape == (1, 64, 32, 32)
    with pytest.raises(ValueError, match="relu9_9"):
        VGG19Features(("relu9_9",), weights=None)


# ---------------------------------------------------------------------------------------------- CLI
def _write_png(path, seed, size=(40, 32)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_destylize_command_writes_a_resumable_table(nets, tmp_path, capsys):
    from launch.destylize import main

    styles = tmp_path / "styles"
    styles.mkdir()
    for k in range(3):
        _write_png(styles / f"s{k}.png", k)
    checkpoints.save(tmp_path / "ft.pt", g_ema=nets["finetuned"])
    checkpoints.save(tmp_path / "src.pt", g_ema=nets["source"])
    save_encoder(tmp_path / "enc.pt", nets["encoder"])
    out = tmp_path / "codes.pt"
    common = ["--finetuned", str(tmp_path / "ft.pt"), "--source", str(tmp_path / "src.pt"), "--encoder",
              str(tmp_path / "enc.pt"), "--out", str(out), "--steps", "2", "--batch", "2", "--device", "cpu",
              "--lpips-weights", "random"]
    assert main(["--styles", str(styles), *common, "--no-identity", "--previews", str(tmp_path / "prev")]) == 0
    table = StyleCodes.load(out)
    assert sorted(table.names) == ["s0.png", "s1.png", "s2.png"] and table.extrinsic.shape == (3, 8, 32)
    assert sorted(p.name for p in (tmp_path / "prev").glob("*.png")) == ["s0.png", "s1.png", "s2.png"]
    assert Image.open(tmp_path / "prev" / "s0.png").size[0] > 3 * Image.open(tmp_path / "prev" / "s0.png").size[1]
    capsys.readouterr()

    # a rerun skips the names already in the table and keeps their codes
    _write_png(styles / "s3.png", 3)
    assert main(["--styles", str(styles), *common, "--identity-weights", "none"]) == 0
    assert "1 style images destylized (4 in the table)" in capsys.readouterr().out
    resumed = StyleCodes.load(out)
    assert sorted(resumed.names) == ["s0.png", "s1.png", "s2.png", "s3.png"]
    torch.testing.assert_close(resumed.subset(table.names).intrinsic, table.intrinsic, rtol=0, atol=0)
    assert main(["--styles", str(styles), *common, "--no-identity"]) == 0
    assert "nothing to do" in capsys.readouterr().out

    # user mistakes: one line on stderr, exit status 2, no traceback
    assert main(["--styles", str(tmp_path / "missing"), *common, "--no-identity"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and len(err.strip().splitlines()) == 1
    (styles / "s4.png").write_bytes(b"not a png")
    assert main(["--styles", str(styles), *common, "--no-identity"]) == 2
    err = capsys.readouterr().err
    assert "s4.png" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert StyleCodes.load(out).names == resumed.names  # the table is untouched by the failed run
