"""Metrics of exemplar-based style transfer (DualStyleGAN, Yang et al. 2022; docs/metrics.md, "Style transfer").

Both run on style samplers (``models.sampler.StyleSampler``): image ``i`` is the content of image ``i`` of the
sampler named ``content`` (DualStyleGAN: ``intrinsic``, the intrinsic generator's image of the same latent) or
of the sampler's own ``reference`` (content photos), rendered in the style of the exemplar ``exemplar_image()``.

* ``identity_similarity``: mean_i cos(F(x_i), F(c_i)) with F the unit ArcFace IR-SE50 embedding
  (``models.identity``, pSp's crop and pooling), x_i the stylised and c_i the content image (higher = identity
  kept). ``identity: auto`` is the asset ``identity-arcface-ir-se50``; ``random`` a seeded small stand-in of the
  same interface (offline tests; its extractor name says so).
* ``style_similarity``: the distance of every output to its exemplar in VGG19 ``layer`` features (``relu3_1``),
  both images resized to ``resolution`` (256; null: as they are). ``measure: gram`` (default) logs
  ``style_gram`` = mean_i mean_{a,b} (G(x_i) - G(s))²_ab with the Gram matrix G(f) = f fᵀ / (H W) of the
  [C, H W] feature map (Gatys et al.; lower = closer); ``measure: cx`` logs ``style_cx`` = mean_i -log(CX(x_i,
  s) + 1e-5), the contextual similarity of ``losses.contextual`` computed one image at a time (so a value does
  not depend on the batch). Gram is the default because it is independent of the CX term DualStyleGAN trains
  with.

LPIPS to the content is ``lpips_align`` with ``source: intrinsic`` (the content sampler) and FID to the style
set is ``fid`` on the ``style/<name>`` samplers with the data's reference set; neither is duplicated here.

Images, exemplars included, are quantized like for every other metric; sample ``i`` is evaluated on rank
``i mod W`` and the float64 sums are all-reduced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from metrics import ddp
from metrics.features import quantize, sha256_file
from metrics.registry import SamplerNeed, register_metric
from metrics.specs import MetricSpec, check_choice, check_int
from metrics.streams import progress, render_uint8, shard_batches
from metrics.suite import MetricRun, MetricValue, metric_protocol
from models.sampler import StyleSampler

IDENTITY_ASSET = "identity-arcface-ir-se50"
VGG_ASSET = "vgg19"
STANDIN_SEED = 0
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
MEASURES = ("gram", "cx")
IDENTITY_RESIZE = "arcface112"
KEY_DEFAULTS = {"identity_similarity": (IDENTITY_ASSET, IDENTITY_RESIZE),
                "style_gram": (f"{VGG_ASSET}:relu3_1", "resize256"),
                "style_cx": (f"{VGG_ASSET}:relu3_1", "resize256")}

STYLE_SAMPLER = SamplerNeed(
    "style", "style samplers (models.sampler.StyleSampler: a latent's content rendered in an exemplar's style)",
    lambda sampler: isinstance(sampler, StyleSampler))


def _weights_assets(value: str, auto: str) -> list[str]:
    return [auto] if value == "auto" else ([] if value == "random" else [value])


@dataclass
class IdentitySimilaritySpec(MetricSpec):
    kind: ClassVar[str] = "identity_similarity"
    num_gen: int = 100
    identity: str = "auto"

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.identity, str) or not self.identity:
            raise ValueError(f"metric {self.name!r}: 'identity' is 'auto', 'random' (stand-in), an asset or a file")

    def required_assets(self) -> list[str]:
        return _weights_assets(self.identity, IDENTITY_ASSET)


@dataclass
class StyleSimilaritySpec(MetricSpec):
    kind: ClassVar[str] = "style_similarity"
    num_gen: int = 100
    measure: str = "gram"
    layer: str = "relu3_1"
    vgg: str = "auto"
    resolution: int | None = 256
    cx_chunk: int | None = 1024

    def validate(self) -> None:
        super().validate()
        check_choice(self, "measure", MEASURES)
        check_choice(self, "layer", STYLE_LAYERS)
        if self.resolution is not None:
            check_int(self, "resolution", minimum=8)
        if self.cx_chunk is not None:
            check_int(self, "cx_chunk", minimum=1)
        if not isinstance(self.vgg, str) or not self.vgg:
            raise ValueError(f"metric {self.name!r}: 'vgg' is 'auto', 'random' (stand-in), an asset or a file")

    def required_assets(self) -> list[str]:
        return _weights_assets(self.vgg, VGG_ASSET)


# ---------------------------------------------------------------------------------------------- networks
def _cache(run: MetricRun) -> dict:
    """Networks shared by the evaluations of one suite (built once)."""
    cache = getattr(run.suite, "_style_networks", None)
    if cache is None:
        cache = {}
        run.suite._style_networks = cache
    return cache


def identity_standin() -> torch.nn.Module:
    """The seeded small IR-SE50 stand-in (offline runs and tests; never a value of record)."""
    from models.identity import ArcFaceIRSE50

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(STANDIN_SEED)
        return ArcFaceIRSE50(stages=((16, 1), (16, 1), (16, 1), (16, 1)), embed_dim=32).eval()


def identity_network(run: MetricRun, identity: str) -> tuple[torch.nn.Module, str, str | None]:
    """``(network, extractor name, sha256)`` for the ``identity`` option."""
    key = ("identity", identity)
    cache = _cache(run)
    if key not in cache:
        if identity == "random":
            net, name, sha = identity_standin(), f"arcface-random-standin(seed={STANDIN_SEED})", None
        else:
            from models.assets import resolve
            from models.identity import load_arcface

            path = resolve(IDENTITY_ASSET if identity == "auto" else identity)
            net, name, sha = load_arcface(path), IDENTITY_ASSET if identity == "auto" else identity, sha256_file(path)
        cache[key] = (net.requires_grad_(False).eval().to(run.suite.device), name, sha)
    return cache[key]


def vgg_network(run: MetricRun, vgg: str, layer: str) -> tuple[torch.nn.Module, str, str | None]:
    key = ("vgg", vgg, layer)
    cache = _cache(run)
    if key not in cache:
        from models.vgg19 import VGG19Features

        if vgg == "random":
            net = VGG19Features((layer,), weights=None, seed=STANDIN_SEED)
            sha = None
        else:
            from models.assets import resolve

            weights = VGG_ASSET if vgg == "auto" else vgg
            net, sha = VGG19Features((layer,), weights=weights), sha256_file(resolve(weights))
        cache[key] = (net.to(run.suite.device), f"{net.name}:{layer}", sha)
    return cache[key]


# ---------------------------------------------------------------------------------------------- formulas
def gram(features: torch.Tensor) -> torch.Tensor:
    """``f fᵀ / (H W)`` of feature maps [B, C, H, W] -> [B, C, C] (float64)."""
    f = features.double().flatten(2)
    return f @ f.transpose(1, 2) / f.shape[2]


def gram_distance(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Per image ``mean_{a,b} (G(x) - G(s))²_ab`` of features x [B, C, H, W] and s [1 or B, C, H, W]."""
    return (gram(x) - gram(s)).pow(2).mean(dim=(1, 2))


def cx_distance(x: torch.Tensor, s: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Per image ``-log(CX(x_i, s) + 1e-5)`` (``losses.contextual`` on one image pair at a time)."""
    from losses.contextual import contextual_loss

    s = s.expand(x.shape[0], -1, -1, -1)
    return torch.stack([contextual_loss(x[i:i + 1].float(), s[i:i + 1].float(), chunk_size=chunk).double()
                        for i in range(x.shape[0])])


def dequantize(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 127.5 - 1.0


def resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Average-pool down / bilinear up to ``size`` (None: unchanged)."""
    if size is None or images.shape[-1] == size:
        return images
    if images.shape[-1] > size:
        return F.adaptive_avg_pool2d(images, size)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------- images
def content_uint8(run: MetricRun, name: str, sampler: StyleSampler, idx: list[int], seed: int) -> torch.Tensor:
    """The content images of ``idx``: the sampler's ``reference``, else its ``content`` sampler (quantized)."""
    if sampler.reference is not None:
        return quantize(sampler.reference(list(idx), seed))
    if sampler.content not in run.samplers:
        raise KeyError(f"style sampler {name!r}: its content sampler {sampler.content!r} is not among "
                       f"{sorted(run.samplers)}")
    return render_uint8(run.samplers[sampler.content], idx, seed)


def exemplar_uint8(name: str, sampler: StyleSampler) -> torch.Tensor:
    if sampler.exemplar_image is None:
        raise ValueError(f"style sampler {name!r} has no exemplar image (the style folder is not known)")
    image = sampler.exemplar_image()
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"style sampler {name!r}: exemplar_image() returned {tuple(image.shape)}, "
                         f"expected [1, 3, H, W]")
    return quantize(image)


def keyed(proto, sampler: str, metric: str, extractor: str, resize_name: str) -> str:
    """``proto.key(sampler)`` under the logged name ``metric``, tagged ``@extractor`` / ``@resize`` when they are
    not this metric's defaults (a stand-in network never shares a key with the real one)."""
    head, _, tail = proto.key(sampler).partition("/")
    head = head.replace(proto.metric, metric, 1)
    default_extractor, default_resize = KEY_DEFAULTS[metric]
    if extractor != default_extractor:
        head += f"@{extractor}"
    if resize_name != default_resize:
        head += f"@{resize_name}"
    return f"{head}/{tail}"


def _style_targets(run: MetricRun, targets: list[str]) -> list[str]:
    return [t for t in targets if isinstance(run.samplers[t], StyleSampler)]


# ---------------------------------------------------------------------------------------------- runners
@register_metric("identity_similarity", IdentitySimilaritySpec, sampler_need=STYLE_SAMPLER)
def run_identity_similarity(run: MetricRun, spec: IdentitySimilaritySpec, targets: list[str]) -> list[MetricValue]:
    suite, out = run.suite, []
    net, extractor, sha = identity_network(run, spec.identity)
    device = suite.device
    for name in _style_targets(run, targets):
        sampler = run.samplers[name]
        total = torch.zeros(2, dtype=torch.float64)
        batches = list(shard_batches(ddp.shard(spec.num_gen), suite.batch_size))
        with torch.no_grad():
            for idx in progress(batches, len(batches), f"identity_similarity {name}", suite.show_progress):
                x = dequantize(render_uint8(sampler, idx, spec.seed)).to(device)
                c = dequantize(content_uint8(run, name, sampler, idx, spec.seed)).to(device)
                cos = (net.embed(x).double() * net.embed(c).double()).sum(-1)
                total += torch.stack([cos.sum().cpu(), torch.tensor(float(len(idx)), dtype=torch.float64)])
        total = ddp.all_reduce_sum(total)
        content = "reference" if sampler.reference is not None else sampler.content
        proto = metric_protocol(spec, extractor, sha, IDENTITY_RESIZE, sampler, None,
                                {"content": content, "exemplar": sampler.exemplar,
                                 "preprocessing": "pool 256, crop 35:223 x 32:220, pool 112 (pSp)"})
        key = keyed(proto, name, spec.kind, extractor, IDENTITY_RESIZE)
        out.append(MetricValue(key, float(total[0] / total[1]), spec.kind, name, proto,
                               {"content": content, "exemplar": sampler.exemplar}))
    return out


@register_metric("style_similarity", StyleSimilaritySpec, sampler_need=STYLE_SAMPLER)
def run_style_similarity(run: MetricRun, spec: StyleSimilaritySpec, targets: list[str]) -> list[MetricValue]:
    suite, out = run.suite, []
    net, extractor, sha = vgg_network(run, spec.vgg, spec.layer)
    device = suite.device
    for name in _style_targets(run, targets):
        sampler = run.samplers[name]
        with torch.no_grad():
            s_feat = net(resize(dequantize(exemplar_uint8(name, sampler)).to(device), spec.resolution))[0]
        total = torch.zeros(2, dtype=torch.float64)
        batches = list(shard_batches(ddp.shard(spec.num_gen), suite.batch_size))
        with torch.no_grad():
            for idx in progress(batches, len(batches), f"style_similarity {name}", suite.show_progress):
                x = resize(dequantize(render_uint8(sampler, idx, spec.seed)).to(device), spec.resolution)
                x_feat = net(x)[0]
                d = gram_distance(x_feat, s_feat) if spec.measure == "gram" else cx_distance(x_feat, s_feat,
                                                                                            spec.cx_chunk)
                total += torch.stack([d.sum().cpu(), torch.tensor(float(len(idx)), dtype=torch.float64)])
        total = ddp.all_reduce_sum(total)
        options: dict[str, Any] = {"measure": spec.measure, "layer": spec.layer, "exemplar": sampler.exemplar}
        if spec.measure == "gram":
            options["gram"] = "f f^T / (H W), mean squared difference"
        else:
            options["cx"] = "-log(CX + 1e-5), h 0.2, per image"
        resize_name = "none" if spec.resolution is None else f"resize{spec.resolution}"
        proto = metric_protocol(spec, extractor, sha, resize_name, sampler, None, options)
        key = keyed(proto, name, f"style_{spec.measure}", extractor, resize_name)
        out.append(MetricValue(key, float(total[0] / total[1]), spec.kind, name, proto,
                               {"exemplar": sampler.exemplar, "measure": spec.measure}))
    return out


__all__ = ["IdentitySimilaritySpec", "StyleSimilaritySpec", "STYLE_SAMPLER", "gram", "gram_distance",
           "cx_distance", "identity_standin"]
