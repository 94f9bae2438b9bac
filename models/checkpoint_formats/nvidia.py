"""NVIDIA network pickles -> rosinality state dicts.

Two layouts come out of :func:`~.safe_unpickle.restricted_load`:

* ADA-PyTorch / stylegan3 "StyleGAN2": ``dict(G, D, G_ema, augment_pipe, training_set_kwargs, ...)`` of
  :class:`PersistentStub`; the config comes from each network's ``_init_kwargs``;
* TF StyleGAN2 / StyleGAN2-ADA: a tuple ``(G, D, Gs)`` of :class:`TFNetworkStub` (or ``Gs`` alone); the config
  comes from ``static_kwargs`` with the TF networks' own defaults.

Models that rosinality's layout cannot represent are refused with the reason.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from .config import infer_config
from .convert import BLUR_KERNEL, from_nvidia_state_dict
from .convert_tf import from_tf_variables
from .errors import CheckpointError, UnsupportedModelError
from .raw import RawCheckpoint, plain_extras
from .safe_unpickle import PersistentStub, TFNetworkStub, collect_tf_variables, flatten_stub, init_kwargs

log = logging.getLogger(__name__)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UnsupportedModelError(message)


def _check_filter(value: Any, where: str) -> None:
    _require(value is None or [float(v) for v in value] == [float(v) for v in BLUR_KERNEL],
             f"{where}: resample_filter {value} is not [1, 3, 3, 1]; other filters are not supported")


# ----------------------------------------------------------------------------------------------------------
# ADA-PyTorch / stylegan3


def _ada_generator(stub: PersistentStub, name: str) -> tuple[dict, torch.Tensor | None, dict[str, Any]]:
    _require(stub.class_name == "Generator", f"{name} is a '{stub.class_name}', not a StyleGAN2 Generator")
    kw = init_kwargs(stub)
    syn, mapping = kw.get("synthesis_kwargs") or {}, kw.get("mapping_kwargs") or {}
    _require(not kw.get("c_dim"), f"{name} is conditional (c_dim={kw.get('c_dim')}); only c_dim=0 is supported")
    _require(kw.get("img_channels", 3) == 3, f"{name} has img_channels={kw.get('img_channels')}; only 3 is supported")
    _require(syn.get("architecture", "skip") == "skip",
             f"{name} has architecture={syn.get('architecture')!r}; only the 'skip' generator is supported")
    _require(kw.get("z_dim") == kw.get("w_dim"), f"{name} has z_dim={kw.get('z_dim')} != w_dim={kw.get('w_dim')}")
    _require(mapping.get("activation", "lrelu") == "lrelu" and syn.get("activation", "lrelu") == "lrelu",
             f"{name} uses a non-lrelu activation")
    _require(mapping.get("layer_features") in (None, kw.get("w_dim")), f"{name} has mapping layer_features != w_dim")
    _require(syn.get("use_noise", True), f"{name} was built with use_noise=False")
    _check_filter(syn.get("resample_filter"), name)
    flat = flatten_stub(stub)
    _require(not any(k.startswith("synthesis.input.") for k in flat),
             f"{name} is an alias-free StyleGAN3 generator (synthesis.input.*), not StyleGAN2")
    ros = from_nvidia_state_dict(flat, "G")
    known = dict(conv_clamp=syn.get("conv_clamp"), num_fp16_res=int(syn.get("num_fp16_res", 0) or 0),
                 lr_mlp=float(mapping.get("lr_multiplier", 0.01)))
    return ros, flat.get("mapping.w_avg"), known


def _ada_discriminator(stub: PersistentStub) -> tuple[dict, dict[str, Any]]:
    _require(stub.class_name == "Discriminator", f"D is a '{stub.class_name}', not a StyleGAN2 Discriminator")
    kw = init_kwargs(stub)
    epilogue, block = kw.get("epilogue_kwargs") or {}, kw.get("block_kwargs") or {}
    _require(not kw.get("c_dim"), f"D is conditional (c_dim={kw.get('c_dim')}); only c_dim=0 is supported")
    _require(kw.get("img_channels", 3) == 3, f"D has img_channels={kw.get('img_channels')}; only 3 is supported")
    _require(kw.get("architecture", "resnet") == "resnet",
             f"D has architecture={kw.get('architecture')!r}; only the 'resnet' discriminator is supported")
    _require(epilogue.get("mbstd_num_channels", 1) == 1,
             f"D has mbstd_num_channels={epilogue.get('mbstd_num_channels')}; only 1 is supported")
    _check_filter(block.get("resample_filter"), "D")
    ros = from_nvidia_state_dict(flatten_stub(stub), "D")
    # ADA's DiscriminatorEpilogue default is 4; None (explicit in legacy.py conversions) = whole batch.
    known = dict(conv_clamp=kw.get("conv_clamp"), mbstd_group_size=epilogue.get("mbstd_group_size", 4))
    return ros, known


def _merge_known(g_known: dict[str, Any] | None, d_known: dict[str, Any] | None) -> dict[str, Any]:
    known: dict[str, Any] = {}
    if g_known:
        known.update(g_known)
    if d_known:
        if g_known and g_known.get("conv_clamp") != d_known.get("conv_clamp"):
            raise UnsupportedModelError(f"G conv_clamp={g_known.get('conv_clamp')} and D conv_clamp="
                                        f"{d_known.get('conv_clamp')} differ; one value is supported")
        known.update(d_known)
    if known.get("conv_clamp") is not None:
        known["conv_clamp"] = float(known["conv_clamp"])
    return known


def read_ada(data: dict[str, Any]) -> RawCheckpoint:
    """ADA-PyTorch / stylegan3 pickle dict -> :class:`RawCheckpoint`."""
    nets = {k: data.get(k) for k in ("G_ema", "G", "D")}
    for key, value in nets.items():
        if value is not None and not isinstance(value, PersistentStub):
            raise CheckpointError(f"pickle entry {key!r} is a {type(value).__name__}, not an NVIDIA network")
    g_ema = g = d = latent_avg = None
    g_known = d_known = None
    if nets["G_ema"] is not None:
        g_ema, latent_avg, g_known = _ada_generator(nets["G_ema"], "G_ema")
    if nets["G"] is not None:
        g, w_avg, known = _ada_generator(nets["G"], "G")
        g_known = g_known or known
        latent_avg = latent_avg if latent_avg is not None else w_avg
    if nets["D"] is not None:
        d, d_known = _ada_discriminator(nets["D"])
    config = infer_config(g_ema if g_ema is not None else g, d, source_format="nvidia-pkl",
                          **_merge_known(g_known, d_known))
    extra = plain_extras(data, skip={"G", "D", "G_ema", "augment_pipe"})
    return RawCheckpoint(config=config, g_ema=g_ema, g=g, d=d, latent_avg=latent_avg, extra=extra)


# ----------------------------------------------------------------------------------------------------------
# TF StyleGAN2 / StyleGAN2-ADA


def _tf_kwargs(net: TFNetworkStub, name: str) -> dict[str, Any]:
    version = net.state.get("version", 0)
    if not isinstance(version, int) or version < 4:
        raise CheckpointError(f"TF network {name} has pickle version {version}; StyleGAN2 pickles have version >= 4")
    return dict(net.state.get("static_kwargs") or {})


def _tf_generator(net: TFNetworkStub, name: str) -> tuple[dict, torch.Tensor | None, dict[str, Any]]:
    kw = _tf_kwargs(net, name)
    _require(not kw.get("label_size"), f"{name} is conditional (label_size={kw.get('label_size')})")
    _require(kw.get("num_channels", 3) == 3, f"{name} has num_channels={kw.get('num_channels')}; only 3 is supported")
    _require(kw.get("architecture", "skip") == "skip",
             f"{name} has architecture={kw.get('architecture')!r}; only the 'skip' generator is supported")
    _require(kw.get("latent_size", 512) == kw.get("dlatent_size", 512), f"{name} has latent_size != dlatent_size")
    _require(kw.get("use_noise", True), f"{name} was built with use_noise=False")
    _check_filter(kw.get("resample_kernel"), name)
    variables = collect_tf_variables(net)
    ros = from_tf_variables(variables, "G")
    avg = variables.get("dlatent_avg")
    known = dict(conv_clamp=kw.get("conv_clamp"), num_fp16_res=int(kw.get("num_fp16_res", 0) or 0),
                 lr_mlp=float(kw.get("mapping_lrmul", 0.01)))
    return ros, (torch.from_numpy(avg.copy()) if avg is not None else None), known


def _tf_discriminator(net: TFNetworkStub) -> tuple[dict, dict[str, Any]]:
    kw = _tf_kwargs(net, "D")
    _require(not kw.get("label_size"), f"D is conditional (label_size={kw.get('label_size')})")
    _require(kw.get("num_channels", 3) == 3, f"D has num_channels={kw.get('num_channels')}; only 3 is supported")
    _require(kw.get("architecture", "resnet") == "resnet",
             f"D has architecture={kw.get('architecture')!r}; only the 'resnet' discriminator is supported")
    _require(kw.get("mbstd_num_features", 1) == 1,
             f"D has mbstd_num_features={kw.get('mbstd_num_features')}; only 1 is supported")
    _check_filter(kw.get("resample_kernel"), "D")
    ros = from_tf_variables(collect_tf_variables(net), "D")
    # The TF discriminators default to mbstd_group_size=4 (min(4, N) per group, like rosinality); ADA's
    # legacy.py instead falls back to None (whole batch) when the kwarg is absent. We follow TF.
    known = dict(conv_clamp=kw.get("conv_clamp"), mbstd_group_size=kw.get("mbstd_group_size", 4))
    return ros, known


def read_tf(data: Any) -> RawCheckpoint:
    """TF pickle ``(G, D, Gs)`` or ``Gs`` -> :class:`RawCheckpoint`."""
    if isinstance(data, TFNetworkStub):
        tf_g, tf_d, tf_gs = None, None, data
    else:
        tf_g, tf_d, tf_gs = data
    g_ema, latent_avg, g_known = _tf_generator(tf_gs, "Gs")
    g = d = d_known = None
    if tf_g is not None:
        g, _, _ = _tf_generator(tf_g, "G")
    if tf_d is not None:
        d, d_known = _tf_discriminator(tf_d)
    config = infer_config(g_ema, d, source_format="nvidia-tf-pkl", **_merge_known(g_known, d_known))
    return RawCheckpoint(config=config, g_ema=g_ema, g=g, d=d, latent_avg=latent_avg)


def read_nvidia(data: Any) -> RawCheckpoint:
    """Dispatch an unpickled NVIDIA object to the ADA or TF reader."""
    if isinstance(data, TFNetworkStub) or (
            isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TFNetworkStub) for n in data)):
        return read_tf(data)
    if isinstance(data, dict) and any(isinstance(data.get(k), PersistentStub) for k in ("G_ema", "G", "D")):
        return read_ada(data)
    what = f"dict with keys {sorted(map(str, data))[:10]}" if isinstance(data, dict) else type(data).__name__
    raise CheckpointError(f"the pickle holds a {what}, not an NVIDIA StyleGAN2 network pickle "
                          "(expected G/D/G_ema networks or a TF (G, D, Gs) tuple)")
