"""Test helpers for checkpoint I/O: random rosinality state dicts and synthetic NVIDIA pickles.

The NVIDIA pickles reproduce the byte-level layout of real ones:
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` reduces carrying ``module_src``,
``dnnlib.util.EasyDict`` kwargs, tensors whose storages go through ``torch.storage._load_from_bytes``, and
TF ``dnnlib.tflib.network.Network`` objects with their ``__getstate__`` dict. The fake ``dnnlib`` /
``torch_utils`` modules exist in ``sys.modules`` only while a pickle is written.
"""
from __future__ import annotations

import collections
import contextlib
import math
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from models.checkpoint_formats.convert import resample_filter
from models.stylegan2 import Discriminator, Generator

FIXTURES = Path(__file__).parent / "fixtures"
NV_BUFFERS = ("resample_filter", "noise_const", "w_avg")


def rosinality_shapes(kind: str, **kwargs: Any) -> dict[str, torch.Size]:
    """Key -> shape of a rosinality G/D state dict, from a network built on the meta device (no memory)."""
    with torch.device("meta"):
        net = Generator(**kwargs) if kind == "G" else Discriminator(**kwargs)
    return {k: v.shape for k, v in net.state_dict().items()}


def random_rosinality_sd(kind: str, seed: int = 0, **kwargs: Any) -> dict[str, torch.Tensor]:
    """A rosinality state dict with random values everywhere except the (constant) resampling kernels."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in rosinality_shapes(kind, **kwargs).items():
        if key.endswith("kernel"):
            out[key] = resample_filter(gain=4 if kind == "G" else 1)
        else:
            out[key] = torch.randn(shape, generator=gen)
    return out


def fixture_checkpoint() -> dict[str, Any]:
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(FIXTURES / "rosinality_tiny.pt", weights_only=True)


def fixture_reference() -> dict[str, Any]:
    return torch.load(FIXTURES / "rosinality_tiny_ref.pt", weights_only=True)


# ----------------------------------------------------------------------------------------------------------
# fake dnnlib / torch_utils, present only while writing


def _must_not_run(meta: Any) -> None:
    raise RuntimeError("NVIDIA's reconstruct function must never run while loading")


class _EasyDict(dict):
    pass


class _TFNetwork:
    """Pickles like ``dnnlib.tflib.network.Network``: NEWOBJ + BUILD with the ``__getstate__`` dict."""

    def __init__(self, state: dict):
        self._state = state

    def __getstate__(self) -> dict:
        return self._state


@contextlib.contextmanager
def fake_nvidia_modules() -> Iterator[types.SimpleNamespace]:
    """Register ``torch_utils.persistence``, ``dnnlib.util`` and ``dnnlib.tflib.network`` for pickling."""
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "dnnlib.tflib",
             "dnnlib.tflib.network"]
    mods = {n: types.ModuleType(n) for n in names}
    _must_not_run.__module__, _must_not_run.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    _EasyDict.__module__, _EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    _TFNetwork.__module__, _TFNetwork.__qualname__ = "dnnlib.tflib.network", "Network"
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _must_not_run
    mods["dnnlib.util"].EasyDict = _EasyDict
    mods["dnnlib.tflib.network"].Network = _TFNetwork
    assert not any(n in sys.modules for n in names)
    sys.modules.update(mods)
    try:
        yield types.SimpleNamespace(EasyDict=_EasyDict, Network=_TFNetwork)
    finally:
        for n in names:
            sys.modules.pop(n, None)


def easydict(value: Any) -> Any:
    if isinstance(value, dict):
        return _EasyDict({k: easydict(v) for k, v in value.items()})
    return value


class _Persistent:
    """Reduces exactly like a ``torch_utils.persistence.persistent_class`` instance."""

    def __init__(self, class_name: str, state: dict, module_src: str):
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return (_must_not_run, (self.meta,))


def persistent_tree(flat: Mapping[str, torch.Tensor], class_name: str, init_kwargs: dict,
                    module_src: str) -> _Persistent:
    """Nest a flat NVIDIA state dict into persistent objects whose state looks like ``nn.Module.__dict__``."""
    def node(name: str) -> dict:
        return dict(training=False, _parameters=collections.OrderedDict(), _buffers=collections.OrderedDict(),
                    _non_persistent_buffers_set=set(), _modules=collections.OrderedDict(),
                    _forward_hooks=collections.OrderedDict(), _init_args=(), _init_kwargs=easydict({}),
                    act_gain=np.float64(math.sqrt(2)), class_name=name)

    root = node(class_name)
    root["_init_kwargs"] = easydict(init_kwargs)
    for key, value in flat.items():
        *path, leaf = key.split(".")
        state = root
        for part in path:
            state = state["_modules"].setdefault(part, node(part))
        if leaf in NV_BUFFERS:
            state["_buffers"][leaf] = value.clone()
        else:
            state["_parameters"][leaf] = torch.nn.Parameter(value.clone(), requires_grad=False)

    def wrap(state: dict, name: str) -> _Persistent:
        state["_modules"] = collections.OrderedDict((k, wrap(v, k)) for k, v in state["_modules"].items())
        return _Persistent(state.pop("class_name"), state, module_src)

    return wrap(root, class_name)


def g_init_kwargs(size: int = 32, style_dim: int = 64, n_mlp: int = 2, **synthesis: Any) -> dict:
    syn = dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256)
    syn.update(synthesis)
    return dict(z_dim=style_dim, c_dim=0, w_dim=style_dim, img_resolution=size, img_channels=3,
                mapping_kwargs=dict(num_layers=n_mlp), synthesis_kwargs=syn)


def d_init_kwargs(size: int = 32, mbstd_group_size: Any = 8, **overrides: Any) -> dict:
    kw = dict(c_dim=0, img_resolution=size, img_channels=3, architecture="resnet", channel_base=32768,
              channel_max=512, num_fp16_res=4, conv_clamp=256, block_kwargs={}, mapping_kwargs={},
              epilogue_kwargs=dict(mbstd_group_size=mbstd_group_size))
    kw.update(overrides)
    return kw


def nvidia_nets(raw: Mapping[str, Any], g_kwargs: dict | None = None, d_kwargs: dict | None = None) -> dict:
    """``write_nvidia_pickle``'s ``nets`` for a rosinality checkpoint dict (``g``, ``g_ema``, ``d``, ``latent_avg``)."""
    from models.checkpoint_formats.convert import to_nvidia_state_dict

    g_kwargs = g_kwargs if g_kwargs is not None else g_init_kwargs()
    d_kwargs = d_kwargs if d_kwargs is not None else d_init_kwargs()
    return {"G": ("Generator", to_nvidia_state_dict(raw["g"], "G", raw["latent_avg"]), g_kwargs),
            "G_ema": ("Generator", to_nvidia_state_dict(raw["g_ema"], "G", raw["latent_avg"]), g_kwargs),
            "D": ("Discriminator", to_nvidia_state_dict(raw["d"], "D"), d_kwargs)}


def write_nvidia_pickle(path: Path, nets: Mapping[str, tuple[str, Mapping[str, torch.Tensor], dict]],
                        module_src: str = "raise RuntimeError('module_src executed')", protocol: int = 4,
                        **extra: Any) -> Path:
    """``pickle.dump(dict(G=..., D=..., G_ema=..., **extra))`` in NVIDIA's persistent-class layout.

    ``nets`` maps the entry name to ``(class_name, flat NVIDIA state dict, init_kwargs)``.
    """
    with fake_nvidia_modules():
        data = {name: persistent_tree(sd, cls, kw, module_src) for name, (cls, sd, kw) in nets.items()}
        data["augment_pipe"] = _Persistent("AugmentPipe", dict(_parameters={}, _buffers={}, _modules={}), module_src)
        data.update({k: easydict(v) for k, v in extra.items()})
        path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def write_with_fake_modules(path: Path, build: Any, protocol: int = 3) -> Path:
    """``pickle.dump(build(fake))`` while the fake NVIDIA modules exist; ``fake`` has ``EasyDict``, ``Network``
    (TF) and ``persistent(class_name, state, module_src)`` (an ADA ``persistent_class`` object)."""
    with fake_nvidia_modules() as fake:
        fake.persistent = _Persistent
        path.write_bytes(pickle.dumps(build(fake), protocol=protocol))
    return path


# ----------------------------------------------------------------------------------------------------------
# TF pickles: the inverse of the TF -> rosinality map, written from NVIDIA's TF variable layout


def _tf_conv(w: torch.Tensor, flip: bool = False) -> np.ndarray:
    w = w[0] if w.ndim == 5 else w  # [O, I, kh, kw]
    if flip:
        w = torch.flip(w, [2, 3])
    return w.permute(2, 3, 1, 0).numpy().copy()  # [kh, kw, I, O]


def rosinality_to_tf_generator_vars(ros: Mapping[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """Variables per component (``mapping``, ``synthesis``) of the TF generator equal to ``ros``."""
    n_mlp = sum(1 for k in ros if k.startswith("style.") and k.endswith(".weight"))
    n_up = sum(1 for k in ros if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    mapping = {}
    for i in range(n_mlp):
        mapping[f"Dense{i}/weight"] = ros[f"style.{i + 1}.weight"].t().numpy().copy()
        mapping[f"Dense{i}/bias"] = ros[f"style.{i + 1}.bias"].numpy().copy()
    syn = {"4x4/Const/const": ros["input.input"].numpy().copy()}

    def modconv(src: str, dst: str, flip: bool = False) -> None:
        syn[f"{dst}/weight"] = _tf_conv(ros[f"{src}.conv.weight"], flip)
        syn[f"{dst}/mod_weight"] = ros[f"{src}.conv.modulation.weight"].t().numpy().copy()
        syn[f"{dst}/mod_bias"] = (ros[f"{src}.conv.modulation.bias"] - 1).numpy().copy()
        syn[f"{dst}/noise_strength"] = ros[f"{src}.noise.weight"].reshape([]).numpy().copy()
        syn[f"{dst}/bias"] = ros[f"{src}.activate.bias"].numpy().copy()

    def torgb(src: str, dst: str) -> None:
        syn[f"{dst}/weight"] = _tf_conv(ros[f"{src}.conv.weight"])
        syn[f"{dst}/mod_weight"] = ros[f"{src}.conv.modulation.weight"].t().numpy().copy()
        syn[f"{dst}/mod_bias"] = (ros[f"{src}.conv.modulation.bias"] - 1).numpy().copy()
        syn[f"{dst}/bias"] = ros[f"{src}.bias"].reshape(-1).numpy().copy()

    modconv("conv1", "4x4/Conv")
    torgb("to_rgb1", "4x4/ToRGB")
    for k in range(n_up):
        r = 2 ** (k + 3)
        modconv(f"convs.{2 * k}", f"{r}x{r}/Conv0_up", flip=True)
        modconv(f"convs.{2 * k + 1}", f"{r}x{r}/Conv1")
        torgb(f"to_rgbs.{k}", f"{r}x{r}/ToRGB")
    for i in range(2 * n_up + 1):
        syn[f"noise{i}"] = ros[f"noises.noise_{i}"].numpy().copy()
    syn["lod"] = np.float32(0)
    return {"mapping": mapping, "synthesis": syn}


def rosinality_to_tf_discriminator_vars(ros: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    n_blocks = sum(1 for k in ros if k.endswith(".conv1.0.weight"))
    size = 2 ** (n_blocks + 2)
    out = {f"{size}x{size}/FromRGB/weight": _tf_conv(ros["convs.0.0.weight"]),
           f"{size}x{size}/FromRGB/bias": ros["convs.0.1.bias"].numpy().copy()}
    for k in range(1, n_blocks + 1):
        r = size // 2 ** (k - 1)
        out[f"{r}x{r}/Conv0/weight"] = _tf_conv(ros[f"convs.{k}.conv1.0.weight"])
        out[f"{r}x{r}/Conv0/bias"] = ros[f"convs.{k}.conv1.1.bias"].numpy().copy()
        out[f"{r}x{r}/Conv1_down/weight"] = _tf_conv(ros[f"convs.{k}.conv2.1.weight"])
        out[f"{r}x{r}/Conv1_down/bias"] = ros[f"convs.{k}.conv2.2.bias"].numpy().copy()
        out[f"{r}x{r}/Skip/weight"] = _tf_conv(ros[f"convs.{k}.skip.1.weight"])
    out["4x4/Conv/weight"] = _tf_conv(ros["final_conv.0.weight"])
    out["4x4/Conv/bias"] = ros["final_conv.1.bias"].numpy().copy()
    out["4x4/Dense0/weight"] = ros["final_linear.0.weight"].t().numpy().copy()
    out["4x4/Dense0/bias"] = ros["final_linear.0.bias"].numpy().copy()
    out["Output/weight"] = ros["final_linear.1.weight"].t().numpy().copy()
    out["Output/bias"] = ros["final_linear.1.bias"].numpy().copy()
    return out


def tf_state(name: str, variables: Mapping[str, np.ndarray], static_kwargs: dict, components: dict) -> dict:
    return dict(version=4, name=name, static_kwargs=static_kwargs, components=components,
                build_module_src="raise RuntimeError('build_module_src executed')", build_func_name=name,
                variables=list(variables.items()))


def write_tf_pickle(path: Path, ros_g: Mapping[str, torch.Tensor], ros_d: Mapping[str, torch.Tensor],
                    latent_avg: torch.Tensor, g_kwargs: dict | None = None, d_kwargs: dict | None = None,
                    protocol: int = 3) -> Path:
    """A TF StyleGAN2 ``(G, D, Gs)`` pickle; G and Gs both hold ``ros_g``."""
    g_kwargs = dict(dict(num_channels=3, resolution=32, label_size=0), **(g_kwargs or {}))
    d_kwargs = dict(dict(num_channels=3, resolution=32, label_size=0), **(d_kwargs or {}))
    g_vars = rosinality_to_tf_generator_vars(ros_g)
    with fake_nvidia_modules() as fake:
        def generator(name: str):
            comps = {c: fake.Network(tf_state(f"G_{c}", v, {}, {})) for c, v in g_vars.items()}
            return fake.Network(tf_state(name, {"dlatent_avg": latent_avg.numpy().copy()}, g_kwargs, comps))

        d = fake.Network(tf_state("D", rosinality_to_tf_discriminator_vars(ros_d), d_kwargs, {}))
        path.write_bytes(pickle.dumps((generator("G"), d, generator("Gs")), protocol=protocol))
    return path
