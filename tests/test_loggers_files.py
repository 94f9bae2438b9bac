"""``logger.csv`` and ``logger.tensorboard`` (launch/loggers.py): a short fit through the launcher writes the
same metric keys to the CSV file and the TensorBoard events as to ``metrics.jsonl``, against the kimg axis."""
from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest
import torch

from launch.config import compose
from launch.errors import ConfigError
from launch.loggers import tensorboard_available
from launch.run import execute, prepare
from tests.helpers_launch import tiny_stylegan2

CONFIG = tiny_stylegan2(total_kimg=0.004, checkpoint="{save_last: false}")
ALL = ["logger.csv={}"] + (["logger.tensorboard={}"] if tensorboard_available() else [])


def _jsonl_keys(run: Path) -> tuple[set[str], list[float]]:
    keys, kimgs = set(), []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "scalars":
            keys |= set(record["metrics"])
            kimgs.append(record["kimg"])
    return keys, kimgs


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("file_loggers")
    (tmp / "tiny.yaml").write_text(textwrap.dedent(CONFIG))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert execute(prepare(compose(tmp / "tiny.yaml", [f"output_dir={tmp}/run", *ALL]))) == 0
    finally:
        torch.set_num_threads(threads)
    return tmp / "run"


def test_csv_has_the_jsonl_keys_and_a_kimg_column(run: Path):
    keys, kimgs = _jsonl_keys(run)
    assert keys, "the fit logged no scalars"
    with open(run / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = set(rows[0])
    assert columns - {"step", "kimg"} == keys - {"kimg"}
    assert sorted({round(float(r["kimg"]), 6) for r in rows}) == sorted({round(k, 6) for k in kimgs})
    assert not (run / "csv" / "hparams.yaml").exists()


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_has_the_jsonl_keys_at_images_seen(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    keys, kimgs = _jsonl_keys(run)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags - {"kimg"} == keys - {"kimg"}
    steps = {e.step for e in acc.Scalars("kimg")}
    assert steps == {round(k * 1000) for k in kimgs}


def test_file_logger_sections_are_validated(tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent(CONFIG))
    with pytest.raises(ConfigError) as err:
        prepare(compose(tmp_path / "tiny.yaml", ["logger.csv.dri=x", "logger.tensorboard=3", "logger.tb={}"]))
    text = str(err.value)
    assert "unknown key 'logger.csv.dri'" in text and "did you mean 'logger.csv.dir'" in text
    assert "'logger.tensorboard' must be a mapping" in text
    assert "unknown key 'logger.tb'" in text


def test_csv_of_a_resumed_run_appends_and_loggers_pickle(tmp_path: Path):
    import pickle

    from launch.loggers import KimgCSVLogger, KimgTensorBoardLogger

    first = KimgCSVLogger(tmp_path)
    first.log_metrics({"loss/g": 1.0}, step=1)
    first.save()
    again = KimgCSVLogger(tmp_path)  # the resumed run's logger
    again.log_metrics({"loss/g": 2.0, "loss/d": 3.0}, step=2)
    again.save()
    with open(tmp_path / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["loss/g"] for r in rows] == ["1.0", "2.0"] and rows[1]["loss/d"] == "3.0"
    loggers = [again] + ([KimgTensorBoardLogger(tmp_path)] if tensorboard_available() else [])
    for logger in loggers:
        logger.bind_module(torch.nn.Linear(1, 1))
        assert pickle.loads(pickle.dumps(logger)).current_kimg() is None
