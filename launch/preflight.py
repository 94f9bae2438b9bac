"""Pre-flight checks: what a valid config needs from this machine before anything starts.

:func:`launch.schema.validate` checks the config against itself (keys, value types). These checks look at
the world instead, without loading weights or decoding data: data folders and files exist and hold
images, pretrained files and checkpoints are where the config says, the requested accelerator and device
count exist, and the run directory is free (not locked by another run, not holding a finished run that a
fresh fit would overwrite). Every check returns problems as one line per problem, beginning with the
config key it concerns, so ``--dry-run`` and a real launch report them all at once.

The multi-device default is decided here too (:func:`choose_strategy`): with more than one device and no
explicit ``trainer.strategy``, DDP that tolerates parameters without gradients, which every GAN phase has.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from launch.schema import Plan

log = logging.getLogger(__name__)

#: the DDP flavour every method needs: each phase (D step, G step) leaves the other network's parameters
#: without gradients, which plain DDP reports as an error
MULTI_DEVICE_STRATEGY = "ddp_find_unused_parameters_true"
#: model keys that name a folder of images a method reads
IMAGE_FOLDER_KEYS = ("target_images", "styles")
#: model keys naming a file the run reads (a DualStyleGAN code table, an encoder, the previous stage's export)
INPUT_FILE_KEYS = ("codes", "encoder", "init")
#: model keys whose pretrained file a method does without (``nada_mapper`` skips its identity term)
OPTIONAL_ASSET_KEYS = ("identity",)


# ------------------------------------------------------------------------------------------ devices
def _accelerator_class(name: str) -> Any:
    from pytorch_lightning.accelerators import AcceleratorRegistry

    name = "cuda" if name == "gpu" else name
    return AcceleratorRegistry[name]["accelerator"] if name in AcceleratorRegistry else None


def requested_device_count(devices: Any, available: int) -> int | None:
    """How many devices ``trainer.devices`` asks for (``-1``/``"auto"``: all ``available``; None: unknown)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return available if devices == -1 else devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return available
        if "," in text:
            return len([part for part in text.split(",") if part.strip()])
        if text.isdigit():
            return int(text)
    return None


def _available(accelerator: str) -> tuple[str, int]:
    """``(resolved accelerator name, number of its devices here)``; ``auto`` resolves as Lightning does."""
    if accelerator == "auto":
        for name in ("cuda", "mps"):
            cls = _accelerator_class(name)
            if cls is not None and cls.is_available():
                return name, int(cls.auto_device_count())
        return "cpu", 1
    if accelerator == "gpu":
        for name in ("cuda", "mps"):
            cls = _accelerator_class(name)
            if cls is not None and cls.is_available():
                return name, int(cls.auto_device_count())
        return "gpu", 0
    cls = _accelerator_class(accelerator)
    if cls is None:
        return accelerator, -1
    return accelerator, int(cls.auto_device_count()) if cls.is_available() else 0


def device_problems(trainer: Mapping[str, Any]) -> list[str]:
    """The requested accelerator and device count exist on this machine."""
    accelerator = trainer.get("accelerator", "auto")
    if not isinstance(accelerator, str):
        return []  # an Accelerator instance: Lightning's business
    name, available = _available(accelerator.lower())
    if available < 0:
        return []  # an accelerator this check does not know (Lightning names the problem itself)
    if available == 0:
        import torch
        build = f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ", no CUDA")
        return [f"'trainer.accelerator': {accelerator} requested, but this machine has none ({build}); use "
                f"trainer.accelerator=cpu (or auto, which takes what there is)"]
    count = requested_device_count(trainer.get("devices", "auto"), available)
    if name != "cpu" and count is not None and count > available:
        return [f"'trainer.devices': {trainer.get('devices')} {name} device(s) requested, {available} available "
                f"on this machine; set trainer.devices={available} or fewer"]
    return []


def choose_strategy(trainer: dict) -> str | None:
    """Sets ``trainer.strategy`` to :data:`MULTI_DEVICE_STRATEGY` when several processes will train and the
    user chose no strategy (absent or ``auto``); returns the strategy set, None when unchanged."""
    if trainer.get("strategy", "auto") != "auto":
        return None
    accelerator = trainer.get("accelerator", "auto")
    if not isinstance(accelerator, str):
        return None
    _, available = _available(accelerator.lower())
    count = requested_device_count(trainer.get("devices", "auto"), max(available, 1)) or 1
    nodes = trainer.get("num_nodes", 1)
    if count * (nodes if isinstance(nodes, int) and not isinstance(nodes, bool) else 1) <= 1:
        return None
    trainer["strategy"] = MULTI_DEVICE_STRATEGY
    return MULTI_DEVICE_STRATEGY


# ------------------------------------------------------------------------------------------ files
def image_path_problem(key: str, path: Any) -> str | None:
    """``path`` is a folder (searched recursively) or dataset zip holding at least one image file."""
    if not isinstance(path, str):
        return None
    from datamodules.base import open_image_source
    from datamodules.transforms import IMAGE_EXTENSIONS

    try:
        source = open_image_source(path)
        names = source.names()
    except (FileNotFoundError, ValueError, OSError) as err:
        return f"'{key}': {err}"
    if not names:
        return (f"'{key}': {source.location} holds no image files ({' '.join(IMAGE_EXTENSIONS)}, searched "
                f"recursively; hidden files are skipped)")
    return None


def file_problem(key: str, path: Any, what: str) -> str | None:
    if isinstance(path, str) and not Path(path).expanduser().is_file():
        return f"'{key}': {what} {path} does not exist"
    return None


def asset_problem(key: str, name: str) -> str | None:
    """A registered asset name must be in the cache; another string must be an existing file."""
    from models import assets

    if Path(name).expanduser().is_file():
        return None
    if name not in assets.ASSETS:
        return (f"'{key}': {name} does not exist (neither a file nor a registered asset name: "
                f"python -m models.assets list)")
    try:
        assets.resolve(name, verify_hash=False)
    except FileNotFoundError as err:
        return f"'{key}': " + str(err).replace("\n", "\n    ")
    return None


def _strings(value: Any, key: str) -> Iterable[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}[{i}]")


def model_asset_problems(model: Mapping[str, Any], params: Iterable[str] = (),
                         needs_clip: Any = None) -> list[str]:
    """Pretrained files the method's config names: the generator checkpoint, CLIP weights (also the
    default ones of a method taking ``clip_models`` when the config sets none, unless the method's
    ``needs_clip(model)`` says this config uses no CLIP), and any value that is a registered asset name.
    ``params``: the method's constructor keys, when known."""
    from models import assets

    problems: list[str] = []
    seen: set[str] = set()

    def check(key: str, name: Any) -> None:
        if isinstance(name, str) and name not in seen:
            seen.add(name)
            problem = asset_problem(key, name)
            if problem:
                problems.append(problem)

    generator = model.get("generator")
    checkpoint = generator if isinstance(generator, str) else (
        generator.get("checkpoint") if isinstance(generator, Mapping) else None)
    check("model.generator.checkpoint" if isinstance(generator, Mapping) else "model.generator", checkpoint)
    if ("clip_models" in model or "clip_models" in params) and (needs_clip is None or needs_clip(model)):
        problems += _clip_problems(model.get("clip_models"), check)
    skip = ("generator", "clip_models", *OPTIONAL_ASSET_KEYS)
    for key, value in _strings({k: v for k, v in model.items() if k not in skip}, "model"):
        if value in assets.ASSETS:
            check(key, value)
    for name in IMAGE_FOLDER_KEYS:
        problem = image_path_problem(f"model.{name}", model.get(name))
        if problem:
            problems.append(problem)
    for name in INPUT_FILE_KEYS:
        value = model.get(name)
        looks_like_file = isinstance(value, str) and value not in assets.ASSETS and (
            "/" in value or value.endswith((".pt", ".pth", ".pkl", ".ckpt")))  # not a name such as encoder: B
        if looks_like_file and not Path(value).expanduser().is_file():
            problems.append(f"'model.{name}': {value} does not exist")
    return problems


def _clip_problems(entries: Any, check) -> list[str]:
    try:
        from lightning_modules.nada_setup import DEFAULT_CLIP_WEIGHTS, parse_clip_models
    except ImportError:
        return []
    try:
        parsed = parse_clip_models(entries)
    except (ValueError, TypeError) as err:
        return [f"'model.clip_models': {err}"]
    for i, entry in enumerate(parsed):
        pretrained = entry.get("pretrained", DEFAULT_CLIP_WEIGHTS.get(entry.get("name")))
        check(f"model.clip_models[{i}].pretrained", pretrained)
    return []


def data_problems(data: Mapping[str, Any], datamodule_cls: type | None) -> list[str]:
    """The datamodule's image folder or zip (``data.path``) and its ``manifest`` file exist."""
    from launch.schema import constructor_params

    params = {p.name for p in constructor_params(datamodule_cls)[0]} if datamodule_cls is not None else set(data)
    problems = []
    if "path" in params and "path" in data:
        problems.append(image_path_problem("data.path", data.get("path")))
    if "manifest" in params:
        problems.append(file_problem("data.manifest", data.get("manifest"), "manifest file"))
    return [p for p in problems if p]


def callback_asset_problems(plan: Plan) -> list[str]:
    """Callbacks that need pretrained files (the metrics callback's non-optional metrics) have them."""
    problems = []
    for name, cls, kwargs in plan.callbacks:
        if not hasattr(cls, "check_assets"):
            continue
        try:
            callback = cls(**kwargs)
            callback.check_assets(warn=False)
        except FileNotFoundError as err:
            problems.append(f"'callbacks.{name}': " + str(err).replace("\n", "\n    "))
        except (ValueError, TypeError) as err:
            problems.append(f"'callbacks.{name}': {err}")
    return problems


def checkpoint_problem(ckpt: Path | None) -> str | None:
    """``ckpt_path`` is a readable Lightning checkpoint (read memory-mapped, no code runs)."""
    if ckpt is None:
        return None
    from launch.checkpointing import read_checkpoint_meta
    from launch.errors import ConfigError

    try:
        read_checkpoint_meta(ckpt)
    except ConfigError as err:
        return f"'ckpt_path': {err}"
    return None


def preflight(config: Mapping[str, Any], plan: Plan | None, ckpt: Path | None) -> list[str]:
    """Every pre-flight problem of a config (``plan``: None when validation failed; the checks that need
    the resolved classes are then left out)."""
    problems: list[str] = []
    trainer = config.get("trainer") if isinstance(config.get("trainer"), Mapping) else {}
    problems += device_problems(trainer)
    problems += [p for p in [checkpoint_problem(ckpt)] if p]
    if isinstance(config.get("model"), Mapping):
        from launch.schema import constructor_params
        params = [p.name for p in constructor_params(plan.method_cls)[0]] if plan is not None else []
        needs_clip = getattr(plan.method_cls, "needs_clip", None) if plan is not None else None
        problems += model_asset_problems(config["model"], params, needs_clip)
    if isinstance(config.get("data"), Mapping):
        problems += data_problems(config["data"], plan.datamodule_cls if plan is not None else None)
    if plan is not None:
        problems += callback_asset_problems(plan)
    return problems


def is_leader() -> bool:
    """Whether this process is global rank zero of its launch (the one that owns the run directory).

    Processes that Lightning re-launches for DDP, and those of torchrun or srun, carry their rank in the
    environment; a plain launch has none and leads.
    """
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) == 0
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
