"""Style-transfer metrics (metrics/runners/style.py): identity_similarity and style_similarity (Gram / CX) equal
their formulas on quantized images, keys and protocols, which samplers they run on, and DualStyleGAN's Stage III
``style/<name>`` samplers (content = the intrinsic rendering of the same latent, exemplar = the style image)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metrics.features import quantize
from metrics.runners.style import identity_standin
from metrics.specs import parse_spec, parse_specs
from metrics.suite import MetricSuite
from models.sampler import Sampler, StyleSampler
from models.vgg19 import VGG19Features

ROOT = Path(__file__).resolve().parents[1]
RES = 24


def images_of(indices, seed, salt: int) -> torch.Tensor:
    out = []
    for i in indices:
        g = torch.Generator().manual_seed(1000 * salt + seed + int(i))
        out.append(torch.tanh(1.5 * torch.randn(3, RES, RES, generator=g)))
    return torch.stack(out)


def content_render(idx, seed):
    return images_of(idx, seed, 1)


def style_render(idx, seed):  # a "stylisation": the content plus a per-image perturbation
    return (0.6 * content_render(idx, seed) + 0.4 * images_of(idx, seed, 2)).clamp(-1, 1)


EXEMPLAR = images_of([0], 0, 3)


def samplers(**kwargs) -> dict:
    return {"intrinsic": Sampler(content_render, truncation=1.0),
            "style/a": StyleSampler(style_render, truncation=1.0, content="intrinsic", exemplar="a.png",
                                    exemplar_image=lambda: EXEMPLAR, **kwargs)}


def dq(x: torch.Tensor) -> torch.Tensor:
    return quantize(x).float() / 127.5 - 1.0


def evaluate(kind: str, options: dict, samplers_=None, batch_size: int = 2):
    spec = parse_spec(kind, options)
    return MetricSuite({kind: spec}, batch_size=batch_size, show_progress=False).evaluate(samplers_ or samplers(), None)


def naive_gram(f: torch.Tensor) -> torch.Tensor:  # [C, H, W] -> [C, C]
    c = f.shape[0]
    flat = f.double().reshape(c, -1)
    return torch.stack([torch.stack([(flat[a] * flat[b]).mean() for b in range(c)]) for a in range(c)])


def naive_cx(x: torch.Tensor, y: torch.Tensor, h: float = 0.2) -> float:  # one image pair [C, H, W]
    mu = y.double().mean(dim=(1, 2), keepdim=True)
    xs = (x.double() - mu).flatten(1)
    ys = (y.double() - mu).flatten(1)
    xs, ys = xs / xs.norm(dim=0, keepdim=True), ys / ys.norm(dim=0, keepdim=True)
    d = 1 - xs.T @ ys                                      # [i, j]
    d_rel = d / (d.min(dim=1, keepdim=True).values + 1e-5)
    w = torch.exp((1 - d_rel) / h)
    cx = w / w.sum(dim=1, keepdim=True)
    return float(-torch.log(cx.max(dim=0).values.mean() + 1e-5))


def test_identity_similarity_is_the_arcface_cosine_to_the_content():
    values = evaluate("identity_similarity", {"num_gen": 5, "identity": "random"})
    assert [v.sampler for v in values] == ["style/a"]  # only style samplers
    v = values[0]
    net = identity_standin()
    with torch.no_grad():
        x, c = dq(style_render(range(5), 0)), dq(content_render(range(5), 0))
        expected = float((net.embed(x).double() * net.embed(c).double()).sum(-1).mean())
    assert v.value == pytest.approx(expected, abs=1e-6)
    assert v.key == "identity_similarity5@arcface-random-standin(seed=0)/style/a"
    assert v.protocol.options["content"] == "intrinsic" and v.protocol.options["exemplar"] == "a.png"
    same = StyleSampler(content_render, content="intrinsic", exemplar="a.png")  # output = content: cosine 1
    assert evaluate("identity_similarity", {"num_gen": 3, "identity": "random"},
                    {"intrinsic": Sampler(content_render), "style/x": same})[0].value == pytest.approx(1.0, abs=1e-6)


def test_a_reference_callable_gives_the_content_images():
    values = evaluate("identity_similarity", {"num_gen": 4, "identity": "random"},
                      {"style/a": StyleSampler(style_render, content="nowhere", reference=style_render)})
    assert values[0].value == pytest.approx(1.0, abs=1e-6) and values[0].protocol.options["content"] == "reference"
    with pytest.raises(KeyError, match="content sampler 'nowhere'"):
        evaluate("identity_similarity", {"num_gen": 2, "identity": "random"},
                 {"style/a": StyleSampler(style_render, content="nowhere")})


@pytest.mark.parametrize("batch_size", [2, 5])
def test_style_gram_distance_matches_the_formula(batch_size):
    values = evaluate("style_similarity", {"num_gen": 5, "vgg": "random", "resolution": None}, batch_size=batch_size)
    v = values[0]
    vgg = VGG19Features(("relu3_1",), weights=None, seed=0)
    with torch.no_grad():
        fx = vgg(dq(style_render(range(5), 0)))[0]
        fs = vgg(dq(EXEMPLAR))[0][0]
    gs = naive_gram(fs)
    expected = np.mean([float((naive_gram(fx[i]) - gs).pow(2).mean()) for i in range(5)])
    assert v.value == pytest.approx(expected, rel=1e-6)
    assert v.key == "style_gram5@vgg19-random-standin(seed=0):relu3_1@none/style/a"
    assert v.protocol.options["measure"] == "gram" and v.extras["exemplar"] == "a.png"


def test_style_cx_matches_the_formula_per_image():
    v = evaluate("style_similarity", {"num_gen": 3, "vgg": "random", "resolution": 16, "measure": "cx",
                                      "cx_chunk": 7})[0]
    vgg = VGG19Features(("relu3_1",), weights=None, seed=0)
    pool = torch.nn.functional.adaptive_avg_pool2d
    with torch.no_grad():
        fx = vgg(pool(dq(style_render(range(3), 0)), 16))[0]
        fs = vgg(pool(dq(EXEMPLAR), 16))[0][0]
    expected = np.mean([naive_cx(fx[i], fs) for i in range(3)])
    assert v.value == pytest.approx(expected, rel=1e-5)
    assert v.key.startswith("style_cx3@vgg19-random-standin(seed=0):relu3_1@resize16/")


def test_a_style_sampler_without_exemplar_is_a_clear_error():
    s = {"intrinsic": Sampler(content_render), "style/a": StyleSampler(style_render)}
    with pytest.raises(ValueError, match="no exemplar image"):
        evaluate("style_similarity", {"num_gen": 2, "vgg": "random"}, s)


def test_specs_validate_and_name_their_assets():
    assert parse_spec("identity_similarity", {}).required_assets() == ["identity-arcface-ir-se50"]
    assert parse_spec("style_similarity", {}).required_assets() == ["vgg19"]
    assert parse_spec("style_similarity", {"vgg": "random"}).required_assets() == []
    for bad in ({"measure": "l2"}, {"layer": "relu9_1"}, {"resolution": 2}):
        with pytest.raises(ValueError):
            parse_spec("style_similarity", bad)


def test_the_dualstylegan_configs_parse_their_metrics():
    for name in ("toy_style", "cartoon_style"):
        cfg = yaml.safe_load((ROOT / "configs" / "dualstylegan" / f"{name}.yaml").read_text())
        specs = parse_specs(cfg["callbacks"]["metrics"]["metrics"])
        kinds = {s.kind for s in specs.values()}
        assert {"identity_similarity", "style_similarity", "lpips_align", "fid"} <= kinds, name
        assert [s.source for s in specs.values() if s.kind == "lpips_align"] == ["intrinsic"]


# ---------------------------------------------------------------------------------------------- the module
@pytest.fixture(scope="module")
def module(tmp_path_factory):
    from PIL import Image

    from lightning_modules.dualstylegan import DualStyleGANModule
    from models import checkpoints
    from models.style_codes import StyleCodes
    from models.stylegan2 import Discriminator, Generator

    tmp = tmp_path_factory.mktemp("style_module")
    torch.manual_seed(0)
    arch = dict(size=16, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 16})
    g = Generator(**arch)
    parent = checkpoints.save(tmp / "parent.pt", g_ema=g, g=g, d=Discriminator(16, channels=arch["channels"]))
    names = ["s0.png", "s1.png"]
    rng = np.random.default_rng(0)
    (tmp / "styles").mkdir()
    for name in names:
        Image.fromarray(rng.integers(0, 255, (20, 20, 3)).astype(np.uint8)).save(tmp / "styles" / name)
    gen = torch.Generator().manual_seed(3)
    codes = StyleCodes(names, torch.randn(2, 6, 16, generator=gen), torch.randn(2, 6, 16, generator=gen)).save(
        tmp / "codes.pt")
    return DualStyleGANModule(str(parent), stage="style", codes=str(codes), styles=str(tmp / "styles"),
                              res_index=2, vgg="random", identity="random", seed=0,
                              sample_weights=[0.0] * 6).eval()


def test_stage3_style_samplers_carry_content_and_exemplar(module):
    s = module.samplers()
    assert sorted(s) == ["intrinsic", "style/s0", "style/s1"]
    style = s["style/s1"]
    assert isinstance(style, StyleSampler) and style.content == "intrinsic" and style.exemplar == "s1.png"
    assert torch.equal(style.exemplar_image(), module.style_images([1]))
    # with w = 0 the style sampler is the intrinsic generator on the same latent: image i == content i
    assert torch.equal(style.render([0, 3], 5), s["intrinsic"].render([0, 3], 5))
    specs = {"identity_similarity": parse_spec("identity_similarity", {"num_gen": 2, "identity": "random"}),
             "style_similarity": parse_spec("style_similarity", {"num_gen": 2, "vgg": "random", "resolution": None}),
             "lpips_align": parse_spec("lpips_align", {"num_gen": 2, "source": "intrinsic", "net": "alex",
                                                       "trunk": "random", "resolution": 64})}
    values = MetricSuite(specs, batch_size=2, show_progress=False).evaluate(s, None)
    by = {(v.metric, v.sampler): v.value for v in values}
    assert set(by) == {(k, f"style/s{i}") for k in specs for i in range(2)}
    assert by[("identity_similarity", "style/s0")] == pytest.approx(1.0, abs=1e-6)
    assert by[("lpips_align", "style/s0")] == pytest.approx(0.0, abs=1e-7)
    assert by[("style_similarity", "style/s0")] != by[("style_similarity", "style/s1")]
