"""Identity loss of face editing methods (pSp, StyleCLIP, the StyleGAN-NADA latent mapper, DualStyleGAN).

``f`` is a face-recognition embedding (``models.identity``, ArcFace IR-SE50) with unit-norm outputs.
"""
from __future__ import annotations

from torch import Tensor


def identity_loss(feat_source: Tensor, feat_edited: Tensor) -> Tensor:
    """``L_id = mean_b (1 - f(x')·f(x))`` with unit identity embeddings (pSp / StyleCLIP)."""
    return (1.0 - (feat_edited * feat_source.detach()).sum(dim=-1)).mean()


__all__ = ["identity_loss"]
