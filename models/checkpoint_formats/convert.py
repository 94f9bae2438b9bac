"""Pure key/shape maps between the rosinality and NVIDIA ADA-PyTorch layouts.

* rosinality <-> ADA is a bijective reshape with **no spatial flip** (verified numerically).
* TF -> rosinality lives in :mod:`.convert_tf`.
* Resampling filters are constants: they are regenerated from ``blur_kernel``, never copied; NVIDIA's
  stored ``resample_filter`` buffers are checked against the regenerated filter instead.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np
import torch

from .errors import CheckpointError, UnsupportedModelError

BLUR_KERNEL = (1, 3, 3, 1)

def resample_filter(kernel: Sequence[float] = BLUR_KERNEL, gain: float = 1.0) -> torch.Tensor:
    """The 2-D FIR filter ``outer(k, k) / sum * gain`` (rosinality ``make_kernel`` x gain, ADA ``setup_filter``)."""
    k = torch.as_tensor(kernel, dtype=torch.float32)
    k2 = torch.outer(k, k) if k.ndim == 1 else k
    return k2 / k2.sum() * gain


def take_tensor(sd: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{where}: key {key!r} is missing")
    value = sd[key]
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{where}: {key!r} is a {type(value).__name__}, expected a tensor")
    return value.detach()


def copy_tensor(t: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
    t = t.reshape(list(shape)) if shape is not None else t
    return t.clone().contiguous()


def count_indexed(sd: Mapping[str, object], pattern: str) -> int:
    n = 0
    while pattern.format(n) in sd:
        n += 1
    return n


def _ros_g_layout(sd: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(n_mlp, number of upsampling blocks) of a rosinality generator state dict."""
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    n_up = count_indexed(sd, "to_rgbs.{}.conv.weight")
    if n_mlp == 0 or "input.input" not in sd:
        raise CheckpointError("not a rosinality Generator state dict (no 'style.1.weight' / 'input.input')")
    return n_mlp, n_up


# ----------------------------------------------------------------------------------------------------------
# rosinality -> ADA


def _styled_conv_to_ada(ros: Mapping[str, torch.Tensor], src: str, dst: str, noise: torch.Tensor,
                        out: dict[str, torch.Tensor], where: str) -> None:
    weight = take_tensor(ros, f"{src}.conv.weight", where)
    out[f"{dst}.weight"] = copy_tensor(weight[0])
    out[f"{dst}.noise_strength"] = copy_tensor(take_tensor(ros, f"{src}.noise.weight", where), [])
    out[f"{dst}.bias"] = copy_tensor(take_tensor(ros, f"{src}.activate.bias", where))
    out[f"{dst}.resample_filter"] = resample_filter()
    out[f"{dst}.noise_const"] = copy_tensor(noise, noise.shape[-2:])
    out[f"{dst}.affine.weight"] = copy_tensor(take_tensor(ros, f"{src}.conv.modulation.weight", where))
    out[f"{dst}.affine.bias"] = copy_tensor(take_tensor(ros, f"{src}.conv.modulation.bias", where))


def _to_rgb_to_ada(ros: Mapping[str, torch.Tensor], src: str, dst: str, out: dict[str, torch.Tensor],
                   where: str) -> None:
    out[f"{dst}.weight"] = copy_tensor(take_tensor(ros, f"{src}.conv.weight", where)[0])
    out[f"{dst}.bias"] = copy_tensor(take_tensor(ros, f"{src}.bias", where), [-1])
    out[f"{dst}.affine.weight"] = copy_tensor(take_tensor(ros, f"{src}.conv.modulation.weight", where))
    out[f"{dst}.affine.bias"] = copy_tensor(take_tensor(ros, f"{src}.conv.modulation.bias", where))


def _generator_to_nvidia(ros: Mapping[str, torch.Tensor], latent_avg: torch.Tensor | None) -> dict[str, torch.Tensor]:
    where = "rosinality generator"
    n_mlp, n_up = _ros_g_layout(ros)
    out: dict[str, torch.Tensor] = {}
    out["synthesis.b4.const"] = copy_tensor(take_tensor(ros, "input.input", where)[0])
    out["synthesis.b4.resample_filter"] = resample_filter()
    _styled_conv_to_ada(ros, "conv1", "synthesis.b4.conv1", take_tensor(ros, "noises.noise_0", where), out, where)
    _to_rgb_to_ada(ros, "to_rgb1", "synthesis.b4.torgb", out, where)
    for k in range(n_up):
        r = 2 ** (k + 3)
        blk = f"synthesis.b{r}"
        out[f"{blk}.resample_filter"] = resample_filter()
        _styled_conv_to_ada(ros, f"convs.{2 * k}", f"{blk}.conv0", take_tensor(ros, f"noises.noise_{2 * k + 1}", where),
                            out, where)
        _styled_conv_to_ada(ros, f"convs.{2 * k + 1}", f"{blk}.conv1",
                            take_tensor(ros, f"noises.noise_{2 * k + 2}", where), out, where)
        _to_rgb_to_ada(ros, f"to_rgbs.{k}", f"{blk}.torgb", out, where)
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = copy_tensor(take_tensor(ros, f"style.{i + 1}.weight", where))
        out[f"mapping.fc{i}.bias"] = copy_tensor(take_tensor(ros, f"style.{i + 1}.bias", where))
    if latent_avg is not None:
        out["mapping.w_avg"] = copy_tensor(latent_avg, [-1])
    return out


def _discriminator_to_nvidia(ros: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    where = "rosinality discriminator"
    n_blocks = 0
    while f"convs.{n_blocks + 1}.conv1.0.weight" in ros:
        n_blocks += 1
    if n_blocks == 0:
        raise CheckpointError("not a rosinality Discriminator state dict (no 'convs.1.conv1.0.weight')")
    size = 2 ** (n_blocks + 2)
    out: dict[str, torch.Tensor] = {}
    out[f"b{size}.fromrgb.weight"] = copy_tensor(take_tensor(ros, "convs.0.0.weight", where))
    out[f"b{size}.fromrgb.bias"] = copy_tensor(take_tensor(ros, "convs.0.1.bias", where))
    out[f"b{size}.fromrgb.resample_filter"] = resample_filter()
    for k in range(1, n_blocks + 1):
        r = size // 2 ** (k - 1)
        src, blk = f"convs.{k}", f"b{r}"
        out[f"{blk}.resample_filter"] = resample_filter()
        out[f"{blk}.conv0.weight"] = copy_tensor(take_tensor(ros, f"{src}.conv1.0.weight", where))
        out[f"{blk}.conv0.bias"] = copy_tensor(take_tensor(ros, f"{src}.conv1.1.bias", where))
        out[f"{blk}.conv0.resample_filter"] = resample_filter()
        out[f"{blk}.conv1.weight"] = copy_tensor(take_tensor(ros, f"{src}.conv2.1.weight", where))
        out[f"{blk}.conv1.bias"] = copy_tensor(take_tensor(ros, f"{src}.conv2.2.bias", where))
        out[f"{blk}.conv1.resample_filter"] = resample_filter()
        out[f"{blk}.skip.weight"] = copy_tensor(take_tensor(ros, f"{src}.skip.1.weight", where))
        out[f"{blk}.skip.resample_filter"] = resample_filter()
    out["b4.conv.weight"] = copy_tensor(take_tensor(ros, "final_conv.0.weight", where))
    out["b4.conv.bias"] = copy_tensor(take_tensor(ros, "final_conv.1.bias", where))
    out["b4.conv.resample_filter"] = resample_filter()
    out["b4.fc.weight"] = copy_tensor(take_tensor(ros, "final_linear.0.weight", where))
    out["b4.fc.bias"] = copy_tensor(take_tensor(ros, "final_linear.0.bias", where))
    out["b4.out.weight"] = copy_tensor(take_tensor(ros, "final_linear.1.weight", where))
    out["b4.out.bias"] = copy_tensor(take_tensor(ros, "final_linear.1.bias", where))
    return out


def to_nvidia_state_dict(ros_sd: Mapping[str, torch.Tensor], kind: str = "G",
                         latent_avg: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """rosinality -> ADA-PyTorch state dict. ``kind`` is ``"G"`` or ``"D"``; ``latent_avg`` becomes
    ``mapping.w_avg`` (G only; omitted when None)."""
    if kind == "G":
        return _generator_to_nvidia(ros_sd, latent_avg)
    if kind == "D":
        return _discriminator_to_nvidia(ros_sd)
    raise ValueError(f"kind must be 'G' or 'D', got {kind!r}")


# ----------------------------------------------------------------------------------------------------------
# ADA -> rosinality


def _check_filters(nv: Mapping[str, torch.Tensor], used: set[str], blur_kernel: Sequence[float], where: str) -> None:
    """Every ``*.resample_filter`` must be the regenerated filter; mark them used."""
    ref = resample_filter(blur_kernel)
    for key, value in nv.items():
        if key.endswith("resample_filter"):
            used.add(key)
            if tuple(value.shape) != tuple(ref.shape) or not torch.allclose(value.float(), ref, atol=1e-6):
                raise UnsupportedModelError(
                    f"{where}: {key} is not the normalised outer({list(blur_kernel)}) filter; non-standard "
                    "resampling filters are not supported")


def _leftovers(nv: Mapping[str, torch.Tensor], used: set[str], where: str) -> None:
    rest = sorted(set(nv) - used)
    if rest:
        hint = ""
        if any(k.startswith("mapping.") for k in rest):
            hint = " (a conditional model?)"
        elif any(".skip." in k for k in rest):
            hint = " (a 'resnet' generator?)"
        raise UnsupportedModelError(f"{where}: keys not part of a StyleGAN2 skip-G/resnet-D: {rest[:8]}{hint}")


def _styled_conv_from_ada(nv: Mapping[str, torch.Tensor], src: str, dst: str, noise_key: str,
                          out: dict[str, torch.Tensor], noises: dict[str, torch.Tensor], used: set[str],
                          where: str, upsample: bool) -> None:
    keys = {n: f"{src}.{n}" for n in ("weight", "noise_strength", "bias", "noise_const", "affine.weight",
                                      "affine.bias")}
    used.update(keys.values())
    weight = take_tensor(nv, keys["weight"], where)
    out[f"{dst}.conv.weight"] = copy_tensor(weight[None])
    if upsample:
        out[f"{dst}.conv.blur.kernel"] = resample_filter(gain=4)
    out[f"{dst}.conv.modulation.weight"] = copy_tensor(take_tensor(nv, keys["affine.weight"], where))
    out[f"{dst}.conv.modulation.bias"] = copy_tensor(take_tensor(nv, keys["affine.bias"], where))
    out[f"{dst}.noise.weight"] = copy_tensor(take_tensor(nv, keys["noise_strength"], where), [1])
    out[f"{dst}.activate.bias"] = copy_tensor(take_tensor(nv, keys["bias"], where))
    const = take_tensor(nv, keys["noise_const"], where)
    noises[noise_key] = copy_tensor(const, [1, 1, *const.shape[-2:]])


def _to_rgb_from_ada(nv: Mapping[str, torch.Tensor], src: str, dst: str, out: dict[str, torch.Tensor],
                     used: set[str], where: str, upsample: bool) -> None:
    keys = [f"{src}.{n}" for n in ("weight", "bias", "affine.weight", "affine.bias")]
    used.update(keys)
    out[f"{dst}.bias"] = copy_tensor(take_tensor(nv, keys[1], where), [1, -1, 1, 1])
    if upsample:
        out[f"{dst}.upsample.kernel"] = resample_filter(gain=4)
    out[f"{dst}.conv.weight"] = copy_tensor(take_tensor(nv, keys[0], where)[None])
    out[f"{dst}.conv.modulation.weight"] = copy_tensor(take_tensor(nv, keys[2], where))
    out[f"{dst}.conv.modulation.bias"] = copy_tensor(take_tensor(nv, keys[3], where))


def _ada_resolutions(nv: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    found = sorted({int(m.group(1)) for k in nv if (m := re.fullmatch(pattern, k))})
    if not found:
        raise CheckpointError(f"no keys matching {pattern!r}: not an NVIDIA StyleGAN2 state dict")
    return found


def _generator_from_nvidia(nv: Mapping[str, torch.Tensor], blur_kernel: Sequence[float]) -> dict[str, torch.Tensor]:
    where = "NVIDIA generator"
    used: set[str] = {"mapping.w_avg"}
    res = _ada_resolutions(nv, r"synthesis\.b(\d+)\.conv1\.weight")
    if res[0] != 4 or res != [2 ** i for i in range(2, 2 + len(res))]:
        raise CheckpointError(f"{where}: synthesis blocks {res} are not 4, 8, ..., size")
    n_mlp = count_indexed(nv, "mapping.fc{}.weight")
    if n_mlp == 0:
        raise CheckpointError(f"{where}: no mapping.fc0.weight")
    out: dict[str, torch.Tensor] = {}
    for i in range(n_mlp):
        for p in ("weight", "bias"):
            used.add(f"mapping.fc{i}.{p}")
            out[f"style.{i + 1}.{p}"] = copy_tensor(take_tensor(nv, f"mapping.fc{i}.{p}", where))
    used.add("synthesis.b4.const")
    out["input.input"] = copy_tensor(take_tensor(nv, "synthesis.b4.const", where)[None])
    noises: dict[str, torch.Tensor] = {}
    to_rgbs: dict[str, torch.Tensor] = {}
    _styled_conv_from_ada(nv, "synthesis.b4.conv1", "conv1", "noises.noise_0", out, noises, used, where, False)
    _to_rgb_from_ada(nv, "synthesis.b4.torgb", "to_rgb1", out, used, where, False)
    for k, r in enumerate(res[1:]):  # rosinality order: convs.*, then to_rgbs.*, then noises.*
        blk = f"synthesis.b{r}"
        _styled_conv_from_ada(nv, f"{blk}.conv0", f"convs.{2 * k}", f"noises.noise_{2 * k + 1}", out, noises,
                              used, where, True)
        _styled_conv_from_ada(nv, f"{blk}.conv1", f"convs.{2 * k + 1}", f"noises.noise_{2 * k + 2}", out, noises,
                              used, where, False)
        _to_rgb_from_ada(nv, f"{blk}.torgb", f"to_rgbs.{k}", to_rgbs, used, where, True)
    out.update(to_rgbs)
    out.update(sorted(noises.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1])))
    _check_filters(nv, used, blur_kernel, where)
    _leftovers(nv, used, where)
    return out


def _discriminator_from_nvidia(nv: Mapping[str, torch.Tensor], blur_kernel: Sequence[float]) -> dict[str, torch.Tensor]:
    where = "NVIDIA discriminator"
    used: set[str] = set()
    res = _ada_resolutions(nv, r"b(\d+)\.conv0\.weight")
    size = res[-1]
    if res != [2 ** i for i in range(3, int(math.log2(size)) + 1)]:
        raise CheckpointError(f"{where}: blocks {res} are not 8, ..., size")

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return copy_tensor(take_tensor(nv, key, where))

    out: dict[str, torch.Tensor] = {"convs.0.0.weight": take(f"b{size}.fromrgb.weight"),
                                    "convs.0.1.bias": take(f"b{size}.fromrgb.bias")}
    for k, r in enumerate(reversed(res), start=1):
        blk, dst = f"b{r}", f"convs.{k}"
        out[f"{dst}.conv1.0.weight"] = take(f"{blk}.conv0.weight")
        out[f"{dst}.conv1.1.bias"] = take(f"{blk}.conv0.bias")
        out[f"{dst}.conv2.0.kernel"] = resample_filter(blur_kernel)
        out[f"{dst}.conv2.1.weight"] = take(f"{blk}.conv1.weight")
        out[f"{dst}.conv2.2.bias"] = take(f"{blk}.conv1.bias")
        out[f"{dst}.skip.0.kernel"] = resample_filter(blur_kernel)
        out[f"{dst}.skip.1.weight"] = take(f"{blk}.skip.weight")
    out["final_conv.0.weight"] = take("b4.conv.weight")
    out["final_conv.1.bias"] = take("b4.conv.bias")
    out["final_linear.0.weight"] = take("b4.fc.weight")
    out["final_linear.0.bias"] = take("b4.fc.bias")
    out["final_linear.1.weight"] = take("b4.out.weight")
    out["final_linear.1.bias"] = take("b4.out.bias")
    _check_filters(nv, used, blur_kernel, where)
    _leftovers(nv, used, where)
    return out


def from_nvidia_state_dict(nv_sd: Mapping[str, torch.Tensor], kind: str = "G",
                           blur_kernel: Sequence[float] = BLUR_KERNEL) -> dict[str, torch.Tensor]:
    """ADA-PyTorch / stylegan3-StyleGAN2 -> rosinality state dict. ``mapping.w_avg`` is not part of a
    rosinality generator: read it from ``nv_sd`` yourself (it is the checkpoint's ``latent_avg``)."""
    if kind == "G":
        return _generator_from_nvidia(nv_sd, blur_kernel)
    if kind == "D":
        return _discriminator_from_nvidia(nv_sd, blur_kernel)
    raise ValueError(f"kind must be 'G' or 'D', got {kind!r}")
