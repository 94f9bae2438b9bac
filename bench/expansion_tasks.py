"""Domain Expansion's cost against the number of tasks (docs/methods/expansion.md): time of one full training
iteration (G_expand, G_adv, D_main and the lazy D_reg of ``ExpansionModule.training_step``) and peak memory,
for 1, 10 and 100 tasks.

Every setting runs in a fresh subprocess (this script with ``--worker``), so memory numbers do not carry over
from one setting to the next. The parent is a small *random* generator (``--resolution`` 32 px, ``--style-dim``
128 so that 100 tasks fit in W; ``model.generator`` as a mapping: no file, no training). Task kinds:

* ``toy``: ``color`` and ``flip`` tasks alternating (each colour task its own target colour);
* ``text``: ``text`` tasks (``photo`` -> ``style <i>``, two templates) with the tiny random CLIP of
  ``configs/nada/toy.yaml`` (its inline open_clip config, ``pretrained: null``: no download).

Each worker builds the module (``build``), warms what a task computes once (the text tasks' CLIP text
directions, ``warm``), runs ``pl.Trainer.fit`` on random images for ``--warmup`` + ``--iters`` iterations of
``--batch`` images and reports ``fit start`` (from ``fit`` to the first batch: Lightning set-up plus the
module's dormancy report, one pair of renders per task), the median and mean of the timed iterations and the
peak memory. Memory: on CPU the resident set high-water mark (``VmHWM``) of the worker, reset with
``/proc/self/clear_refs`` just before ``fit`` where the kernel allows it (``peak RSS``: during training;
``RSS set-up``: after building), else ``ru_maxrss`` of the whole process; on CUDA
``torch.cuda.max_memory_allocated`` during training (reset before ``fit``).

    python bench/expansion_tasks.py                                   # toy and text, 1/10/100 tasks, CPU
    python bench/expansion_tasks.py --kinds toy --tasks 1 10 100 300 --style-dim 512
    python bench/expansion_tasks.py --device cuda --batch 16 --iters 50
"""
from __future__ import annotations

import argparse
import colorsys
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOY_CLIP = {"name": "StyleShift-Toy-CLIP", "pretrained": None, "weight": 1.0,
            "config": {"embed_dim": 64,
                       "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
                       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}}
TEMPLATES = ["a photo of a {}.", "a sketch of a {}."]
GAN = {"g_lr": 0.001, "d_lr": 0.001, "r1_gamma": 0.05, "pl_weight": 0.0, "mixing_prob": 0.0, "ema_kimg": 0.5}


def task_list(kind: str, n: int) -> list[dict]:
    if kind == "toy":
        out = []
        for i in range(n):
            if i % 2:
                out.append({"type": "flip", "name": f"flip{i}"})
            else:
                rgb = colorsys.hsv_to_rgb((i * 0.618) % 1.0, 1.0, 1.0)  # distinct colours
                out.append({"type": "color", "name": f"color{i}", "color": [round(2 * c - 1, 3) for c in rgb]})
        return out
    return [{"type": "text", "name": f"text{i}", "source_text": "photo", "target_text": f"style {i}",
             "templates": TEMPLATES} for i in range(n)]


# ---------------------------------------------------------------------------------------------- memory helpers
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- the worker
def worker(args) -> dict:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning_modules",
                 "datamodules", "models"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from lightning_modules.expansion import ExpansionModule

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    rss_start = _status_kb("VmRSS")

    channels = {4: 64, 8: 64, 16: 32, 32: 16, 64: 16, 128: 16}
    generator = {"resolution": args.resolution, "style_dim": args.style_dim, "n_mlp": 2,
                 "channels": {k: v for k, v in channels.items() if k <= args.resolution}, "init_seed": 0}
    tasks = task_list(args.kind, args.n_tasks)
    extra = {"clip_models": [TOY_CLIP]} if args.kind == "text" else {}
    t = time.perf_counter()
    module = ExpansionModule(generator=generator, gan=GAN, tasks=tasks, distance=args.distance,
                             replay_lpips_weights="random", seed=0, **extra)
    build_s = time.perf_counter() - t
    module.to(device)
    t = time.perf_counter()
    if args.kind == "text":  # the text directions: computed once per task and CLIP model, then cached
        with torch.no_grad():
            for task in module.tasks:
                for clip in module.clips:
                    task.direction(clip, module)
    sync()
    warm_s = time.perf_counter() - t
    rss_setup = _status_kb("VmRSS")

    n_iter = args.warmup + args.iters
    images = torch.rand(args.batch * 4, 3, args.resolution, args.resolution,
                        generator=torch.Generator().manual_seed(1)) * 2 - 1

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(images, batch_size=args.batch, shuffle=True, drop_last=True)

    class Clock(pl.Callback):
        def __init__(self):
            self.times, self.fit_start, self.first_batch = [], None, None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync()
            self.t = time.perf_counter()
            if self.first_batch is None:
                self.first_batch = self.t

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync()
            self.times.append(time.perf_counter() - self.t)

    clock = Clock()
    module.total_kimg = n_iter * args.batch / 1000.0
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_epochs=-1,
                         default_root_dir=tempfile.mkdtemp(prefix="expansion_tasks-"), callbacks=[clock])
    module.export = lambda path: None  # no generator.pt for a benchmark
    hwm_reset = _reset_hwm()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    trainer.fit(module, Data())
    fit_total = time.perf_counter() - t
    timed = clock.times[args.warmup:]
    out = {
        "kind": args.kind, "n_tasks": args.n_tasks, "device": str(device), "batch": args.batch,
        "style_dim": args.style_dim, "resolution": args.resolution, "iterations": module.iteration,
        "dims_first_last": [module.dims[0], module.dims[-1]],
        "build_s": build_s, "warm_s": warm_s, "fit_start_s": (clock.first_batch - t) if clock.first_batch else None,
        "fit_total_s": fit_total, "first_iter_s": clock.times[0] if clock.times else None,
        "iter_median_s": statistics.median(timed) if timed else None,
        "iter_mean_s": statistics.fmean(timed) if timed else None,
        "rss_start_mb": rss_start / 1024 if rss_start else None,
        "rss_setup_mb": rss_setup / 1024 if rss_setup else None,
        "hwm_reset": hwm_reset,
    }
    if hwm_reset:
        out["peak_rss_mb"] = (_status_kb("VmHWM") or 0) / 1024
    else:
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


# ---------------------------------------------------------------------------------------------- the driver
def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", nargs="+", choices=("toy", "text"), default=["toy", "text"])
    p.add_argument("--tasks", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--style-dim", type=int, default=128)
    p.add_argument("--distance", type=float, default=20.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write results.json here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="toy", help=argparse.SUPPRESS)
    p.add_argument("--n-tasks", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        result = worker(args)
        args.result.write_text(json.dumps(result))
        return [result]

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    results = []
    scratch = Path(tempfile.mkdtemp(prefix="expansion_tasks-"))
    for kind in args.kinds:
        for n in args.tasks:
            if n > args.style_dim:
                print(f"skip {kind} x {n}: more tasks than W dimensions ({args.style_dim})", flush=True)
                continue
            result_path = scratch / f"{kind}_{n}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--kind", kind, "--n-tasks", str(n),
                   "--result", str(result_path), "--device", args.device, "--batch", str(args.batch),
                   "--resolution", str(args.resolution), "--style-dim", str(args.style_dim),
                   "--distance", str(args.distance), "--warmup", str(args.warmup), "--iters", str(args.iters),
                   "--threads", str(args.threads)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode or not result_path.is_file():
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
                print(f"{kind} x {n}: worker failed (exit {proc.returncode})\n{tail}", flush=True)
                results.append({"kind": kind, "n_tasks": n, "error": tail})
                continue
            result = json.loads(result_path.read_text())
            result["subprocess_s"] = time.perf_counter() - t
            results.append(result)
            print(f"{kind} x {n}: iteration {result['iter_median_s']:.3f} s (median), peak RSS "
                  f"{result['peak_rss_mb']:.0f} MB, {result['subprocess_s']:.0f} s", flush=True)

    ok = [r for r in results if "error" not in r]
    cuda = any("cuda_peak_mb" in r for r in ok)
    headers = ["kind", "tasks", "build s", "warm s", "fit start s", "1st iter s", "iter median s", "iter mean s",
               "RSS set-up MB", "peak RSS MB"] + (["CUDA peak MB"] if cuda else [])
    rows = [[r["kind"], r["n_tasks"], r["build_s"], r["warm_s"], r["fit_start_s"], r["first_iter_s"],
             r["iter_median_s"], r["iter_mean_s"], r["rss_setup_mb"], r["peak_rss_mb"]]
            + ([r.get("cuda_peak_mb")] if cuda else []) for r in ok]
    cells = [[fmt(c, 1 if "MB" in h else 3) for c, h in zip(row, headers)] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa
    print()
    print(f"ExpansionModule, random {args.resolution} px parent (style_dim {args.style_dim}), batch {args.batch}, "
          f"{args.device}, {args.threads} thread(s); {args.warmup} warm-up + {args.iters} timed iterations each, "
          f"one fresh process per row")
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for c in cells:
        print(line(c))
    if ok:
        memory = "VmHWM reset before fit" if all(r.get("hwm_reset") for r in ok) else "ru_maxrss (whole process)"
        print(f"peak RSS: {memory}; RSS set-up: after building the module (and warming text directions)")
    print(f"wall: {time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        print(f"results: {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
