"""Readers, writers and key maps for StyleGAN2 checkpoint formats (spec stylegan2_backbone.md §4).

``models.checkpoints`` is the public entry point; the modules here each hold one concern:

* :mod:`.errors` — the exception types every reader raises;
* :mod:`.raw` — :class:`RawCheckpoint`, what every reader returns;
* :mod:`.config` — :class:`StyleGANConfig` and config inference from weights (§4.6);
* :mod:`.convert` — pure key/shape maps rosinality <-> NVIDIA ADA-PyTorch (§4.5);
* :mod:`.convert_tf` — NVIDIA TF variables -> rosinality (§4.3, §4.5 TF table);
* :mod:`.safe_unpickle` — the restricted unpickler for NVIDIA ``.pkl`` files (§4.4);
* :mod:`.nvidia` — NVIDIA ADA-PyTorch / stylegan3 and TF pickles -> rosinality state dicts (§4.2, §4.3);
* :mod:`.torch_files` — rosinality, pSp/e4e and our own ``.pt`` files (§4.1).
"""
