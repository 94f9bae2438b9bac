"""The StyleGAN-NADA latent mapper ("mining"), spec nada_expansion.md §A8: a StyleCLIP latent mapper trained
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

Defaults follow the reference: λ = (1.0, 0.8, 0.1, 0.5), batch 2, lr 0.5. Deviations: Adam instead of
Ranger (not part of torch); fresh latents every step instead of a fixed pool of 5000 (the reference's pool is
also indexed with overlapping windows, §A8 "[analysis] bug").
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from lightning_modules.gan import MEAN_W_SAMPLES, MEAN_W_SEED
from lightning_modules.nada_setup import (DTYPES, _Held, build_clip, check_assets, load_source_generator,
                                          parse_clip_models)
from losses.clip import global_clip_loss
from models.clip import CLIPModel
from models.identity import load_arcface
from models.latent_mapper import build_mapper
from models.sampler import Sampler, latent_sampler

log = logging.getLogger(__name__)

IDENTITY_ASSET = "identity-arcface-ir-se50"


def styleclip_preprocess(images: Tensor, size: int) -> Tensor:
    """StyleCLIP's CLIP input (§A8): nearest x7 upsampling, then average pooling to ``size`` x ``size``.

    For a 1024 px image and CLIP's 224 this is exactly the reference's ``AvgPool2d(kernel=1024 // 32)``.
    """
    return F.adaptive_avg_pool2d(F.interpolate(images, scale_factor=7, mode="nearest"), (size, size))


def encode_styleclip(clip: CLIPModel, images: Tensor) -> Tensor:
    """Unnormalized CLIP image embeddings ``[B, D]`` (fp32) of generator images through :func:`styleclip_preprocess`."""
    pixels = styleclip_preprocess(images.float(), clip.image_size).to(clip.device, clip.dtype)
    with torch.autocast(device_type=pixels.device.type, enabled=False):
        return clip.model.encode_image(pixels).float()


def norm_loss(emb_source: Tensor, emb_edited: Tensor) -> Tensor:
    """``L_norm = MSE(‖e(x)‖, ‖e(x')‖)`` over the batch (§A8, the NADA addition)."""
    return F.mse_loss(emb_edited.norm(dim=-1), emb_source.norm(dim=-1))


def identity_loss(feat_source: Tensor, feat_edited: Tensor) -> Tensor:
    """``L_id = mean_b (1 - f(x')·f(x))`` with unit identity embeddings (pSp / StyleCLIP)."""
    return (1.0 - (feat_edited * feat_source.detach()).sum(dim=-1)).mean()


class NADAMapperModule(pl.LightningModule):
    """Latent mapper on a (NADA-adapted) generator (spec §A8).

    Args:
        checkpoint: the adapted generator (e.g. a NADA run's ``generator.pt``; any format
            ``models.checkpoints.load`` reads), or ``generator`` + ``generator_seed`` for a random toy one.
        description: the text the edited images should match (single prompt, no templates).
        clip_models: as :class:`~lightning_modules.nada.NADAModule` (default ViT-B/32 and ViT-B/16, weight 1).
        mapper: ``"levels"`` (default) or ``"single"``; ``coarse``/``medium``/``fine`` switch levels off.
        edit_scale: ``w' = w + edit_scale · M(w)`` (0.1).
        lambda_clip, lambda_latent, lambda_id, lambda_norm: loss weights (1.0, 0.8, 0.1, 0.5).
        identity: identity network weights (asset name or file); missing -> the identity term is skipped.
        lr: Adam learning rate (0.5, the reference's Ranger rate; the EqualLinear lr_mul 0.01 scales it).
        truncation: psi of the training and sampling latents (0.7).
        clip_dtype: as NADAModule.
    """

    def __init__(self, checkpoint: str | None = None, generator: Mapping[str, Any] | None = None,
                 generator_seed: int = 0, description: str | None = None,
                 clip_models: Sequence[Mapping[str, Any]] | None = None, mapper: str = "levels",
                 coarse: bool = True, medium: bool = True, fine: bool = True, edit_scale: float = 0.1,
                 lambda_clip: float = 1.0, lambda_latent: float = 0.8, lambda_id: float = 0.1,
                 lambda_norm: float = 0.5, identity: str | None = IDENTITY_ASSET, lr: float = 0.5,
                 truncation: float = 0.7, clip_dtype: str = "float32"):
        super().__init__()
        self.save_hyperparameters()
        if not isinstance(description, str) or not description:
            raise ValueError("model.description (the text the mapper edits toward) is required")
        if clip_dtype not in DTYPES:
            raise ValueError(f"clip_dtype must be one of {sorted(DTYPES)}, got {clip_dtype!r}")
        if not 0.0 < truncation <= 1.0:
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        for key, value in (("lambda_clip", lambda_clip), ("lambda_latent", lambda_latent), ("lambda_id", lambda_id),
                           ("lambda_norm", lambda_norm)):
            if not 0.0 <= float(value) < float("inf"):
                raise ValueError(f"{key} must be finite and >= 0, got {value}")
        entries = parse_clip_models(clip_models)
        check_assets([checkpoint] + [e["pretrained"] for e in entries], what="The NADA latent mapper")

        g = load_source_generator(checkpoint, generator, generator_seed)
        self._decoder = _Held(g.requires_grad_(False).eval())
        self.mapper = build_mapper(mapper, int(g.style_dim), int(g.n_latent), coarse=coarse, medium=medium,
                                   fine=fine)
        # CLIPModel keeps its weights outside the module tree: nothing of CLIP is saved or optimized
        self.clips = torch.nn.ModuleList([build_clip(e, "reference", DTYPES[clip_dtype]) for e in entries])
        self.clip_weights = [e["weight"] for e in entries]
        self.description, self.edit_scale, self.truncation = description, float(edit_scale), float(truncation)
        self.lambdas = {"clip": float(lambda_clip), "latent": float(lambda_latent), "id": float(lambda_id),
                        "norm": float(lambda_norm)}
        self._identity = _Held(self._load_identity(identity)) if self.lambdas["id"] > 0 else None
        if self._identity is not None and self._identity.module is None:
            self._identity, self.lambdas["id"] = None, 0.0
        self.lr = float(lr)
        self.nimg = 0
        self.run_dir: Path | None = None
        self._mean_w: Tensor | None = None

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

    # ------------------------------------------------------------------------------ networks
    @property
    def decoder(self):
        """The frozen generator being mined (not saved, not optimized)."""
        return self._decoder.module

    @property
    def identity_net(self):
        return None if self._identity is None else self._identity.module

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.decoder._apply(fn)
        if self._identity is not None:
            self._identity.module._apply(fn)
        self._mean_w = None
        return self

    @property
    def kimg(self) -> float:
        return self.nimg / 1000.0

    @torch.no_grad()
    def mean_w(self) -> Tensor:
        if self._mean_w is None:
            generator = torch.Generator().manual_seed(MEAN_W_SEED)
            z = torch.randn(MEAN_W_SAMPLES, self.decoder.style_dim, generator=generator)
            self._mean_w = self.decoder.style(z.to(self.device)).mean(0, keepdim=True)
        return self._mean_w

    @torch.no_grad()
    def w_plus(self, z: Tensor) -> Tensor:
        """Training/sampling codes: ``w = mean + psi (mapping(z) - mean)`` broadcast to W+ (§A8 "Data")."""
        g = self.decoder
        w = g.style(z.to(self.device))
        w = self.mean_w() + self.truncation * (w - self.mean_w())
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

    # ------------------------------------------------------------------------------ Lightning
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        z = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.decoder.style_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise TypeError(f"expected a latent batch [B, {self.decoder.style_dim}] (datamodule 'latents'), "
                            f"got {shape}")
        loss, terms = self.mapper_loss(z)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite mapper loss: { {k: float(v) for k, v in terms.items()} }")
        world = self.trainer.world_size if self._trainer is not None else 1
        self.nimg += z.shape[0] * world
        self.log_dict({f"loss/{k}": v.detach() for k, v in terms.items()} | {"loss/total": loss.detach()},
                      on_step=True, on_epoch=False, batch_size=z.shape[0])
        self.log("kimg", self.kimg, prog_bar=True, on_step=True, on_epoch=False, batch_size=z.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.mapper.parameters(), lr=self.lr)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """No-op: metric callbacks evaluate the samplers."""

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """No-op: metric callbacks evaluate the samplers."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nada_mapper"] = {"nimg": self.nimg}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nimg = int(checkpoint.get("nada_mapper", {}).get("nimg", 0))

    # ------------------------------------------------------------------------------ sampling and export
    def samplers(self) -> dict[str, Sampler]:
        """``unedited`` (G(w)) and ``edited`` (G(w + scale · M(w))): the same latents, psi = ``truncation``."""
        device = lambda: self.device  # noqa: E731
        dim = int(self.decoder.style_dim)
        return {"unedited": latent_sampler(lambda z: self.synthesize(self.w_plus(z)).clamp(-1, 1), dim, device),
                "edited": latent_sampler(lambda z: self.synthesize(self.edit(self.w_plus(z))).clamp(-1, 1), dim,
                                         device)}

    def export_mapper(self, path: str | Path) -> Path:
        """``{"mapper": state dict, "config": {...}}`` (plain data, ``torch.load(weights_only=True)``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {k: self.hparams[k] for k in ("mapper", "coarse", "medium", "fine", "edit_scale", "description",
                                               "truncation")}
        config.update(style_dim=int(self.decoder.style_dim), n_latent=int(self.decoder.n_latent))
        torch.save({"mapper": {k: v.detach().cpu() for k, v in self.mapper.state_dict().items()}, "config": config},
                   path)
        return path

    @rank_zero_only
    def on_fit_end(self) -> None:
        if self.run_dir is not None:
            log.info("mapper exported to %s", self.export_mapper(Path(self.run_dir) / "mapper.pt"))


__all__ = ["NADAMapperModule", "styleclip_preprocess", "encode_styleclip", "norm_loss", "identity_loss"]
