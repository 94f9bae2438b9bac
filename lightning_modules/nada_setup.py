"""Start-up helpers of StyleGAN-NADA: pretrained-asset checks and the CLIP models of the loss. Used by
:class:`lightning_modules.nada.NADAModule` and the latent mapper (:mod:`lightning_modules.nada_mapper`).
"""
from __future__ import annotations

import difflib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import open_clip
import torch

from models.clip import OPENAI_ASSETS, CLIPModel

log = logging.getLogger(__name__)

#: the reference README command: ViT-B/32 and ViT-B/16, weight 1 each, OpenAI weights from the asset registry.
DEFAULT_CLIP_MODELS = ({"name": "ViT-B-32", "weight": 1.0}, {"name": "ViT-B-16", "weight": 1.0})
CLIP_ENTRY_KEYS = ("name", "pretrained", "weight", "config", "seed")
DEFAULT_CLIP_WEIGHTS = {arch: asset for asset, arch in OPENAI_ASSETS.items()}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class MissingAssetsError(FileNotFoundError):
    """Pretrained files a run needs are not in the cache; the message lists each one and how to get it."""


def check_assets(names: Sequence[Any], what: str = "StyleGAN-NADA") -> None:
    """Resolve every registered asset name in ``names`` now; raise one error listing all missing files."""
    from models import assets

    missing = []
    for name in names:
        if isinstance(name, str) and name in assets.ASSETS and not Path(name).exists():
            try:
                assets.resolve(name)
            except assets.AssetMissingError as err:
                missing.append(str(err))
    if missing:
        raise MissingAssetsError(f"{what} needs {len(missing)} pretrained file(s) that are not available "
                                 f"(nothing is downloaded automatically):\n\n" + "\n\n".join(missing))


def register_open_clip_config(name: str, config: Mapping[str, Any]) -> None:
    """Make an inline open_clip model config (e.g. a tiny test model) known to open_clip as ``name``."""
    existing = open_clip.get_model_config(name)
    if existing is not None:
        if json.loads(json.dumps(dict(config))) != existing:
            raise ValueError(f"open_clip model {name!r} is already registered with a different config")
        return
    folder = Path(tempfile.mkdtemp(prefix="styleshift_clip_cfg_"))
    path = folder / f"{name}.json"
    path.write_text(json.dumps(dict(config)))
    open_clip.add_model_config(path)


def parse_clip_models(entries: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Validated CLIP entries ``{name, pretrained, weight, config, seed}``.

    ``pretrained`` defaults to the registered OpenAI weights of ``name`` (ViT-B-32 / ViT-B-16); ``null`` means
    random weights drawn from ``torch.manual_seed(seed)`` (toy runs and benchmarks only); ``config`` is an
    inline open_clip model config registered under ``name``.
    """
    entries = DEFAULT_CLIP_MODELS if entries is None else entries
    if isinstance(entries, Mapping) or not entries:
        raise ValueError("clip_models must be a non-empty list of {name, weight, pretrained} entries")
    parsed = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = dict(entry)
        unknown = sorted(set(entry) - set(CLIP_ENTRY_KEYS))
        if unknown:
            hints = {k: difflib.get_close_matches(k, CLIP_ENTRY_KEYS, n=1) for k in unknown}
            listed = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
            raise ValueError(f"clip_models[{i}]: unknown key(s) {listed}; valid keys: {list(CLIP_ENTRY_KEYS)}")
        if not isinstance(entry.get("name"), str):
            raise ValueError(f"clip_models[{i}] needs a 'name' (open_clip architecture, e.g. ViT-B-32)")
        name = entry["name"].replace("/", "-")
        if "pretrained" in entry:
            pretrained = entry["pretrained"]
        elif name in DEFAULT_CLIP_WEIGHTS:
            pretrained = DEFAULT_CLIP_WEIGHTS[name]
        else:
            raise ValueError(f"clip_models[{i}]: no default weights for {name!r}; set 'pretrained' to an asset name "
                             f"or a file (or null for random weights)")
        weight = float(entry.get("weight", 1.0))
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"clip_models[{i}]: weight must be finite and >= 0, got {weight}")
        parsed.append({"name": name, "pretrained": pretrained, "weight": weight, "config": entry.get("config"),
                       "seed": int(entry.get("seed", 0))})
    if not any(e["weight"] > 0 for e in parsed):
        raise ValueError("clip_models: at least one model needs a weight > 0")
    return parsed


def build_clip(entry: Mapping[str, Any], preprocessing: str = "reference",
               dtype: torch.dtype = torch.float32) -> CLIPModel:
    """A frozen :class:`models.clip.CLIPModel` for a parsed entry (random weights are seeded, rank-independent)."""
    if entry.get("config") is not None:
        register_open_clip_config(entry["name"], entry["config"])
    random_weights = entry["pretrained"] is None
    quiet = _DropMessage("initialized randomly")
    if random_weights:  # open_clip warns on the root logger; we say it once, with the seed
        logging.getLogger().addFilter(quiet)
        log.info("CLIP %s with random weights (seed %d): for offline toy runs and benchmarks only",
                 entry["name"], int(entry.get("seed", 0)))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(entry.get("seed", 0)))
            return CLIPModel(entry["name"], pretrained=entry["pretrained"], preprocessing=preprocessing, dtype=dtype)
    finally:
        logging.getLogger().removeFilter(quiet)


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


__all__ = ["DTYPES", "DEFAULT_CLIP_MODELS", "MissingAssetsError", "check_assets", "parse_clip_models", "build_clip",
           "register_open_clip_config"]
