"""What a run records about itself: the few-shot training images in ``fewshot_files.txt`` (a manifest that
``data.manifest=`` reads back), and run names that do not collide between methods' experiment files."""
from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from datamodules.base import read_manifest
from datamodules.toy import ToyDataModule
from launch.config import CONFIGS_DIR, compose, experiment_chain
from launch.run import TRAINING_IMAGES_FILE, execute, prepare
from tests.helpers_launch import QUIET_TRAINER, tiny_stylegan2

TINY = tiny_stylegan2(total_kimg=0.004,
                      data="{name: toy, resolution: 16, num_images: 16, fewshot: 6, fewshot_seed: 3, batch_size: 2}",
                      trainer=QUIET_TRAINER + ", limit_val_batches: 0", checkpoint="{save_last: false}")


def experiment_name(path: Path) -> str:
    """The run name a config file gets: the last ``experiment`` its extends chain sets, else its stem."""
    name = None
    for layer in experiment_chain(path):
        if layer.get("experiment") is not None:
            name = str(layer.get("experiment"))
    return name or path.stem


def test_experiment_files_have_distinct_run_names():
    files = [p for p in sorted(CONFIGS_DIR.glob("*.yaml")) if p.name != "base.yaml"]
    files += sorted(CONFIGS_DIR.glob("*/*.yaml"))
    names: dict[str, list[str]] = {}
    for path in files:
        names.setdefault(experiment_name(path), []).append(path.relative_to(CONFIGS_DIR).as_posix())
    assert {n: p for n, p in names.items() if len(p) > 1} == {}
    assert experiment_name(CONFIGS_DIR / "mixdl/toy.yaml") == "mixdl_toy"
    assert experiment_name(CONFIGS_DIR / "mixdl/anime.yaml") == "anime"  # extends paper_10shot: keeps its own


def _fit(tmp_path: Path, *overrides: str) -> Path:
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent(TINY))
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert execute(prepare(compose(tmp_path / "tiny.yaml", [f"output_dir={run}", *overrides]))) == 0
    finally:
        torch.set_num_threads(threads)
    return run


def test_fewshot_images_are_listed_in_the_run_dir(tmp_path: Path):
    run = _fit(tmp_path)
    names = read_manifest(run / TRAINING_IMAGES_FILE)
    expected = ToyDataModule(resolution=16, num_images=16, fewshot=6, fewshot_seed=3, batch_size=2)
    expected.setup("fit")
    assert names == expected.manifest_names and len(names) == 6
    other = ToyDataModule(resolution=16, num_images=16, fewshot=6, fewshot_seed=4, batch_size=2)
    other.setup("fit")
    assert names != other.manifest_names  # the file records this seed's choice


def test_full_dataset_runs_write_no_list(tmp_path: Path):
    run = _fit(tmp_path, "~data.fewshot", "~data.fewshot_seed", "data.num_images=8")
    assert (run / "config.yaml").is_file() and not (run / TRAINING_IMAGES_FILE).exists()
