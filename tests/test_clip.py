"""models/clip.py: preprocessing, text encoding with templates, freezing, loading
(docs/methods/nada.md, "CLIP preprocessing and loading")."""
from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

import models.clip as clip_module
from models.assets import AssetMissingError, UnknownAssetError
from models.clip import CLIPModel, direction_from_template_embeddings, tokenizer_for
from models.clip_templates import IMAGENET_TEMPLATES, PART_TEMPLATES
from tests.helpers_clip import TINY_CLIP, make_tiny_clip, register_tiny_clip

SPEC_MEAN, SPEC_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP mean/std
CLIP_MEAN, CLIP_STD = torch.tensor(SPEC_MEAN).view(1, 3, 1, 1), torch.tensor(SPEC_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def clip():
    return make_tiny_clip(seed=0)


def direct_preprocess(x: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """P written out: (x+1)/2, bicubic shorter side -> size (align_corners=False), center crop, mean/std."""
    h, w = x.shape[-2:]
    out_hw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    y = F.interpolate((x + 1) / 2, size=out_hw, mode="bicubic", align_corners=False, antialias=antialias)
    top, left = round((y.shape[-2] - size) / 2), round((y.shape[-1] - size) / 2)  # torchvision CenterCrop rounding
    y = y[..., top:top + size, left:left + size]
    return (y - CLIP_MEAN) / CLIP_STD


def direct_text(model, prompts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_text(tokenizer_for(TINY_CLIP)(prompts)).float()


def test_templates_are_the_clip_notebook_list_without_many():
    reference = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    reference.remove("a photo of many {}.")
    assert list(IMAGENET_TEMPLATES) == reference and len(IMAGENET_TEMPLATES) == 79
    assert len(PART_TEMPLATES) == 15 and all(t.count("{}") == 1 for t in PART_TEMPLATES)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 40, 52), (2, 3, 128, 128)])
def test_reference_preprocessing_matches_direct_implementation(clip, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.8  # some values outside [-1, 1]
    assert x.abs().max() > 1
    assert clip.image_size == 64 and (clip.mean, clip.std) == (SPEC_MEAN, SPEC_STD)
    torch.testing.assert_close(clip.preprocess(x), direct_preprocess(x, 64), rtol=0, atol=1e-5)


def test_no_clamp_and_antialias_variant_differs():
    reference, antialias = make_tiny_clip(), make_tiny_clip(preprocessing="antialias")
    const = torch.full((1, 3, 32, 32), 1.5)  # out of range: passes through unclamped, (1.5 + 1) / 2 = 1.25
    torch.testing.assert_close(reference.preprocess(const), ((1.25 - CLIP_MEAN) / CLIP_STD).expand(1, 3, 64, 64))
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    torch.testing.assert_close(antialias.preprocess(x), direct_preprocess(x, 64, antialias=True), rtol=0, atol=1e-5)
    assert (antialias.preprocess(x) - reference.preprocess(x)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="preprocessing"):
        make_tiny_clip(preprocessing="antialiased")


def test_encode_images_is_normalized_clip_of_preprocessed_input_and_passes_gradients(clip):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3)).clamp(-1, 1).requires_grad_()
    emb = clip.encode_images(x)
    with torch.no_grad():
        expected = F.normalize(clip.model.encode_image(direct_preprocess(x.detach(), 64)), dim=-1)
    torch.testing.assert_close(emb, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    emb.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in clip.model.parameters())


def test_bad_images_give_clear_errors(clip):
    with pytest.raises(ValueError, match="NaN"):
        clip.encode_images(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        clip.encode_images(torch.zeros(3, 32, 32))


def test_bf16_autocast_runs_clip_in_fp32(clip):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)).clamp(-1, 1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = clip.encode_images(x)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, clip.encode_images(x.float()), rtol=0, atol=0)


def test_text_encoding_normalizes_per_template_then_averages(clip, monkeypatch):
    own = ["a {} photo.", "{} art.", "the {}."]
    per_template = F.normalize(direct_text(clip.model, [t.format("dog") for t in own]), dim=-1)
    torch.testing.assert_close(clip.template_embeddings("dog", own), per_template, rtol=0, atol=1e-6)
    torch.testing.assert_close(clip.encode_text(["dog"], own), F.normalize(per_template.mean(0, keepdim=True)))
    torch.testing.assert_close(clip.encode_text("dog", own, normalize=False), per_template.mean(0, keepdim=True))
    plain = F.normalize(direct_text(clip.model, ["dog"]))
    torch.testing.assert_close(clip.encode_text(["dog"], templates=False), plain)
    with pytest.raises(ValueError, match="exactly one"):
        clip.encode_text("dog", templates=["no slot"])
    seen = []
    monkeypatch.setattr(clip, "_encode_prompts", lambda prompts: seen.append(prompts) or torch.ones(len(prompts), 4))
    clip.encode_text(["dog"])  # templates=True: the 79 ImageNet templates
    assert seen == [[t.format("dog") for t in IMAGENET_TEMPLATES]]


def test_text_direction_formula_and_cache(clip, monkeypatch):
    src = F.normalize(direct_text(clip.model, [t.format("photo") for t in IMAGENET_TEMPLATES]), dim=-1)
    tgt = F.normalize(direct_text(clip.model, [t.format("sketch") for t in IMAGENET_TEMPLATES]), dim=-1)
    expected = F.normalize((tgt - src).mean(0, keepdim=True), dim=-1)
    direction = clip.text_direction("photo", "sketch")
    torch.testing.assert_close(direction, expected, rtol=0, atol=1e-6)
    monkeypatch.setattr(clip, "_encode_prompts", lambda prompts: pytest.fail("text direction not cached"))
    assert clip.text_direction("photo", "sketch") is direction


def test_direction_normalization_order_on_constructed_embeddings():
    # Template embeddings with very different norms: normalizing before averaging (the reference) and averaging the raw
    # embeddings first give different directions, so a wrong order cannot pass.
    raw_src = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.1, 0.0]])
    raw_tgt = torch.tensor([[0.0, 0.0, 10.0], [0.0, 0.1, 0.1]])
    src, tgt = F.normalize(raw_src, dim=-1), F.normalize(raw_tgt, dim=-1)
    d = ((tgt[0] - src[0]) + (tgt[1] - src[1])) / 2
    expected = (d / d.norm()).unsqueeze(0)
    got = direction_from_template_embeddings(src, tgt)
    torch.testing.assert_close(got, expected)
    average_first = F.normalize(raw_tgt.mean(0) - raw_src.mean(0), dim=0)
    class_features_first = F.normalize(F.normalize(tgt.mean(0), dim=0) - F.normalize(src.mean(0), dim=0), dim=0)
    assert (got[0] - average_first).abs().max() > 0.1
    assert (got[0] - class_features_first).abs().max() > 0.01
    with pytest.raises(ValueError, match="zero"):
        direction_from_template_embeddings(src, src)


def test_stays_in_eval_mode_and_frozen_inside_a_training_owner(clip):
    owner = torch.nn.Module()
    owner.clip, owner.head = clip, torch.nn.Linear(4, 4)
    owner.train()
    assert owner.head.training and not clip.training
    assert not any(m.training for m in clip.model.modules())
    owner.requires_grad_(True)
    assert not any(p.requires_grad for p in clip.model.parameters())


def test_not_in_owner_state_dict_parameters_or_optimizer(clip):
    owner = torch.nn.Module()
    owner.clip, owner.head = clip, torch.nn.Linear(4, 4)
    assert set(owner.state_dict()) == {"head.weight", "head.bias"}
    clip_ids = {id(p) for p in clip.model.parameters()}
    assert len(clip_ids) > 10
    optimizer = torch.optim.Adam(owner.parameters())
    assert not clip_ids & {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not clip_ids & {id(b) for b in owner.buffers()}
    owner.load_state_dict({k: v.clone() for k, v in owner.state_dict().items()}, strict=True)


def test_follows_owner_device_moves_but_keeps_its_dtype():
    clip = make_tiny_clip()
    clip.text_direction("a", "b", templates=["{}"])
    owner = torch.nn.Module()
    owner.clip = clip
    owner.double()
    assert all(p.dtype == torch.float32 for p in clip.model.parameters())
    owner.to("meta")
    assert clip.device.type == "meta" and all(p.is_meta for p in clip.model.parameters())
    assert all(t.is_meta for t in clip._text_cache.values())


def test_quick_gelu_for_openai_assets_and_architecture_check(monkeypatch, tmp_path):
    name = register_tiny_clip()
    weights = tmp_path / "tiny.pt"
    torch.save(make_tiny_clip(seed=5).model.state_dict(), weights)
    monkeypatch.setitem(clip_module.OPENAI_ASSETS, "tiny-openai", name)
    monkeypatch.setattr(clip_module, "resolve_weights", lambda asset: weights)
    openai = CLIPModel(name=name, pretrained="tiny-openai")
    assert any(isinstance(m, QuickGELU) for m in openai.model.modules())
    assert not any(isinstance(m, QuickGELU) for m in make_tiny_clip().model.modules())
    with pytest.raises(ValueError, match="holds"):
        CLIPModel(name="ViT-B-16", pretrained="tiny-openai")
    with pytest.raises(ValueError, match="did you mean"):
        CLIPModel(name="ViT-B-23", pretrained=None)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace_method` is deprecated:FutureWarning")
def test_loads_plain_and_torchscript_weight_files(tmp_path):
    """File paths pass through the asset registry; open_clip-format and OpenAI TorchScript files both load."""
    source = make_tiny_clip(seed=6).model
    plain, archive, corrupt = tmp_path / "tiny.bin", tmp_path / "tiny_jit.pt", tmp_path / "corrupt.pt"
    torch.save({"state_dict": source.state_dict()}, plain)
    torch.jit.trace_module(source, {}).save(str(archive))  # TorchScript archive holding the weights
    corrupt.write_bytes(b"not a checkpoint")
    for path in (plain, archive):
        loaded = CLIPModel(name=TINY_CLIP, pretrained=path)
        for (key, a), b in zip(source.state_dict().items(), loaded.model.state_dict().values()):
            assert torch.equal(a, b), key
    with pytest.raises(ValueError, match="corrupt.pt"):
        CLIPModel(name=TINY_CLIP, pretrained=corrupt)


def test_missing_or_unknown_asset_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("STYLESHIFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AssetMissingError) as err:
        CLIPModel(name="ViT-B-32", pretrained="clip-vit-b-32-openai")
    message = str(err.value)
    assert "clip-vit-b-32-openai" in message and str(tmp_path / "cache") in message
    with pytest.raises(UnknownAssetError, match="clip-vit-b-32-opneai"):
        CLIPModel(name="ViT-B-32", pretrained="clip-vit-b-32-opneai")
