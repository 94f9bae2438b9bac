"""StyleGAN-NADA's CLIP losses (docs/methods/nada.md, "Directional CLIP loss" and "Image-guided directions").

Notation: ``n`` is L2 normalization, ``E_I``/``E_T`` the CLIP image/text encoders, ``P`` the
reference preprocessing (:meth:`models.clip.CLIPModel.encode_images` returns ``n(E_I(P(x)))``).

* directional (the only loss of the paper's figures): ``mean_b [1 - cos(n(e_tgt,b - e_src,b), ΔT)]``;
* global: ``mean_b [1 - cos(e_b, E_T(text))]``;
* patch-directional, manifold-angle and texture: present in the reference with weight 0 by default.

Functions take fixed embeddings and are tested against their formulas; :class:`DirectionalCLIPLoss` applies
them with one CLIP model (the reference's ``CLIPLoss``), :class:`CLIPLossEnsemble` sums several models with
weights (``L = Σ_m w_m · L_m``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from models.clip import CLIPModel
from models.clip_templates import PART_TEMPLATES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GUARD_EPSILON = 1e-6  # added to the target image when the image direction vanishes (reference commit 5e54362)


def _unit(x: Tensor, what: str) -> Tensor:
    """``x / ||x||`` over the last dimension; a zero row is an error, never a NaN."""
    norm = x.norm(dim=-1, keepdim=True)
    if not torch.all(norm > 0):
        rows = (norm.flatten() == 0).nonzero().flatten().tolist()
        raise ValueError(f"{what} is zero for rows {rows}: source and target embeddings coincide")
    return x / norm


def directional_loss(src_emb: Tensor, tgt_emb: Tensor, text_direction: Tensor) -> Tensor:
    """``mean_b [1 - cos(n(tgt_emb_b - src_emb_b), ΔT)]`` (docs/methods/nada.md, "Directional CLIP loss").

    ``src_emb``/``tgt_emb``: normalized image embeddings ``[B, D]``; ``text_direction``: ``[1, D]`` or ``[D]``.
    """
    if src_emb.shape != tgt_emb.shape or src_emb.dim() != 2:
        raise ValueError(f"expected two [B, D] embeddings, got {tuple(src_emb.shape)} and {tuple(tgt_emb.shape)}")
    image_direction = _unit(tgt_emb - src_emb, "image direction")
    return (1.0 - F.cosine_similarity(image_direction, text_direction.reshape(1, -1), dim=-1)).mean()


def global_clip_loss(image_emb: Tensor, text_emb: Tensor) -> Tensor:
    """``mean [1 - cos(E_I(P(x)), E_T(text))]`` over images x texts (the global term).

    The reference computes ``1 - logit / 100``; with OpenAI weights the logit scale is exactly 100, so both
    are the same number. We use the cosine so the value does not depend on a model's logit scale.
    """
    return (1.0 - F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T).mean()


def manifold_angle_loss(src_emb: Tensor, tgt_emb: Tensor, src_text: Tensor, tgt_text: Tensor) -> Tensor:
    """``mean_b |clamp(e_tgt,b · e_src,b, -1, 1) - t_tgt · t_src|`` (the manifold-angle term).

    Image embeddings ``[B, D]`` and class text embeddings ``[1, D]``, all normalized.
    """
    cos_image = (tgt_emb * src_emb).sum(dim=-1).clamp(-1.0, 1.0)
    cos_text = (tgt_text.reshape(-1) * src_text.reshape(-1)).sum()
    return (cos_image - cos_text).abs().mean()


def patch_directional_loss(src_patch_emb: Tensor, tgt_patch_emb: Tensor, patch_directions: Tensor) -> Tensor:
    """Softmax-weighted cosine distances to the part directions (the patch-directional term).

    With ``d_n = n(e_tgt,n - e_src,n)`` per patch and part directions ``ΔT_p`` ``[P, D]``:
    ``mean_{n,p} [(1 - cos(d_n, ΔT_p)) · softmax_p(d_n · ΔT_p)]``.
    """
    d = _unit(tgt_patch_emb - src_patch_emb, "patch direction")
    distances = 1.0 - F.cosine_similarity(d.unsqueeze(1), patch_directions.unsqueeze(0), dim=-1)
    return (distances * (d @ patch_directions.T).softmax(dim=-1)).mean()


def texture_loss(texture_emb: Tensor, tgt_emb: Tensor) -> Tensor:
    """MSE between un-normalized image embeddings (the reference's texture term)."""
    return F.mse_loss(tgt_emb, texture_emb.expand_as(tgt_emb))


def random_patches(src: Tensor, tgt: Tensor, size: int, generator: torch.Generator | None = None):
    """One ``size`` x ``size`` patch per image, at the same random place in ``src[b]`` and ``tgt[b]``."""
    b, _, h, w = src.shape
    if size > h or size > w:
        raise ValueError(f"patch size {size} exceeds the image size {h}x{w}")
    lefts = torch.randint(0, w - size + 1, (b,), generator=generator).tolist()
    tops = torch.randint(0, h - size + 1, (b,), generator=generator).tolist()

    def crop(x: Tensor) -> Tensor:
        return torch.cat([x[i:i + 1, :, top:top + size, left:left + size]
                          for i, (left, top) in enumerate(zip(lefts, tops))])

    return crop(src), crop(tgt)


def patch_text_directions(clip: CLIPModel, source: str, target: str,
                          templates: bool | Sequence[str] = True) -> Tensor:
    """``[15, D]``: one text direction per part template; as in the reference, each part phrase is again
    wrapped in the (79 ImageNet) templates, e.g. "a bad photo of a the paw of a dog..". Cached by the model."""
    return torch.cat([clip.text_direction(p.format(source), p.format(target), templates) for p in PART_TEMPLATES])


def load_target_images(folder: str | Path) -> list[Image.Image]:
    """The RGB images (png/jpg/jpeg) of an image-target folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"target image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images in target image folder {folder}")
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"cannot read target image {path}: {err}") from err
    return images


def image_guided_direction(clip: CLIPModel, source_images: Tensor,
                           target_images: Sequence[Image.Image] | str | Path) -> Tensor:
    """``ΔT = n(mean_j n(E_I(P_pil(y_j))) - mean_b n(E_I(P(x_b))))`` (docs/methods/nada.md,
    "Image-guided directions"); ``[1, D]``.

    ``source_images``: generated source-domain images in [-1, 1] (the reference uses 16); ``target_images``:
    PIL images or a folder of them. Neither mean is re-normalized before the difference.
    """
    if isinstance(target_images, (str, Path)):
        target_images = load_target_images(target_images)
    with torch.no_grad():
        src = clip.encode_images(source_images).mean(dim=0, keepdim=True)
        tgt = clip.encode_pil_images(target_images).mean(dim=0, keepdim=True)
    return _unit(tgt - src, "image-guided direction")


class DirectionalCLIPLoss(nn.Module):
    """NADA's CLIP loss for one CLIP model: ``λ_dir·L_dir + λ_global·L_global + λ_patch·L_patch +
    λ_manifold·L_manifold + λ_texture·L_texture`` (the paper uses ``λ_dir = 1`` only).

    The text direction is the CLIP model's cached :meth:`~models.clip.CLIPModel.text_direction`, unless an
    image-guided direction was set with :meth:`set_direction` (the texts are then ignored by the
    directional term). ``templates`` are those of the text directions (default: the 79 ImageNet ones).
    """

    def __init__(self, clip: CLIPModel, source: str, target: str, lambda_direction: float = 1.0,
                 lambda_global: float = 0.0, lambda_patch: float = 0.0, lambda_manifold: float = 0.0,
                 lambda_texture: float = 0.0, patch_size: int = 510, templates: bool | Sequence[str] = True):
        super().__init__()
        self.clip, self.source, self.target, self.patch_size = clip, source, target, patch_size
        self.templates = templates if isinstance(templates, bool) else tuple(templates)
        self.lambdas = {"direction": float(lambda_direction), "global": float(lambda_global),
                        "patch": float(lambda_patch), "manifold": float(lambda_manifold),
                        "texture": float(lambda_texture)}
        if not all(abs(v) < float("inf") for v in self.lambdas.values()):
            raise ValueError(f"CLIP loss weights must be finite, got {self.lambdas}")
        self._direction: Tensor | None = None

    @property
    def direction(self) -> Tensor:
        """The target direction ``ΔT`` ``[1, D]`` of the directional term."""
        if self._direction is not None:
            return self._direction.to(self.clip.device)
        return self.clip.text_direction(self.source, self.target, self.templates)

    def set_direction(self, direction: Tensor) -> None:
        """Use ``direction`` (e.g. :func:`image_guided_direction`) instead of the text direction."""
        if direction.numel() != self.clip.embed_dim or not torch.isfinite(direction).all():
            raise ValueError(f"direction must hold {self.clip.embed_dim} finite values, got {tuple(direction.shape)}")
        self._direction = _unit(direction.detach().float().reshape(1, -1), "direction")

    def directional(self, x_src: Tensor, x_tgt: Tensor) -> Tensor:
        """``L_dir`` on images in [-1, 1], with the reference's guard: when the embeddings of a pair coincide,
        the target is re-encoded from ``x_tgt + 1e-6``. (The reference tests the sum of the whole difference
        for zero; we test every row, which includes that case.)"""
        src, tgt = self.clip.encode_images(x_src), self.clip.encode_images(x_tgt)
        if ((tgt - src) == 0).all(dim=-1).any():
            tgt = self.clip.encode_images(x_tgt + GUARD_EPSILON)
        return directional_loss(src, tgt, self.direction)

    def terms(self, x_src: Tensor, x_tgt: Tensor, texture_images: Tensor | None = None,
              generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The un-weighted terms whose λ is non-zero (texture only when ``texture_images`` is given)."""
        clip, out = self.clip, {}
        if self.lambdas["global"]:
            text = clip.class_embedding(f"a {self.target}", templates=False)
            out["global"] = global_clip_loss(clip.encode_images(x_tgt), text)
        if self.lambdas["patch"]:
            src_patches, tgt_patches = random_patches(x_src, x_tgt, self.patch_size, generator)
            out["patch"] = patch_directional_loss(clip.encode_images(src_patches), clip.encode_images(tgt_patches),
                                                  patch_text_directions(clip, self.source, self.target, self.templates))
        if self.lambdas["direction"]:
            out["direction"] = self.directional(x_src, x_tgt)
        if self.lambdas["manifold"]:
            out["manifold"] = manifold_angle_loss(clip.encode_images(x_src), clip.encode_images(x_tgt),
                                                  clip.class_embedding(self.source, self.templates),
                                                  clip.class_embedding(self.target, self.templates))
        if self.lambdas["texture"] and texture_images is not None:
            out["texture"] = texture_loss(clip.encode_images(texture_images, normalize=False),
                                          clip.encode_images(x_tgt, normalize=False))
        return out

    def forward(self, x_src: Tensor, x_tgt: Tensor, texture_images: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        terms = self.terms(x_src, x_tgt, texture_images, generator)
        return sum((self.lambdas[k] * v for k, v in terms.items()), x_tgt.new_zeros((), dtype=torch.float32))


class CLIPLossEnsemble(nn.Module):
    """``L = Σ_m w_m · L_m`` over several CLIP models (the reference README: ViT-B/32 1.0
    + ViT-B/16 1.0). Models with weight 0 are not evaluated (the reference evaluates them for nothing)."""

    def __init__(self, losses: Sequence[DirectionalCLIPLoss], weights: Sequence[float]):
        super().__init__()
        weights = [float(w) for w in weights]
        if len(losses) != len(weights) or not losses:
            raise ValueError(f"need one weight per CLIP loss, got {len(losses)} losses and {len(weights)} weights")
        if any(not (w >= 0 and w < float("inf")) for w in weights):
            raise ValueError(f"CLIP model weights must be finite and >= 0, got {weights}")
        self.losses = nn.ModuleList(losses)
        self.weights = weights

    def active(self):
        """``(weight, loss)`` pairs with a non-zero weight."""
        return [(w, loss) for w, loss in zip(self.weights, self.losses) if w != 0]

    def forward(self, x_src: Tensor, x_tgt: Tensor, texture_images: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        return sum((w * loss(x_src, x_tgt, texture_images, generator) for w, loss in self.active()),
                   x_tgt.new_zeros((), dtype=torch.float32))

    def global_loss(self, images: Tensor, text: str) -> Tensor:
        """``Σ_m w_m · L_global^m(images, text)`` with the raw text (no template, no "a "), as the adaptive
        layer selection uses it (docs/methods/nada.md, "Adaptive layer selection")."""
        terms = (w * global_clip_loss(loss.clip.encode_images(images), loss.clip.class_embedding(text, templates=False))
                 for w, loss in self.active())
        return sum(terms, images.new_zeros((), dtype=torch.float32))

    def set_image_target(self, source_images: Tensor, target_images: Sequence[Image.Image] | str | Path) -> None:
        """Image-guided mode: every active model gets its own image-guided direction (docs/methods/nada.md,
        "Image-guided directions")."""
        if isinstance(target_images, (str, Path)):
            target_images = load_target_images(target_images)
        for _, loss in self.active():
            loss.set_direction(image_guided_direction(loss.clip, source_images, target_images))
def styleclip_preprocess(images: Tensor, size: int) -> Tensor:
    """StyleCLIP's CLIP input (StyleCLIP): nearest x7 upsampling, then average pooling to ``size`` x ``size``.

    For a 1024 px image and CLIP's 224 this is exactly the reference's ``AvgPool2d(kernel=1024 // 32)``.
    """
    return F.adaptive_avg_pool2d(F.interpolate(images, scale_factor=7, mode="nearest"), (size, size))


def encode_styleclip(clip: CLIPModel, images: Tensor) -> Tensor:
    """Unnormalized CLIP image embeddings ``[B, D]`` (fp32) of generator images through :func:`styleclip_preprocess`."""
    pixels = styleclip_preprocess(images.float(), clip.image_size).to(clip.device, clip.dtype)
    with torch.autocast(device_type=pixels.device.type, enabled=False):
        return clip.model.encode_image(pixels).float()


def norm_loss(emb_source: Tensor, emb_edited: Tensor) -> Tensor:
    """``L_norm = MSE(‖e(x)‖, ‖e(x')‖)`` over the batch (StyleGAN-NADA's latent mapper)."""
    return F.mse_loss(emb_edited.norm(dim=-1), emb_source.norm(dim=-1))


