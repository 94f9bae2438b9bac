"""Exceptions raised while reading checkpoints (spec stylegan2_backbone.md §4, §10 "Checkpoint conversion")."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint cannot be read: corrupt, truncated, unknown layout or inconsistent weights."""


class UnsafeCheckpointError(CheckpointError):
    """The file asks the unpickler for code outside the allow-list; nothing from it was executed."""


class UnsupportedModelError(CheckpointError):
    """The file is readable but holds a network StyleGAN2 (rosinality layout) cannot represent,
    e.g. a conditional model (``c_dim > 0``) or a non-``skip`` generator / non-``resnet`` discriminator."""
