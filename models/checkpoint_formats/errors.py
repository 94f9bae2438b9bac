"""Exceptions raised while reading checkpoints.

Every failure caused by the content of a file is a :class:`CheckpointError` (a ``ValueError``); the subclasses
say what kind of problem it is. Messages end with :data:`NOTHING_RAN` once they leave ``models.checkpoints``.
"""
from __future__ import annotations

NOTHING_RAN = "nothing from the file was executed"


class CheckpointError(ValueError):
    """A checkpoint cannot be read: corrupt, truncated, unknown layout or inconsistent weights."""


class UnsafeCheckpointError(CheckpointError):
    """The file asks the unpickler for code outside the allow-list; nothing from it was executed."""


class UnsupportedModelError(CheckpointError):
    """The file is readable but holds a network StyleGAN2 (rosinality layout) cannot represent,
    e.g. a conditional model (``c_dim > 0``) or a non-``skip`` generator / non-``resnet`` discriminator."""


class CorruptCheckpointError(CheckpointError):
    """The file is damaged: a checksum (CRC-32) mismatch, a truncated record, a malformed pickle or archive."""


class CheckpointLimitError(CheckpointError):
    """The file would make the loader allocate or walk more than it may: declared tensor/array sizes larger
    than the data the file holds or than the total cap, compressed archive records, overlapping tensor views,
    structures nested too deeply, cyclic or expanding to too many entries through shared references."""
