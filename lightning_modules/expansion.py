"""Domain Expansion (Nitzan et al., "Domain Expansion of Image Generators", CVPR 2023; docs/methods/expansion.md).

One generator keeps its source domain on a *base subspace* of W and gains a new domain along each repurposed
dormant direction. With the SeFa basis V of the parent (``models.expansion``), repurposed dimensions R, the
parent's mean W w̄ and step sizes s_d::

    base(w)   = V_B V_Bᵀ w + V_R V_Rᵀ w̄          edit_d(w) = base(w) + s_d v_d

One iteration (the official phase order; G's mapping is frozen, only the synthesis trains)::

    G_expand  per sample a task d uniformly; w from the task (mapped z, or its anchors)
              x_b = G(base(w)), x_e = G(edit_d(w)), x_p = G_parent(base(w))             independent noise
              L = lambda_expand · (1/b) Σ_tasks loss_d(x_b, x_e)
                  + lambda_replay_l2 · MSE(x_b, x_p) + lambda_replay_lpips · LPIPS(x_b, x_p)   (10 and 10)
    G_adv     softplus(-D(G(base(w))))                                 fresh z, no mixing
    G_reg     path length every pl_interval (mixed latents, not projected)
    D_main    softplus(D(G(base(w)))) + softplus(-D(x))               the source data
              + each few-shot adversarial task's own head: its edit fakes vs its target images
    D_reg     lazy R1 every r1_interval (and of each task head at its targets)
    G_ema     EMA of G (10 kimg)

Samplers: ``base`` and ``domain/<name>`` render the same z (aligned across domains) with G_ema and stored
noise; ``parent`` renders it with the parent's G (what the base subspace must preserve: FID of both against
the data, ``lpips_align`` of base against parent). Domain samplers carry their task's score and prompt for
the ``domain_leakage`` and ``clip_domains`` metrics. The exported ``generator.pt`` carries the basis and the
domain table (``expansion``), so ``models.expansion.ExpansionBasis.from_state`` and ``generate.py`` render any
domain by name; an expanded generator (ours, or an official snapshot with ``latent_basis``) expands further
with its basis kept and its earlier domains replayed against the parent.

Deviations: ``w̄`` is held fixed (the reference lets the mapping's running mean drift while training:
``drift_w_mean: true``); the projection works on W directly (the reference lifts W to 18 rows and back).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.config_groups import GANSettings, GeneratorSpec, coerce_group
from lightning_modules.expansion_tasks import build_tasks
from lightning_modules.gan import StyleGAN2Core
from lightning_modules.nada_setup import DTYPES, build_clip, check_assets, parse_clip_models
from losses.adversarial import d_logistic_loss, g_nonsaturating_loss
from models.expansion import ExpansionBasis, assign_dimensions, dormancy, expansion_table, sefa_basis
from models.frozen import trainable
from models.sampler import DomainSampler, Sampler, latent_sampler

log = logging.getLogger(__name__)

LPIPS_MIN_SIZE = 64
W_AVG_BETA = 0.995  # NVIDIA's running-mean decay of the mapping's w_avg (``drift_w_mean``)


class ExpansionModule(StyleGAN2Core):
    """Domain Expansion (see the module docstring).

    Args:
        generator: the parent (``model.generator``; G, D and G_ema from the file, D trained on).
        gan: adversarial settings (defaults: the reference's lr 0.001 for G and D, R1 10 every 16, path
            length 2 every 4, EMA 10 kimg).
        tasks: list of ``{type, name, dimension?, distance?, ...}`` (``lightning_modules.expansion_tasks``).
        task_args: per-type arguments shared by the tasks of that type.
        distance: the default step size s along a repurposed direction (20, the paper; a task may set its
            own ``distance``; dormancy depends on the parent, so check the startup report).
        lambda_expand, lambda_replay_l2, lambda_replay_lpips: loss weights (1, 10, 10).
        replay_lpips: LPIPS net of the replay loss (``alex``) and its weights (``auto``: the asset registry;
            ``random``: a stand-in trunk for offline runs).
        clip_models, clip_dtype: CLIP models of the text and image tasks (as ``nada``).
        drift_w_mean: let w̄ follow the mapped task latents (the reference's behaviour; off by default).
        basis: a saved basis file (``[style_dim, style_dim]`` tensor) instead of SeFa of the parent.
        adversarial: run the source adversarial phases (G_adv, D_main, D_reg; the reference's ``lambda_src > 0``).
        replay_noise: ``independent`` noise for the trained and the parent's base image (the reference), or
            ``shared`` (the replay then measures only how the generator moved: zero at the start).
        replay_target: the parent network the base subspace replays: ``g`` (its trained G, the reference) or
            ``g_ema`` (its EMA generator, the one users sample; for released files whose G lags behind G_ema).
        **base: ``seed``, ``nan_policy``, ``total_kimg``, ``grad_reset``.
    """

    product_file = "generator.pt"
    gan_defaults = GANSettings(g_lr=0.001, d_lr=0.001)

    def __init__(self, generator: GeneratorSpec | Mapping[str, Any] | str | None = None,
                 gan: GANSettings | Mapping[str, Any] | None = None, *,
                 tasks: Sequence[Mapping[str, Any]] = (), task_args: Mapping[str, Mapping[str, Any]] | None = None,
                 distance: float = 20.0, lambda_expand: float = 1.0, lambda_replay_l2: float = 10.0,
                 lambda_replay_lpips: float = 10.0, replay_lpips: str = "alex", replay_lpips_weights: str = "auto",
                 clip_models: Sequence[Mapping[str, Any]] | None = None, clip_dtype: str = "float32",
                 drift_w_mean: bool = False, basis: str | None = None, adversarial: bool = True,
                 replay_noise: Literal["independent", "shared"] = "independent",
                 replay_target: Literal["g", "g_ema"] = "g", **base: Any):
        super().__init__(gan=gan, **base)
        self.save_hyperparameters()
        spec = coerce_group(GeneratorSpec, generator, "model.generator")
        self.tasks = torch.nn.ModuleList(build_tasks(tasks, task_args))
        kinds = {t.kind for t in self.tasks}
        entries = parse_clip_models(clip_models) if kinds & {"text", "image"} else []
        check_assets([spec.checkpoint] + [e["pretrained"] for e in entries], what="Domain Expansion")
        g, d, g_ema = spec.gan()
        self.set_networks(g, d, g_ema)
        if replay_target not in ("g", "g_ema"):
            raise ValueError(f"replay_target must be 'g' or 'g_ema', got {replay_target!r}")
        # the parent's G (the reference) or G_ema: the replay target of the base subspace
        self.hold("g_frozen", _copy_frozen(g if replay_target == "g" else g_ema))
        for task in self.tasks:
            task.attach(self)
        self.clips = torch.nn.ModuleList([build_clip(e, "reference", DTYPES[clip_dtype]) for e in entries])
        self.clip_weights = [e["weight"] for e in entries]
        self.lambda_expand, self.lambda_replay_l2 = float(lambda_expand), float(lambda_replay_l2)
        self.lambda_replay_lpips, self.drift_w_mean = float(lambda_replay_lpips), bool(drift_w_mean)
        self.replay_lpips, self.replay_lpips_weights = replay_lpips, replay_lpips_weights
        if replay_noise not in ("independent", "shared"):
            raise ValueError(f"replay_noise must be 'independent' or 'shared', got {replay_noise!r}")
        self.adversarial, self.replay_noise = bool(adversarial), replay_noise

        previous = _previous_expansion(spec.checkpoint)
        style_dim = int(self.generator.style_dim)
        if previous is not None:  # staged expansion: keep the basis, reserve and replay the earlier domains
            V = torch.as_tensor(previous["basis"]).float()
            old_dims = [int(x) for x in previous["dims"]]
            old_s = [float(x) for x in previous["distances"]]
            self.previous_names = list(previous.get("names", [f"domain{d}" for d in old_dims]))
            w_mean = torch.as_tensor(previous["w_mean"]).float()
        else:
            V = self._basis(basis)
            old_dims, old_s, self.previous_names = [], [], []
            w_mean = self._parent_mean_w(spec)
        requested = [t.dimension for t in self.tasks]
        clash = set(old_dims) & {d for d in requested if d is not None}
        if clash:
            raise ValueError(f"task dimension(s) {sorted(clash)} are already domains of the parent expansion")
        dims = assign_dimensions([*old_dims, *requested], style_dim)[len(old_dims):] if requested else []
        distances = [float(distance if t.distance is None else t.distance) for t in self.tasks]
        self.names = [t.name for t in self.tasks]
        self.n_previous = len(old_dims)
        self.register_buffer("basis", V.clone())
        self.register_buffer("w_mean", w_mean.reshape(-1).clone())
        self.dims, self.distances = [*old_dims, *dims], [*old_s, *distances]
        self.dormancy: dict[int, float] = {}

    @staticmethod
    def needs_clip(model: Mapping[str, Any]) -> bool:
        """Whether a ``model`` config needs CLIP weights: only text and image tasks use CLIP."""
        tasks = model.get("tasks") or []
        return any(isinstance(t, Mapping) and t.get("type") in ("text", "image") for t in tasks)

    def dormancy_report(self, n: int = 16) -> dict[int, float]:
        """How dormant each new direction is for this parent: the image change of a step of its ``s``
        relative to the spread of the samples (0 = no change; ``models.expansion.dormancy``)."""
        out = {}
        for index in range(self.n_previous, len(self.dims)):
            d = self.dims[index]
            out[d] = dormancy(self.g_ema, self.basis, [d], distance=self.distances[index], n=n)[d]
        return out

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.trainer.is_global_zero and not self.dormancy and self.iteration == 0:  # G_ema is still the parent
            self.dormancy = self.dormancy_report()
            log.info("Domain Expansion: new domain(s) %s on dims %s (s = %s); dormancy of a step s (image "
                     "change / sample spread, 0 = dormant): %s", self.names, self.dims[self.n_previous:],
                     self.distances[self.n_previous:], {d: round(v, 4) for d, v in self.dormancy.items()})

    # ------------------------------------------------------------------------------ set-up helpers
    def _basis(self, path: str | None) -> Tensor:
        if path is None:
            return sefa_basis(self.g_ema)
        if not Path(path).is_file():
            raise FileNotFoundError(f"model.basis: {path} does not exist")
        V = torch.as_tensor(torch.load(path, map_location="cpu", weights_only=True)).float()
        d = int(self.generator.style_dim)
        if V.shape != (d, d):
            raise ValueError(f"model.basis: {path} holds a {tuple(V.shape)} tensor, expected [{d}, {d}]")
        return V

    def _parent_mean_w(self, spec: GeneratorSpec) -> Tensor:
        """w̄: the parent file's mean W when it stores one, else the mean of 4096 fixed z."""
        if spec.checkpoint is not None:
            from models import checkpoints

            avg = checkpoints.load(spec.checkpoint, networks=()).latent_avg
            if avg is not None and avg.numel() == self.generator.style_dim:
                return avg.reshape(-1).float()
        return self.mean_w(self.g_ema).reshape(-1).detach().clone()

    @property
    def basis_state(self) -> ExpansionBasis:
        """The basis, every repurposed dimension (earlier domains first) and w̄ as an :class:`ExpansionBasis`."""
        return ExpansionBasis(self.basis, self.dims, self.distances, self.w_mean)

    def lpips_distance(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-image LPIPS [B] of images in [-1, 1] at full resolution (the replay and MyStyle losses)."""
        if "lpips_net" not in self.held_networks():
            from metrics.lpips_family import load_lpips

            trunk = None if self.replay_lpips_weights == "random" else self.replay_lpips_weights
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model, _, _ = load_lpips(self.replay_lpips, trunk, self.device)
            self.hold("lpips_net", model, dtype=torch.float32)  # frozen: not saved, not optimized
        x, y = x.float(), y.float()
        if min(x.shape[-2:]) < LPIPS_MIN_SIZE:  # AlexNet's pooling needs 64 px: tiny (toy) images are upsampled
            x, y = (F.interpolate(t, size=(LPIPS_MIN_SIZE, LPIPS_MIN_SIZE), mode="bilinear", align_corners=False)
                    for t in (x, y))
        with torch.autocast(self.device.type, enabled=False):
            return self.lpips_net(x, y, normalize=False).flatten()

    # ------------------------------------------------------------------------------ the algorithm
    def synth(self, generator, w: Tensor, noise: list[Tensor] | None = None) -> Tensor:
        """``generator(w)`` with fresh random noise (or the given maps)."""
        noise = self.sample_noise(w.shape[0]) if noise is None else noise
        return generator([w], input_is_latent=True, noise=noise)[0]

    def expansion_loss(self, n: int) -> tuple[Tensor, dict]:
        """G_expand: the tasks' losses on edit images plus the replay of the base subspace."""
        basis = self.basis_state
        choice = torch.randint(len(self.tasks), (n,), device=self.device, generator=self.rng)
        counts = torch.bincount(choice, minlength=len(self.tasks)).tolist()  # one host sync for every task
        w_all, domain_all, parts = [], [], []
        for k, task in enumerate(self.tasks):
            count = counts[k]
            if count:
                w = task.sample_w(count, self)
                if self.drift_w_mean and task.fresh_latents:
                    self.w_mean.lerp_(w.mean(0).detach(), 1 - W_AVG_BETA)
                w_all.append(w)
                domain_all.append(torch.full((count,), self.n_previous + k, device=self.device))
                parts.append((task, count))
        w = torch.cat(w_all)
        domains = torch.cat(domain_all)
        base_w = basis.base(w)
        base_noise = self.sample_noise(n)
        x_base = self.synth(self.generator, base_w, base_noise)
        x_edit = self.synth(self.generator, basis.edit(w, domains))
        task_terms, offset = {}, 0
        total = x_edit.new_zeros((), dtype=torch.float32)
        for task, count in parts:
            rows = torch.arange(count, device=self.device)
            value = task.loss(x_base[offset:offset + count], x_edit[offset:offset + count], rows, self)
            task_terms[f"loss/task_{task.name}"] = value.detach() / count
            total = total + task.weight * value
            offset += count
        expand = total / n
        with torch.no_grad():
            x_parent = self.synth(self.g_frozen, base_w, base_noise if self.replay_noise == "shared" else None)
        replay_l2 = F.mse_loss(x_base.float(), x_parent.float())
        replay_lpips = (self.lpips_distance(x_base, x_parent).mean() if self.lambda_replay_lpips > 0
                        else x_base.new_zeros(()))
        loss = self.lambda_expand * expand + self.lambda_replay_l2 * replay_l2 + self.lambda_replay_lpips * replay_lpips
        if self.n_previous:  # staged expansion: earlier domains replayed against the parent
            old = torch.randint(self.n_previous, (n,), device=self.device, generator=self.rng)
            w_old = self.generator.style(torch.randn(n, self.z_dim, device=self.device, generator=self.rng)).detach()
            x_old = self.synth(self.generator, basis.edit(w_old, old))
            with torch.no_grad():
                x_old_parent = self.synth(self.g_frozen, basis.edit(w_old, old))
            replay_old = F.mse_loss(x_old.float(), x_old_parent.float())
            loss = loss + self.lambda_replay_l2 * replay_old
            task_terms["loss/replay_previous_l2"] = replay_old
        return loss, {"loss/G_expand": loss, "loss/expand": expand, "loss/replay_l2": replay_l2,
                      "loss/replay_lpips": replay_lpips, **task_terms}

    def base_fakes(self, n: int) -> Tensor:
        """G(base(w)) for fresh z (no mixing): the fakes of the adversarial phases."""
        w = self.generator.style(self.sample_z(n))
        return self.synth(self.generator, self.basis_state.base(w))

    def generator_adversarial(self, real: Tensor) -> tuple[Tensor, dict]:
        loss = g_nonsaturating_loss(self.discriminate(self.base_fakes(real.shape[0])).float())
        return loss, {"loss/G_main": loss}

    def discriminator_loss(self, real: Tensor, fake: Tensor | None) -> tuple[Tensor, dict]:
        """D_main: the source term (base fakes vs the data; with ``adversarial``) plus the tasks' own D terms."""
        loss, logs = real.new_zeros((), dtype=torch.float32), {}
        if fake is not None:
            real_logits, fake_logits = self.discriminate(real), self.discriminate(fake)
            loss = d_logistic_loss(real_logits.float(), fake_logits.float())
            logs = {"D/real_logits": real_logits.float().mean(), "D/fake_logits": fake_logits.float().mean()}
        return self._with_task_terms("discriminator_loss", loss, logs, "loss/D_main")

    def discriminator_reg(self, real: Tensor) -> tuple[Tensor, dict]:
        """D_reg: lazy R1 of D (with ``adversarial``) plus the tasks' own R1 terms."""
        loss, logs = (super().discriminator_reg(real) if self.adversarial
                      else (real.new_zeros((), dtype=torch.float32), {}))
        return self._with_task_terms("discriminator_reg", loss, logs, "loss/D_reg")

    def _with_task_terms(self, hook: str, loss: Tensor, logs: dict, key: str) -> tuple[Tensor, dict]:
        for task in self.tasks:
            term = getattr(task, hook)(self)
            if term is not None:
                loss = loss + term[0]
                logs.update(term[1])
        logs[key] = loss
        return loss, logs

    def task_heads(self) -> list[torch.nn.Module]:
        """The discriminator heads of the tasks that have one (trained with D)."""
        return [t.head for t in self.tasks if getattr(t, "head", None) is not None]

    def domain_index(self, name: str) -> int:
        """The position of domain ``name`` in :attr:`dims` (earlier domains first)."""
        return self.domain_names().index(name)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self.prepare_batch(batch)
        opt_g, opt_d = self.optimizers()
        self.reseed()
        logs: dict[str, Tensor] = {}
        discriminators = [self.discriminator, *self.task_heads()]
        with trainable(self.synthesis_modules(), [*discriminators, self.generator.style]):
            self.step(opt_g, "G_expand", self.expansion_loss, logs, real.shape[0])
            if self.adversarial:
                self.step(opt_g, "G_main", self.generator_adversarial, logs, real)
        if self.pl_due():  # path lengths differentiate through W: the mapping computes gradients, never steps
            with trainable([self.generator], discriminators):
                self.step(opt_g, "G_reg", self.generator_reg, logs, real)
            self.generator.style.zero_grad(set_to_none=True)
        if self.adversarial or self.task_heads():
            with trainable(discriminators, [self.generator]):
                fake = None
                if self.adversarial:
                    with torch.no_grad():
                        fake = self.base_fakes(real.shape[0])
                self.step(opt_d, "D_main", self.discriminator_loss, logs, real, fake)
                if self.r1_due():
                    self.step(opt_d, "D_reg", self.discriminator_reg, logs, real)
        self.end_iteration(real.shape[0], logs)

    def synthesis_modules(self) -> list[torch.nn.Module]:
        """Every generator submodule but the mapping network (which stays frozen)."""
        return [m for name, m in self.generator.named_children() if name != "style"]

    def configure_optimizers(self):
        synthesis = [p for m in self.synthesis_modules() for p in m.parameters()]
        opt_g = torch.optim.Adam(synthesis, **self.g_opt_kwargs)
        heads = [p for head in self.task_heads() for p in head.parameters()]
        opt_d = torch.optim.Adam([*self.discriminator.parameters(), *heads], **self.d_opt_kwargs)
        return [opt_g, opt_d]

    # ------------------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "distances": list(self.distances), "dormancy": dict(self.dormancy)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for key in ("dims", "distances"):
            if key in state and list(state[key]) != list(getattr(self, key)):
                raise ValueError(f"the checkpoint's {key} are {state[key]}, this config's {getattr(self, key)}: "
                                 f"resume with the tasks (and step sizes) of that run")
        self.dormancy = {int(k): float(v) for k, v in state.get("dormancy", {}).items()}

    # ------------------------------------------------------------------------------ sampling and export
    def render(self, z: Tensor, domain: int | None) -> Tensor:
        basis = self.basis_state
        w = basis.base(self.g_ema.style(z.to(self.device)))
        if domain is not None:
            w = w + basis.distances[domain] * basis.direction(domain).to(w)
        return self.g_ema([w], input_is_latent=True, randomize_noise=False)[0].clamp(-1, 1)

    def render_parent(self, z: Tensor) -> Tensor:
        """The parent's image of ``z`` (its replay target, ``replay_target``; no projection, stored noise)."""
        w = self.g_frozen.style(z.to(self.device))
        return self.g_frozen([w], input_is_latent=True, randomize_noise=False)[0].clamp(-1, 1)

    def domain_names(self) -> list[str]:
        return [*self.previous_names, *self.names]

    def samplers(self) -> dict[str, Sampler]:
        """``base`` and ``domain/<name>`` of every domain (earlier ones first): the same z for all. Domain
        samplers carry their task's score and text prompt (metrics ``domain_leakage``, ``clip_domains``)."""
        device = lambda: self.device  # noqa: E731
        out = {"base": latent_sampler(lambda z: self.render(z, None), self.z_dim, device, truncation=1.0),
               "parent": latent_sampler(self.render_parent, self.z_dim, device, truncation=1.0)}
        for index, name in enumerate(self.domain_names()):
            task = self.tasks[index - self.n_previous] if index >= self.n_previous else None
            render = latent_sampler(lambda z, i=index: self.render(z, i), self.z_dim, device).render
            score = None
            if task is not None and task.scorable:
                score = lambda xb, xe, t=task: t.score(xb.to(self.device), xe.to(self.device), self)  # noqa: E731
            out[f"domain/{name}"] = DomainSampler(render=render, truncation=1.0, source="base", domain=name,
                                                  score=score, prompt=None if task is None else task.prompt)
        return out

    def export(self, path: Path) -> Path:
        """G_ema, G, D, w̄ and the expansion table (basis, dims, distances, names) as ``generator.pt``."""
        from models import checkpoints

        table = {**self.basis_state.state(), "names": self.domain_names()}
        return checkpoints.save(Path(path), g_ema=self.g_ema, g=self.generator, d=self.discriminator,
                                latent_avg=self.w_mean.detach().cpu(), kimg=float(self.kimg), expansion=table)


def _copy_frozen(generator):
    import copy

    return copy.deepcopy(generator).eval()


def _previous_expansion(checkpoint: str | None) -> dict | None:
    """The expansion table of an expanded parent (our export or an official snapshot), or None."""
    if checkpoint is None:
        return None
    from models import checkpoints

    loaded = checkpoints.load(checkpoint, networks=())
    try:
        return expansion_table(loaded.extra, loaded.latent_avg)
    except ValueError as err:
        raise ValueError(f"model.generator: {checkpoint} has a broken expansion table ({err})") from None


__all__ = ["ExpansionModule"]
