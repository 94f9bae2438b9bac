"""Deleting keys on the command line (launch/config.py): ``~dotted.key`` removes a key of the composed config
as Hydra users expect; a key the config lacks is a config error naming it. Also the ``train.py --help``
listing of the experiment configs by method, and ``configs/stylegan2/my_folder.yaml``."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launch.config import compose, split_deletions
from launch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
    method: stylegan2
    model:
      generator: {resolution: 16, style_dim: 32, n_mlp: 2, channels: {4: 32, 8: 32, 16: 16}}
      total_kimg: 1
    data: {name: toy, resolution: 16, num_images: 8, batch_size: 2}
    callbacks:
      samples: {every_kimg: 1, n: 4}
"""


@pytest.fixture()
def experiment(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


def test_tilde_removes_a_key_after_the_merge(experiment: Path):
    cfg = compose(experiment, ["~data.num_images", "data.batch_size=4"])
    assert "num_images" not in cfg.data and cfg.data.batch_size == 4
    cfg = compose(experiment, ["~callbacks.samples", "~model.generator.channels", "~logger.wandb.tags"])
    assert "samples" not in cfg.callbacks and "channels" not in cfg.model.generator
    assert "tags" not in cfg.logger.wandb


def test_a_deletion_applies_after_a_set_of_the_same_key(experiment: Path):
    assert "num_images" not in compose(experiment, ["data.num_images=4", "~data.num_images"]).data


def test_deleting_a_required_value_that_is_missing_clears_it(tmp_path: Path):
    path = tmp_path / "needs.yaml"
    path.write_text(textwrap.dedent(CONFIG).replace("num_images: 8", "num_images: '???'"))
    with pytest.raises(ConfigError, match="data.num_images"):
        compose(path)
    assert "num_images" not in compose(path, ["~data.num_images"]).data


@pytest.mark.parametrize("override, needle", [
    ("~data.num_imgs", "cannot delete 'data.num_imgs': the config has no such key"),
    ("~nothing.here", "cannot delete 'nothing.here': the config has no key 'nothing'"),
    ("~data.name.sub", "cannot delete 'data.name.sub': 'data.name' is not a mapping"),
    ("~data.num_images=8", "a deletion takes no value; write ~data.num_images"),
    ("~", "must look like ~dotted.key"),
    ("~extends", "'extends' cannot be given on the command line"),
])
def test_bad_deletions_are_config_errors_naming_the_key(experiment: Path, override: str, needle: str):
    with pytest.raises(ConfigError) as err:
        compose(experiment, [override])
    assert needle in str(err.value)


def test_split_deletions_keeps_the_order_of_the_sets():
    assert split_deletions(["a=1", "~b.c", "d=2"]) == (["a=1", "d=2"], ["b.c"])


def test_launcher_reports_a_bad_deletion_with_status_2(experiment: Path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), str(experiment), "~data.nope", "--dry-run"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: cannot delete 'data.nope': the config has no such key"


def test_help_lists_the_experiment_configs_by_method():
    sys.path.insert(0, str(ROOT))
    try:
        import train
    finally:
        sys.path.remove(str(ROOT))
    groups = train.configs_by_method()
    assert "configs/demo.yaml" in groups["stylegan2"] and "configs/stylegan2/my_folder.yaml" in groups["stylegan2"]
    assert "configs/nada/mapper.yaml" in groups["nada_mapper"] and "configs/mixdl/toy.yaml" in groups["mixdl"]
    assert "?" not in groups and all("base.yaml" not in p for paths in groups.values() for p in paths)
    text = train.configs_epilog()
    assert text.startswith("experiment configs, by method:\n  dualstylegan:\n    configs/dualstylegan/")
    assert "configs/dualstylegan/toy.yaml" in groups["pipeline"]  # the stages of a method, in order


def test_my_folder_config_composes_at_64px(tmp_path: Path):
    from launch.run import prepare

    with pytest.raises(ConfigError, match="data.path"):
        compose(ROOT / "configs/stylegan2/my_folder.yaml")
    cfg = compose(ROOT / "configs/stylegan2/my_folder.yaml", [f"data.path={tmp_path}", f"output_dir={tmp_path}/run"])
    assert cfg.data.name == "images" and cfg.data.resolution == 64 and cfg.model.generator.resolution == 64
    prepare(cfg, preflight=False)  # every key valid
