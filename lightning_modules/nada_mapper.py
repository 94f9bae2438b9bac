"""The StyleGAN-NADA latent mapper ("mining"): a StyleCLIP latent mapper trained
on an *adapted* generator, to find the region of its latent space that shows the target (issue #54: useful
when the adapted generator outputs a mixture, e.g. dogs and cats).

One step (latents from the ``latents`` datamodule):

1. ``w = mapping(z)``, truncated with psi = 0.7 toward the mean W, broadcast to W+;
2. ``w' = w + edit_scale · M(w)`` (``edit_scale`` 0.1; :mod:`models.latent_mapper`);
3. ``x = G(w)`` (no gradient) and ``x' = G(w')``, stored noise (``randomize_noise=False``), psi 1;
4. ``L = λ_clip · Σ_m w_m (1 - cos(E_I(P_sc(x')), E_T(description))) + λ_latent · MSE(w', w)
   + λ_id · (1 - mean_b f(x')·f(x)) + λ_norm · MSE(‖E_I(P_sc(x))‖, ‖E_I(P_sc(x'))‖)``.

``P_sc`` is StyleCLIP's preprocessing, deliberately different from the NADA loss: nearest x7 upsampling then
average pooling to the CLIP input size, **no** ``(x+1)/2`` and no CLIP mean/std. The text is a single prompt
without templates. ``1 - cos`` replaces the reference's ``1 - logit/100`` (equal for OpenAI weights, whose
logit scale is 100). ``L_norm`` uses the first CLIP model (ViT-B/32 by default) and unnormalized embeddings.
``f`` is the ArcFace IR-SE50 identity network of the asset slot ``identity-arcface-ir-se50`` (faces only):
when that file is absent the identity term is skipped with a warning that says how to get it.

Defaults follow the reference (StyleCLIP's mapper code as vendored by StyleGAN-NADA): λ = (1.0, 0.8, 0.1, 0.5),
batch 2, the PixelNorm of each sub-mapper across the codes of its group (``mapper_norm="group"``), and Ranger
with lr 0.5 (:class:`Ranger`: RAdam + Lookahead + gradient centralization, β = (0.95, 0.999), eps 1e-5,
k 6, α 0.5, rectification threshold 5, no weight decay).

Deviation switches (not the reference): ``mapper_norm="code"`` normalizes every W+ code over its own channels;
``optimizer="adam"`` trains with ``torch.optim.Adam(lr)``. Deviation that always applies: fresh latents every
step instead of the reference's fixed pool of 5000 (which it also indexes with overlapping windows).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from pytorch_ranger import Ranger as _PackageRanger
from torch import Tensor

from lightning_modules.base import MethodModule
from lightning_modules.config_groups import GeneratorSpec, coerce_group
from lightning_modules.nada_setup import DTYPES, build_clip, check_assets, parse_clip_models
from losses.clip import encode_styleclip, global_clip_loss, norm_loss
from losses.identity import identity_loss
from models.identity import load_arcface
from models.latent_mapper import build_mapper
from models.sampler import Sampler, latent_sampler

IDENTITY_ASSET = "identity-arcface-ir-se50"
#: the reference's Ranger settings for the mapper (lr: the module's ``lr``, 0.5 by default)
RANGER_DEFAULTS = {"alpha": 0.5, "k": 6, "N_sma_threshhold": 5, "betas": (0.95, 0.999), "eps": 1e-5,
                   "weight_decay": 0.0}
# pytorch-ranger calls the ``add_(Number, Tensor)`` / ``addcmul_(Number, Tensor, Tensor)`` overloads
_RANGER_DEPRECATION = r"This overload of add(cmul|cdiv)?_ is deprecated"


class Ranger(_PackageRanger):
    """Ranger as StyleCLIP trains its mapper with: RAdam + Lookahead + gradient centralization.

    RAdam and Lookahead are those of the ``pytorch-ranger`` package (which the reference's algorithm matches
    apart from gradient centralization). Added here, before the package's update:

    * gradient centralization (the reference's default ``use_gc=True, gc_conv_only=False``): the gradient of
      every parameter with more than one dimension (the EqualLinear weights; not the biases) has its mean
      over all dimensions but the first removed, ``g <- g - mean_{1..}(g)``, in place as in the reference;
    * ``closure`` is evaluated (the package and the reference ignore it); Lightning passes one that runs the
      ``on_before_optimizer_step`` hooks.

    The package's deprecation warnings about the ``add_``/``addcmul_`` overloads it uses are silenced here.
    """

    def __init__(self, params: Iterable[Any], lr: float, *, centralize_gradients: bool = True, **kwargs: Any):
        super().__init__(params, lr=lr, **kwargs)
        self.centralize_gradients = bool(centralize_gradients)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.centralize_gradients:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and p.grad.dim() > 1:
                        p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_RANGER_DEPRECATION, category=UserWarning)
            super().step()
        return loss


def mapper_optimizer(params: Iterable[Any], optimizer: str = "ranger", lr: float = 0.5) -> torch.optim.Optimizer:
    """The mapper's optimizer: ``"ranger"`` (reference, :data:`RANGER_DEFAULTS`) or ``"adam"`` (torch defaults)."""
    if optimizer == "ranger":
        return Ranger(params, lr=lr, **RANGER_DEFAULTS)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer must be 'ranger' or 'adam', got {optimizer!r}")


class NADAMapperModule(MethodModule):
    """Latent mapper on a (NADA-adapted) generator (StyleGAN-NADA's latent mining).

    Args:
        generator: the ``model.generator`` group: the adapted generator (e.g. a NADA run's ``generator.pt``;
            any format ``models.checkpoints.load`` reads), or the architecture of a random toy one.
        description: the text the edited images should match (single prompt, no templates).
        clip_models: as :class:`~lightning_modules.nada.NADAModule` (default ViT-B/32 and ViT-B/16, weight 1).
        mapper: ``"levels"`` (default) or ``"single"``; ``coarse``/``medium``/``fine`` switch levels off.
        mapper_norm: where each sub-mapper's PixelNorm normalizes: ``"group"`` (default, reference: across the
            W+ codes of its group, channel by channel) or ``"code"`` (deviation: over each code's channels).
        edit_scale: ``w' = w + edit_scale · M(w)`` (0.1).
        lambda_clip, lambda_latent, lambda_id, lambda_norm: loss weights (1.0, 0.8, 0.1, 0.5).
        identity: identity network weights (asset name or file); missing -> the identity term is skipped.
        optimizer: ``"ranger"`` (default, reference: :class:`Ranger` with :data:`RANGER_DEFAULTS`) or
            ``"adam"`` (deviation: ``torch.optim.Adam`` with its defaults).
        lr: learning rate of either optimizer (0.5, the reference's; the EqualLinear lr_mul 0.01 scales it).
        truncation: psi of the training and sampling latents (0.7).
        clip_dtype: as NADAModule.
        **base: ``seed``, ``nan_policy``, ``total_kimg``.
    """

    product_file = "mapper.pt"
    generator_defaults = GeneratorSpec(init_seed=0)

    def __init__(self, generator: GeneratorSpec | Mapping[str, Any] | str | None = None, *,
                 description: str | None = None,
                 clip_models: Sequence[Mapping[str, Any]] | None = None, mapper: str = "levels",
                 mapper_norm: Literal["group", "code"] = "group",
                 coarse: bool = True, medium: bool = True, fine: bool = True, edit_scale: float = 0.1,
                 lambda_clip: float = 1.0, lambda_latent: float = 0.8, lambda_id: float = 0.1,
                 lambda_norm: float = 0.5, identity: str | None = IDENTITY_ASSET,
                 optimizer: Literal["ranger", "adam"] = "ranger", lr: float = 0.5,
                 truncation: float = 0.7, clip_dtype: str = "float32", **base: Any):
        super().__init__(**base)
        self.save_hyperparameters()
        if not isinstance(description, str) or not description:
            raise ValueError("model.description (the text the mapper edits toward) is required")
        if clip_dtype not in DTYPES:
            raise ValueError(f"clip_dtype must be one of {sorted(DTYPES)}, got {clip_dtype!r}")
        if optimizer not in ("ranger", "adam"):
            raise ValueError(f"optimizer must be 'ranger' or 'adam', got {optimizer!r}")
        if not 0.0 < truncation <= 1.0:
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        for key, value in (("lambda_clip", lambda_clip), ("lambda_latent", lambda_latent), ("lambda_id", lambda_id),
                           ("lambda_norm", lambda_norm)):
            if not 0.0 <= float(value) < float("inf"):
                raise ValueError(f"{key} must be finite and >= 0, got {value}")
        spec = coerce_group(GeneratorSpec, generator, "model.generator", self.generator_defaults)
        entries = parse_clip_models(clip_models)
        check_assets([spec.checkpoint] + [e["pretrained"] for e in entries], what="The NADA latent mapper")

        g = self.hold("decoder", spec.generator())  # the frozen generator being mined
        self.mapper = build_mapper(mapper, int(g.style_dim), int(g.n_latent), norm=mapper_norm, coarse=coarse,
                                   medium=medium, fine=fine)
        # CLIPModel holds its weights as a frozen network: nothing of CLIP is saved or optimized
        self.clips = torch.nn.ModuleList([build_clip(e, "reference", DTYPES[clip_dtype]) for e in entries])
        self.clip_weights = [e["weight"] for e in entries]
        self.description, self.edit_scale, self.truncation = description, float(edit_scale), float(truncation)
        self.lambdas = {"clip": float(lambda_clip), "latent": float(lambda_latent), "id": float(lambda_id),
                        "norm": float(lambda_norm)}
        identity_net = self._load_identity(identity) if self.lambdas["id"] > 0 else None
        if identity_net is None:
            self.identity_net, self.lambdas["id"] = None, 0.0
        else:
            self.hold("identity_net", identity_net)
        self.optimizer_name, self.lr = optimizer, float(lr)

    @staticmethod
    def _load_identity(identity: str | None):
        """The frozen IR-SE50, or None (with a warning naming the file and how to get it) when it is absent."""
        if identity is None:
            rank_zero_warn("identity loss disabled (model.identity is null)")
            return None
        from models.assets import resolve

        try:
            path = resolve(identity)
        except FileNotFoundError as err:
            rank_zero_warn(f"identity loss skipped: the identity network is not available.\n{err}")
            return None
        return load_arcface(path)

    # ------------------------------------------------------------------------------ latents
    @torch.no_grad()
    def w_plus(self, z: Tensor) -> Tensor:
        """Training/sampling codes: ``w = mean + psi (mapping(z) - mean)`` broadcast to W+."""
        g = self.decoder
        mean = self.mean_w(g)
        w = g.style(z.to(self.device))
        w = mean + self.truncation * (w - mean)
        return w.unsqueeze(1).repeat(1, g.n_latent, 1)

    def edit(self, w_plus: Tensor) -> Tensor:
        """``w' = w + edit_scale · M(w)``."""
        return w_plus + self.edit_scale * self.mapper(w_plus)

    def synthesize(self, w_plus: Tensor) -> Tensor:
        return self.decoder([w_plus], input_is_latent=True, randomize_noise=False)[0]

    # ------------------------------------------------------------------------------ loss
    def mapper_loss(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted loss of the module docstring and its un-weighted terms."""
        w = self.w_plus(z)
        w_edit = self.edit(w)
        with torch.no_grad():
            x = self.synthesize(w)
        x_edit = self.synthesize(w_edit)
        terms: dict[str, Tensor] = {"latent": F.mse_loss(w_edit, w)}
        edited = [encode_styleclip(clip, x_edit) for clip in self.clips]
        terms["clip"] = sum((wt * global_clip_loss(e, clip.class_embedding(self.description, templates=False))
                             for wt, e, clip in zip(self.clip_weights, edited, self.clips) if wt), x.new_zeros(()))
        if self.lambdas["norm"]:
            with torch.no_grad():
                source_emb = encode_styleclip(self.clips[0], x)
            terms["norm"] = norm_loss(source_emb, edited[0])
        if self.identity_net is not None:
            with torch.no_grad():
                source_id = self.identity_net.embed(x)
            terms["id"] = identity_loss(source_id, self.identity_net.embed(x_edit))
        loss = sum((self.lambdas[k] * v for k, v in terms.items()), x.new_zeros(()))
        return loss, terms

    def logged_loss(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, terms = self.mapper_loss(z)
        return loss, {f"loss/{k}": v for k, v in terms.items()} | {"loss/total": loss}

    # ------------------------------------------------------------------------------ Lightning
    def training_step(self, batch: Any, batch_idx: int) -> None:
        z = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.decoder.style_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise TypeError(f"expected a latent batch [B, {self.decoder.style_dim}] (datamodule 'latents'), "
                            f"got {shape}")
        logs: dict[str, Tensor] = {}
        self.step(self.optimizers(), "mapper", self.logged_loss, logs, z)
        self.end_iteration(z.shape[0], logs)

    def configure_optimizers(self):
        return mapper_optimizer(self.mapper.parameters(), self.optimizer_name, self.lr)

    # ------------------------------------------------------------------------------ sampling and export
    def samplers(self) -> dict[str, Sampler]:
        """``unedited`` (G(w)) and ``edited`` (G(w + scale · M(w))): the same latents, psi = ``truncation``."""
        device = lambda: self.device  # noqa: E731
        dim = int(self.decoder.style_dim)
        return {"unedited": latent_sampler(lambda z: self.synthesize(self.w_plus(z)).clamp(-1, 1), dim, device),
                "edited": latent_sampler(lambda z: self.synthesize(self.edit(self.w_plus(z))).clamp(-1, 1), dim,
                                         device)}

    def export(self, path: Path) -> Path:
        """``{"mapper": state dict, "config": {...}}`` (plain data, ``torch.load(weights_only=True)``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {k: self.hparams[k] for k in ("mapper", "mapper_norm", "coarse", "medium", "fine", "edit_scale",
                                               "description", "truncation")}
        config.update(style_dim=int(self.decoder.style_dim), n_latent=int(self.decoder.n_latent))
        torch.save({"mapper": {k: v.detach().cpu() for k, v in self.mapper.state_dict().items()}, "config": config},
                   path)
        return path


__all__ = ["NADAMapperModule", "IDENTITY_ASSET", "Ranger", "RANGER_DEFAULTS", "mapper_optimizer"]
