"""Runs you can trust: a locked, protected run directory; a real pre-flight; user errors as one-screen
messages (no traceback, no run directory left); the NaN skip limit; the multi-device strategy; the
recorded config (seed, provenance).

Tiny StyleGAN2 runs on 16 px toy data (a few iterations each) and the dummy module of test_train_cli.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

import train
from launch.jsonl import read_jsonl
from launch.preflight import MULTI_DEVICE_STRATEGY, choose_strategy, requested_device_count
from launch.rundir import LOCK_FILE, OWNER_FILE
from lightning_modules.base import MethodModule, NonFiniteError
from tests.helpers_launch import dummy_gan, tiny_stylegan2

ROOT = Path(__file__).resolve().parents[1]
SIGNALLER = "tests.test_resume_exact:SigtermAt"
TINY = tiny_stylegan2()
IMAGES = tiny_stylegan2(data="{name: images, path: '???', resolution: 16, batch_size: 2, xflip: false}")
DUMMY = dummy_gan()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(tmp_path: Path, text: str = TINY, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    status = train.main([str(a) for a in args])
    return status, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- run directory
def test_second_run_into_a_running_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), str(config(tmp_path, DUMMY, "slow")),
                              f"output_dir={run}", "model.sleep=0.25", "trainer.max_steps=12"],
                             env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run / "metrics.jsonl").exists():  # the first run trains
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.1)
        owner = json.loads((run / OWNER_FILE).read_text())
        status, err = cli(capsys, config(tmp_path, DUMMY, "slow"), f"output_dir={run}", "trainer.max_steps=3")
        assert status == 2 and "Traceback" not in err
        assert f"{run} is in use by process {owner['pid']}" in err and "choose another output_dir" in err
        status, err = cli(capsys, config(tmp_path, DUMMY, "slow"), f"output_dir={run}", "ckpt_path=last", "--dry-run")
        assert status == 2 and "is in use by process" in err  # a resume waits for it too
        out, err = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 0, err
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "scalars"]
    assert steps == list(range(12))  # only the first run wrote there
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"] == 12
    assert not (run / OWNER_FILE).exists() and not list(run.glob("config.2*.yaml"))


def test_fresh_fit_into_a_used_directory_is_refused_unless_resumed_or_reused(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture):
    exp, run = config(tmp_path, DUMMY, "dummy"), tmp_path / "run"
    assert cli(capsys, exp, f"output_dir={run}", "trainer.max_steps=2")[0] == 0
    before = (run / "checkpoints/last.ckpt").read_bytes()
    for extra in ((), ("--dry-run",)):
        status, err = cli(capsys, exp, f"output_dir={run}", "trainer.max_steps=4", *extra)
        assert status == 2 and "Traceback" not in err
        assert f"'output_dir': {run} already holds a run (config.yaml, metrics.jsonl, 1 checkpoint(s)" in err
        assert "ckpt_path=last" in err and "--reuse-dir" in err
    assert (run / "checkpoints/last.ckpt").read_bytes() == before
    assert cli(capsys, exp, f"output_dir={run}", "trainer.max_steps=4", "ckpt_path=last")[0] == 0  # resuming is fine
    assert cli(capsys, exp, f"output_dir={run}", "trainer.max_steps=1", "--reuse-dir")[0] == 0
    (previous,) = run.glob("previous-*")
    assert (previous / "checkpoints/last.ckpt").is_file() and (previous / "metrics.jsonl").is_file()
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "scalars"]
    assert steps == [0]  # the new run's log alone


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    caplog: pytest.LogCaptureFixture):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_FILE).write_text("")
    (run / OWNER_FILE).write_text(json.dumps({"pid": dead.pid, "host": "node7", "since": 0, "command": "x"}))
    assert cli(capsys, config(tmp_path, DUMMY, "dummy"), f"output_dir={run}", "trainer.max_steps=1")[0] == 0
    assert f"taking over the lock of process {dead.pid} on node7" in caplog.text
    assert not (run / OWNER_FILE).exists()


def test_interrupted_run_exports_under_its_own_name_and_exports_are_readable(tmp_path: Path):
    from launch.config import compose
    from launch.run import execute, prepare

    exp, run = config(tmp_path), tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert execute(prepare(compose(exp, [f"output_dir={run}"]))) == 0
        finished = (run / "generator.pt").read_bytes()
        assert (run / "generator.pt").stat().st_mode & 0o777 == 0o644
        status = execute(prepare(compose(exp, [f"output_dir={run}", "ckpt_path=last", "model.total_kimg=0.016",
                                               f"callbacks={{{SIGNALLER}: {{batch: 1}}}}"])))
    finally:
        os.umask(old)
    assert status == 128 + signal.SIGTERM
    assert (run / "generator.pt").read_bytes() == finished  # the finished run's export is kept
    partial = run / "generator.interrupted.pt"
    assert partial.stat().st_mode & 0o777 == 0o644
    assert torch.load(partial, weights_only=True)["kimg"] == pytest.approx(0.01)


# ---------------------------------------------------------------------------------------------- pre-flight
def test_dry_run_reports_types_paths_assets_and_devices_at_once(tmp_path: Path, capsys: pytest.CaptureFixture):
    status, err = cli(capsys, config(tmp_path, IMAGES), "model.gan.r1_gamma=abc", "model.gan.g_lr=abc",
                      "data.batch_size=eight", "trainer.max_steps=abc", f"data.path={tmp_path}/nowhere",
                      "model.generator=stylegan2-ffhq-256", "trainer.accelerator=mps", "--dry-run")
    assert status == 2 and "Traceback" not in err and err.startswith("error: invalid config:")
    for part in ("'model.gan.r1_gamma' must be a float, got 'abc' (str)",
                 "'model.gan.g_lr' must be a float, got 'abc' (str)",
                 "'data.batch_size' must be an integer, got 'eight' (str)",
                 "'trainer.max_steps' must be an integer, got 'abc' (str)",
                 f"'data.path': dataset path {tmp_path}/nowhere does not exist",
                 "'model.generator': pretrained asset 'stylegan2-ffhq-256' is missing",
                 "python -m models.assets fetch stylegan2-ffhq-256"):
        assert part in err, (part, err)
    if not torch.backends.mps.is_available():
        assert "'trainer.accelerator': mps requested, but this machine has none" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("case", ["missing_folder", "empty_folder", "unreadable_images", "missing_ckpt",
                                  "corrupt_ckpt", "missing_generator", "corrupt_generator", "gpu", "non_finite"])
def test_user_errors_are_one_screen_messages_and_leave_no_run_directory(case: str, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture):
    if case == "gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = tmp_path / "run"
    images = tmp_path / "images"
    images.mkdir()
    args: list = [config(tmp_path, IMAGES), f"output_dir={run}", f"data.path={images}"]
    from datamodules.toy import write_toy_folder
    if case != "empty_folder":
        write_toy_folder(images, 4, resolution=16)
    expected = {
        "missing_folder": (2, f"'data.path': dataset path {tmp_path}/gone does not exist"),
        "empty_folder": (2, f"'data.path': {images} holds no image files"),
        "unreadable_images": (1, f"error: data: no readable image among the 2 image files in {tmp_path}/broken"),
        "missing_ckpt": (2, f"ckpt_path: no such file {tmp_path}/nope.ckpt"),
        "corrupt_ckpt": (2, f"'ckpt_path': cannot read checkpoint {tmp_path}/bad.ckpt"),
        "missing_generator": (2, f"'model.generator': {tmp_path}/nope.pt does not exist"),
        "corrupt_generator": (2, f"'model': StyleGAN2Module cannot be built: {tmp_path}/bad.pt: unknown file format"),
        "gpu": (2, "'trainer.accelerator': gpu requested, but this machine has none"),
        "non_finite": (1, "non-finite loss in phase D_reg at kimg 0.000 (iteration 0)"),
    }[case]
    if case == "missing_folder":
        args.append(f"data.path={tmp_path}/gone")
    elif case == "unreadable_images":
        other = tmp_path / "broken"
        other.mkdir()
        for name in ("a.png", "b.jpg"):
            (other / name).write_bytes(b"not an image")
        args.append(f"data.path={other}")
    elif case in ("missing_ckpt", "corrupt_ckpt"):
        (tmp_path / "bad.ckpt").write_bytes(b"PK\x03\x04 truncated")
        args.append(f"ckpt_path={tmp_path}/{'nope' if case == 'missing_ckpt' else 'bad'}.ckpt")
    elif case in ("missing_generator", "corrupt_generator"):
        (tmp_path / "bad.pt").write_bytes(b"garbage")
        args.append(f"model.generator={tmp_path}/{'nope' if case == 'missing_generator' else 'bad'}.pt")
    elif case == "gpu":
        args.append("trainer.accelerator=gpu")
    elif case == "non_finite":
        args.append("model.gan.d_lr=.inf")  # D's first step makes its weights non-finite
    status, err = cli(capsys, *args)
    assert (status, "Traceback" in err) == (expected[0], False), err
    assert expected[1] in err, err
    assert len(err.splitlines()) <= 25
    assert not run.exists()
    if case == "non_finite":
        assert "set model.nan_policy=skip" in err


def test_debug_switch_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture):
    from launch.errors import ConfigError
    with pytest.raises(ConfigError, match="must be an integer"):
        train.main([str(config(tmp_path)), "data.batch_size=eight", "--debug", "--dry-run"])


# ---------------------------------------------------------------------------------------------- NaN skip limit
def test_skip_limit_stops_a_diverged_run(tmp_path: Path, capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    status, err = cli(capsys, config(tmp_path), f"output_dir={run}", "model.gan.d_lr=.inf", "model.nan_policy=skip",
                      "model.max_consecutive_skips=3", "model.total_kimg=1")
    assert status == 1 and "Traceback" not in err
    assert "skipped 3 steps in a row (model.max_consecutive_skips=3)" in err
    assert "raise model.max_consecutive_skips" in err
    assert not (run / "generator.pt").exists()


class CountingModule(MethodModule):
    def __init__(self, **base):
        super().__init__(**base)
        self.w = torch.nn.Parameter(torch.ones(1))


def test_skip_count_is_per_phase_and_reset_by_a_successful_step():
    module = CountingModule(nan_policy="skip", max_consecutive_skips=3)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)

    def loss(value: float):
        return lambda: (module.w.sum() * value, {})

    with pytest.warns(RuntimeWarning, match="2 in a row for G"):
        for _ in range(2):
            assert module.step(opt, "G", loss(float("nan")), {}) is None
    assert module.step(opt, "D", loss(1.0), {}) is not None  # another phase does not reset G's count
    assert module.consecutive_skips == {"G": 2}
    assert module.step(opt, "G", loss(1.0), {}) is not None and module.consecutive_skips == {}
    with pytest.warns(RuntimeWarning):
        module.step(opt, "G", loss(float("inf")), {})
        module.step(opt, "G", loss(float("nan")), {})
    with pytest.raises(NonFiniteError, match=r"phase G skipped 3 steps in a row"):
        module.step(opt, "G", loss(float("nan")), {})
    assert module.nan_skips == 5
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        CountingModule(max_consecutive_skips=0)


# ---------------------------------------------------------------------------------------------- multi-device
def test_several_devices_get_the_strategy_gan_phases_need():
    assert requested_device_count("0,1", 4) == 2 and requested_device_count(-1, 3) == 3
    assert requested_device_count([0, 2, 3], 4) == 3 and requested_device_count("auto", 1) == 1
    for trainer, expected in [({"accelerator": "cpu", "devices": 2}, MULTI_DEVICE_STRATEGY),
                              ({"accelerator": "cpu", "devices": 1, "num_nodes": 2}, MULTI_DEVICE_STRATEGY),
                              ({"accelerator": "cpu", "devices": 2, "strategy": "auto"}, MULTI_DEVICE_STRATEGY),
                              ({"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}, "ddp_spawn"),
                              ({"accelerator": "cpu", "devices": 1}, None)]:
        choose_strategy(trainer)
        assert trainer.get("strategy") == expected, trainer


def test_two_devices_with_the_default_strategy_train_a_gan(tmp_path: Path):
    """Two CPU processes, no trainer.strategy: the launcher's choice trains G and D phases under DDP (plain
    ``ddp`` stops with Lightning's unused-parameters error), and the process Lightning re-launches for rank 1
    neither refuses nor locks the directory rank 0 prepared."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), str(config(tmp_path)), f"output_dir={run}",
                           "trainer.devices=2"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["strategy"] == MULTI_DEVICE_STRATEGY
    assert (run / "generator.pt").is_file() and torch.load(run / "checkpoints/last.ckpt",
                                                           weights_only=True)["styleshift"]["world_size"] == 2


def test_prepare_records_the_chosen_strategy(tmp_path: Path):
    from launch.config import compose
    from launch.run import prepare
    prep = prepare(compose(config(tmp_path), ["trainer.devices=2"]))
    assert prep.config["trainer"]["strategy"] == prep.plan.trainer_kwargs["strategy"] == MULTI_DEVICE_STRATEGY
    assert "strategy" not in prepare(compose(config(tmp_path), [])).config["trainer"]


# ---------------------------------------------------------------------------------------------- recorded config
def test_recorded_config_has_the_run_seed_nested_settings_and_provenance(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    from launch import loggers
    from launch.config import compose
    from launch.run import execute, prepare

    logged: list = []
    monkeypatch.setattr(loggers.KimgWandbLogger, "log_config", lambda self, cfg: logged.append(cfg))
    original = loggers.WandbLogger.log_hyperparams
    leaked: list = []
    monkeypatch.setattr(loggers.WandbLogger, "log_hyperparams",
                        lambda self, params, *a, **k: leaked.append(params) or original(self, params, *a, **k))
    run = tmp_path / "run"
    assert execute(prepare(compose(config(tmp_path), [f"output_dir={run}", "logger.wandb.mode=offline"]))) == 0
    (recorded,) = logged
    assert not leaked  # Lightning's flattened module arguments never reach W&B
    assert recorded["seed"] == 0 and recorded["model"]["generator"]["resolution"] == 16
    assert "gan" not in recorded and "total_kimg" not in recorded  # model settings only under "model"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert saved["provenance"] == recorded["provenance"]
    assert saved["provenance"]["git"]["commit"] == head and isinstance(saved["provenance"]["git"]["dirty"], bool)
    versions = saved["provenance"]["versions"]
    assert {"torch", "pytorch-lightning", "torchmetrics", "clean-fid", "lpips", "open_clip_torch"} <= set(versions)
    meta = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["styleshift"]
    assert meta["config"]["provenance"] == saved["provenance"]
    # the recorded config launches again: its provenance is not a setting
    assert execute(prepare(compose(run / "config.yaml", ["ckpt_path=last", "model.total_kimg=0.012"]))) == 0
