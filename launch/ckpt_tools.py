"""Inspect and export the launcher's own Lightning checkpoints (``checkpoints/last.ckpt``,
``kimgNNNNNN.ckpt``, ``interrupted.ckpt``)::

    python -m launch.ckpt_tools info runs/<run>/checkpoints/kimg000050.ckpt
    python -m launch.ckpt_tools convert runs/<run>/checkpoints/kimg000050.ckpt gen_kimg50.pt [--force]

``info`` prints what the file holds and where its run stood: method, experiment, kimg, iteration, the
networks with their parameter counts and architecture, the method's counters and extra state (with their
values), optimizers, callbacks, W&B run id and the provenance of the launch. ``convert`` writes the
generator state of an intermediate training state as the same rosinality-compatible ``.pt`` the run
exports at its end (``models.checkpoints.save``: ``g_ema``, ``g``, ``d``, ``latent_avg``, ``kimg``); an
existing output file is only replaced with ``--force``.

Files are read with ``torch.load(weights_only=True)`` (memory-mapped): nothing stored in them is executed.
Which state-dict prefixes hold which network: ``g_ema.`` / ``generator.`` / ``discriminator.`` (the StyleGAN2
core: ``stylegan2``, ``mixdl``) and ``g_train.`` (``nada``: the adapted generator, exported as ``g_ema``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from launch.checkpointing import META_KEY

#: export name -> state-dict prefixes of the module that hold it (first match wins)
NETWORK_PREFIXES = {"g_ema": ("g_ema.", "g_train."), "g": ("generator.",), "d": ("discriminator.",)}
STATE_KEY = "method_state"


class NotARunCheckpoint(ValueError):
    """The file is not a Lightning checkpoint written by a StyleShift run."""


def is_run_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a Lightning checkpoint (cheap: a zip file holding a ``state_dict``)."""
    try:
        read(path)
    except (NotARunCheckpoint, OSError):
        return False
    return True


def read(path: str | os.PathLike) -> dict:
    """The checkpoint as a dict (``weights_only=True``, memory-mapped); raises :class:`NotARunCheckpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any failure: not one of our checkpoints
        raise NotARunCheckpoint(f"{path} is not a readable Lightning checkpoint ({type(err).__name__})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "pytorch-lightning_version" not in ckpt:
        raise NotARunCheckpoint(f"{path} is not a Lightning checkpoint (no 'state_dict'/'pytorch-lightning_version')")
    return ckpt


def networks(ckpt: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"g_ema"|"g"|"d": state dict}`` of the StyleGAN2 networks in a checkpoint's module state."""
    state = ckpt["state_dict"]
    found: dict[str, dict[str, torch.Tensor]] = {}
    for name, prefixes in NETWORK_PREFIXES.items():
        for prefix in prefixes:
            sd = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if sd:
                found[name] = sd
                break
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else f"tensor{list(value.shape)}"
    return value


def summary(path: str | os.PathLike) -> dict[str, Any]:
    """What :func:`describe` prints, as a dict."""
    ckpt = read(path)
    meta = ckpt.get(META_KEY) if isinstance(ckpt.get(META_KEY), dict) else {}
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    state = ckpt.get(STATE_KEY) if isinstance(ckpt.get(STATE_KEY), dict) else {}
    nets = networks(ckpt)
    prefixes: dict[str, int] = {}
    for key, value in ckpt["state_dict"].items():
        top = key.split(".")[0]
        prefixes[top] = prefixes.get(top, 0) + value.numel()
    info: dict[str, Any] = {
        "file": str(path), "format": "lightning checkpoint of a StyleShift run",
        "method": config.get("method"), "experiment": config.get("experiment"),
        "run directory": config.get("output_dir"),
        "kimg": state["nimg"] / 1000.0 if "nimg" in state else None, "iteration": state.get("iteration"),
        "global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch"),
        "method state": {k: _plain(v) for k, v in state.items()},
        "modules": {k: f"{n:,} values" for k, n in sorted(prefixes.items())},
        "networks": {k: f"{sum(v.numel() for v in sd.values()):,} values, {len(sd)} keys" for k, sd in nets.items()},
        "optimizers": len(ckpt.get("optimizer_states") or []),
        "callbacks": sorted(ckpt.get("callbacks") or {}),
        "wandb_run_id": meta.get("wandb_run_id"), "world_size": meta.get("world_size"),
        "pytorch-lightning": ckpt.get("pytorch-lightning_version"),
        "git": (config.get("provenance") or {}).get("git"),
    }
    if "g_ema" in nets:
        try:
            from models.checkpoint_formats.config import infer_config
            arch = infer_config(nets["g_ema"], nets.get("d"), source_format="styleshift").to_dict()
            info["architecture"] = {k: v for k, v in arch.items() if k != "source_format" and v is not None}
        except Exception as err:  # noqa: BLE001 - an unusual network: report it, keep the rest
            info["architecture"] = f"not inferred ({type(err).__name__}: {err})"
    return info


def describe(path: str | os.PathLike) -> str:
    """Human-readable :func:`summary`."""
    lines = []
    for key, value in summary(path).items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k + ':':<22}{v}" for k, v in value.items()] or ["  -"]
        else:
            lines.append(f"{key + ':':<24}{value if value is not None else '-'}")
    return "\n".join(lines)


@torch.no_grad()
def mean_w(g_ema_state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean W ``[style_dim]`` of a generator state: the same fixed 4096 z (seed 0) as the run's export."""
    from lightning_modules.base import MEAN_W_SAMPLES, MEAN_W_SEED
    from models.checkpoint_formats.config import infer_config
    from models.checkpoints import build_generator

    generator = build_generator(infer_config(dict(g_ema_state), None, source_format="styleshift"), g_ema_state)
    z = torch.randn(MEAN_W_SAMPLES, generator.style_dim, generator=torch.Generator().manual_seed(MEAN_W_SEED))
    return generator.style(z).mean(0)


def convert(src: str | os.PathLike, dst: str | os.PathLike, force: bool = False) -> Path:
    """Export the generator state of checkpoint ``src`` to ``dst`` (``models.checkpoints.save``).

    Refuses to replace an existing ``dst`` unless ``force``. The file is as readable as the umask allows.
    """
    from models import checkpoints

    dst = Path(dst)
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} exists; pass --force to replace it")
    ckpt = read(src)
    nets = networks(ckpt)
    if "g_ema" not in nets and "g" not in nets:
        method = ((ckpt.get(META_KEY) or {}).get("config") or {}).get("method")
        raise NotARunCheckpoint(f"{src} holds no StyleGAN2 generator (method {method!r}; state-dict prefixes: "
                                f"{sorted({k.split('.')[0] for k in ckpt['state_dict']})})")
    state = ckpt.get(STATE_KEY) or {}
    extra: dict[str, Any] = {"source_checkpoint": str(src)}
    if "nimg" in state:
        extra["kimg"] = float(state["nimg"]) / 1000.0
    if "iteration" in state:
        extra["iteration"] = int(state["iteration"])
    g_ema = nets.get("g_ema", nets.get("g"))
    out = checkpoints.save(dst, g_ema=nets.get("g_ema"), g=nets.get("g"), d=nets.get("d"),
                           latent_avg=mean_w(g_ema), **extra)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.ckpt_tools", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="what a run's Lightning checkpoint holds, with kimg and counters")
    p_info.add_argument("file")
    p_conv = sub.add_parser("convert", help="a run's Lightning checkpoint -> our rosinality-compatible .pt")
    p_conv.add_argument("src")
    p_conv.add_argument("dst")
    p_conv.add_argument("--force", action="store_true", help="replace an existing DST")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(describe(args.file))
            return 0
        out = convert(args.src, args.dst, force=args.force)
        print(f"wrote {out} (generator of {args.src})")
        return 0
    except (NotARunCheckpoint, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
