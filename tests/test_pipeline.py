"""Pipelines (launch/pipeline.py, ``train.py PIPELINE.yaml``): stages in order, each in its own run directory,
``@stage`` references to earlier products, a second launch skipping finished stages and resuming an
unfinished one, and clear errors for broken pipeline files."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

import train
from launch.errors import ConfigError
from launch.pipeline import STAGE_FILE, is_pipeline, load_pipeline, stage_argv

TINY = """
    method: stylegan2
    model:
      generator: {resolution: 16, style_dim: 16, n_mlp: 1, channels: {4: 16, 8: 16, 16: 16}}
      gan: {r1_gamma: 0.05, pl_weight: 0.0, mixing_prob: 0.0, ema_kimg: 0.01}
      total_kimg: 0.016
    data: {name: toy, resolution: 16, num_images: 32, batch_size: 4}
    trainer: {accelerator: cpu, enable_progress_bar: false, enable_model_summary: false, log_every_n_steps: 1}
    logger: {wandb: {mode: disabled}}
"""


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent(TINY))
    path = tmp_path / "pipe.yaml"
    path.write_text(textwrap.dedent(f"""
        pipeline: tiny_pipe
        output_dir: {tmp_path / "out"}
        stages:
          scratch: {{config: {tmp_path / "tiny.yaml"}}}
          finetune:
            config: {tmp_path / "tiny.yaml"}
            overrides: {{model.generator: "@scratch", model.total_kimg: 0.008}}
    """))
    return path


def test_stages_run_in_order_on_earlier_products_and_resume(pipeline: Path, tmp_path: Path, capsys):
    assert is_pipeline(pipeline) and not is_pipeline(tmp_path / "tiny.yaml")
    assert train.main([str(pipeline), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "new     scratch" in plan and f"model.generator={tmp_path / 'out' / 'scratch' / 'generator.pt'}" in plan
    assert train.main([str(pipeline)]) == 0
    out = tmp_path / "out"
    for stage, kimg in (("scratch", 0.016), ("finetune", 0.008)):
        assert json.loads((out / stage / STAGE_FILE).read_text())["status"] == "finished"
        assert torch.load(out / stage / "generator.pt", weights_only=True)["kimg"] == pytest.approx(kimg)
    # the second stage started from the first one's product: its G moved away from it by a few steps only
    first = torch.load(out / "scratch" / "generator.pt", weights_only=True)["g_ema"]
    second = torch.load(out / "finetune" / "generator.pt", weights_only=True)["g_ema"]
    assert first.keys() == second.keys() and any(not torch.equal(first[k], second[k]) for k in first)
    stamp = (out / "scratch" / "generator.pt").stat().st_mtime_ns
    (out / "finetune" / STAGE_FILE).unlink()  # as if it had been interrupted after its last checkpoint
    assert train.main([str(pipeline)]) == 0
    assert (out / "scratch" / "generator.pt").stat().st_mtime_ns == stamp  # finished stage skipped
    assert (out / "finetune" / STAGE_FILE).is_file()


def test_broken_pipelines_are_config_errors(tmp_path: Path, capsys):
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent(TINY))
    cases = {
        "stages: []": "non-empty mapping",
        "stages: {a: {config: tiny.yaml, command: destylize}}": "exactly one of",
        "stages: {a: {command: paint}}": "unknown command 'paint'",
        f"stages: {{a: {{config: {tmp_path / 'tiny.yaml'}, overrides: {{model.generator: '@b'}}}}}}":
            "'@b' is not an earlier stage",
        "stages: {a: {config: nowhere.yaml}}": "no such file",
        "stages: {a: {config: x.yaml}}\nextra: 1": "unknown pipeline key",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"p{i}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_pipeline(path)
        assert train.main([str(path)]) == 2
        assert message.split("'")[0] in capsys.readouterr().err


def test_command_stages_pass_their_arguments(tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent(TINY))
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""
        output_dir: {tmp_path / "o"}
        stages:
          parent: {{config: {tmp_path / "tiny.yaml"}}}
          destylize: {{command: destylize, args: {{styles: /data/s, source: "@parent", no_identity: true,
                                                   steps: 50, previews: false}}}}
    """))
    _, _, stages = load_pipeline(path)
    argv = stage_argv(stages[1], {s.name: s for s in stages}, [])
    assert argv[1:] == ["-m", "launch.destylize", "--styles", "/data/s", "--source",
                        str(tmp_path / "o" / "parent" / "generator.pt"), "--no-identity", "--steps", "50",
                        "--out", str(tmp_path / "o" / "destylize" / "codes.pt")]


def test_pipeline_variables(tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent(TINY))
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""
        vars:
          styles: ???
          steps: 10
        stages:
          destylize: {command: destylize, args: {styles: $styles, steps: $steps}}
    """))
    with pytest.raises(ConfigError, match="'styles' is not set: add vars.styles="):
        load_pipeline(path)
    with pytest.raises(ConfigError, match=r"unknown pipeline variable\(s\) \['style'\]"):
        load_pipeline(path, {"style": "/x"})
    _, _, stages = load_pipeline(path, {"styles": "/data/cartoon"})
    assert stages[0].args == {"styles": "/data/cartoon", "steps": 10}
