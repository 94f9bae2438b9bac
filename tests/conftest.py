"""Session-wide test environment: offline, isolated caches, two CPU threads.

The environment is set when this file is imported, before any test module imports wandb, open_clip or
huggingface_hub (``HF_HUB_OFFLINE`` is read at import time).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

_CACHE_ROOT = tempfile.mkdtemp(prefix="styleshift-tests-")
for _var, _value in {
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_DIR": os.path.join(_CACHE_ROOT, "wandb"),
    "WANDB_CACHE_DIR": os.path.join(_CACHE_ROOT, "wandb-cache"),
    "WANDB_CONFIG_DIR": os.path.join(_CACHE_ROOT, "wandb-config"),
    "WANDB_DATA_DIR": os.path.join(_CACHE_ROOT, "wandb-data"),
    "TORCH_HOME": os.path.join(_CACHE_ROOT, "torch"),
    "STYLESHIFT_CACHE": os.path.join(_CACHE_ROOT, "styleshift"),
}.items():
    os.environ[_var] = _value
    if _var.endswith("_DIR") or _var in ("TORCH_HOME", "STYLESHIFT_CACHE"):
        os.makedirs(_value, exist_ok=True)

torch.set_num_threads(2)


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROOT_BEFORE: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _ROOT_BEFORE.update(os.listdir(_REPO_ROOT))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tests write into temporary directories only: a file a run leaves in the repository root (an export,
    ``lightning_logs/``, ``metrics.jsonl``) fails the session."""
    if not hasattr(session.config, "workerinput"):
        stray = sorted(set(os.listdir(_REPO_ROOT)) - _ROOT_BEFORE - {".pytest_cache", ".ruff_cache"})
        if stray:
            print(f"\nerror: the tests left {stray} in {_REPO_ROOT}: give each Trainer a default_root_dir")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CACHE_ROOT, ignore_errors=True)


@pytest.fixture
def tiny_generator_kwargs() -> dict:
    """Constructor arguments of a tiny StyleGAN2 generator (16 px, 16–32 channels)."""
    return {"size": 16, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16}}
