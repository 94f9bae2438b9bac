"""Readers, writers and key maps for StyleGAN2 checkpoint formats.

``models.checkpoints`` is the public entry point; the modules here each hold one concern:

* :mod:`.errors` — the exception types every reader raises;
* :mod:`.raw` — :class:`RawCheckpoint`, what every reader returns;
* :mod:`.config` — :class:`StyleGANConfig` and config inference from weights;
* :mod:`.convert` — pure key/shape maps rosinality <-> NVIDIA ADA-PyTorch;
* :mod:`.convert_tf` — NVIDIA TF variables -> rosinality;
* :mod:`.safe_unpickle` — the restricted unpickler for NVIDIA ``.pkl`` files;
* :mod:`.nvidia` — NVIDIA ADA-PyTorch / stylegan3 and TF pickles -> rosinality state dicts;
* :mod:`.torch_files` — rosinality, pSp/e4e and our own ``.pt`` files.
"""
