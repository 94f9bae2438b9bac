"""CLIP metrics (docs/metrics.md, "CLIP metrics").

Both metrics go through the project's one CLIP wrapper, ``models.clip.CLIPModel`` (the same model and
preprocessing as the NADA losses): ``encode_images(images in [-1, 1]) -> unit embeddings`` and
``encode_text(list[str]) -> unit embeddings``. Generated images are quantized like for every other
metric before they are embedded.

* text similarity: ``mean_i cos(E_I(x_i), E_T(text))`` (``templates=False``: the raw prompt);
* directional similarity (StyleGAN-NADA): ``mean_i cos(E_I(x_i^tgt) - E_I(x_i^src), ΔT)`` where
  ``x_i^src`` and ``x_i^tgt`` are the same latent ``i`` rendered by the source and target samplers and ΔT
  is the wrapper's NADA text direction (per-template unit embeddings averaged, differenced, normalized;
  ``templates=True`` = the ImageNet templates). A sample whose two renderings are identical has a zero
  image direction and contributes 0.

Sample ``i`` of ``range(num_gen)`` is evaluated on rank ``i mod W``; the sums are all-reduced.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from metrics import ddp
from metrics.features import quantize
from metrics.streams import progress, shard_batches

def _dequantized(sampler, indices, seed) -> torch.Tensor:
    return quantize(sampler.render(list(indices), seed)).float() / 127.5 - 1.0


def _text_embedding(clip, texts: list[str], templates: bool | Sequence[str]) -> torch.Tensor:
    emb = clip.encode_text(texts, templates=templates)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"encode_text returned {tuple(emb.shape)} for {len(texts)} prompts")
    return emb.float()


def text_direction(clip, source_text: str, target_text: str, templates: bool | Sequence[str]) -> torch.Tensor:
    """Unit text direction ``[D]``: the wrapper's NADA ``text_direction`` (per-template normalized
    embeddings averaged, then differenced and normalized), or the difference of unit text embeddings."""
    if hasattr(clip, "text_direction"):
        return clip.text_direction(source_text, target_text, templates=templates).float().flatten()
    emb = _text_embedding(clip, [source_text, target_text], templates)
    return F.normalize(emb[1] - emb[0], dim=-1)


def _device_of(clip) -> torch.device:
    params = getattr(clip, "parameters", None)
    first = next(params(), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def clip_text_similarity(clip, sampler, text: str, num_gen: int, seed: int, batch_size: int = 16,
                         templates: bool | Sequence[str] = False, show_progress: bool = True) -> float:
    """Mean cosine similarity between CLIP embeddings of the samples and of ``text``."""
    t = F.normalize(_text_embedding(clip, [text], templates), dim=-1)[0]
    dev = _device_of(clip)
    total = torch.zeros(2, dtype=torch.float64)
    batches = list(shard_batches(ddp.shard(num_gen), batch_size))
    for idx in progress(batches, len(batches), "clip text", show_progress):
        emb = F.normalize(clip.encode_images(_dequantized(sampler, idx, seed).to(dev)).float(), dim=-1)
        total += torch.tensor([float((emb @ t.to(emb.device)).double().sum()), len(idx)], dtype=torch.float64)
    total = ddp.all_reduce_sum(total)
    return float(total[0] / total[1])


@torch.no_grad()
def clip_directional_similarity(clip, source_sampler, target_sampler, source_text: str, target_text: str,
                                num_gen: int, seed: int, batch_size: int = 16, templates: bool | Sequence[str] = True,
                                show_progress: bool = True) -> float:
    """NADA's CLIP directional similarity between two samplers of the same latents and a text pair."""
    direction_t = text_direction(clip, source_text, target_text, templates)
    dev = _device_of(clip)
    total = torch.zeros(2, dtype=torch.float64)
    batches = list(shard_batches(ddp.shard(num_gen), batch_size))
    for idx in progress(batches, len(batches), "clip direction", show_progress):
        src = clip.encode_images(_dequantized(source_sampler, idx, seed).to(dev)).float()
        tgt = clip.encode_images(_dequantized(target_sampler, idx, seed).to(dev)).float()
        direction_i = F.normalize(tgt - src, dim=-1)
        cos = direction_i @ direction_t.to(direction_i.device)
        total += torch.tensor([float(cos.double().sum()), len(idx)], dtype=torch.float64)
    total = ddp.all_reduce_sum(total)
    return float(total[0] / total[1])
