"""Domain Expansion: the SeFa basis, projections, dimension assignment, task losses, replay, samplers, export,
staged expansion, resume and DDP."""
from __future__ import annotations


import pytest
import torch

from lightning_modules.expansion import ExpansionModule
from lightning_modules.expansion_tasks import build_tasks
from models import checkpoints
from models.expansion import ExpansionBasis, assign_dimensions, dormancy, sefa_basis, style_affine_weights
from models.stylegan2 import Discriminator, Generator
from tests.helpers_gan import (PARENT_ARCH, RandomImages, assert_ddp_ranks_identical,  # noqa: F401
                               assert_resume_matches, cpu_trainer, one_thread, save_parent)

ARCH = PARENT_ARCH
TASKS = [{"type": "color", "name": "red", "color": [1.0, -1.0, -1.0]}, {"type": "flip", "name": "mirror"}]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    return save_parent(tmp_path_factory.mktemp("parent") / "parent.pt", ARCH)


def tiny(parent, **kwargs) -> ExpansionModule:
    options = dict(generator=str(parent), tasks=TASKS, distance=5.0, replay_lpips_weights="random", seed=0,
                   gan={"pl_weight": 0.0, "mixing_prob": 0.0})
    return ExpansionModule(**{**options, **kwargs})


trainer = cpu_trainer


# ---------------------------------------------------------------------------------------------- geometry
def test_basis_is_sefa_of_the_style_affines_up_to_sign():
    torch.manual_seed(1)
    g = Generator(**ARCH)
    V = sefa_basis(g)
    A = torch.cat([w.double() for w in style_affine_weights(g)])
    assert A.shape == (16 * (1 + 1 + len(g.convs)), 16)  # conv1, to_rgb1 and every conv, each 16 x 16
    evals, evecs = torch.linalg.eigh(A.T @ A)  # ascending eigenvalues of AᵀA
    reference = evecs.flip(1).float()
    torch.testing.assert_close(V.T @ V, torch.eye(16), atol=1e-5, rtol=0)
    torch.testing.assert_close((V * reference).sum(0).abs(), torch.ones(16), atol=1e-4, rtol=0)
    singular = torch.linalg.norm(A @ V.double(), dim=0)
    assert (singular[:-1] >= singular[1:] - 1e-9).all()  # decreasing: the last columns are the dormant ones


def test_base_and_edit_projections_follow_their_formulas():
    torch.manual_seed(2)
    V = torch.linalg.qr(torch.randn(8, 8))[0]
    w_mean = torch.randn(8)
    basis = ExpansionBasis(V, dims=[7, 5], distances=[3.0, 4.0], w_mean=w_mean)
    w = torch.randn(5, 8)
    V_B, V_R = V[:, [0, 1, 2, 3, 4, 6]], V[:, [7, 5]]
    expected = w @ V_B @ V_B.T + (w_mean @ V_R @ V_R.T).expand(5, 8)
    torch.testing.assert_close(basis.base(w), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(basis.base(basis.base(w)), basis.base(w), atol=1e-5, rtol=0)  # idempotent
    torch.testing.assert_close((basis.base(w) - w_mean) @ V_R, torch.zeros(5, 2), atol=1e-5, rtol=0)
    edited = basis.edit(w, 1)
    torch.testing.assert_close(edited @ V[:, 5], w_mean @ V[:, 5] + 4.0 + torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(edited @ V_B, w @ V_B, atol=1e-5, rtol=0)  # base coordinates kept
    per_row = basis.edit(w, torch.tensor([0, 1, 0, 1, 1]))
    torch.testing.assert_close(per_row[1], basis.edit(w, 1)[1])
    torch.testing.assert_close(per_row[0], basis.edit(w, 0)[0])
    both = basis.compose(w, [0, 1])
    torch.testing.assert_close(both, basis.base(w) + 3.0 * V[:, 7] + 4.0 * V[:, 5])
    again = ExpansionBasis.from_state(basis.state())
    torch.testing.assert_close(again.base(w), basis.base(w))


def test_dimension_assignment():
    assert assign_dimensions([None, None], 512) == [511, 510]
    assert assign_dimensions([None, 511, None], 512) == [510, 511, 509]
    with pytest.raises(ValueError, match="more than one task"):
        assign_dimensions([3, 3], 8)
    with pytest.raises(ValueError, match="out of range"):
        assign_dimensions([8], 8)


def test_dormancy_is_zero_for_a_null_step_and_grows_with_the_step():
    torch.manual_seed(3)
    g = Generator(**ARCH).eval()
    V = sefa_basis(g)
    zero = dormancy(g, V, [15], distance=0.0, n=4)
    small, large = dormancy(g, V, [0], distance=1.0, n=4), dormancy(g, V, [0], distance=8.0, n=4)
    assert zero[15] == 0.0 and 0 < small[0] < large[0]
    top, bottom = dormancy(g, V, [0, 15], distance=4.0, n=8).values()
    assert bottom < top  # the last SeFa direction moves the images less than the first


# ---------------------------------------------------------------------------------------------- tasks
def test_toy_task_losses_equal_their_formulas():
    color, flip = build_tasks(TASKS)
    x_base, x_edit = torch.rand(3, 3, 8, 8) * 2 - 1, torch.rand(3, 3, 8, 8) * 2 - 1
    rows = torch.arange(3)
    target = torch.tensor([1.0, -1.0, -1.0])
    expected = ((x_edit.mean(dim=(2, 3)) - target) ** 2).mean(1).sum()
    torch.testing.assert_close(color.loss(x_base, x_edit, rows, None), expected)
    torch.testing.assert_close(flip.loss(x_base, x_edit, rows, None), ((x_edit - x_base.flip(3)) ** 2).mean(
        dim=(1, 2, 3)).sum())
    with pytest.raises(ValueError, match="did you mean 'color'"):
        build_tasks([{"type": "colr", "name": "x"}])
    with pytest.raises(ValueError, match="unknown key"):
        build_tasks([{"type": "flip", "name": "x", "colour": 1}])
    with pytest.raises(ValueError, match="two tasks are named"):
        build_tasks([{"type": "flip", "name": "x"}, {"type": "flip", "name": "x"}])


def test_expansion_loss_equals_its_formula(parent):
    module = tiny(parent, replay_noise="shared")
    module.reseed()
    state = torch.get_rng_state()
    loss, logs = module.expansion_loss(4)
    expected = logs["loss/expand"] + 10 * logs["loss/replay_l2"] + 10 * logs["loss/replay_lpips"]
    torch.testing.assert_close(loss, expected)
    torch.set_rng_state(state)
    # at the start G equals the parent: with shared noise the replay terms are exactly zero
    assert float(logs["loss/replay_l2"]) == 0.0 and float(logs["loss/replay_lpips"]) < 1e-6
    task_sum = sum(float(v) for k, v in logs.items() if k.startswith("loss/task_"))
    assert task_sum > 0


def test_replay_alone_holds_the_base_subspace(parent):
    """Every task weight 0 and no adversarial phases: a short run leaves G(base(w)) the parent's image."""
    module = tiny(parent, lambda_expand=0.0, adversarial=False, replay_noise="shared")
    before = {k: v.clone() for k, v in module.generator.state_dict().items()}
    trainer(max_epochs=1).fit(module, RandomImages(n=8, batch_size=4))
    assert module.iteration == 2
    for k, v in before.items():
        assert torch.equal(v, module.generator.state_dict()[k]), k
    # with the tasks on, the generator moves
    moving = tiny(parent, adversarial=False, replay_noise="shared")
    trainer(max_epochs=1).fit(moving, RandomImages(n=8, batch_size=4))
    assert any(not torch.equal(v, moving.generator.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(a, b) for a, b in zip(moving.generator.style.parameters(),
                                                 module.generator.style.parameters()))  # mapping frozen


# ---------------------------------------------------------------------------------------------- module
def test_samplers_export_and_staged_expansion(parent, tmp_path):
    module = tiny(parent, total_kimg=0.008)
    trainer(default_root_dir=tmp_path).fit(module, RandomImages(n=8, batch_size=4))
    assert module.dims == [15, 14] and module.dormancy.keys() == {15, 14}
    samplers = module.samplers()
    assert list(samplers) == ["base", "parent", "domain/red", "domain/mirror"]
    z = torch.randn(2, 16)
    module.eval()
    with torch.no_grad():
        from models.sampler import seeded_normal

        z = seeded_normal([0, 1], 3, 16)
        w = module.basis_state.base(module.g_ema.style(z))
        w_red = w + 5.0 * module.basis[:, 15]
        expected = module.g_ema([w_red], input_is_latent=True, randomize_noise=False)[0].clamp(-1, 1)
        torch.testing.assert_close(samplers["domain/red"].render([0, 1], 3), expected)
    loaded = checkpoints.load(tmp_path / "generator.pt")
    table = loaded.extra["expansion"]
    assert table["names"] == ["red", "mirror"] and table["dims"] == [15, 14]
    assert torch.equal(table["basis"], module.basis.cpu())
    # a further expansion keeps the basis, reserves the earlier dims and replays the earlier domains
    staged = ExpansionModule(generator=str(tmp_path / "generator.pt"), tasks=[{"type": "flip", "name": "again"}],
                             distance=5.0, replay_lpips_weights="random", seed=0, gan={"pl_weight": 0.0})
    assert torch.equal(staged.basis, module.basis) and staged.dims == [15, 14, 13]
    assert staged.domain_names() == ["red", "mirror", "again"] and staged.n_previous == 2
    _, logs = staged.expansion_loss(2)
    assert "loss/replay_previous_l2" in logs
    with pytest.raises(ValueError, match="already domains"):
        ExpansionModule(generator=str(tmp_path / "generator.pt"), tasks=[{"type": "flip", "dimension": 15}],
                        replay_lpips_weights="random")


@pytest.mark.parametrize("fewshot", [False, True], ids=["toy-tasks", "with-adversarial-task"])
def test_resume_reproduces_the_uninterrupted_run(parent, target_images, tmp_path, fewshot):
    def build():
        return adversarial_module(parent, target_images, gan={"pl_weight": 0.0, "r1_interval": 2}) if fewshot \
            else tiny(parent)

    assert_resume_matches(build, lambda: RandomImages(n=8, batch_size=4), tmp_path)


def test_ddp_ranks_end_with_identical_parameters(parent, target_images, tmp_path):
    fewshot = {"type": "adversarial", "name": "fewshot", "images": str(target_images), "batch": 2}
    module = tiny(parent, tasks=[fewshot, *TASKS],
                  gan={"pl_weight": 2.0, "pl_interval": 2, "r1_interval": 2, "mixing_prob": 0.0})
    assert_ddp_ranks_identical(module, RandomImages(n=8, batch_size=2), tmp_path)


# ---------------------------------------------------------------------------------------------- official snapshots
def official_snapshot(path, raw, basis, dims, cfg=None, **overrides):
    """An NVIDIA pickle laid out like the official Domain Expansion snapshots (``network-snapshot-*.pkl``)."""
    from tests.helpers_checkpoints import nvidia_nets, write_nvidia_pickle

    extra = dict(latent_basis=basis, repurposed_dims=torch.IntTensor(dims), subspace_distance=20,
                 training_set_kwargs={"path": "ffhq.zip"}, expansion_cfg=cfg)
    extra.update(overrides)
    return write_nvidia_pickle(path, nvidia_nets(raw), **{k: v for k, v in extra.items() if v is not None})


def test_official_snapshot_loads_with_its_domains_by_name(tmp_path, capsys):
    from launch.generate import main
    from models.expansion import expansion_table
    from models.sampler import seeded_normal
    from tests.helpers_checkpoints import fixture_checkpoint

    raw = fixture_checkpoint()
    dim = raw["latent_avg"].numel()
    V = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(1)))[0]
    cfg = {"tasks": [{"type": "NADA", "dimension": dim - 2, "args": {"source_text": "photo", "target_text": "sketch"}},
                     {"type": "NADA", "dimension": dim - 1,
                      "args": {"source_text": "person", "target_text": "tolkien elf"}},
                     {"type": "MyStyle", "dimension": 3, "args": {"person_name": "obama", "images_dir": ""}}],
           "tasks_losses": {"NADA": {"clip_models": ["ViT-B/32"], "clip_model_weights": [1.0]}}}
    path = official_snapshot(tmp_path / "network-snapshot-000100.pkl", raw, V, [dim - 2, dim - 1, 3], cfg)
    loaded = checkpoints.load(path)
    table = expansion_table(loaded.extra, loaded.latent_avg)
    assert table["names"] == ["sketch", "tolkien_elf", "obama"] and table["dims"] == [dim - 2, dim - 1, 3]
    assert table["distances"] == [20.0] * 3 and torch.equal(table["basis"], V)
    assert torch.equal(table["w_mean"], raw["latent_avg"].reshape(-1))  # G_ema.mapping.w_avg, as the official code
    # generate.py renders a domain by name: G_ema(base(w) + s v_d) with constant noise, as generate_aligned.py
    assert main(["--network", str(path), "--seeds", "0", "--domain", "tolkien_elf",
                 "--outdir", str(tmp_path / "o")]) == 0
    import numpy as np
    from PIL import Image

    out = np.asarray(Image.open(tmp_path / "o" / "seed0000.png"))
    basis = ExpansionBasis.from_state(table)
    g = loaded.g_ema
    with torch.no_grad():
        w = g.style(seeded_normal([0], 0, dim))[:, None].repeat(1, g.n_latent, 1)
        img = g.synthesis(basis.edit(w, 1), noise_mode="const")
    expected = ((img.clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    # a further expansion of it keeps the official basis and its domains
    staged = ExpansionModule(generator=str(path), tasks=[{"type": "flip", "name": "mirror"}], distance=5.0,
                             replay_lpips_weights="random", adversarial=False, gan={"pl_weight": 0.0})
    assert torch.equal(staged.basis, V) and staged.dims == [dim - 2, dim - 1, 3, dim - 3]
    assert staged.domain_names() == ["sketch", "tolkien_elf", "obama", "mirror"]
    assert staged.distances[:3] == [20.0] * 3


def test_broken_official_snapshots_are_clear_errors(tmp_path):
    from models.expansion import expansion_table
    from tests.helpers_checkpoints import fixture_checkpoint

    raw = fixture_checkpoint()
    dim = raw["latent_avg"].numel()
    V = torch.eye(dim)
    no_cfg = checkpoints.load(official_snapshot(tmp_path / "a.pkl", raw, V, [dim - 1, dim - 2]), networks=())
    assert expansion_table(no_cfg.extra, no_cfg.latent_avg)["names"] == [f"dim{dim - 1}", f"dim{dim - 2}"]
    cases = {"wide.pkl": (torch.eye(dim + 1), [0], "square|style_dim|shape"),
             "range.pkl": (V, [dim], "out of range"),
             "dup.pkl": (V, [1, 1], "more than one")}
    for name, (basis, dims, match) in cases.items():
        loaded = checkpoints.load(official_snapshot(tmp_path / name, raw, basis, dims), networks=())
        with pytest.raises(ValueError, match=match):
            expansion_table(loaded.extra, loaded.latent_avg)
    partial = checkpoints.load(official_snapshot(tmp_path / "p.pkl", raw, V, [1], subspace_distance=None),
                               networks=())
    with pytest.raises(ValueError, match="missing"):
        expansion_table(partial.extra, partial.latent_avg)
    with pytest.raises(ValueError, match="broken expansion table"):
        ExpansionModule(generator=str(tmp_path / "dup.pkl"), tasks=[{"type": "flip"}], replay_lpips_weights="random")


# ---------------------------------------------------------------------------------------------- few-shot task
@pytest.fixture(scope="module")
def target_images(tmp_path_factory):
    """Four reddish 20 px images (resized to the generator's 16 px by the task)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("targets")
    rng = np.random.default_rng(0)
    for i in range(4):
        arr = rng.integers(0, 80, (20, 20, 3)).astype(np.uint8)
        arr[..., 0] = 200 + i * 10
        Image.fromarray(arr).save(folder / f"t{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def adversarial_module(parent, folder, **kwargs):
    task = {"type": "adversarial", "name": "fewshot", "images": str(folder), "augment": None, "batch": 2}
    return tiny(parent, tasks=[task, TASKS[1]], **kwargs)


def test_adversarial_task_losses_follow_their_formulas(parent, target_images):
    import torch.nn.functional as F

    from losses.adversarial import d_logistic_loss

    module = adversarial_module(parent, target_images)
    task = module.tasks[0]
    assert task.images.shape == (4, 3, 16, 16) and [f.name for f in task.files] == [f"t{i}.png" for i in range(4)]
    head_ids = {id(p) for p in task.head.parameters()}
    assert head_ids <= {id(p) for g in module.configure_optimizers()[1].param_groups for p in g["params"]}
    module.reseed()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    expected = F.softplus(-task.head(module.discriminator.convs(x))).sum()
    torch.testing.assert_close(task.loss(x, x, torch.arange(3), module), expected)
    # D side: its edit fakes (fresh w, this task's direction) vs its target images, replayed from the same RNG
    state = module.rng.get_state()
    loss, logs = task.discriminator_loss(module)
    module.rng.set_state(state)
    with torch.no_grad():
        w = task.sample_w(2, module)
        fake = module.synth(module.generator, module.basis_state.edit(w, 0))
    rows = torch.randint(4, (2,), generator=module.rng)
    real_logits = task.head(module.discriminator.convs(task.images[rows]))
    fake_logits = task.head(module.discriminator.convs(fake))
    torch.testing.assert_close(loss, d_logistic_loss(real_logits, fake_logits))
    assert set(logs) == {"loss/D_fewshot", "D/fewshot_real_logits", "D/fewshot_fake_logits"}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        adversarial_module(parent, target_images / "missing")


def test_adversarial_task_trains_its_head_with_d(parent, target_images, tmp_path):
    module = adversarial_module(parent, target_images, adversarial=False, total_kimg=0.008,
                                gan={"pl_weight": 0.0, "mixing_prob": 0.0, "r1_interval": 2})
    head0 = [p.detach().clone() for p in module.tasks[0].head.parameters()]
    trunk0 = [p.detach().clone() for p in module.discriminator.convs.parameters()]
    final0 = [p.detach().clone() for p in module.discriminator.final_linear.parameters()]
    trainer(default_root_dir=tmp_path).fit(module, RandomImages(n=8, batch_size=4))
    assert module.iteration == 2
    assert all(not torch.equal(a, b) for a, b in zip(head0, module.tasks[0].head.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(trunk0, module.discriminator.convs.parameters()))
    # without the source adversarial phases D's own head is never used
    assert all(torch.equal(a, b) for a, b in zip(final0, module.discriminator.final_linear.parameters()))
    restored = adversarial_module(parent, target_images, adversarial=False)
    restored.load_state_dict(module.state_dict())
    for a, b in zip(restored.tasks[0].head.parameters(), module.tasks[0].head.parameters()):
        assert torch.equal(a, b)


def test_preflight_asks_for_clip_only_with_text_or_image_tasks(monkeypatch, tmp_path):
    from launch.preflight import model_asset_problems

    monkeypatch.setenv("STYLESHIFT_CACHE", str(tmp_path))  # an empty cache: every asset is missing
    params = ["generator", "tasks", "clip_models"]
    fewshot = {"tasks": [{"type": "adversarial", "images": "x"}], "clip_models": None}
    text = {"tasks": [{"type": "text", "target_text": "sketch"}], "clip_models": None}
    assert not model_asset_problems(fewshot, params, ExpansionModule.needs_clip)
    assert any("clip_models[0]" in p for p in model_asset_problems(text, params, ExpansionModule.needs_clip))


def test_replay_target_g_ema_replays_the_parents_ema(tmp_path):
    torch.manual_seed(0)
    g, g_ema = Generator(**ARCH), Generator(**ARCH)
    path = checkpoints.save(tmp_path / "p.pt", g_ema=g_ema, g=g, d=Discriminator(16, channels=ARCH["channels"]))
    for target, net in (("g", g), ("g_ema", g_ema)):
        module = tiny(path, replay_target=target)
        for a, b in zip(module.g_frozen.state_dict().values(), net.state_dict().values()):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="replay_target"):
        tiny(path, replay_target="ema")
