"""DualStyleGAN, progressive fine-tuning Stages II and III (Yang, Jiang, Liu, Loy, "Pastiche Master:
Exemplar-Based High-Resolution Portrait Style Transfer", CVPR 2022; docs/methods/dualstylegan.md).

G = :class:`models.dualstylegan.DualStyleGAN`: a frozen intrinsic StyleGAN2 g (``model.generator``) plus the
trained extrinsic path (T_s ``style``, ModRes and T_c ``res``). Only the extrinsic path and D are optimised;
every code is W+ (our W+ encoder; the reference keeps Z+ codes and maps them, see the method page). Stage I
(colour transfer) needs no training: it is the initialisation of the extrinsic path.

Stage II, structure transfer on the source domain (``stage: structure``; real images = the source data)::

    z1, z2 ~ N(0, I); l = the mixing layer of the schedule (l1, l2, l3) = (res_index+1, res_index, res_index-1)
                         (7, 6, 5 at 1024 px) over 300 + 300 + 3000 iterations of the reference
    T  = g(w1 rows < l, w2 rows >= l)                               the style-mixing target, no gradient
    e  = E(g(w2)) every subspace_freq-th (4th) step (W+ encoder), else mapping(z2)
    Ŷ  = G(w1, e, w = 1)                                            the same z1, z2 in the D and the G step
    D  = λ_adv [softplus(-D(x)) + softplus(D(Ŷ))]                  λ_adv 0.1; lazy R1 (γ 10 / 16) unscaled
    G  = λ_adv softplus(-D(Ŷ)) + λ_perc Σ_{relu1_1, relu2_1, relu3_1} mean|φ(↓Ŷ) - φ(↓T)|     λ_perc 0.5

Stage III, style transfer on the target domain (``stage: style``; start from the Stage II export with ``init``)::

    helper(n): rows k of the code table; i_k = intrinsic code with its colour rows >= res_index+2 re-drawn
               (mapping of fresh z), e_k = extrinsic code + N(0, σ² I) (σ 0.1, in W+), S_k = style image k
    unpaired (iteration % subspace_freq == 0, every other step): Ŷ = G(z mixed (0.9), e_k); D reals = the data
    paired   (the other steps):                                  Ŷ = G(i_k, e_k);           D reals = S_k
    D and G steps draw their inputs separately (the reference)
    G  = λ_adv softplus(-D(Ŷ)) + λ_perc [0.5 L1 relu2_1 + 1.0 L1 relu3_1](Ŷ, S_k) (paired only)
         + λ_CX CX_relu3_1(Ŷ, S_k) + λ_FM Σ_{relu2_1, relu3_1} MSE(μφ(Ŷ), μφ(S_k))
         + λ_ID (1 - cos(F(Ŷ), F(C))) + λ_reg Σ_{p in res} ‖p‖₂
    C  = g(the intrinsic input of Ŷ) without gradient: ``content_redraw: true`` (reference) re-draws its
         crossover index and noise, ``false`` renders exactly the intrinsic input (and noise) of Ŷ
    weights (reference): adv 1, perc 1, CX 0.25, FM 0.25, ID 1, reg 0.01 (its README: 0.015; tune per style)

Both stages: path-length regularisation (weight 2 every 4 steps) w.r.t. the intrinsic W+ latents of a mixed z
(0.9) with e = mapping(z') (Stage II) or a helper code (Stage III); Adam lr 0.002 with the lazy-regularisation
correction; VGG19 and ArcFace inputs are average-pooled to ``vgg_size`` (256). G_ema averages ``res`` only
(the reference's ``accumulate(g_ema.res, g.res)``: T_s of G_ema keeps its initial weights); ``ema_style: true``
averages T_s too.

Samplers: Stage II ``structure`` (random z1, e = mapping(z2)) and ``intrinsic``; Stage III ``style/<name>`` per
exemplar of ``sample_styles`` (random content, that exemplar's extrinsic code, the inference weights 0.75
structure / 1 colour) and ``intrinsic``. The product is ``generator.pt`` (``models.dualstylegan.save``: the
intrinsic g, G_ema's extrinsic path, D, G's extrinsic path, both Adam states and the code table's path and
names), which ``init`` of the next stage reads (G, G_ema, D and, as the reference, the Adam moments).

Deviations: the mixing layer follows a kimg schedule instead of three restarted loops (the reference restarts
its step counter, R1/path-length cadence and path-length mean per loop); the EMA half-life is in kimg
(``gan.ema_kimg``; the reference's 0.5 ** (32 / 10⁴) per step equals 10 kimg at batch 32, 1.25 kimg at
Stage II's batch 4); every code, the jitter, the re-drawn colour rows (mapping of fresh z instead of fresh Z+
rows) and Stage II's encoder are W+; the new extrinsic path is drawn from ``seed`` when it is set; no ADA
(``gan.diffaugment`` is available instead).
"""
from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_modules.base import MethodModule
from lightning_modules.config_groups import GANSettings, GeneratorSpec, coerce_group
from lightning_modules.ema import ema_beta, update_ema
from lightning_modules.gan import StyleGAN2Core
from losses.adversarial import d_logistic_loss, g_nonsaturating_loss
from losses.contextual import contextual_loss
from losses.dualstylegan import feature_matching_loss, l2_regularization, perceptual_l1_loss
from losses.identity import identity_loss
from models import dualstylegan as dsg
from models.frozen import trainable
from models.sampler import Sampler, StyleSampler, seeded_normal
from models.style_codes import StyleCodes, StyleCodesError

log = logging.getLogger(__name__)

STAGES = ("structure", "style")
IDENTITY_ASSET = "identity-arcface-ir-se50"
VGG_LAYERS = ("relu1_1", "relu2_1", "relu3_1")
STAGE3_LAYERS = ("relu2_1", "relu3_1")
#: the reference Stage II: 300 + 300 + 3000 iterations at batch 4
REFERENCE_SCHEDULE_ITERATIONS = (300, 300, 3000)
REFERENCE_STAGE2_BATCH = 4
#: per-stage defaults of the stage-dependent options (reference values)
STAGE_DEFAULTS = {"structure": {"lambda_adv": 0.1, "lambda_perc": 0.5, "subspace_freq": 4},
                  "style": {"lambda_adv": 1.0, "lambda_perc": 1.0, "subspace_freq": 2}}
TRAIN_KEY = "dualstylegan_train"
"""Export entry with the trained (non-EMA) extrinsic path, the start of G when a later stage reads the file."""
CODES_KEY = "style_codes"
OPTIMIZERS_KEY = "optimizers"
"""Export entry with the Adam states of G's extrinsic path (``g``) and D (``d``), which the next stage resumes."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class StepInputs:
    """What one phase renders: Ŷ = G(``latent``, ``e``) and what its losses compare Ŷ with."""

    kind: str                         # "structure", "unpaired" or "paired"
    latent: Tensor                    # intrinsic W+ of Ŷ [B, n_latent, D]
    e: Tensor                         # extrinsic W [B, D] or W+ [B, n_latent, D]
    target: Tensor | None = None      # Stage II: W+ of the style-mixing target T
    exemplar: Tensor | None = None    # Stage III: the exemplars S [B, 3, H, W]
    w_list: list[Tensor] | None = None  # Stage III unpaired: the mapped z (to re-draw the content's crossover)


class DualStyleGANModule(StyleGAN2Core):
    """DualStyleGAN Stage II (``stage="structure"``) or Stage III (``stage="style"``); see the module docstring.

    Args:
        generator: the ``model.generator`` group: the intrinsic StyleGAN2 (its ``g_ema``, frozen) and the D to
            start from (Stage II). Optional with ``init`` (whose intrinsic generator is then used; given both,
            they must hold the same weights).
        stage: ``"structure"`` (Stage II) or ``"style"`` (Stage III).
        init: a previous stage's ``generator.pt``: G's and G_ema's extrinsic path and D start from it.
        res_index: last structure W+ index (even; default ``models.dualstylegan.default_res_index``, 6 at
            1024 px; taken from ``init`` when given). ``structure_layers``: EqualLinear layers of T_s.
        mixing_layers: Stage II mixing layers l in order (default ``[res_index+1, res_index, res_index-1]``).
        schedule_kimg: kimg of each mixing layer (the last one lasts to the end); default: ``total_kimg`` split
            by ``schedule_fractions`` (300 : 300 : 3000), or without ``total_kimg`` the reference's iterations
            at batch 4 (1.2, 1.2, 12 kimg).
        subspace_freq: Stage II: every n-th step e = E(g(z2)) (4); Stage III: every n-th step unpaired, the
            others paired (2).
        encoder: our W+ encoder file (``models.encoders.save_encoder``) for Stage II's E(g(z2)); null: that
            branch uses mapping(z2) (logged once).
        codes: Stage III code table (``models.style_codes.StyleCodes`` file; W+ codes by file name).
        styles: folder of the style images the code table names (read per paired step, never all at once).
        lambda_adv, lambda_perc: adversarial and perceptual weights (Stage II 0.1 and 0.5 per layer; Stage
            III 1 and 1); ``lambda_cx``, ``lambda_fm``, ``lambda_id``, ``lambda_reg``: Stage III (0.25, 0.25, 1,
            0.01).
        jitter: σ of the W+ jitter of the extrinsic codes (0.1).
        identity: ``"auto"`` (the ArcFace asset ``identity-arcface-ir-se50``; missing: an error), an asset name or
            file, ``"random"`` (a seeded small stand-in, offline tests) or ``"none"`` (non-face styles: no ID loss).
        content_redraw: the ID content image re-draws its crossover and noise (reference, true) or renders the
            same intrinsic input as Ŷ (false).
        ema_style: also average T_s into G_ema (false: only ``res``, the reference).
        carry_optimizers: a fresh run from ``init`` starts its Adams from the states stored in that file (the
            reference: Stage III loads Stage II's ``g_optim`` / ``d_optim``); the learning rates and betas stay
            this run's.
        vgg: VGG19 weights: ``"auto"`` (the asset), an asset name or file, or ``"random"`` (seeded stand-in).
        vgg_size: images are average-pooled to this size before VGG19 / ArcFace (256; smaller images are used
            as they are). ``cx_chunk``: positions per chunk of the contextual loss (memory bound; null: all).
        sample_styles: exemplars of the ``style/<name>`` samplers (default: the first 4 of the table);
            ``sample_weights``: their weight vector w (default 0.75 structure / 1 colour).
        gan: the ``model.gan`` group (lr 0.002, R1 10 every 16, path length 2 every 4, mixing 0.9, EMA 10 kimg).
        **base: ``seed``, ``nan_policy``, ``total_kimg``, ``grad_reset``, ``max_consecutive_skips``.
    """

    product_file = "generator.pt"

    def __init__(self, generator: GeneratorSpec | Mapping[str, Any] | str | None = None, *,
                 stage: Literal["structure", "style"] = "structure", init: str | None = None,
                 res_index: int | None = None, structure_layers: int | None = None,
                 mixing_layers: Sequence[int] | None = None, schedule_kimg: Sequence[float] | None = None,
                 schedule_fractions: Sequence[float] = REFERENCE_SCHEDULE_ITERATIONS,
                 subspace_freq: int | None = None, encoder: str | None = None,
                 codes: str | None = None, styles: str | None = None,
                 lambda_adv: float | None = None, lambda_perc: float | None = None, lambda_cx: float = 0.25,
                 lambda_fm: float = 0.25, lambda_id: float = 1.0, lambda_reg: float = 0.01, jitter: float = 0.1,
                 identity: str = "auto", content_redraw: bool = True, ema_style: bool = False,
                 carry_optimizers: bool = True,
                 vgg: str = "auto", vgg_size: int | None = 256, cx_chunk: int | None = 1024,
                 sample_styles: Sequence[str] | None = None, sample_weights: Sequence[float] | None = None,
                 gan: GANSettings | Mapping[str, Any] | None = None, **base: Any):
        super().__init__(gan=gan, **base)
        self.save_hyperparameters()
        if stage not in STAGES:
            raise ValueError(f"model.stage must be one of {STAGES}, got {stage!r}")
        self.stage = stage
        defaults = STAGE_DEFAULTS[stage]
        self.lambdas = {"adv": defaults["lambda_adv"] if lambda_adv is None else float(lambda_adv),
                        "perc": defaults["lambda_perc"] if lambda_perc is None else float(lambda_perc),
                        "cx": float(lambda_cx), "fm": float(lambda_fm), "id": float(lambda_id),
                        "reg": float(lambda_reg)}
        for key, value in self.lambdas.items():
            if not 0.0 <= value < math.inf:
                raise ValueError(f"model.lambda_{key} must be finite and >= 0, got {value}")
        self.subspace_freq = int(defaults["subspace_freq"] if subspace_freq is None else subspace_freq)
        if self.subspace_freq < 1:
            raise ValueError(f"model.subspace_freq must be >= 1, got {subspace_freq}")
        if not 0.0 <= float(jitter) < math.inf:
            raise ValueError(f"model.jitter must be finite and >= 0, got {jitter}")
        self.jitter, self.content_redraw, self.ema_style = float(jitter), bool(content_redraw), bool(ema_style)
        if vgg_size is not None and vgg_size < 1:
            raise ValueError(f"model.vgg_size must be >= 1 or null, got {vgg_size}")
        self.vgg_size, self.cx_chunk = vgg_size, cx_chunk
        self.init_path = init
        self.carry_optimizers = bool(carry_optimizers)
        self._init_optimizers: dict[str, Any] | None = None

        generator_net, discriminator, g_ema = self._build_networks(generator, init, res_index, structure_layers)
        self.generator, self.discriminator, self.g_ema = generator_net, discriminator, g_ema
        self.res_index = int(generator_net.res_index)
        n_latent = int(generator_net.n_latent)

        # ---- Stage II: the mixing-layer schedule and the encoder
        self.mixing_layers = (_mixing_layers_for(mixing_layers, n_latent)
                              or default_mixing_layers(self.res_index, n_latent))
        self.schedule_kimg = self._schedule(schedule_kimg, schedule_fractions)
        self.encoder_path = encoder
        self._encoder_resolution: int | None = None
        self._encoder_fallback_logged = False
        if stage == "structure" and encoder is not None:
            self._load_encoder(encoder)
        elif encoder is not None:
            raise ValueError("model.encoder is used by stage 'structure' only (Stage III reads the code table)")

        # ---- Stage III: the code table and the style folder
        self.codes_path, self.styles_path = codes, styles
        self.code_names: list[str] = []
        if stage == "style":
            self._load_codes(codes, styles)
        elif codes is not None or styles is not None:
            raise ValueError("model.codes / model.styles are used by stage 'style' only")
        self.sample_styles = self._sample_styles(sample_styles)
        self.sample_weights = (dsg.inference_weights(n_latent, self.res_index) if sample_weights is None
                               else [float(v) for v in sample_weights])
        if len(self.sample_weights) != n_latent:
            raise ValueError(f"model.sample_weights needs {n_latent} entries (one per W+ index), "
                             f"got {len(self.sample_weights)}")

        # ---- frozen helpers: VGG19 (both stages), ArcFace (Stage III)
        self.vgg_weights = vgg
        self.hold("vgg", self._build_vgg(vgg), dtype=torch.float32)
        self.identity_name = identity
        identity_net = self._build_identity(identity) if stage == "style" and self.lambdas["id"] > 0 else None
        if identity_net is not None:
            self.hold("identity_net", identity_net, dtype=torch.float32)
        else:
            self.identity_net = None

    # ------------------------------------------------------------------------------ construction helpers
    def _build_networks(self, generator, init, res_index, structure_layers):
        """G (trained extrinsic path), D and G_ema around one frozen intrinsic generator."""
        spec = coerce_group(GeneratorSpec, generator, "model.generator") if generator is not None else None
        intrinsic = discriminator = None
        if spec is not None:
            g_train, discriminator, g_ema = spec.gan()
            intrinsic = (g_ema if g_ema is not None else g_train).eval()
        init_model = init_train = None
        if init is not None:
            from models import checkpoints

            if not Path(init).is_file():
                raise FileNotFoundError(f"model.init: {init} does not exist (a DualStyleGAN generator.pt export)")
            init_model = dsg.load(init)
            loaded = checkpoints.load(init, networks=("d",))
            init_train = (loaded.extra.get(TRAIN_KEY) or {}).get("state_dict")
            self._init_optimizers = _stored_optimizers(init) if self.carry_optimizers else None
            if loaded.d is not None:
                discriminator = loaded.d
            elif discriminator is None:
                rank_zero_warn(f"model.init: {init} holds no discriminator: D starts from random weights")
            if intrinsic is None:
                intrinsic = init_model.generator
            else:
                _check_same_intrinsic(intrinsic, init_model.generator, init)
            for key, value in (("res_index", res_index), ("structure_layers", structure_layers)):
                have = getattr(init_model, key)
                if value is not None and int(value) - (int(value) % 2 if key == "res_index" else 0) != have:
                    raise ValueError(f"model.{key}={value} disagrees with model.init {init} ({key}={have})")
            res_index, structure_layers = init_model.res_index, init_model.structure_layers
        if intrinsic is None:
            raise ValueError("model.generator (the intrinsic StyleGAN2) or model.init (a previous stage's export) "
                             "is required")
        if discriminator is None:
            from models.stylegan2 import Discriminator

            rank_zero_warn("no discriminator to start from: D starts from random weights")
            discriminator = Discriminator(intrinsic.size, channels=dict(intrinsic.channels))
        with torch.random.fork_rng(devices=[]):  # the new extrinsic path: a function of ``seed`` when given
            if self.seed is not None:
                torch.manual_seed(int(self.seed))
            net = dsg.DualStyleGAN(intrinsic, res_index=res_index, structure_layers=structure_layers)
        if init_model is not None:
            net.load_state_dict(init_train if init_train is not None else init_model.state_dict(), strict=True)
        # G_ema shares the frozen intrinsic generator with G (one copy of its weights)
        ema = copy.deepcopy(net, memo={id(intrinsic): intrinsic})
        if init_model is not None:
            ema.load_state_dict(init_model.state_dict(), strict=True)
        ema.requires_grad_(False).eval()
        return net.train(), discriminator.train(), ema

    def _schedule(self, schedule_kimg, fractions) -> list[float]:
        n = len(self.mixing_layers)
        if schedule_kimg is not None:
            durations = [float(v) for v in schedule_kimg]
            if len(durations) not in (n, n - 1) or any(not d > 0 for d in durations):
                raise ValueError(f"model.schedule_kimg needs {n} (or {n - 1}) positive durations, one per mixing "
                                 f"layer {self.mixing_layers}, got {list(schedule_kimg)}")
            return durations[: n - 1] if n > 1 else []
        fractions = [float(v) for v in fractions]
        if len(fractions) != n or any(not f > 0 for f in fractions):
            raise ValueError(f"model.schedule_fractions needs {n} positive entries, got {fractions}")
        if self.total_kimg is not None:
            scale = float(self.total_kimg) / sum(fractions)
        else:  # the reference's iterations at its batch of 4
            scale = REFERENCE_STAGE2_BATCH / 1000.0 * sum(REFERENCE_SCHEDULE_ITERATIONS) / sum(fractions)
        return [f * scale for f in fractions[: n - 1]]

    def _load_encoder(self, path: str) -> None:
        from models.encoders import load_encoder

        if not Path(path).is_file():
            raise FileNotFoundError(f"model.encoder: {path} does not exist (a W+ encoder from "
                                    f"models.encoders.save_encoder, e.g. an idinvert run's encoder.pt)")
        encoder, config = load_encoder(path)
        want = (self.generator.n_latent, self.generator.style_dim)
        if (config["n_latent"], config["style_dim"]) != want:
            raise ValueError(f"model.encoder: {path} emits W+ [{config['n_latent']}, {config['style_dim']}], the "
                             f"generator needs [{want[0]}, {want[1]}]")
        self._encoder_resolution = int(config["resolution"])
        self.hold("encoder", encoder, dtype=torch.float32)

    def _load_codes(self, codes: str | None, styles: str | None) -> None:
        if codes is None or styles is None:
            raise ValueError("stage 'style' needs model.codes (the code table of facial destylization) and "
                             "model.styles (the folder of the style images it names)")
        table = StyleCodes.load(codes)  # a missing file: FileNotFoundError naming it
        table.check(self.generator.n_latent, self.generator.style_dim, where=f"model.codes {codes}")
        folder = Path(styles)
        if not folder.is_dir():
            raise FileNotFoundError(f"model.styles: {styles} is not a folder of style images")
        missing = [n for n in table.names if not (folder / n).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise StyleCodesError(f"model.codes {codes}: {len(missing)} of its {len(table)} file names are not in "
                                  f"model.styles {styles}: {shown}")
        self.code_names = list(table.names)
        self.register_buffer("codes_intrinsic", table.intrinsic.float().clone(), persistent=False)
        self.register_buffer("codes_extrinsic", table.extrinsic.float().clone(), persistent=False)

    def _sample_styles(self, names: Sequence[str] | None) -> list[int]:
        if self.stage != "style":
            return []
        if names is None:
            return list(range(min(4, len(self.code_names))))
        table = StyleCodes(self.code_names, self.codes_intrinsic, self.codes_extrinsic)
        return [table.index(n) for n in names]

    @staticmethod
    def _build_vgg(vgg: str):
        from models import vgg19

        if vgg == "random":
            return vgg19.VGG19Features(VGG_LAYERS, weights=None)
        return vgg19.VGG19Features(VGG_LAYERS, weights=vgg19.DEFAULT_WEIGHTS if vgg == "auto" else vgg)

    @staticmethod
    def _build_identity(identity: str):
        from models.identity import ArcFaceIRSE50, load_arcface

        if identity == "none":
            return None
        if identity == "random":  # a seeded, small stand-in of the same interface (offline tests)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return ArcFaceIRSE50(stages=((16, 1), (16, 1), (16, 1), (16, 1)), embed_dim=32).eval()
        from models.assets import AssetMissingError, resolve

        name = IDENTITY_ASSET if identity == "auto" else identity
        try:
            path = resolve(name)
        except AssetMissingError as err:
            raise FileNotFoundError(f"model.identity: DualStyleGAN's identity loss needs the ArcFace network (set "
                                    f"model.identity=none for non-face styles, random for an offline stand-in)\n"
                                    f"{err}") from None
        return load_arcface(path)

    # ------------------------------------------------------------------------------ networks and codes
    @property
    def intrinsic(self):
        """The frozen intrinsic StyleGAN2 g (shared by G and G_ema)."""
        return self.generator.generator

    def sample_noise(self, n: int) -> list[Tensor]:
        return [torch.randn(n, 1, b.shape[-2], b.shape[-1], device=self.device, generator=self.rng)
                for b in self.intrinsic.stored_noise()]

    @torch.no_grad()
    def mapped(self, z: Tensor) -> Tensor:
        """W = mapping(z) of the frozen intrinsic generator."""
        return self.intrinsic.style(z)

    def broadcast(self, w: Tensor) -> Tensor:
        return w if w.ndim == 3 else w.unsqueeze(1).repeat(1, self.generator.n_latent, 1)

    def mix(self, w_list: Sequence[Tensor], index: int | None) -> Tensor:
        """W+ of rows ``< index`` from ``w_list[0]`` and ``>= index`` from ``w_list[1]`` (one code: itself)."""
        if len(w_list) == 1 or index is None:
            return self.broadcast(w_list[0])
        return torch.cat([self.broadcast(w_list[0])[:, :index], self.broadcast(w_list[1])[:, index:]], 1)

    def render(self, latent: Tensor, e: Tensor | None, noise: list[Tensor] | None = None,
               use_res: bool = True, generator=None) -> Tensor:
        """``G(latent, e, w = 1)`` (``use_res=False``: the intrinsic g) with the given or fresh noise."""
        generator = self.generator if generator is None else generator
        noise = self.sample_noise(latent.shape[0]) if noise is None else noise
        if not use_res:
            return self.intrinsic([latent], input_is_latent=True, noise=noise)[0]
        return generator([latent], e, input_is_latent=True, noise=noise)[0]

    def mixing_layer(self, kimg: float | None = None) -> int:
        """Stage II's mixing layer l at ``kimg`` (default: now)."""
        kimg = self.kimg if kimg is None else kimg
        end = 0.0
        for layer, duration in zip(self.mixing_layers, self.schedule_kimg):
            end += duration
            if kimg < end - 1e-9:
                return layer
        return self.mixing_layers[-1]

    def draw_codes(self, n: int) -> tuple[list[int], Tensor, Tensor]:
        """The paired-data helper without the images: rows, intrinsic codes with re-drawn colour rows, and
        jittered extrinsic codes (W+)."""
        rows = torch.randint(len(self.code_names), (n,), device=self.device, generator=self.rng)
        latent = self.codes_intrinsic[rows].clone()
        first = self.res_index + 2  # 8 at 1024 px: the colour rows of the intrinsic code
        if first < latent.shape[1]:
            count = latent.shape[1] - first
            z = torch.randn(n * count, self.z_dim, device=self.device, generator=self.rng)
            latent[:, first:] = self.mapped(z).reshape(n, count, -1)
        e = self.codes_extrinsic[rows]
        if self.jitter > 0:
            e = e + self.jitter * torch.randn(e.shape, device=self.device, generator=self.rng)
        return rows.tolist(), latent, e

    def style_images(self, rows: Sequence[int]) -> Tensor:
        """Style images of table rows ``rows`` [B, 3, size, size] in [-1, 1], read from ``styles`` now."""
        size = int(self.generator.size)
        images = [_read_image(Path(self.styles_path) / self.code_names[r], size) for r in rows]
        return torch.stack(images).to(self.device)

    # ------------------------------------------------------------------------------ step inputs
    @torch.no_grad()
    def structure_inputs(self, n: int) -> StepInputs:
        """Stage II: z1, z2, the target's W+ at the current mixing layer and e (encoder or mapping)."""
        w1, w2 = self.mapped(self.sample_z(n)), self.mapped(self.sample_z(n))
        target = self.mix([w1, w2], self.mixing_layer())
        e = w2
        if self.iteration % self.subspace_freq == 0:
            if self.held_networks().get("encoder") is not None:
                source = self.render(self.broadcast(w2), None, use_res=False)
                e = self.encoder(_resize(source, self._encoder_resolution).float()).to(w2.dtype)
            elif not self._encoder_fallback_logged:
                self._encoder_fallback_logged = True
                rank_zero_info("DualStyleGAN Stage II: no model.encoder, so the E(g(z2)) steps use e = mapping(z2)")
        return StepInputs("structure", self.broadcast(w1), e, target=target)

    @torch.no_grad()
    def style_inputs(self, n: int, paired: bool) -> StepInputs:
        """Stage III: paired (i_k, e_k, S_k) or unpaired (mixed z, e_k, S_k) inputs."""
        rows, latent, e = self.draw_codes(n)
        if paired:
            return StepInputs("paired", latent, e, exemplar=self.style_images(rows))
        z_list, index = self.mixing_styles(n)
        w_list = [self.mapped(z) for z in z_list]
        return StepInputs("unpaired", self.mix(w_list, index), e, exemplar=self.style_images(rows), w_list=w_list)

    def step_inputs(self, n: int) -> StepInputs:
        if self.stage == "structure":
            return self.structure_inputs(n)
        return self.style_inputs(n, paired=self.paired_step())

    def paired_step(self) -> bool:
        """Stage III: this iteration uses paired data (every step but each ``subspace_freq``-th)."""
        return self.stage == "style" and self.iteration % self.subspace_freq != 0

    # ------------------------------------------------------------------------------ features
    def pool(self, images: Tensor) -> Tensor:
        """Average-pool to ``vgg_size`` (the reference's ↓256) when larger."""
        if self.vgg_size is None or images.shape[-1] <= self.vgg_size:
            return images
        return F.adaptive_avg_pool2d(images, self.vgg_size)

    def features(self, images: Tensor) -> dict[str, Tensor]:
        """VGG19 relu1_1, relu2_1, relu3_1 of the pooled images, fp32."""
        with torch.autocast(images.device.type, enabled=False):
            out = self.vgg(self.pool(images).float())
        return dict(out) if isinstance(out, Mapping) else dict(zip(VGG_LAYERS, out))

    def identity_embedding(self, images: Tensor) -> Tensor:
        with torch.autocast(images.device.type, enabled=False):
            return self.identity_net.embed(self.pool(images).float())

    # ------------------------------------------------------------------------------ loss terms
    def structure_terms(self, fake: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Stage II G terms (unweighted): ``adv`` = mean softplus(-D(Ŷ)), ``perc`` = Σ_j mean|φ_j(Ŷ) - φ_j(T)|."""
        adv = g_nonsaturating_loss(self.discriminate(fake).float())
        with torch.no_grad():
            target_feats = self.features(target)
        fake_feats = self.features(fake)
        perc = perceptual_l1_loss([fake_feats[k] for k in VGG_LAYERS], [target_feats[k] for k in VGG_LAYERS],
                                  weights=(1.0,) * len(VGG_LAYERS))
        return {"adv": adv, "perc": perc}

    def style_terms(self, fake: Tensor, exemplar: Tensor, content: Tensor | None, paired: bool) -> dict[str, Tensor]:
        """Stage III G terms (unweighted): adv, perc (paired only), cx, fm, id (with an identity network), reg."""
        terms = {"adv": g_nonsaturating_loss(self.discriminate(fake).float())}
        with torch.no_grad():
            s_feats = self.features(exemplar)
        f_feats = self.features(fake)
        pairs = ([f_feats[k] for k in STAGE3_LAYERS], [s_feats[k] for k in STAGE3_LAYERS])
        if paired:
            terms["perc"] = perceptual_l1_loss(*pairs)
        terms["cx"] = contextual_loss(f_feats["relu3_1"], s_feats["relu3_1"], chunk_size=self.cx_chunk)
        terms["fm"] = feature_matching_loss(*pairs)
        if self.identity_net is not None and content is not None:
            with torch.no_grad():
                source = self.identity_embedding(content)
            terms["id"] = identity_loss(source, self.identity_embedding(fake))
        terms["reg"] = l2_regularization(self.generator.res.parameters())
        return terms

    def weighted(self, terms: Mapping[str, Tensor]) -> Tensor:
        """``Σ λ_k term_k``."""
        return sum(self.lambdas[k] * v for k, v in terms.items())

    @torch.no_grad()
    def content_image(self, inputs: StepInputs, noise: list[Tensor]) -> Tensor:
        """C of the ID loss: g(the intrinsic input of Ŷ); with ``content_redraw`` a fresh crossover (unpaired
        steps with two codes) and fresh noise, as the reference's second call of G."""
        if not self.content_redraw:
            return self.render(inputs.latent, None, noise, use_res=False)
        latent = inputs.latent
        if inputs.w_list is not None and len(inputs.w_list) == 2:
            index = int(torch.randint(1, self.generator.n_latent, (), device=self.device, generator=self.rng))
            latent = self.mix(inputs.w_list, index)
        return self.render(latent, None, use_res=False)

    # ------------------------------------------------------------------------------ phase losses
    def discriminator_loss(self, real: Tensor, fake: Tensor) -> tuple[Tensor, dict]:
        """D_main: λ_adv · logistic loss (the reference scales Stage II's by 0.1)."""
        real_logits = self.discriminate(real)
        fake_logits = self.discriminate(fake)
        loss = self.lambdas["adv"] * d_logistic_loss(real_logits.float(), fake_logits.float())
        return loss, {"loss/D_main": loss, "D/real_logits": real_logits.float().mean(),
                      "D/fake_logits": fake_logits.float().mean()}

    def generator_loss(self, inputs: StepInputs) -> tuple[Tensor, dict]:
        """G_main of either stage: Ŷ rendered with fresh noise, then the weighted terms."""
        noise = self.sample_noise(inputs.latent.shape[0])
        fake = self.render(inputs.latent, inputs.e, noise)
        if inputs.kind == "structure":
            with torch.no_grad():
                target = self.render(inputs.target, None, use_res=False)
            terms = self.structure_terms(fake, target)
        else:
            content = (self.content_image(inputs, noise) if self.identity_net is not None else None)
            terms = self.style_terms(fake, inputs.exemplar, content, paired=inputs.kind == "paired")
        loss = self.weighted(terms)
        return loss, {"loss/G_main": loss, **{f"loss/{k}": v for k, v in terms.items()}}

    def generate(self, n: int, return_latents: bool = False) -> tuple[Tensor, Tensor | None]:
        """G_reg's images: a mixed z (``mixing_prob``) as intrinsic W+ (differentiable leaf when
        ``return_latents``) and e = mapping(z') (Stage II) or a helper code (Stage III)."""
        z_list, index = self.mixing_styles(n)
        with torch.no_grad():
            latent = self.mix([self.mapped(z) for z in z_list], index)
            e = self.mapped(self.sample_z(n)) if self.stage == "structure" else self.draw_codes(n)[2]
        latent = latent.detach().requires_grad_(return_latents)
        images = self.render(latent, e)
        return images, (latent if return_latents else None)

    # ------------------------------------------------------------------------------ training step
    def training_step(self, batch: Any, batch_idx: int) -> None:
        data = self.prepare_batch(batch)
        opt_g, opt_d = self.optimizers()
        self.reseed()
        n = data.shape[0]
        logs: dict[str, Tensor] = {}
        if self.stage == "structure":
            logs["structure/mixing_layer"] = torch.tensor(float(self.mixing_layer()))
        else:
            logs["style/paired"] = torch.tensor(float(self.paired_step()))

        d_inputs = self.step_inputs(n)
        real = d_inputs.exemplar if d_inputs.kind == "paired" else data
        with trainable([self.discriminator], [self.generator]):
            with torch.no_grad():
                fake = self.render(d_inputs.latent, d_inputs.e)
            self.step(opt_d, "D_main", self.discriminator_loss, logs, real, fake)
            if self.r1_due():
                self.step(opt_d, "D_reg", self.discriminator_reg, logs, real)
        # Stage II re-uses the iteration's z1, z2 (and e); Stage III draws new helper data, as the reference
        g_inputs = d_inputs if self.stage == "structure" else self.step_inputs(n)
        with trainable([self.generator], [self.discriminator]):
            self.step(opt_g, "G_main", self.generator_loss, logs, g_inputs)
            if self.pl_due():
                self.step(opt_g, "G_reg", self.generator_reg, logs, data)
        self.end_iteration(n, logs)

    def end_iteration(self, batch_size: int, logs: dict[str, Tensor]) -> None:
        """G_ema.res (and with ``ema_style`` G_ema.style) <- lerp toward G; then the base's bookkeeping."""
        beta = ema_beta(int(batch_size) * self._world_size(), self.gan.ema_kimg, self.nimg, self.gan.ema_rampup)
        update_ema(self.g_ema.res, self.generator.res, beta)
        if self.ema_style:
            update_ema(self.g_ema.style, self.generator.style, beta)
        MethodModule.end_iteration(self, batch_size, logs)

    def on_train_start(self) -> None:
        """A fresh run from ``init`` continues the Adam states stored there (``carry_optimizers``)."""
        states = self._init_optimizers
        if self.carry_optimizers and states and self.iteration == 0 and self._trainer is not None:
            for optimizer, key in zip(self.trainer.optimizers, ("g", "d")):
                if isinstance(states.get(key), Mapping):
                    _load_adam_state(optimizer, states[key], f"model.init {self.init_path} ({key} optimizer)")
        self._init_optimizers = None
        super().on_train_start()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.trainer.is_global_zero:
            counts = dsg.part_counts(self.generator)
            log.info("DualStyleGAN stage %s: res_index %d, extrinsic path %d parameters (intrinsic %d, frozen)%s",
                     self.stage, self.res_index, counts["extrinsic"], counts["intrinsic"],
                     f"; mixing layers {self.mixing_layers} over {self.schedule_kimg} kimg"
                     if self.stage == "structure" else f"; {len(self.code_names)} style codes")

    # ------------------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return {"stage": self.stage, "res_index": self.res_index}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for key in ("stage", "res_index"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"the checkpoint was written with model.{key}={state[key]!r}, this config has "
                                 f"{getattr(self, key)!r}")

    # ------------------------------------------------------------------------------ sampling and export
    @torch.no_grad()
    def render_structure(self, z: Tensor) -> Tensor:
        """Stage II sampler: G_ema(w1, e = mapping(z2)), stored noise; ``z`` holds z1 and z2 side by side."""
        d = self.z_dim
        w1, w2 = self.mapped(z[:, :d].to(self.device)), self.mapped(z[:, d:].to(self.device))
        return self.g_ema([w1], w2, input_is_latent=True, randomize_noise=False)[0].clamp(-1, 1)

    @torch.no_grad()
    def render_style(self, z: Tensor, row: int) -> Tensor:
        """Stage III sampler: G_ema(mapping(z), e_row, w = ``sample_weights``), stored noise."""
        w = self.mapped(z.to(self.device))
        e = self.codes_extrinsic[row:row + 1].expand(w.shape[0], -1, -1)
        return self.g_ema([w], e, input_is_latent=True, randomize_noise=False,
                          interp_weights=self.sample_weights)[0].clamp(-1, 1)

    @torch.no_grad()
    def render_intrinsic(self, z: Tensor) -> Tensor:
        return self.intrinsic([z.to(self.device)], randomize_noise=False)[0].clamp(-1, 1)

    def samplers(self) -> dict[str, Sampler]:
        """Stage II: ``structure``, ``intrinsic``; Stage III: ``style/<name>`` per sampled exemplar, ``intrinsic``."""
        d = self.z_dim

        def seeded(fn, width):
            return Sampler(lambda idx, seed: fn(seeded_normal(idx, seed, width)), truncation=1.0)

        out: dict[str, Sampler] = {}
        if self.stage == "structure":
            out["structure"] = seeded(self.render_structure, 2 * d)
        for row in self.sample_styles:
            out[f"style/{Path(self.code_names[row]).stem}"] = self._style_sampler(row)
        out["intrinsic"] = seeded(self.render_intrinsic, d)
        return out

    def _style_sampler(self, row: int) -> StyleSampler:
        """``style/<name>``: image i = G_ema(mapping(z_i), e_row); its content is image i of ``intrinsic`` (the
        same z through g) and its exemplar the style image of ``row`` (read from ``styles`` when a metric asks;
        docs/metrics.md, "Style transfer")."""
        def render(idx, seed):
            return self.render_style(seeded_normal(idx, seed, self.z_dim), row)

        return StyleSampler(render, truncation=1.0, content="intrinsic", exemplar=self.code_names[row],
                            exemplar_image=lambda: self.style_images([row]))

    def export(self, path: Path) -> Path:
        """``models.dualstylegan.save``: the intrinsic g, G_ema's extrinsic path, D, G's extrinsic path
        (``dualstylegan_train``), the stage, kimg and (Stage III) the code table's path and names."""
        extra: dict[str, Any] = {
            TRAIN_KEY: {"state_dict": {k: v.detach().cpu().clone() for k, v in self.generator.state_dict().items()}},
            "stage": self.stage, "kimg": float(self.kimg)}
        if self.stage == "style":
            extra[CODES_KEY] = {"path": os.fspath(self.codes_path), "names": list(self.code_names)}
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        if len(optimizers) == 2:
            extra[OPTIMIZERS_KEY] = {key: _cpu(opt.state_dict()) for key, opt in zip(("g", "d"), optimizers)}
        return dsg.save(Path(path), self.g_ema, latent_avg=self.mean_w(self.intrinsic).squeeze(0).detach().cpu(),
                        d=self.discriminator, **extra)


# ---------------------------------------------------------------------------------------------- helpers
def _mixing_layers_for(layers: Sequence[int] | None, n_latent: int) -> list[int]:
    """Validated mixing layers (``None``: ``[]``, the caller's default)."""
    if layers is None:
        return []
    out = [int(v) for v in layers]
    if not out or any(not 1 <= v <= n_latent - 1 for v in out):
        raise ValueError(f"model.mixing_layers must be W+ indices in [1, {n_latent - 1}], got {list(layers)}")
    return out


def default_mixing_layers(res_index: int, n_latent: int) -> list[int]:
    """The reference's 7, 6, 5 at 1024 px: ``res_index + 1, res_index, res_index - 1`` (at least 1)."""
    return [min(n_latent - 1, max(1, v)) for v in (res_index + 1, res_index, res_index - 1)]


def _check_same_intrinsic(a, b, where: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape or not torch.equal(sa[k].cpu(), sb[k].cpu())
                                     for k in sa):
        raise ValueError(f"model.generator and the intrinsic generator of model.init {where} differ: drop "
                         f"model.generator (the export carries its intrinsic generator) or use the same file")


def _cpu(value: Any) -> Any:
    """A copy of an optimizer state dict with its tensors on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


def _stored_optimizers(path: str) -> dict[str, Any] | None:
    """The Adam states of an export (``models.checkpoints.load`` leaves optimizer entries out of ``extra``)."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - e.g. a file written without zipfile serialization: no mmap
        raw = torch.load(path, map_location="cpu", weights_only=True)
    value = raw.get(OPTIMIZERS_KEY) if isinstance(raw, Mapping) else None
    return dict(value) if isinstance(value, Mapping) else None


def _load_adam_state(optimizer, state: Mapping[str, Any], where: str) -> None:
    """Load a stored Adam state, keeping this optimizer's hyperparameters (lr, betas, ...)."""
    groups = optimizer.param_groups
    stored = state.get("param_groups") or []
    sizes = [len(g["params"]) for g in groups]
    if [len(g.get("params", [])) for g in stored] != sizes:
        rank_zero_warn(f"{where}: the stored optimizer state does not fit this network; Adam starts fresh")
        return
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in groups]
    optimizer.load_state_dict(dict(state))
    for group, own in zip(optimizer.param_groups, hyper):
        group.update(own)


def _resize(images: Tensor, size: int | None) -> Tensor:
    if size is None or images.shape[-1] == size:
        return images
    if images.shape[-1] > size:
        return F.adaptive_avg_pool2d(images, size)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _read_image(path: Path, size: int) -> Tensor:
    """One RGB image [3, size, size] in [-1, 1]: centre square crop and Lanczos resize when it is not that size."""
    from models.image_io import read_image

    return read_image(path, size)


__all__ = ["DualStyleGANModule", "StepInputs", "default_mixing_layers", "STAGES", "IDENTITY_ASSET"]
