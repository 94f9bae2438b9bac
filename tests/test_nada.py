"""StyleGAN-NADA module (docs/methods/nada.md): loss wiring, layer selection and both index mappings,
frozen/trainable split, checkpoint contents, image-guided direction, export and the toy config."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

import lightning_modules.nada as nada
from datamodules.latents import LatentDataModule
from lightning_modules.nada import NADAModule
from lightning_modules.nada_setup import MissingAssetsError
from lightning_modules.nada_layers import code_movement, eligible_codes, layers_for_codes, top_codes
from models.latent_optim import w_plus_sgd
from models import checkpoints
from models.sampler import seeded_normal
from models.stylegan2 import Generator
from tests.helpers_clip import TINY_CLIP_CONFIG

ARCH = {"size": 32, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16, 32: 16}}  # Generator keywords
GEN = {"resolution": 32, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16, 32: 16}}  # model.generator
TEMPLATES = ["a photo of a {}.", "a drawing of the {}."]
CLIP = [{"name": "StyleShift-Test-CLIP", "pretrained": None, "config": TINY_CLIP_CONFIG, "seed": 0}]
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def make_module(**kwargs) -> NADAModule:
    options = dict(generator=GEN, target_text="sketch", clip_models=CLIP, templates=TEMPLATES, auto_layer_k=3,
                   auto_layer_batch=2, seed=0)
    options.update(kwargs)
    module = NADAModule(**options)
    with torch.no_grad():  # a trained generator has non-zero noise strengths (random init: 0)
        for g in (module.g_frozen, module.g_train):
            for name, p in g.named_parameters():
                if name.endswith("noise.weight"):
                    p.fill_(0.3)
    return module


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------------ layer selection
def modulating_codes(g: Generator, layers: list) -> list[set[int]]:
    """For each layer: the W+ indices whose change alters its style input (found by perturbing each code)."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [layer.conv.modulation.register_forward_hook(
        lambda m, inp, out, i=i: seen.__setitem__(i, inp[0].clone())) for i, layer in enumerate(layers)]
    w = torch.randn(1, g.n_latent, g.style_dim, generator=torch.Generator().manual_seed(0))
    codes: list[set[int]] = [set() for _ in layers]
    with torch.no_grad():
        g([w], input_is_latent=True, noise_mode="none")
        base = dict(seen)
        for j in range(g.n_latent):
            moved = w.clone()
            moved[:, j] += 1.0
            g([moved], input_is_latent=True, noise_mode="none")
            for i in range(len(layers)):
                if not torch.equal(seen[i], base[i]):
                    codes[i].add(j)
    for hook in hooks:
        hook.remove()
    return codes


def test_index_mappings_reference_off_by_one_and_corrected():
    torch.manual_seed(0)
    g = Generator(**ARCH)
    assert (g.n_latent, len(g.convs)) == (8, 6)
    reference = {j: layers_for_codes(g, [j], "reference") for j in range(8)}
    assert reference[0] == [g.conv1] and reference[1] == [g.to_rgb1]
    assert all(reference[j] == [g.convs[j - 2]] for j in range(2, 8))
    corrected = {j: layers_for_codes(g, [j], "corrected") for j in range(8)}
    trainable = [g.conv1, g.to_rgb1, *g.convs]
    driven_by = modulating_codes(g, trainable)
    for j in range(8):  # corrected: exactly the trainable layers that code j modulates in the forward
        assert corrected[j] == [layer for layer, codes in zip(trainable, driven_by) if j in codes], j
    assert corrected[1] == [g.to_rgb1, g.convs[0]] and corrected[7] == []
    for j in range(2, 8):  # the reference's convs[j - 2] is driven by code j - 1 (the off-by-one)
        assert driven_by[j] == {j - 1}
    assert eligible_codes(8, 6, "reference") == list(range(8))
    assert eligible_codes(8, 6, "corrected") == list(range(7))
    with pytest.raises(ValueError, match="layer_mapping"):
        layers_for_codes(g, [0], "shifted")


def test_selection_ranks_codes_by_movement_of_one_sgd_step():
    weights = torch.tensor([0.5, -3.0, 0.1, 2.0, 0.0, -1.0, 0.2, 4.0])  # dL/dw+_i = weights[i] for every channel
    w_init = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(0))
    moved = w_plus_sgd(lambda w: w * 1.0, lambda x: (x.sum(dim=(0, 2)) * weights).sum(), w_init, lr=0.01, iters=1)
    scores = code_movement(w_init, moved)
    torch.testing.assert_close(scores, 0.01 * weights.abs(), rtol=0, atol=1e-7)
    assert top_codes(scores, 3, "reference", n_convs=6) == [7, 1, 3]
    assert top_codes(scores, 3, "corrected", n_convs=6) == [1, 3, 5]  # code 7 drives no trainable layer
    assert len(top_codes(scores, 20, "corrected", n_convs=6)) == 7  # k capped at the eligible codes
    two = w_plus_sgd(lambda w: w * 1.0, lambda x: (x.sum(dim=(0, 2)) * weights).sum(), w_init, lr=0.01, iters=2)
    torch.testing.assert_close(code_movement(w_init, two), 0.02 * weights.abs(), rtol=0, atol=1e-7)
    with pytest.raises(FloatingPointError):
        top_codes(torch.tensor([1.0, float("nan")]), 1, "reference", n_convs=6)


def test_module_selection_unfreezes_exactly_the_mapped_layers(monkeypatch):
    module = make_module(auto_layer_k=2)
    g = module.g_train

    def fake_sgd(synthesize, loss_fn, w_init, lr, iters):  # codes 5 and 2 move most
        moved = w_init.clone()
        moved[:, 5] += 1.0
        moved[:, 2] += 0.5
        moved[:, 6] += 0.1
        return moved

    monkeypatch.setattr(nada, "w_plus_sgd", fake_sgd)
    for mapping, expected in (("reference", [g.convs[3], g.convs[0]]), ("corrected", [g.convs[4], g.convs[1]])):
        module.layer_mapping = mapping
        assert module.select_layers() == [5, 2]
        trainable = {id(p) for p in g.parameters() if p.requires_grad}
        assert trainable == {id(p) for layer in expected for p in layer.parameters()}, mapping


# ------------------------------------------------------------------------------------------------ loss wiring
def direct_clip_embedding(clip, images):
    x = (images + 1) / 2
    x = F.interpolate(x, size=(64, 64), mode="bicubic", align_corners=False)
    return unit(clip.model.encode_image((x - CLIP_MEAN) / CLIP_STD))


def test_step_loss_is_the_directional_formula_with_independent_noise():
    module = make_module(auto_layer_iters=0)
    clip = module.clip_loss.losses[0].clip
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    module.reseed()
    loss, x_src, x_tgt = module.adaptation_loss(z)
    assert not torch.equal(x_src, x_tgt)  # same weights and w, independent noise maps
    w = module.g_frozen.style(z)
    x_nonoise, _ = module.g_frozen([w], noise_mode="none", input_is_latent=True)
    assert (x_src - x_nonoise).abs().max() > 1e-3 and (x_tgt - x_nonoise).abs().max() > 1e-3
    with torch.no_grad():
        tokens = clip.tokenizer([t.format(s) for s in ("photo", "sketch") for t in TEMPLATES])
        text = unit(clip.model.encode_text(tokens))  # normalized per template, then averaged
        direction = unit((text[2:] - text[:2]).mean(0, keepdim=True))
        image_dir = unit(direct_clip_embedding(clip, x_tgt) - direct_clip_embedding(clip, x_src))
    expected = (1 - (image_dir * direction).sum(-1)).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=0, atol=1e-5)


def test_mixing_shares_one_crossover_between_the_generators():
    module = make_module(mixing=1.0, auto_layer_iters=0)
    module.reseed()
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    w_plus = module.w_plus(z)
    w = module.g_frozen.style(z)
    first = (w_plus - w[:, None]).abs().amax(dim=(0, 2)) == 0
    index = int(first.sum())
    assert 1 <= index < 8 and first[:index].all() and not first[index:].any()


# ------------------------------------------------------------------------------------------------ a short run
class Recorder(pl.Callback):
    """Per step: the selected layers and a copy of G_train's parameters; checks G_frozen's mode."""

    def __init__(self):
        self.steps, self.frozen_training = [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = {k: v.detach().clone() for k, v in module.g_train.named_parameters()}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.frozen_training.append(module.g_frozen.training or any(m.training for m in module.g_frozen.modules()))
        names = {n for layer in layers_for_codes(module.g_train, module.selected_codes, module.layer_mapping)
                 for n, p in module.g_train.named_parameters() if any(p is q for q in layer.parameters())}
        after = dict(module.g_train.named_parameters())
        changed = {k for k, v in self.before.items() if not torch.equal(v, after[k])}
        self.steps.append((names, changed))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nada_run")
    module = make_module(auto_layer_k=3)
    frozen_before = copy.deepcopy(module.g_frozen.state_dict())
    train_before = copy.deepcopy(module.g_train.state_dict())
    recorder = Recorder()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         default_root_dir=run_dir,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder])
    trainer.fit(module, datamodule=LatentDataModule(z_dim=32, batch_size=2, steps_per_epoch=10, seed=0))
    ckpt = run_dir / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return {"module": module, "recorder": recorder, "frozen_before": frozen_before, "train_before": train_before,
            "run_dir": run_dir, "ckpt": ckpt}


def test_only_selected_layers_change_and_frozen_generator_is_untouched(trained):
    module, recorder = trained["module"], trained["recorder"]
    assert len(recorder.steps) == 2
    for selected, changed in recorder.steps:
        assert changed and changed <= selected  # nothing outside the chosen layers moves
        assert not any(k.startswith(("style.", "to_rgbs.", "input.")) for k in changed)
    assert recorder.frozen_training == [False, False] and not module.g_frozen.training
    for k, v in module.g_frozen.state_dict().items():
        assert torch.equal(v, trained["frozen_before"][k]), k
    assert not any(p.requires_grad for p in module.g_frozen.parameters())


def test_checkpoint_holds_only_the_trainable_generator(trained):
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert keys == {f"g_train.{k}" for k in trained["module"].g_train.state_dict()}  # no CLIP, no G_frozen
    assert ckpt["method_state"]["iteration"] == 2 and ckpt["method_state"]["nimg"] == 4
    optimized = {id(p) for group in trained["module"].optimizers().optimizer.param_groups for p in group["params"]}
    clip_params = trained["module"].clip_loss.losses[0].clip.model.parameters()
    assert not any(id(p) in optimized for p in clip_params)


def test_export_loads_back_with_identical_outputs(trained):
    module = trained["module"]
    loaded = checkpoints.load(trained["run_dir"] / "generator.pt")
    assert loaded.g is None and loaded.d is None
    torch.testing.assert_close(loaded.latent_avg, module.mean_w(module.g_frozen).squeeze(0), rtol=0, atol=0)
    z = seeded_normal(range(4), 7, 32)
    with torch.no_grad():
        ours = module.samplers()["adapted"].render(range(4), 7)  # psi 0.7 toward the exported mean W
        theirs, _ = loaded.g_ema([z], randomize_noise=False, truncation=0.7,
                                 truncation_latent=loaded.latent_avg.unsqueeze(0))
    assert torch.equal(ours, theirs.clamp(-1, 1))
    source = module.samplers()["source"].render(range(4), 7)
    assert not torch.equal(ours, source)


def test_samplers_render_the_same_latents_and_noise():
    module = make_module(auto_layer_iters=0)
    samplers = module.samplers()
    assert set(samplers) == {"source", "adapted"}
    a, b = samplers["source"](4, seed=3, batch_size=3), samplers["adapted"](4, seed=3, batch_size=3)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)  # identical weights before training


# ------------------------------------------------------------------------------------------------ image-guided
def test_image_guided_direction_formula_and_it_survives_a_restore(tmp_path, monkeypatch):
    folder = tmp_path / "targets"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for i in range(3):
        Image.fromarray(rng.randint(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / f"t{i}.png")
    module = make_module(target_text=None, target_images=str(folder), auto_layer_iters=0, image_guided_samples=5)
    clip = module.clip_loss.losses[0].clip
    module.ensure_image_direction()

    z = seeded_normal(range(5), 0, 32)  # seed 0: the module's seed
    with torch.no_grad():
        x_src, _ = module.g_frozen([z], randomize_noise=False)
        src = direct_clip_embedding(clip, x_src).mean(0)
        pil = [TF.center_crop(TF.resize(Image.open(folder / f"t{i}.png").convert("RGB"), 64,
                                        interpolation=InterpolationMode.BICUBIC), 64) for i in range(3)]
        pixels = (torch.stack([TF.to_tensor(p) for p in pil]) - CLIP_MEAN) / CLIP_STD
        tgt = unit(clip.model.encode_image(pixels)).mean(0)
    expected = unit(tgt - src).unsqueeze(0)
    torch.testing.assert_close(module.image_direction_0, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(module.clip_loss.losses[0].direction, expected, rtol=0, atol=1e-5)

    state = module.state_dict()
    assert "image_direction_0" in state and bool(state["image_direction_ready"])
    resumed = make_module(target_text=None, target_images=str(folder), auto_layer_iters=0)
    monkeypatch.setattr(resumed, "image_guided_source_images", lambda: pytest.fail("direction recomputed"))
    resumed.load_state_dict(state)
    resumed.ensure_image_direction()
    torch.testing.assert_close(resumed.clip_loss.losses[0].direction, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ errors, launcher
def test_missing_weights_fail_at_startup_naming_every_asset():
    with pytest.raises(MissingAssetsError) as info:
        NADAModule(generator="stylegan2-ffhq-1024", target_text="sketch")
    message = str(info.value)
    for name in ("stylegan2-ffhq-1024", "clip-vit-b-32-openai", "clip-vit-b-16-openai"):
        assert name in message and f"python -m models.assets fetch {name}" in message


def test_bad_options_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'weight'"):
        make_module(clip_models=[dict(CLIP[0], wieght=1.0)])
    with pytest.raises(ValueError, match="target_text"):
        make_module(target_text=None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_module(target_images=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="model.generator.resolution"):  # neither a checkpoint nor an architecture
        NADAModule(target_text="x", clip_models=CLIP)
    with pytest.raises(ValueError, match="did you mean 'model.generator.resolution'"):
        make_module(generator=dict(GEN, resolutoin=32))
    module = make_module(auto_layer_iters=0)
    with pytest.raises(ValueError, match="data.z_dim to 32"):
        module.latents_from_batch(torch.zeros(2, 512))


def test_toy_config_trains_through_the_launcher_and_exports(tmp_path):
    import train

    out = tmp_path / "run"
    status = train.main(["configs/nada/toy.yaml", f"output_dir={out}", "trainer.max_steps=2",
                         "logger.wandb.mode=disabled", "callbacks.metrics=null", "trainer.enable_progress_bar=false"])
    assert status == 0
    loaded = checkpoints.load(out / "generator.pt")
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    g = Generator(**ARCH)
    g.load_state_dict({k.removeprefix("g_train."): v for k, v in state.items() if k.startswith("g_train.")})
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.g_ema([z], randomize_noise=False)[0], g.eval()([z], randomize_noise=False)[0])
    assert (out / "samples" / "adapted_latest.png").is_file()


def test_non_finite_clip_loss_follows_the_nan_policy(tmp_path, monkeypatch):
    """One NaN/inf policy for every method: NADA raises by default and skips the step with nan_policy=skip."""
    def run(module):
        original = module.adaptation_loss

        def poisoned(z):
            loss, x_src, x_tgt = original(z)
            return (loss * float("nan") if module.iteration == 1 else loss), x_src, x_tgt

        monkeypatch.setattr(module, "adaptation_loss", poisoned)
        pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path).fit(
            module, datamodule=LatentDataModule(z_dim=32, batch_size=2, steps_per_epoch=10, seed=0))
        return module

    with pytest.raises(FloatingPointError, match="phase G_main at kimg 0.002"):
        run(make_module(auto_layer_iters=0, total_kimg=0.006))
    with pytest.warns(RuntimeWarning, match="optimizer step skipped"):
        skipped = run(make_module(auto_layer_iters=0, nan_policy="skip", total_kimg=0.006))
    assert skipped.nan_skips == 1 and skipped.iteration == 3
    assert all(torch.isfinite(p).all() for p in skipped.g_train.parameters())


def test_samplers_render_at_the_reference_psi_and_metric_protocols_record_it():
    module = make_module(auto_layer_iters=0)
    assert module.sample_truncation == 0.7
    samplers = module.samplers()
    assert samplers["source"].truncation == samplers["adapted"].truncation == 0.7
    z = seeded_normal(range(3), 5, 32)
    with torch.no_grad():
        w = module.g_frozen.style(z)
        mean = module.mean_w(module.g_frozen)
        expected, _ = module.g_frozen([mean + 0.7 * (w - mean)], input_is_latent=True, randomize_noise=False)
        torch.testing.assert_close(samplers["source"].render(range(3), 5), expected.clamp(-1, 1), rtol=0, atol=1e-6)
    from metrics.protocol import MetricProtocol

    proto = MetricProtocol(metric="clip_direction", num_gen=8, extractor="clip:x",
                           truncation=samplers["adapted"].truncation)
    assert "_trunc0.7" in proto.key("adapted") and proto.to_dict()["truncation"] == 0.7
    untruncated = make_module(auto_layer_iters=0, sample_truncation=1.0).samplers()["adapted"]
    assert "_trunc" not in MetricProtocol(metric="clip_direction", num_gen=8, extractor="clip:x",
                                          truncation=untruncated.truncation).key("adapted")
