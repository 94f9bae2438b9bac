"""DualStyleGAN generator: a frozen intrinsic StyleGAN2 plus a trainable extrinsic style path.

Yang, Jiang, Liu, Loy, "Pastiche Master: Exemplar-Based High-Resolution Portrait Style Transfer", CVPR 2022;
our description: docs/methods/dualstylegan.md.

* **intrinsic path** ``generator``: our ``models.stylegan2.Generator``, held frozen (``models.frozen``: no
  gradients, always eval, outside ``parameters()`` / ``state_dict()``);
* **structure transform** T_s ``style``: PixelNorm + EqualLinear layers (lr_mul 0.01, fused leaky ReLU), random
  init, shared by every structure layer;
* **ModRes** ``res[0..res_index]``: :class:`AdaResBlock` residuals added after the StyledConv of W+ index k;
* **colour transforms** T_c ``res[res_index+1..n_latent-1]``: one EqualLinear per W+ index, identity at init;
  index k's modulated conv / toRGB receives ``w_k T_c,k(e_k) + (1 - w_k) L_k``.

W+ index k (``n_latent`` of them) drives ``conv1`` (k=0), ``convs[k-1]`` (k>=1) and ``to_rgbs[(k-3)//2]``
(odd k>=3); the extrinsic code e_k acts on index k. ``res_index`` is even: indices ``<= res_index`` are the
structure layers (ModRes), the others colour (T_c). The toRGB layers of the structure indices stay intrinsic.

At initialisation (T_c ~ identity, ModRes residual ~0.01-scaled) the network with w = 1 is close to plain
style mixing at index ``res_index + 1`` (the paper's Stage I, colour transfer); with w = 0, or
``use_res=False``, it equals the intrinsic generator exactly.

Files: :func:`save` / :func:`load` write and read our export (through ``models.checkpoints``: the intrinsic
generator as ``g_ema`` plus the extrinsic path and its config); :func:`load_official` reads the released
DualStyleGAN generator files (``g_ema`` with ``generator.* / style.* / res.*`` keys) without executing code.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from models import checkpoints
from models.checkpoint_formats.config import infer_config
from models.checkpoint_formats.errors import CheckpointError
from models.checkpoint_formats.limits import Budget
from models.checkpoint_formats.torch_files import keys_preview, torch_load
from models.frozen import HoldsFrozen
from models.stylegan2 import NOISE_MODES, Generator
from models.stylegan2_layers import ConvLayer, EqualLinear, PixelNorm

__all__ = ["AdaIN", "AdaResBlock", "DualStyleGAN", "default_res_index", "weight_preset", "inference_weights",
           "INFERENCE_WEIGHTS", "part_counts", "save", "load", "load_official", "from_official_state_dict",
           "official_state_dict", "EXPORT_KEY"]

EXPORT_KEY = "dualstylegan"
"""Entry of our export (a ``models.checkpoints`` file) holding the extrinsic path: ``config`` + ``state_dict``."""
STRUCTURE_LR_MUL = 0.01
MODRES_INIT_SCALE = 0.01
COLOUR_INIT_NOISE = 0.01


def default_res_index(size: int) -> int:
    """Last structure W+ index for a ``size``-px generator: 6 at 1024 px.

    At 1024 px the structure layers are those at 4-32 px, the coarse 4 of the 9 resolution levels. Smaller nets
    keep that fraction of their levels, rounded: 32 and 64 px -> 2 (4-8 px), 128 and 256 px -> 4 (4-16 px),
    512 and 1024 px -> 6 (4-32 px).
    """
    levels = int(math.log2(size)) - 1
    return max(0, 2 * math.floor(4 * levels / 9 + 0.5) - 2)


def _check_split(n_latent: int, res_index: int) -> None:
    if res_index % 2 or not 0 <= res_index <= n_latent - 2:
        raise ValueError(f"res_index must be even and in [0, {n_latent - 2}] (n_latent={n_latent}), got {res_index}")


def weight_preset(kind: str, n_latent: int = 18, res_index: int = 6, value: float = 1.0) -> list[float]:
    """Weight vector w (one entry per W+ index) for ``kind``:

    ``"full"``: ``value`` everywhere; ``"structure"``: structure entries ``value``, colour entries 0 (keeps the
    content's colours); ``"color"`` / ``"colour"``: structure entries 0, colour entries ``value``.
    """
    _check_split(n_latent, res_index)
    n_s = res_index + 1
    if kind == "full":
        return [float(value)] * n_latent
    if kind == "structure":
        return [float(value)] * n_s + [0.0] * (n_latent - n_s)
    if kind in ("color", "colour"):
        return [0.0] * n_s + [float(value)] * (n_latent - n_s)
    raise ValueError(f"unknown weight preset {kind!r}; choose from 'full', 'structure', 'color'")


def inference_weights(n_latent: int = 18, res_index: int = 6, structure: float = 0.75,
                      colour: float = 1.0) -> list[float]:
    """The official inference default: ``structure`` on the structure entries, ``colour`` on the colour entries
    ([0.75] * 7 + [1] * 11 at 1024 px)."""
    _check_split(n_latent, res_index)
    return [float(structure)] * (res_index + 1) + [float(colour)] * (n_latent - res_index - 1)


INFERENCE_WEIGHTS = inference_weights()


# ------------------------------------------------------------------------------------------------ modules
class AdaIN(nn.Module):
    """``gamma(s) * IN(x) + beta(s)``; IN without affine parameters, ``[gamma; beta]`` from a plain ``nn.Linear``
    whose bias starts at gamma = 1, beta = 0."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.channels = channels
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(style_dim, 2 * channels)
        with torch.no_grad():
            self.affine.bias[:channels].fill_(1.0)
            self.affine.bias[channels:].zero_()

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        gamma, beta = self.affine(s)[:, :, None, None].chunk(2, dim=1)
        return gamma * self.norm(x) + beta


class AdaResBlock(nn.Module):
    """ModRes: ``h + w * r`` with ``r = conv2(AdaIN2(conv1(AdaIN1(h, s)), s))``; 3x3 ``ConvLayer`` convs (bias +
    leaky ReLU) whose weights start scaled by 0.01, so ``r`` starts near zero."""

    def __init__(self, channels: int, style_dim: int, init_scale: float = MODRES_INIT_SCALE):
        super().__init__()
        self.adain1 = AdaIN(channels, style_dim)
        self.conv1 = ConvLayer(channels, channels, 3)
        self.adain2 = AdaIN(channels, style_dim)
        self.conv2 = ConvLayer(channels, channels, 3)
        with torch.no_grad():
            self.conv1[0].weight.mul_(init_scale)
            self.conv2[0].weight.mul_(init_scale)

    def residual(self, h: Tensor, s: Tensor) -> Tensor:
        return self.conv2(self.adain2(self.conv1(self.adain1(h, s)), s))

    def forward(self, h: Tensor, s: Tensor, weight: float = 1.0) -> Tensor:
        """``h + weight * r``; ``h`` itself (the residual is not computed) when ``weight == 0``."""
        if weight == 0:
            return h
        return h + weight * self.residual(h, s)


def _colour_transform(dim: int) -> EqualLinear:
    """T_c,k: EqualLinear whose effective weight is ``I + N(0, (0.01 / sqrt(dim))^2)``, bias 0."""
    layer = EqualLinear(dim, dim)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim) * math.sqrt(dim) + COLOUR_INIT_NOISE * torch.randn(dim, dim))
    return layer


def layer_resolution(k: int) -> int:
    """Resolution of the feature map the StyledConv of W+ index k produces (4 for k=0, then 8, 8, 16, 16, ...)."""
    return 2 ** (2 + (k + 1) // 2)


class DualStyleGAN(HoldsFrozen):
    """Frozen intrinsic ``generator`` + extrinsic path (``style`` = T_s, ``res`` = ModRes and T_c).

    ``res_index`` (even; default :func:`default_res_index`) is the last structure W+ index; odd values are
    rounded down as in the official code. ``structure_layers`` is the number of EqualLinear layers of T_s
    (official: ``n_mlp - 6`` = 2; default ``max(1, n_mlp - 6)``). ModRes ``res[k]`` has the channels of the
    feature map at index k of the backbone. ``parameters()`` / ``state_dict()`` hold the extrinsic path only.
    """

    def __init__(self, generator: Generator, res_index: int | None = None, structure_layers: int | None = None):
        super().__init__()
        self.hold("generator", generator)
        self.size = generator.size
        self.style_dim = dim = generator.style_dim
        self.n_latent = generator.n_latent
        self.num_layers = generator.num_layers
        self.channels = dict(generator.channels)
        res_index = default_res_index(self.size) if res_index is None else int(res_index)
        self.res_index = res_index - res_index % 2
        _check_split(self.n_latent, self.res_index)
        self.structure_layers = max(1, generator.n_mlp - 6) if structure_layers is None else int(structure_layers)
        if self.structure_layers < 1:
            raise ValueError(f"structure_layers must be >= 1, got {structure_layers}")
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(dim, dim, lr_mul=STRUCTURE_LR_MUL, activation="fused_lrelu")
            for _ in range(self.structure_layers)])
        self.res = nn.ModuleList(
            AdaResBlock(self.channels[layer_resolution(k)], dim) if k <= self.res_index else _colour_transform(dim)
            for k in range(self.n_latent))

    # ------------------------------------------------------------------------------------------ helpers
    def config(self) -> dict[str, int]:
        """What rebuilds the extrinsic path on top of a given intrinsic generator."""
        return {"res_index": self.res_index, "structure_layers": self.structure_layers}

    def modres_blocks(self) -> list[AdaResBlock]:
        return list(self.res[: self.res_index + 1])

    def colour_transforms(self) -> list[EqualLinear]:
        return list(self.res[self.res_index + 1:])

    def weights(self, kind: str = "full", value: float = 1.0) -> list[float]:
        """:func:`weight_preset` for this network."""
        return weight_preset(kind, self.n_latent, self.res_index, value)

    def make_noise(self) -> list[Tensor]:
        return self.generator.make_noise()

    def mean_latent(self, n: int) -> Tensor:
        return self.generator.mean_latent(n)

    def get_latent(self, z: Tensor) -> Tensor:
        return self.generator.get_latent(z)

    def to_wplus(self, z_plus: Tensor) -> Tensor:
        """Z+ [B, n_latent, D] -> W+ through the frozen mapping network, row by row."""
        if z_plus.ndim != 3:
            raise ValueError(f"a Z+ code has shape [B, n_latent, D], got {tuple(z_plus.shape)}")
        b, n, d = z_plus.shape
        return self.generator.style(z_plus.reshape(b * n, d)).reshape(b, n, d)

    def _extrinsic(self, exstyles: Tensor | None, batch: int) -> Tensor:
        if exstyles is None:
            raise ValueError("use_res=True needs exstyles (the extrinsic W / W+ code)")
        e = exstyles.unsqueeze(1).expand(-1, self.n_latent, -1) if exstyles.ndim == 2 else exstyles
        if e.ndim != 3 or e.shape[1:] != (self.n_latent, self.style_dim) or e.shape[0] not in (1, batch):
            raise ValueError(f"exstyles must be [B, {self.style_dim}] or [B, {self.n_latent}, {self.style_dim}] "
                             f"with B = {batch}, got {tuple(exstyles.shape)}")
        return e.expand(batch, -1, -1)

    def _weights(self, interp_weights: Sequence[float] | Tensor | None) -> list[float]:
        if interp_weights is None:
            return [1.0] * self.n_latent
        w = interp_weights.tolist() if isinstance(interp_weights, Tensor) else list(interp_weights)
        if len(w) != self.n_latent:
            raise ValueError(f"interp_weights needs {self.n_latent} entries (one per W+ index), got {len(w)}")
        return [float(v) for v in w]

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, styles: Tensor | Sequence[Tensor], exstyles: Tensor | None = None, *,
                interp_weights: Sequence[float] | Tensor | None = None, use_res: bool = True,
                fuse_index: int | None = None, input_is_latent: bool = False, truncation: float = 1,
                truncation_latent: Tensor | float | None = None, noise: Sequence[Tensor | None] | None = None,
                randomize_noise: bool = True, inject_index: int | None = None, return_latents: bool = False,
                z_plus_latent: bool = False, noise_mode: str | None = None) -> tuple[Tensor, Tensor | None]:
        """Render ``(image, intrinsic W+ L or None)``.

        ``styles``: one or two intrinsic codes (z [B, D]; Z+ [B, n_latent, D] with ``z_plus_latent``; W / W+
        with ``input_is_latent``), mapped, truncated (``t + psi (w - t)``, ``t = truncation_latent``) and mixed
        at ``inject_index`` exactly as the backbone does. ``exstyles``: the extrinsic code, already W [B, D]
        (broadcast to every index) or W+ [B, n_latent, D]. ``interp_weights``: w, one entry per index (default
        all 1). Index k uses the extrinsic path only when ``use_res`` and ``0 < fuse_index`` and ``k <=
        fuse_index`` (default ``fuse_index = n_latent``). Noise arguments as in ``Generator.forward``.
        """
        g = self.generator
        if isinstance(styles, Tensor):
            styles = [styles]
        if z_plus_latent and not input_is_latent:
            styles, input_is_latent = [self.to_wplus(s) for s in styles], True
        latent = g.styles_to_latent(styles, inject_index, truncation, truncation_latent, input_is_latent)
        if noise_mode is None:
            noise_mode = "random" if randomize_noise else "const"
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if noise is None:
            noise = g.stored_noise() if noise_mode == "const" else [None] * self.num_layers
        elif len(noise) != self.num_layers:
            raise ValueError(f"noise list has {len(noise)} entries, the generator has {self.num_layers} layers")
        mode = "none" if noise_mode == "none" else "random"
        fused = g._use_fused()

        w = self._weights(interp_weights)
        fuse_index = self.n_latent if fuse_index is None else fuse_index
        active = [use_res and fuse_index > 0 and k <= fuse_index for k in range(self.n_latent)]
        codes = [latent[:, k] for k in range(self.n_latent)]  # W code of each index's modulated conv / toRGB
        structure: Tensor | None = None
        if any(active):
            e = self._extrinsic(exstyles, latent.shape[0])
            n_s = self.res_index + 1
            structure = self.style(e[:, :n_s].reshape(-1, self.style_dim)).reshape(-1, n_s, self.style_dim)
            for k in range(n_s, self.n_latent):
                if active[k] and w[k] != 0:
                    colour = self.res[k](e[:, k])
                    codes[k] = colour if w[k] == 1 else w[k] * colour + (1 - w[k]) * latent[:, k]

        def modres(k: int, h: Tensor) -> Tensor:
            if active[k] and k <= self.res_index:
                return self.res[k](h, structure[:, k], w[k])
            return h

        out = g.input(latent)
        out = modres(0, g.conv1(out, codes[0], noise=noise[0], noise_mode=mode, fused=fused))
        skip = g.to_rgb1(out, latent[:, 1])  # always intrinsic, as in the official code (matters for res_index 0)
        k = 1
        for conv_up, conv, noise1, noise2, to_rgb in zip(g.convs[::2], g.convs[1::2], noise[1::2], noise[2::2],
                                                         g.to_rgbs):
            out = modres(k, conv_up(out, codes[k], noise=noise1, noise_mode=mode, fused=fused))
            out = modres(k + 1, conv(out, codes[k + 1], noise=noise2, noise_mode=mode, fused=fused))
            skip = to_rgb(out, codes[k + 2], skip)
            k += 2
        return skip, (latent if return_latents else None)


def part_counts(model: DualStyleGAN) -> dict[str, int]:
    """Parameter counts: ``intrinsic`` (frozen StyleGAN2), ``structure`` (T_s), ``modres`` (all ModRes blocks),
    ``colour`` (all T_c) and ``extrinsic`` (the last three together)."""
    def count(modules: Sequence[nn.Module]) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    out = {"intrinsic": count([model.generator]), "structure": count([model.style]),
           "modres": count(model.modres_blocks()), "colour": count(model.colour_transforms())}
    out["extrinsic"] = out["structure"] + out["modres"] + out["colour"]
    return out


# ------------------------------------------------------------------------------------------------ files
def save(path: str | os.PathLike, model: DualStyleGAN, latent_avg: Tensor | None = None, **extra: Any) -> Path:
    """Our export: a ``models.checkpoints`` file whose ``g_ema`` is the intrinsic generator (so it also loads as
    a plain StyleGAN2) and whose ``dualstylegan`` entry holds ``config`` and the extrinsic ``state_dict``."""
    g = model.generator
    config = infer_config(g.state_dict(), None, source_format="styleshift", lr_mlp=g.lr_mlp, conv_clamp=g.conv_clamp)
    entry = {"config": model.config(),
             "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    return checkpoints.save(path, g_ema=g, latent_avg=latent_avg, config=config, **{EXPORT_KEY: entry}, **extra)


def _load_extrinsic(model: DualStyleGAN, sd: Mapping[str, Tensor], where: str) -> None:
    """Strict load of the extrinsic path, keys and shapes checked first."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{where}: extrinsic weights do not match the network: missing {missing[:6]}, "
                              f"unexpected {[str(k)[:60] for k in unexpected[:6]]}")
    wrong = [k for k in expected if not isinstance(sd[k], Tensor) or tuple(sd[k].shape) != expected[k]]
    if wrong:
        got = list(sd[wrong[0]].shape) if isinstance(sd[wrong[0]], Tensor) else type(sd[wrong[0]]).__name__
        raise CheckpointError(f"{where}: {wrong[0]} has shape {got}, the network expects {list(expected[wrong[0]])}"
                              + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
    model.load_state_dict(dict(sd), strict=True)


def load(path: str | os.PathLike, map_location: Any = "cpu", max_bytes: int | str | None = None) -> DualStyleGAN:
    """Read our export (:func:`save`); a missing file is a ``FileNotFoundError``, anything wrong with its content
    a ``CheckpointError`` naming the file. Official releases: :func:`load_official`."""
    try:
        ckpt = checkpoints.load(path, map_location, networks=("g_ema",), max_bytes=max_bytes)
    except CheckpointError as err:
        if "generator." not in str(err):
            raise
        raise type(err)(f"{err} (its keys look like an official DualStyleGAN release: read it with "
                        "models.dualstylegan.load_official)") from None
    entry = ckpt.extra.get(EXPORT_KEY)
    if ckpt.g_ema is None or not isinstance(entry, Mapping) or not isinstance(entry.get("config"), Mapping) \
            or not isinstance(entry.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: not a DualStyleGAN export: it needs 'g_ema' and a '{EXPORT_KEY}' entry with "
                              f"'config' and 'state_dict' (found top-level extras {keys_preview(ckpt.extra)})")
    cfg = dict(entry["config"])
    if set(cfg) != {"res_index", "structure_layers"} or not all(isinstance(v, int) for v in cfg.values()):
        raise CheckpointError(f"{path}: bad '{EXPORT_KEY}' config {cfg!r}; expected integer res_index and "
                              "structure_layers")
    try:
        model = DualStyleGAN(ckpt.g_ema, **cfg)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    _load_extrinsic(model, entry["state_dict"], str(path))
    return model.to(ckpt.g_ema.input.input.device)


# official key names inside one ModRes block -> ours
_OFFICIAL_MODRES = {"conv.": "conv1.", "conv2.": "conv2.", "norm.style.": "adain1.affine.",
                    "norm2.style.": "adain2.affine."}


def _rename_modres(suffix: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if suffix.startswith(old):
            return new + suffix[len(old):]
    return None


def official_state_dict(model: DualStyleGAN) -> dict[str, Tensor]:
    """The model in the official layout (``generator.*``, ``style.*``, ``res.*``), e.g. to write files the official
    code reads as ``ckpt["g_ema"]``."""
    back = {v: k for k, v in _OFFICIAL_MODRES.items()}
    out = {f"generator.{k}": v for k, v in model.generator.state_dict().items()}
    for key, value in model.state_dict().items():
        if key.startswith("res."):
            _, idx, suffix = key.split(".", 2)
            if int(idx) <= model.res_index:
                key = f"res.{idx}.{_rename_modres(suffix, back)}"
        out[key] = value
    return out


def from_official_state_dict(sd: Mapping[str, Tensor], where: str = "the state dict") -> DualStyleGAN:
    """Build a :class:`DualStyleGAN` from an official generator state dict (keys and shapes checked)."""
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{where}: not a state dict of tensors")
    gen = {k[len("generator."):]: v for k, v in sd.items() if k.startswith("generator.")}
    if not gen or not any(k.startswith("res.") for k in sd):
        raise CheckpointError(f"{where}: not a DualStyleGAN generator: it needs 'generator.*', 'style.*' and 'res.*' "
                              f"keys (first keys: {[k[:60] for k in list(sd)[:6]]})")
    name = f"{where}: intrinsic generator (generator.*)"
    try:
        config = infer_config(gen, None, source_format="rosinality")
    except CheckpointError as err:
        raise type(err)(f"{name}: {err}") from None
    generator = checkpoints.build_generator(config, gen, name=name)
    structure_layers = 0
    while f"style.{structure_layers + 1}.weight" in sd:
        structure_layers += 1
    n_modres = 0
    while f"res.{n_modres}.conv.0.weight" in sd:
        n_modres += 1
    if structure_layers == 0 or n_modres == 0 or n_modres % 2 == 0:
        raise CheckpointError(f"{where}: found {structure_layers} structure-transform layers (style.N.weight) and "
                              f"{n_modres} ModRes blocks (res.K.conv.0.weight); expected >= 1 and an odd number")
    try:
        model = DualStyleGAN(generator, res_index=n_modres - 1, structure_layers=structure_layers)
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from None
    ours: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith("generator."):
            continue
        if key.startswith("res.") and key.count(".") >= 2:
            _, idx, suffix = key.split(".", 2)
            if idx.isdigit() and int(idx) < n_modres:
                key = f"res.{idx}.{_rename_modres(suffix, _OFFICIAL_MODRES) or suffix}"
        ours[key] = value
    _load_extrinsic(model, ours, where)
    return model


def load_official(path: str | os.PathLike, map_location: Any = "cpu", which: str = "g_ema",
                  max_bytes: int | str | None = None) -> DualStyleGAN:
    """Read a released DualStyleGAN generator file (``torch.save`` dict whose ``which`` entry is the generator
    state dict) with the audited weights-only reader: nothing from the file is executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DualStyleGAN checkpoint not found: {path}")
    try:
        obj = torch_load(path, map_location, Budget(path.stat().st_size, max_bytes))
    except CheckpointError:
        raise
    except Exception as err:  # a reader tripped on content it does not expect: still the file's fault
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(err).__name__})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(which), Mapping):
        keys = keys_preview(obj) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a DualStyleGAN release: expected a dict with a '{which}' state dict "
                              f"(found {keys})")
    model = from_official_state_dict(obj[which], where=f"{path}:{which}")
    device = torch.device(map_location) if isinstance(map_location, (str, torch.device)) else None
    return model.to(device) if device is not None else model
