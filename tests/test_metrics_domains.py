"""Domain metrics (docs/metrics.md, "Domains"): the task-score gain / leakage matrix and the CLIP domain
scores equal their formulas on the same quantized images; the expansion module's samplers feed them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metrics.features import quantize
from metrics.specs import parse_spec
from metrics.suite import MetricSuite
from models.sampler import DomainSampler, Sampler
from tests.helpers_clip import make_tiny_clip
from tests.helpers_metrics import tiny_sampler

COLORS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0)}


def shifted(base: Sampler, shift, name: str, score=None, prompt=None) -> DomainSampler:
    delta = torch.tensor(shift).view(1, 3, 1, 1)
    return DomainSampler(render=lambda idx, seed: (base.render(idx, seed) + delta).clamp(-1, 1), domain=name,
                         score=score, prompt=prompt)


def color_score(target):
    t = torch.tensor(target).view(1, 3)
    return lambda xb, xe: (xe.mean(dim=(2, 3)) - t).pow(2).mean(1)


def dequantized(sampler, n):
    return quantize(sampler.render(list(range(n)), 0)).float() / 127.5 - 1


def test_domain_leakage_equals_its_formula():
    base = tiny_sampler(seed=1, size=16)
    samplers = {"base": base,
                "domain/red": shifted(base, (0.6, -0.2, -0.2), "red", color_score(COLORS["red"])),
                "domain/green": shifted(base, (-0.2, 0.6, -0.2), "green", color_score(COLORS["green"])),
                "domain/other": shifted(base, (0.3, 0.3, 0.3), "other")}  # no score: not in the matrix
    spec = parse_spec("domain_leakage", {"num_gen": 5})
    values = {v.key: v for v in MetricSuite({"domain_leakage": spec}, batch_size=2, show_progress=False)
              .evaluate(samplers, None)}
    assert set(values) == {"domain_gain5/domain/red", "domain_gain5/domain/green", "domain_leakage5/domain/red",
                           "domain_leakage5/domain/green"}
    x = {name: dequantized(s, 5) for name, s in samplers.items()}
    tasks = {"red": color_score(COLORS["red"]), "green": color_score(COLORS["green"])}
    gain = {(t, j): float(tasks[t](x["base"], x["base"]).mean() - tasks[t](x["base"], x[f"domain/{j}"]).mean())
            for t in tasks for j in tasks}
    assert values["domain_gain5/domain/red"].value == pytest.approx(gain["red", "red"], rel=1e-6)
    assert values["domain_leakage5/domain/red"].value == pytest.approx(gain["green", "red"] / gain["green", "green"],
                                                                        rel=1e-6)
    assert values["domain_leakage5/domain/green"].extras == pytest.approx(
        {"gain_on/red": gain["red", "green"], "gain_on/green": gain["green", "green"]}, rel=1e-6)
    assert gain["red", "red"] > 0 and gain["green", "red"] < gain["green", "green"]


def test_clip_domains_equal_their_formulas():
    clip = make_tiny_clip(seed=0)
    base = tiny_sampler(seed=1, size=32)
    samplers = {"base": base,
                "domain/sketch": shifted(base, (0.5, 0.5, 0.5), "sketch", prompt=("photo", "sketch")),
                "domain/pixar": shifted(base, (0.0, -0.5, 0.5), "pixar", prompt=("photo", "pixar character")),
                "domain/toy": shifted(base, (0.2, 0.0, 0.0), "toy")}  # no prompt: skipped
    spec = parse_spec("clip_domains", {"num_gen": 4, "pretrained": "random", "templates": False})
    suite = MetricSuite({"clip_domains": spec}, batch_size=3, show_progress=False,
                        clip_models={"clip:ViT-B-32@random": clip})
    values = {v.key: v.value for v in suite.evaluate(samplers, None)}
    prefix = "clip_domain_{}4@clip:ViT-B-32@random/domain/{}"
    assert set(values) == {prefix.format(m, d) for m in ("direction", "text", "leakage") for d in ("sketch", "pixar")}
    with torch.no_grad():
        emb = {n: clip.encode_images(dequantized(s, 4)).float() for n, s in samplers.items()}
        texts = {"sketch": "sketch", "pixar": "pixar character"}

        def direction(target):
            e = F.normalize(clip.encode_text(["photo", target], templates=False).float(), dim=-1)
            return F.normalize(e[1] - e[0], dim=-1)

        def score(domain, target):
            delta = F.normalize(emb[f"domain/{domain}"] - emb["base"], dim=-1)
            return float((delta @ direction(target)).mean())

        text = F.normalize(clip.encode_text(["sketch"], templates=False).float(), dim=-1)[0]
    assert values[prefix.format("direction", "sketch")] == pytest.approx(score("sketch", "sketch"), abs=1e-5)
    assert values[prefix.format("leakage", "sketch")] == pytest.approx(score("sketch", texts["pixar"]), abs=1e-5)
    assert values[prefix.format("text", "sketch")] == pytest.approx(
        float((F.normalize(emb["domain/sketch"], dim=-1) @ text).mean()), abs=1e-5)


def test_expansion_samplers_feed_the_domain_metrics(tmp_path):
    from lightning_modules.expansion import ExpansionModule
    from models import checkpoints
    from models.stylegan2 import Discriminator, Generator

    torch.manual_seed(0)
    arch = dict(size=16, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 16})
    g = Generator(**arch)
    checkpoints.save(tmp_path / "p.pt", g_ema=g, g=g, d=Discriminator(16, channels=arch["channels"]))
    module = ExpansionModule(generator=str(tmp_path / "p.pt"), distance=5.0, replay_lpips_weights="random",
                             tasks=[{"type": "color", "name": "red", "color": [1, -1, -1]},
                                    {"type": "flip", "name": "m"}])
    module.eval()
    samplers = module.samplers()
    red = samplers["domain/red"]
    assert isinstance(red, DomainSampler) and red.source == "base" and red.prompt is None
    with torch.no_grad():
        xb, xe = samplers["base"].render([0, 1], 0), red.render([0, 1], 0)
        expected = torch.stack([module.tasks[0].loss(xb[i:i + 1], xe[i:i + 1], None, module) for i in range(2)])
        torch.testing.assert_close(red.score(xb, xe), expected)
        values = MetricSuite({"domain_leakage": parse_spec("domain_leakage", {"num_gen": 2})}, batch_size=2,
                             show_progress=False).evaluate(samplers, None)
    assert {v.key for v in values} >= {"domain_gain2/domain/red", "domain_gain2/domain/m"}
