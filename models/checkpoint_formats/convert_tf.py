"""NVIDIA TF (StyleGAN2 / StyleGAN2-ADA) variables -> rosinality state dicts.

Every conv weight is transposed from TF's ``[kh, kw, in, out]``, dense weights from ``[in, out]``;
``Conv0_up`` is additionally rotated by 180° (TF's ``upsample_conv_2d`` is a true convolution) and
``mod_bias`` gets the +1 that TF adds at run time. Resampling kernels are regenerated.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import numpy as np
import torch

from .convert import copy_tensor, count_indexed, resample_filter, take_tensor
from .errors import CheckpointError, UnsupportedModelError


def _tf_weight(vars_: Mapping[str, np.ndarray], key: str, where: str, flip: bool = False) -> torch.Tensor:
    w = take_tensor(vars_, key, where)
    if w.ndim == 4:  # [kh, kw, in, out] -> [out, in, kh, kw]
        w = w.permute(3, 2, 0, 1)
        if flip:  # TF's upsample_conv_2d is a true convolution: rotate by 180°
            w = torch.flip(w, [2, 3])
    elif w.ndim == 2:  # dense [in, out] -> [out, in]
        w = w.t()
    return copy_tensor(w)


def _tf_styled_conv(vars_: Mapping[str, np.ndarray], src: str, dst: str, out: dict[str, torch.Tensor],
                    where: str, upsample: bool) -> None:
    out[f"{dst}.conv.weight"] = _tf_weight(vars_, f"{src}/weight", where, flip=upsample)[None]
    if upsample:
        out[f"{dst}.conv.blur.kernel"] = resample_filter(gain=4)
    out[f"{dst}.conv.modulation.weight"] = _tf_weight(vars_, f"{src}/mod_weight", where)
    out[f"{dst}.conv.modulation.bias"] = copy_tensor(take_tensor(vars_, f"{src}/mod_bias", where)) + 1
    out[f"{dst}.noise.weight"] = copy_tensor(take_tensor(vars_, f"{src}/noise_strength", where), [1])
    out[f"{dst}.activate.bias"] = copy_tensor(take_tensor(vars_, f"{src}/bias", where))


def _tf_to_rgb(vars_: Mapping[str, np.ndarray], src: str, dst: str, out: dict[str, torch.Tensor], where: str,
               upsample: bool) -> None:
    out[f"{dst}.bias"] = copy_tensor(take_tensor(vars_, f"{src}/bias", where), [1, -1, 1, 1])
    if upsample:
        out[f"{dst}.upsample.kernel"] = resample_filter(gain=4)
    out[f"{dst}.conv.weight"] = _tf_weight(vars_, f"{src}/weight", where)[None]
    out[f"{dst}.conv.modulation.weight"] = _tf_weight(vars_, f"{src}/mod_weight", where)
    out[f"{dst}.conv.modulation.bias"] = copy_tensor(take_tensor(vars_, f"{src}/mod_bias", where)) + 1


def _tf_sizes(vars_: Mapping[str, np.ndarray], pattern: str, where: str) -> int:
    found = [int(m.group(1)) for k in vars_ if (m := re.fullmatch(pattern, k))]
    if not found:
        raise CheckpointError(f"{where}: no variable matching {pattern!r}")
    return max(found)


def from_tf_variables(tf_vars: Mapping[str, np.ndarray], kind: str = "G") -> dict[str, torch.Tensor]:
    """NVIDIA TF (StyleGAN2 / StyleGAN2-ADA) variables -> rosinality state dict.

    Generator variable names carry ``mapping/`` and ``synthesis/`` prefixes (ADA ``legacy.py`` naming);
    ``dlatent_avg`` is the checkpoint's ``latent_avg`` and is not part of the returned dict.
    """
    if kind == "G":
        where = "TF generator"
        if any(re.fullmatch(r"synthesis/ToRGB_lod\d+/.*", k) for k in tf_vars):
            raise UnsupportedModelError(f"{where}: ToRGB_lod* variables: architecture 'orig', only 'skip' is supported")
        size = _tf_sizes(tf_vars, r"synthesis/(\d+)x\d+/ToRGB/weight", where)
        n_mlp = count_indexed(tf_vars, "mapping/Dense{}/weight")
        if n_mlp == 0:
            raise CheckpointError(f"{where}: no mapping/Dense0/weight")
        out: dict[str, torch.Tensor] = {}
        for i in range(n_mlp):
            out[f"style.{i + 1}.weight"] = _tf_weight(tf_vars, f"mapping/Dense{i}/weight", where)
            out[f"style.{i + 1}.bias"] = copy_tensor(take_tensor(tf_vars, f"mapping/Dense{i}/bias", where))
        out["input.input"] = copy_tensor(take_tensor(tf_vars, "synthesis/4x4/Const/const", where))
        _tf_styled_conv(tf_vars, "synthesis/4x4/Conv", "conv1", out, where, False)
        _tf_to_rgb(tf_vars, "synthesis/4x4/ToRGB", "to_rgb1", out, where, False)
        n_up = int(math.log2(size)) - 2
        for k in range(n_up):
            r = 2 ** (k + 3)
            _tf_styled_conv(tf_vars, f"synthesis/{r}x{r}/Conv0_up", f"convs.{2 * k}", out, where, True)
            _tf_styled_conv(tf_vars, f"synthesis/{r}x{r}/Conv1", f"convs.{2 * k + 1}", out, where, False)
        for k in range(n_up):
            r = 2 ** (k + 3)
            _tf_to_rgb(tf_vars, f"synthesis/{r}x{r}/ToRGB", f"to_rgbs.{k}", out, where, True)
        for i in range(2 * n_up + 1):
            out[f"noises.noise_{i}"] = copy_tensor(take_tensor(tf_vars, f"synthesis/noise{i}", where))
        return out
    if kind == "D":
        where = "TF discriminator"
        if any(re.fullmatch(r"FromRGB_lod\d+/.*", k) for k in tf_vars):
            raise UnsupportedModelError(f"{where}: FromRGB_lod* variables: architecture 'orig', "
                                        "only 'resnet' is supported")
        size = _tf_sizes(tf_vars, r"(\d+)x\d+/FromRGB/weight", where)
        out = {"convs.0.0.weight": _tf_weight(tf_vars, f"{size}x{size}/FromRGB/weight", where),
               "convs.0.1.bias": copy_tensor(take_tensor(tf_vars, f"{size}x{size}/FromRGB/bias", where))}
        for k in range(1, int(math.log2(size)) - 1):
            r = size // 2 ** (k - 1)
            src, dst = f"{r}x{r}", f"convs.{k}"
            if f"{src}/Skip/weight" not in tf_vars:
                raise UnsupportedModelError(f"{where}: no {src}/Skip/weight: "
                                            "only the 'resnet' architecture is supported")
            out[f"{dst}.conv1.0.weight"] = _tf_weight(tf_vars, f"{src}/Conv0/weight", where)
            out[f"{dst}.conv1.1.bias"] = copy_tensor(take_tensor(tf_vars, f"{src}/Conv0/bias", where))
            out[f"{dst}.conv2.0.kernel"] = resample_filter()
            out[f"{dst}.conv2.1.weight"] = _tf_weight(tf_vars, f"{src}/Conv1_down/weight", where)
            out[f"{dst}.conv2.2.bias"] = copy_tensor(take_tensor(tf_vars, f"{src}/Conv1_down/bias", where))
            out[f"{dst}.skip.0.kernel"] = resample_filter()
            out[f"{dst}.skip.1.weight"] = _tf_weight(tf_vars, f"{src}/Skip/weight", where)
        out["final_conv.0.weight"] = _tf_weight(tf_vars, "4x4/Conv/weight", where)
        out["final_conv.1.bias"] = copy_tensor(take_tensor(tf_vars, "4x4/Conv/bias", where))
        out["final_linear.0.weight"] = _tf_weight(tf_vars, "4x4/Dense0/weight", where)
        out["final_linear.0.bias"] = copy_tensor(take_tensor(tf_vars, "4x4/Dense0/bias", where))
        out["final_linear.1.weight"] = _tf_weight(tf_vars, "Output/weight", where)
        out["final_linear.1.bias"] = copy_tensor(take_tensor(tf_vars, "Output/bias", where))
        return out
    raise ValueError(f"kind must be 'G' or 'D', got {kind!r}")
