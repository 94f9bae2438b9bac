"""CLIP metrics (docs/metrics.md, "CLIP metrics") through the project's one CLIP wrapper (a tiny random open_clip
model): text similarity and NADA's directional similarity equal their formulas on the same (quantized)
images; the suite keys and protocols name the prompts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metrics.clip_metrics import clip_directional_similarity, clip_text_similarity
from metrics.features import quantize
from metrics.specs import parse_spec
from metrics.suite import MetricSuite
from tests.helpers_clip import make_tiny_clip
from tests.helpers_metrics import tiny_sampler


@pytest.fixture(scope="module")
def clip():
    return make_tiny_clip(seed=0)


def dequantized(sampler, n):
    return quantize(sampler.render(list(range(n)), 0)).float() / 127.5 - 1


def test_text_similarity_equals_formula(clip):
    sampler = tiny_sampler(seed=1, size=32)
    with torch.no_grad():
        img = clip.encode_images(dequantized(sampler, 5))
        txt = clip.encode_text(["a photo of a dog"], templates=False)
    expected = float((F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1)[0]).mean())
    value = clip_text_similarity(clip, sampler, "a photo of a dog", num_gen=5, seed=0, batch_size=2,
                                 show_progress=False)
    assert value == pytest.approx(expected, rel=1e-5)


def test_directional_similarity_equals_nada_formula(clip):
    src, tgt = tiny_sampler(seed=1, size=32), tiny_sampler(seed=1, size=32, offset=0.5)
    templates = ["a photo of a {}.", "a drawing of a {}."]
    with torch.no_grad():
        d_img = F.normalize(clip.encode_images(dequantized(tgt, 4)) - clip.encode_images(dequantized(src, 4)), dim=-1)
        e_src = F.normalize(clip.encode_text([t.format("dog") for t in templates], templates=False), dim=-1)
        e_tgt = F.normalize(clip.encode_text([t.format("cat") for t in templates], templates=False), dim=-1)
    d_txt = F.normalize((e_tgt - e_src).mean(0), dim=-1)
    expected = float((d_img @ d_txt).mean())
    value = clip_directional_similarity(clip, src, tgt, "dog", "cat", num_gen=4, seed=0, batch_size=3,
                                        templates=templates, show_progress=False)
    # a mean of cosines near 0: compare absolutely at fp32 precision of unit vectors (a wrong formula is off
    # by ~1e-2); batches of 3 vs 4 change the fp32 rounding of the embeddings by ~1e-7
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)
    same = clip_directional_similarity(clip, src, src, "dog", "cat", num_gen=2, seed=0, show_progress=False,
                                       templates=False)
    assert same == 0.0  # identical images: a zero image direction


def test_suite_keys_and_protocols(clip):
    specs = {"clip_text": parse_spec("clip_text", {"text": "a sketch", "num_gen": 3, "pretrained": "random"}),
             "clip_direction": parse_spec("clip_direction", {"source_text": "photo", "target_text": "sketch",
                                                             "num_gen": 3, "pretrained": "random"})}
    suite = MetricSuite(specs, batch_size=2, show_progress=False, clip_models={"clip:ViT-B-32@random": clip})
    samplers = {"source": tiny_sampler(seed=1), "adapted": tiny_sampler(seed=1, offset=0.5)}
    values = {v.key: v for v in suite.evaluate(samplers, None)}
    assert set(values) == {"clip_text3@clip:ViT-B-32@random/source", "clip_text3@clip:ViT-B-32@random/adapted",
                           "clip_direction3@clip:ViT-B-32@random/adapted"}
    direction = values["clip_direction3@clip:ViT-B-32@random/adapted"]
    assert direction.protocol.options == {"source": "source", "source_text": "photo", "target_text": "sketch",
                                          "templates": True}
    assert -1 <= direction.value <= 1
