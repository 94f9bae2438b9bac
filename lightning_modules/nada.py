"""StyleGAN-NADA (Gal et al., SIGGRAPH 2022): CLIP-guided domain adaptation of a pretrained generator.

docs/methods/nada.md has the algorithm, every option with its paper/official value and the deviations. One
training iteration, as :meth:`NADAModule.training_step` runs it:

1. if ``auto_layer_iters > 0``: adaptive layer selection (:mod:`lightning_modules.nada_layers`) picks the
   ``auto_layer_k`` layers of ``G_train`` that train this iteration;
2. ``z`` (the batch of the ``latents`` datamodule) -> ``w = G_frozen.mapping(z)`` broadcast to W+ (psi = 1;
   with probability ``mixing`` two codes and **one** crossover index shared by both generators);
3. ``x_src = G_frozen(w)`` without gradients and ``x_tgt = G_train(w)``, each with its **own** random noise
   maps;
4. ``L = Σ_m w_m · CLIPLoss_m(x_src, x_tgt)`` - the directional CLIP loss with the 79 ImageNet templates
   (:mod:`losses.clip`), or an image-guided direction (``target_images``);
5. Adam (lr ``0.002 · 4/5``, betas ``(0, 0.99^0.8)``) steps ``G_train``'s selected layers.

Networks: both generators come from the ``model.generator`` group - a checkpoint (anything
``models.checkpoints.load`` reads: a path or a registered asset name) or, for offline toy runs, the
architecture of a random generator (``init_seed`` 0 by default). ``G_frozen`` is a frozen network of the
module (``models.frozen``, as the CLIP models are): in no optimizer, not in the checkpoint, never in train
mode, and it follows the module's device moves. The mapping network of
``G_train`` and its ToRGBs after ``to_rgb1`` are never trained.

Samplers (docs/architecture.md, "Samplers"): ``source`` (G_frozen) and ``adapted`` (G_train) render the *same* z with
the same stored noise, for side-by-side grids and the alignment/direction metrics. At the end of ``fit`` the
adapted generator is exported (rosinality format) to ``<run dir>/generator.pt``.

Memory levers (docs/methods/nada.md, "Memory and compute"), cheapest first: ``auto_layer_iters: 0`` (no
selection pass, the largest saving), a smaller ``auto_layer_batch``, a single CLIP model in ``clip_models``,
``clip_dtype: float16`` (GPU only; the reference's CLIP precision), a lower-resolution checkpoint, fewer grid
samples (samples callback ``n``).

Deviations from the reference, each deliberate: selection gradients are taken with respect to W+ only
(same update, less memory); style mixing shares one crossover index per pair; the image-guided source
embedding uses seeded latents and stored noise; zero-weight CLIP models are not evaluated; directions of
image-guided runs are buffers of the module, so a resumed run keeps its direction.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_modules.base import MethodModule
from lightning_modules.config_groups import GeneratorSpec, coerce_group
from lightning_modules.nada_layers import (candidate_layers, check_mapping, code_movement, layers_for_codes,
                                           top_codes)
from lightning_modules.nada_setup import DTYPES, build_clip, check_assets, parse_clip_models
from losses.clip import CLIPLossEnsemble, DirectionalCLIPLoss
from models.clip import PREPROCESSING
from models.frozen import requires_grad
from models.latent_optim import w_plus_sgd
from models.sampler import Sampler, latent_sampler, seeded_normal
from models.stylegan2 import Generator

log = logging.getLogger(__name__)

SUPPORTED_PRECISIONS = ("32-true", "32", "bf16-mixed")
REFERENCE_LR = 0.002 * 4 / 5  # rosinality's lazy-regularization ratio left in the reference
REFERENCE_BETAS = (0.0, 0.99 ** (4 / 5))
REFERENCE_SAMPLE_TRUNCATION = 0.7  # the reference's ``sample_truncation`` of its sample grids


class NADAModule(MethodModule):
    """StyleGAN-NADA (docs/methods/nada.md).

    Args:
        generator: the source generator, the ``model.generator`` group: a checkpoint (a file in any format
            ``models.checkpoints.load`` reads or a registered asset name, ``stylegan2-ffhq-1024``) or the
            architecture of a random generator for offline toy runs (``init_seed`` 0 unless given).
        source_text, target_text: the domain texts of the directional loss (``"photo"`` -> ``"sketch"``).
        target_images: folder of a few target images: image-guided mode; the texts are then ignored
            by the directional loss.
        image_guided_samples: generated source images whose mean CLIP embedding is the image-guided source.
        clip_models: list of ``{name, weight, pretrained, config, seed}`` (default: ViT-B/32 and ViT-B/16 with
            weight 1, OpenAI weights, as the README command).
        clip_preprocessing: ``"reference"`` (bicubic resize without antialias) or ``"antialias"``.
        clip_dtype: ``float32`` (default), ``float16`` (the reference's GPU precision) or ``bfloat16``.
        templates: ``True`` for the 79 ImageNet templates, ``False`` for the bare texts, or a list.
        lambda_direction, lambda_global, lambda_patch, lambda_manifold, patch_size: loss weights (the
            paper uses ``lambda_direction = 1`` only).
        auto_layer_k: layers trained per step (``None``: all ``n_latent``, as the README command).
        auto_layer_iters: W+ SGD steps of the selection (0 disables selection: const, conv1 and all convs
            train every step).
        auto_layer_batch, auto_layer_lr: selection batch (8) and SGD learning rate (0.01).
        layer_mapping: ``"reference"`` index -> layer mapping (default) or ``"corrected"`` (docs/methods/nada.md,
            "Index mapping: reference and corrected").
        selection_text: text of the selection's global loss (default ``target_text``; required in image-guided
            mode with selection on, where the reference silently used "cat").
        lr, betas: Adam settings (reference: ``0.002 · 4/5``, ``(0, 0.99^0.8)``).
        mixing: style-mixing probability (reference and README: 0).
        sample_truncation: psi of the ``source`` / ``adapted`` samplers, so of every grid and sampler metric
            (toward the mean W of 4096 fixed z; 0.7, the reference's sample truncation; 1 = no truncation).
        **base: ``seed``, ``nan_policy``, ``total_kimg`` (:class:`~lightning_modules.base.MethodModule`).
    """

    product_file = "generator.pt"
    supported_precisions = SUPPORTED_PRECISIONS
    precision_note = "the generators stay fp32"
    #: a random toy generator is seeded, so both copies and every run start from the same weights
    generator_defaults = GeneratorSpec(init_seed=0)

    def __init__(self, generator: GeneratorSpec | Mapping[str, Any] | str | None = None, *,
                 source_text: str = "photo", target_text: str | None = None,
                 target_images: str | None = None, image_guided_samples: int = 16,
                 clip_models: Sequence[Mapping[str, Any]] | None = None, clip_preprocessing: str = "reference",
                 clip_dtype: str = "float32", templates: bool | Sequence[str] = True,
                 lambda_direction: float = 1.0, lambda_global: float = 0.0, lambda_patch: float = 0.0,
                 lambda_manifold: float = 0.0, patch_size: int = 510, auto_layer_k: int | None = None,
                 auto_layer_iters: int = 1, auto_layer_batch: int = 8, auto_layer_lr: float = 0.01,
                 layer_mapping: str = "reference", selection_text: str | None = None,
                 lr: float = REFERENCE_LR, betas: Sequence[float] = REFERENCE_BETAS, mixing: float = 0.0,
                 sample_truncation: float = REFERENCE_SAMPLE_TRUNCATION, **base: Any):
        super().__init__(**base)
        self.save_hyperparameters()
        clip_entries = parse_clip_models(clip_models)
        self._check_options(target_text, target_images, clip_preprocessing, clip_dtype, layer_mapping,
                            auto_layer_k, auto_layer_iters, auto_layer_batch, image_guided_samples, mixing,
                            sample_truncation, selection_text)
        if target_text is None and (lambda_global or lambda_patch or lambda_manifold):
            raise ValueError("lambda_global / lambda_patch / lambda_manifold use the target text: set "
                             "model.target_text as well")
        spec = coerce_group(GeneratorSpec, generator, "model.generator", self.generator_defaults)
        check_assets([spec.checkpoint] + [e["pretrained"] for e in clip_entries])

        source = spec.generator()
        self.g_train = copy.deepcopy(source).train()
        self.hold("g_frozen", source)
        self.source_text, self.target_text, self.target_images = source_text, target_text, target_images
        self.image_guided_samples = int(image_guided_samples)
        self.selection_text = selection_text if selection_text is not None else target_text
        self.auto_layer_iters, self.auto_layer_batch = int(auto_layer_iters), int(auto_layer_batch)
        self.auto_layer_k = int(self.g_train.n_latent if auto_layer_k is None else auto_layer_k)
        self.auto_layer_lr, self.layer_mapping = float(auto_layer_lr), layer_mapping
        self.lr, self.betas = float(lr), tuple(float(b) for b in betas)
        self.mixing, self.sample_truncation = float(mixing), float(sample_truncation)

        dtype = DTYPES[clip_dtype]
        losses = [DirectionalCLIPLoss(build_clip(e, clip_preprocessing, dtype), source_text,
                                      target_text if target_text is not None else "(image target)",
                                      lambda_direction=lambda_direction, lambda_global=lambda_global,
                                      lambda_patch=lambda_patch, lambda_manifold=lambda_manifold,
                                      patch_size=patch_size, templates=templates) for e in clip_entries]
        self.clip_loss = CLIPLossEnsemble(losses, [e["weight"] for e in clip_entries])
        if target_images is not None:  # persisted so a resumed run keeps its direction
            for i, loss in enumerate(losses):
                self.register_buffer(f"image_direction_{i}", torch.zeros(1, loss.clip.embed_dim))
            self.register_buffer("image_direction_ready", torch.zeros((), dtype=torch.bool))
        self._direction_applied = False

        self._trainable_pool = self._initial_trainable()
        self.selected_codes: list[int] | None = None

    @staticmethod
    def _check_options(target_text, target_images, clip_preprocessing, clip_dtype, layer_mapping, auto_layer_k,
                       auto_layer_iters, auto_layer_batch, image_guided_samples, mixing, sample_truncation,
                       selection_text) -> None:
        if target_text is None and target_images is None:
            raise ValueError("set model.target_text (text-guided) or model.target_images (image-guided)")
        if target_images is not None and not Path(target_images).is_dir():
            raise FileNotFoundError(f"model.target_images: folder {target_images} does not exist")
        if target_images is not None and auto_layer_iters > 0 and selection_text is None and target_text is None:
            raise ValueError("image-guided runs with layer selection need model.selection_text (or target_text) "
                             "for the selection's global CLIP loss, or auto_layer_iters: 0 (docs/methods/nada.md)")
        if clip_preprocessing not in PREPROCESSING:
            raise ValueError(f"clip_preprocessing must be one of {PREPROCESSING}, got {clip_preprocessing!r}")
        if clip_dtype not in DTYPES:
            raise ValueError(f"clip_dtype must be one of {sorted(DTYPES)}, got {clip_dtype!r}")
        check_mapping(layer_mapping)
        for key, value, low in (("auto_layer_iters", auto_layer_iters, 0), ("auto_layer_batch", auto_layer_batch, 1),
                                ("image_guided_samples", image_guided_samples, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        if auto_layer_k is not None and (not isinstance(auto_layer_k, int) or auto_layer_k < 1):
            raise ValueError(f"auto_layer_k must be a positive integer or null (all layers), got {auto_layer_k!r}")
        if not 0.0 <= mixing <= 1.0:
            raise ValueError(f"mixing must be in [0, 1], got {mixing}")
        if not 0.0 < sample_truncation <= 1.0:
            raise ValueError(f"sample_truncation must be in (0, 1], got {sample_truncation}")

    # ------------------------------------------------------------------------------ networks
    def _initial_trainable(self) -> list[nn.Module]:
        """Trainable layers: selection on -> ``[conv1, to_rgb1, *convs]`` (re-chosen every step); off -> const input,
        ``conv1`` and every conv. The mapping and the other ToRGBs are never trained."""
        g = self.g_train
        g.requires_grad_(False)
        pool = candidate_layers(g) if self.auto_layer_iters > 0 else [g.input, g.conv1, *g.convs]
        requires_grad(pool, True)
        return pool

    @property
    def z_dim(self) -> int:
        return int(self.g_train.style_dim)

    # ------------------------------------------------------------------------------ randomness
    def sample_noise(self, n: int) -> list[Tensor]:
        """Fresh per-layer noise maps ``[n, 1, r, r]`` (each generator call draws its own)."""
        return [torch.randn(n, 1, *b.shape[-2:], device=self.device, generator=self.rng)
                for b in self.g_train.stored_noise()]

    # ------------------------------------------------------------------------------ latents
    def latents_from_batch(self, batch: Any) -> Tensor:
        """z ``[B, z_dim]`` of a ``latents`` batch; an image batch (e.g. the ``images`` datamodule holding the
        FID reference of an image-guided run) only sets ``B``: NADA never trains on images."""
        if isinstance(batch, (list, tuple)) and len(batch) == 1:
            batch = batch[0]
        if isinstance(batch, Tensor) and batch.dim() == 2:
            if batch.shape[1] != self.z_dim:
                raise ValueError(f"latent batch has z_dim {batch.shape[1]}, the generator {self.z_dim}: "
                                 f"set data.z_dim to {self.z_dim}")
            return batch.to(self.device, torch.float32)
        if isinstance(batch, Tensor) and batch.dim() == 4:
            return torch.randn(batch.shape[0], self.z_dim, device=self.device, generator=self.rng)
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise TypeError(f"expected a latent batch [B, {self.z_dim}] (datamodule 'latents'), got {shape}")

    def w_plus(self, z: Tensor) -> Tensor:
        """``w = G_frozen.mapping(z)`` broadcast to W+ ``[B, n_latent, D]``; with probability ``mixing`` two
        codes and one crossover index for both generators."""
        mapping = self.g_frozen.style
        if self.mixing > 0 and float(torch.rand((), device=self.device, generator=self.rng)) < self.mixing:
            z2 = torch.randn(z.shape, device=self.device, generator=self.rng)
            index = int(torch.randint(1, self.g_frozen.n_latent, (), device=self.device, generator=self.rng))
            return self.g_frozen.styles_to_latent([mapping(z), mapping(z2)], inject_index=index,
                                                  input_is_latent=True)
        return self.g_frozen.styles_to_latent([mapping(z)], input_is_latent=True)

    # ------------------------------------------------------------------------------ algorithm steps
    def select_layers(self) -> list[int]:
        """Adaptive layer selection (docs/methods/nada.md, "Adaptive layer selection"): returns the chosen W+
        indices and sets ``requires_grad``."""
        g = self.g_train
        with torch.no_grad():
            z = torch.randn(self.auto_layer_batch, self.z_dim, device=self.device, generator=self.rng)
            w_init = self.g_frozen.styles_to_latent([self.g_frozen.style(z)], input_is_latent=True)

        def synthesize(w_plus: Tensor) -> Tensor:
            return g([w_plus], input_is_latent=True, noise=self.sample_noise(w_plus.shape[0]))[0]

        moved = w_plus_sgd(synthesize, lambda x: self.clip_loss.global_loss(x, self.selection_text), w_init,
                           lr=self.auto_layer_lr, iters=self.auto_layer_iters)
        scores = code_movement(w_init, moved)
        if self._world_size() > 1:  # every rank must train the same layers
            scores = self.trainer.strategy.reduce(scores, reduce_op="mean")
        codes = top_codes(scores, self.auto_layer_k, self.layer_mapping, len(g.convs))
        requires_grad(self._trainable_pool, False)
        requires_grad(layers_for_codes(g, codes, self.layer_mapping), True)
        self.selected_codes = codes
        return codes

    def adaptation_loss(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 2-4 of the iteration: ``(L, x_src, x_tgt)`` for latents ``z``."""
        with torch.no_grad():
            w_plus = self.w_plus(z)
            x_src, _ = self.g_frozen([w_plus], input_is_latent=True, noise=self.sample_noise(z.shape[0]))
        x_tgt, _ = self.g_train([w_plus], input_is_latent=True, noise=self.sample_noise(z.shape[0]))
        return self.clip_loss(x_src, x_tgt), x_src, x_tgt

    @torch.no_grad()
    def image_guided_source_images(self) -> Tensor:
        """The generated source images of the image-guided direction: ``image_guided_samples`` seeded z
        (stream ``seed``), psi = 1, stored noise, no clamp (the reference's CLIP input is not clamped)."""
        z = seeded_normal(range(self.image_guided_samples), self.base_seed, self.z_dim).to(self.device)
        images, _ = self.g_frozen([z], randomize_noise=False)
        return images

    def ensure_image_direction(self) -> None:
        """Image-guided mode: compute ``ΔT = n(mean n(E_I(targets)) - mean n(E_I(P(G(z)))))`` per CLIP model
        once and keep it in buffers (restored from a checkpoint on resume, then reused)."""
        if self.target_images is None or self._direction_applied:
            return
        losses = list(self.clip_loss.losses)
        if not bool(self.image_direction_ready):
            self.clip_loss.set_image_target(self.image_guided_source_images(), self.target_images)
            for i, (weight, loss) in enumerate(zip(self.clip_loss.weights, losses)):
                if weight != 0:
                    getattr(self, f"image_direction_{i}").copy_(loss.direction.to(self.device))
            self.image_direction_ready.fill_(True)
            log.info("image-guided directions computed from %s", self.target_images)
        for i, (weight, loss) in enumerate(zip(self.clip_loss.weights, losses)):
            if weight != 0:
                loss.set_direction(getattr(self, f"image_direction_{i}"))
        self._direction_applied = True

    def load_state_dict(self, *args, **kwargs):
        self._direction_applied = False  # re-apply the (possibly restored) image-guided directions
        return super().load_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------------------ Lightning
    def clip_step_loss(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one step and its logs (:meth:`adaptation_loss`)."""
        loss, _, _ = self.adaptation_loss(z)
        return loss, {"loss/clip": loss}

    def nada_iteration(self, z: Tensor, optimizer: torch.optim.Optimizer, logs: dict | None = None) -> Tensor | None:
        """One iteration (module docstring) on latents ``z``: [layer selection], CLIP loss, Adam step (the
        base's ``step``: NaN policy, backward). Returns the detached loss (None when a non-finite step was skipped)."""
        if self.auto_layer_iters > 0:
            self.select_layers()
        # grad_reset "zero" (default): a layer trained before but not selected now still gets an Adam step
        return self.step(optimizer, "G_main", self.clip_step_loss, {} if logs is None else logs, z)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.reseed()
        self.ensure_image_direction()
        z = self.latents_from_batch(batch)
        logs: dict[str, Tensor] = {}
        self.nada_iteration(z, self.optimizers(), logs)
        if self.selected_codes is not None:
            logs["nada/layers_trained"] = torch.tensor(float(len(layers_for_codes(
                self.g_train, self.selected_codes, self.layer_mapping))))
        self.end_iteration(z.shape[0], logs)

    def configure_optimizers(self):
        params = [p for layer in self._trainable_pool for p in layer.parameters()]
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=1e-8, weight_decay=0.0)

    # ------------------------------------------------------------------------------ sampling and export
    def render(self, generator: Generator, z: Tensor) -> Tensor:
        """Images in [-1, 1] of ``generator`` for ``z`` through the frozen mapping, stored noise, psi =
        ``sample_truncation``."""
        w = self.g_frozen.style(z.to(self.device))
        kwargs = ({"truncation": self.sample_truncation, "truncation_latent": self.mean_w(self.g_frozen)}
                  if self.sample_truncation < 1 else {})
        images, _ = generator([w], input_is_latent=True, randomize_noise=False, **kwargs)
        return images.clamp(-1, 1)

    def samplers(self) -> dict[str, Sampler]:
        """``source`` (G_frozen) and ``adapted`` (G_train): the same z and noise for both."""
        device = lambda: self.device  # noqa: E731 - follows the module across devices
        psi = self.sample_truncation
        return {"source": latent_sampler(lambda z: self.render(self.g_frozen, z), self.z_dim, device, truncation=psi),
                "adapted": latent_sampler(lambda z: self.render(self.g_train, z), self.z_dim, device, truncation=psi)}

    def export(self, path: Path) -> Path:
        """Write the adapted generator as a rosinality-compatible ``.pt`` (``g_ema`` = G_train, as the
        reference's output; ``latent_avg`` = :meth:`mean_w`) readable by ``models.checkpoints.load``."""
        from models import checkpoints

        info = {"source_text": self.source_text, "target_text": self.target_text,
                "target_images": None if self.target_images is None else str(self.target_images),
                "iterations": int(self.iteration)}
        return checkpoints.save(Path(path), g_ema=self.g_train, latent_avg=self.mean_w(self.g_frozen).squeeze(0).cpu(),
                                nada=info)


__all__ = ["NADAModule"]
