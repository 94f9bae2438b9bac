"""Reconstruction losses of In-Domain GAN Inversion (Zhu et al., "In-Domain GAN Inversion for Real Image Editing",
ECCV 2020, Eq. 3-5): pixel MSE plus ``lambda_vgg`` times the MSE of the perceptual features F (VGG16 conv4_3,
``models.perceptual.VGG16Perceptual``).

``lambda_vgg = 5e-5`` is the paper's value and is tuned to F's Caffe-scale features (inputs in [0, 255] minus
the BGR mean, not [0, 1] ImageNet-normalised ones): with another feature scale it needs retuning.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

DEFAULT_LAMBDA_VGG = 5e-5


def perceptual_loss(feat_x: Tensor, feat_y: Tensor) -> Tensor:
    """``mean((F(x) - F(y))^2)`` over every element (batch, channels, positions)."""
    if feat_x.shape != feat_y.shape:
        raise ValueError(f"feature shapes differ: {tuple(feat_x.shape)} vs {tuple(feat_y.shape)}")
    return (feat_x - feat_y).square().mean()


def reconstruction_loss(x: Tensor, y: Tensor, vgg: Callable[[Tensor], Tensor],
                        lambda_vgg: float = DEFAULT_LAMBDA_VGG, return_terms: bool = False):
    """``mean((x - y)^2) + lambda_vgg * mean((F(x) - F(y))^2)`` for images ``x``, ``y`` in [-1, 1].

    ``vgg`` is the perceptual network F. With ``return_terms`` returns ``(total, {"pixel": ..., "perceptual":
    ...})`` (the unweighted terms) for logging.
    """
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    pixel = (x - y).square().mean()
    feat = perceptual_loss(vgg(x), vgg(y))
    total = pixel + lambda_vgg * feat
    if return_terms:
        return total, {"pixel": pixel, "perceptual": feat}
    return total


__all__ = ["DEFAULT_LAMBDA_VGG", "perceptual_loss", "reconstruction_loss"]
