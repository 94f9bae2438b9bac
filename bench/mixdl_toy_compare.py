"""Behaviour check of MixDL's claim on the toy 10-shot setting: MixDL vs plain StyleGAN2
(docs/methods/mixdl.md, "Metrics").

Trains ``configs/mixdl/toy.yaml`` (MixDL) and the plain StyleGAN2 baseline with the same architecture,
seed, data and budget (iterations of batch 4), then reports for the EMA generators:

* latent smoothness along W paths (``metrics.smoothness``; step 1/10, as ``ppl_uniformity.py``):
  mean speed, uniformity (per-path std), cv and max-share (scale-free; stair-like paths -> high);
* CDC intra-cluster LPIPS around the 10 training shots (``metrics.lpips_family``; higher = more diverse);
* nearest-training LPIPS and the mode count (``metrics.memorization``; low distance = copies).

Offline stand-in: LPIPS is ``lpips.LPIPS(net='alex', pnet_rand=True)`` (random AlexNet trunk with the
package's shipped linear heads), images resized to ``--lpips-resolution``. The numbers compare the two
runs with each other; they are not comparable with published LPIPS values. This is not a timed test.

    python bench/mixdl_toy_compare.py --out runs/mixdl_toy_compare        # 2000 iterations (toy.yaml)
    python bench/mixdl_toy_compare.py --iterations 400                    # a quicker look
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules.toy import ToyDataModule  # noqa: E402
from launch.config import compose, to_container  # noqa: E402
from lightning_modules.mixdl import MixDLModule  # noqa: E402
from models.sampler import w_interpolation_sampler  # noqa: E402
from lightning_modules.stylegan2 import StyleGAN2Module  # noqa: E402
from metrics.lpips_family import LPIPSDistance, intra_cluster_lpips, load_lpips  # noqa: E402
from metrics.memorization import nearest_training_lpips  # noqa: E402
from metrics.smoothness import latent_smoothness  # noqa: E402
from metrics.streams import render_uint8  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mixdl_toy_compare")


def build(method: str, model_cfg: dict, iterations: int, batch: int, seed: int) -> pl.LightningModule:
    """The module of ``method`` with the toy config's arguments (those the class accepts), same seed."""
    cls = MixDLModule if method == "mixdl" else StyleGAN2Module
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in model_cfg.items() if k in accepted}
    kwargs.update(total_kimg=iterations * batch / 1000, seed=seed)
    pl.seed_everything(seed, workers=True)
    return cls(**kwargs)


def train(module: pl.LightningModule, data: ToyDataModule, name: str) -> float:
    t0 = time.perf_counter()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=True, num_sanity_val_steps=0,
                         limit_val_batches=0, default_root_dir=tempfile.mkdtemp(prefix="styleshift-bench-"))
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - t0
    log.info("%s: %d iterations (%.2f kimg) in %.0f s", name, module.iteration, module.kimg, seconds)
    return seconds


@torch.no_grad()
def evaluate(module, data: ToyDataModule, dist: LPIPSDistance, args) -> dict:
    module.eval()
    ema = module.samplers()["ema"]
    paths = w_interpolation_sampler(module.g_ema, 10)
    train_images = torch.cat(list(data.reference_set("train").batches(64)))
    samples = torch.cat([render_uint8(ema, list(range(s, min(s + 50, args.samples))), args.eval_seed)
                         for s in range(0, args.samples, 50)])
    smooth = latent_smoothness(dist, paths, args.paths, seed=args.eval_seed)
    intra = intra_cluster_lpips(dist, samples, train_images, cluster_size=50, seed=0)
    nearest = nearest_training_lpips(dist, ema, train_images, args.samples, seed=args.eval_seed)
    return {"smoothness": smooth.as_dict(), "intra_lpips": intra.value, "intra_lpips_std": intra.std,
            "intra_cluster_sizes": intra.cluster_sizes, "nn_lpips": nearest.value, "nn_lpips_std": nearest.std,
            "modes": nearest.modes, "match_counts": nearest.match_counts}


def table(results: dict) -> str:
    rows = [("smoothness mean (LPIPS/eps^2)", lambda r: r["smoothness"]["mean"]),
            ("smoothness uniformity (std)", lambda r: r["smoothness"]["uniformity"]),
            ("smoothness cv (std/mean)", lambda r: r["smoothness"]["cv"]),
            ("smoothness max-share", lambda r: r["smoothness"]["max_share"]),
            ("path endpoint LPIPS", lambda r: r["smoothness"]["endpoint"]),
            ("intra-cluster LPIPS", lambda r: r["intra_lpips"]),
            ("nearest-training LPIPS", lambda r: r["nn_lpips"]),
            ("modes (of 10 shots)", lambda r: r["modes"])]
    names = list(results)
    lines = [f"{'metric':<32}" + "".join(f"{n:>14}" for n in names), "-" * (32 + 14 * len(names))]
    for label, get in rows:
        lines.append(f"{label:<32}" + "".join(f"{get(results[n]):>14.4f}" for n in names))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/mixdl/toy.yaml"))
    ap.add_argument("--iterations", type=int, default=None,
                    help="training iterations of each run (default: the config's total_kimg / batch size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=200, help="samples for intra-cluster and nearest LPIPS")
    ap.add_argument("--paths", type=int, default=50, help="W paths for the smoothness measure")
    ap.add_argument("--eval-seed", type=int, default=1000)
    ap.add_argument("--lpips-resolution", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write results.json here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)

    cfg = to_container(compose(args.config))
    model_cfg, data_cfg = cfg["model"], {k: v for k, v in cfg["data"].items() if k != "name"}
    data = ToyDataModule(**data_cfg)
    if args.iterations is None:
        args.iterations = int(round(model_cfg["total_kimg"] * 1000 / data.batch_size))
    results, seconds = {}, {}
    torch.manual_seed(0)  # the stand-in LPIPS trunk is random: fix it
    lpips_model, name, sha = load_lpips("alex", trunk=None)
    dist = LPIPSDistance(lpips_model, name, sha, resolution=args.lpips_resolution, batch_size=50)
    for method in ("stylegan2", "mixdl"):
        module = build(method, model_cfg, args.iterations, data.batch_size, args.seed)
        seconds[method] = train(module, data, method)
        results[method] = evaluate(module, data, dist, args)

    print(f"\nMixDL vs StyleGAN2 on toy faces, {data.fewshot}-shot, {data.resolution}px, {args.iterations} "
          f"iterations x batch {data.batch_size}, seed {args.seed}")
    print(f"stand-in LPIPS: lpips.LPIPS(net='alex', pnet_rand=True) (random trunk, shipped linear heads) at "
          f"{args.lpips_resolution}px; {args.paths} W paths of 10 steps; {args.samples} samples\n")
    print(table(results))
    print("\ntraining seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"args": vars(args), "config": cfg, "seconds": seconds, "results": results,
                   "lpips": {"name": name, "sha256": sha, "stand_in": "lpips.LPIPS(net='alex', pnet_rand=True)"}}
        (out / "results.json").write_text(json.dumps(payload, indent=2))
        print(f"results written to {out / 'results.json'}")


if __name__ == "__main__":
    main()
