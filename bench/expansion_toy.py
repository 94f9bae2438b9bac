"""Domain Expansion's claim on the toy faces, offline on a CPU (Nitzan et al., "Domain Expansion of Image
Generators", CVPR 2023; docs/methods/expansion.md): the expanded generator keeps the parent's domain on the
base subspace (replay ~ 0, base FID unchanged) while each new domain appears only along its own repurposed
direction.

Steps:

1. **Parent.** The demo's 32 px toy StyleGAN2 (``configs/demo.yaml``, ``--demo-kimg``) trained with
   ``train.py`` into ``OUT/demo`` (or ``--parent FILE``: a ``generator.pt`` with G, G_ema and D).
2. **Dormancy and s.** The SeFa basis of the parent's G_ema (``models.expansion.sefa_basis``, the basis the
   module itself computes). For the top two (most semantic) and the last two (most dormant) directions the
   table gives ``models.expansion.dormancy`` (mean image change of a step ``s`` / spread of the samples; 0 =
   dormant) for each ``s`` of ``--s-grid``, and the spread of W along the direction (the standard deviation
   of ``v_d . w`` over 4096 mapped z). **Rule** (``--s-rule``, default ``dormancy``): s = the largest grid
   value whose dormancy is <= ``--max-dormancy`` (0.1) for both dormant directions; ``spread``: s =
   ``--spread-k`` x the larger W spread of the two dormant directions; ``--s`` sets it outright.
3. **Runs** (the same tasks ``color`` red and ``flip``, the same s, ``--kimg`` thousand images of batch
   ``--batch``, ``configs/expansion/toy.yaml``'s GAN settings, each an ``ExpansionModule`` trained by a
   ``pl.Trainer`` on ``ToyDataModule``):

   * ``expansion``: the method (dims assigned: the two most dormant, D-1 for red, D-2 for mirror; replay
     L2 10 + LPIPS 10 with the random stand-in trunk, adversarial phases on, independent replay noise);
   * ``finetune`` (baseline a): the same module with ``lambda_replay_l2 = lambda_replay_lpips = 0`` and
     ``adversarial = False``: every generator update is a task loss on edited images, nothing holds the base
     subspace (plain fine-tuning on the task losses; the projection is only where the edits start from);
   * ``top_dims`` (baseline b): the method on the two most *semantic* SeFa directions (``dimension: 0`` for
     red, ``1`` for mirror) instead of dormant ones.

4. **Evaluation** on held-out z (``models.sampler.seeded_normal``, ``--eval-seed``; the module's own
   ``base`` and ``domain/<name>`` samplers, G_ema with stored noise, clamped to [-1, 1]):

   * ``replay``: mean squared pixel error (images in [-1, 1]) of the base images against the parent's G_ema
     on the same base codes (``replay 8px``: both 4 x 4 average-pooled, the coarse content without the
     per-pixel noise; ``replay(G)``: against the parent's raw G, the module's replay target, which is not
     what the samplers' G_ema started from); ``full-W MSE``: the same on unprojected W;
   * ``FID``: stand-in FID (``metrics.standin.random_features``, ``metrics.fid.fid_from_features``; only
     comparable inside this table) of ``--n-fid`` base images (and of each domain) against the 2048 training
     faces; reference rows: the parent on full W, the parent on each run's base subspace (its untrained
     projection) and ``--n-fid`` real held-out faces;
   * task scores (lower = more of the task), at the base image, at the task's own direction and at the
     other task's direction (leakage): ``color`` = ``mean_c (mean_hw x - red)^2``, ``flip`` =
     ``mean (x - mirror(x_base))^2`` (x_base: the same model's base image of the same z);
   * toy-factor agreement: a **factor reader** (ridge regression, one ridge weight per factor chosen on a
     validation split, on the per-image standardized, 2 x 2 averaged grey image and a fixed random ReLU
     feature map of it, so a recolouring changes its input little; fit on clean faces plus copies with
     Gaussian pixel noise, since generated faces are grainy) is fit on ``--n-reader`` rendered toy faces
     (``datamodules.toy.render_toy``, indices 30000..) to their known factors; only the geometry factors it
     reads with R2 >= ``--reader-min-r2`` on 1024 further clean faces are used (results.json also has its R2
     on noisy faces). ``agree`` = mean over those factors of the R2 of
     the reader on the domain image against the reader on the *expected* image (the base image for red, its
     mirror for mirror; 1 = the face/pose factors are kept); ``face_x corr`` = correlation of the read face
     position of domain and base images (+1 kept, -1 mirrored: red should keep it, mirror should flip it).
     ``base agree`` = the same R2 of the run's base images against the parent's base images.

The row ``parent`` is the untrained parent on the dormant directions (what a step of s does before any
training), ``parent@top`` on the top directions. ``OUT/samples/<row>.png``: the first 8 held-out z, one row
each of the parent's base image (run rows only), the base image, the red and the mirror domain.

Caveats: one seed, a small briefly trained toy G (its G and G_ema differ visibly, and the source-domain
adversarial phases keep improving it, so the base subspace moves *towards the data* as well as away from the
parent), a linear reader, FID on ~1000 images is biased upwards (compare rows, not values). The toy ``flip``
loss is small (the faces are nearly symmetric: ~0.02-0.04 per image against ~1.3 for ``color``) and every
task shares ``lambda_expand``; ``--lambda-expand`` scales both.

    python bench/expansion_toy.py --out OUT                                # everything (~9-20 min, 1 thread)
    python bench/expansion_toy.py --parent RUN/generator.pt --out OUT      # reuse a demo generator
    python bench/expansion_toy.py --parent RUN/generator.pt --kimg 8 --s 10 --runs expansion top_dims
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.toy import FACE_FACTORS, ToyDataModule, render_toy  # noqa: E402
from metrics.features import quantize  # noqa: E402
from metrics.fid import fid_from_features  # noqa: E402
from metrics.standin import random_features  # noqa: E402
from models import checkpoints  # noqa: E402
from models.expansion import dormancy, sefa_basis  # noqa: E402
from models.sampler import seeded_normal  # noqa: E402

log = logging.getLogger("expansion_toy")
RED = (1.0, -1.0, -1.0)
GAN = {"g_lr": 0.001, "d_lr": 0.001, "r1_gamma": 0.05, "pl_weight": 0.0, "mixing_prob": 0.0, "ema_kimg": 0.5}
GEOMETRY = ("face_x", "face_y", "face_size", "face_aspect", "hairline", "eye_spacing", "eye_size", "eye_height",
            "gaze", "mouth_curve", "mouth_width")
READER_START, READER_TEST_START, NUM_TRAIN = 30_000, 40_000, 2048
RUNS = ("expansion", "finetune", "top_dims")


# ---------------------------------------------------------------------------------------------- the parent
def train_demo(out: Path, kimg: float, threads: int) -> tuple[Path, float]:
    """``python train.py configs/demo.yaml`` into ``out/demo`` (no W&B, samples or metrics); (file, seconds)."""
    run_dir = out / "demo"
    cmd = [sys.executable, str(ROOT / "train.py"), str(ROOT / "configs" / "demo.yaml"), f"output_dir={run_dir}",
           f"model.total_kimg={kimg}", "logger.wandb.mode=disabled", "callbacks.samples=null",
           "callbacks.metrics=null", "checkpoint.every_kimg=null", "trainer.enable_progress_bar=false",
           "trainer.enable_model_summary=false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "disabled"}
    log_path = out / "demo.log"
    log.info("training the parent: %s (log: %s)", " ".join(cmd[1:]), log_path)
    start = time.perf_counter()
    with open(log_path, "w") as stream:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT).returncode
    if rc or not (run_dir / "generator.pt").is_file():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        raise SystemExit(f"demo training failed (exit {rc}): {' '.join(cmd)}\n{tail}")
    return run_dir / "generator.pt", time.perf_counter() - start


def render(generator, w: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """G([w]) with stored noise, clamped to [-1, 1] (as the module's samplers)."""
    with torch.no_grad():
        return torch.cat([generator([c], input_is_latent=True, randomize_noise=False)[0].clamp(-1, 1)
                          for c in w.split(batch)])


def project_base(w: torch.Tensor, basis: torch.Tensor, dims, w_mean: torch.Tensor) -> torch.Tensor:
    """``w - V_R V_Rᵀ (w - w̄)``: written out here so the parent's projections do not need a module."""
    v_r = basis[:, list(dims)]
    return w - (w - w_mean) @ v_r @ v_r.T


# ---------------------------------------------------------------------------------------------- choosing s
def dormancy_table(g, basis: torch.Tensor, dims, grid, n: int) -> dict:
    """``{dim: {"spread": σ_d, "dormancy": {s: value}}}``; σ_d = std of ``v_d . w`` over 4096 mapped z."""
    z = torch.randn(4096, g.style_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        w = g.style(z)
    spread = ((w - w.mean(0)) @ basis).std(0)
    out = {}
    for d in dims:
        out[int(d)] = {"spread": float(spread[d]),
                       "dormancy": {float(s): dormancy(g, basis, [d], distance=float(s), n=n)[d] for s in grid}}
    return out


def choose_s(table: dict, dormant_dims, args) -> tuple[float, str]:
    if args.s is not None:
        return float(args.s), f"given (--s {args.s})"
    if args.s_rule == "spread":
        sigma = max(table[d]["spread"] for d in dormant_dims)
        return args.spread_k * sigma, f"spread: {args.spread_k:g} x max W std along dims {list(dormant_dims)} " \
                                      f"({sigma:.3f})"
    ok = [s for s in args.s_grid if max(table[d]["dormancy"][float(s)] for d in dormant_dims) <= args.max_dormancy]
    if not ok:
        s = min(args.s_grid)
        return float(s), f"dormancy: no grid s has dormancy <= {args.max_dormancy:g}; the smallest grid s"
    return float(max(ok)), f"dormancy: largest grid s with dormancy <= {args.max_dormancy:g} on dims " \
                           f"{list(dormant_dims)}"


# ---------------------------------------------------------------------------------------------- factor reader
def _grey(images: torch.Tensor, pool: int) -> torch.Tensor:
    """uint8 or [-1, 1] images -> per-image standardized grey pixels, ``pool`` x ``pool`` averaged, [N, pixels]."""
    x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
    g = F.avg_pool2d(x.mean(1, keepdim=True), pool).flatten(1)
    return (g - g.mean(1, keepdim=True)) / g.std(1, keepdim=True).clamp_min(1e-3)


class FactorReader:
    """Ridge regression from ``[grey, relu(grey @ P + b)]`` (grey: 2 x 2 averaged; P, b fixed random) to the toy
    factors, fit on clean faces and on copies with Gaussian pixel noise (generated images are grainy)."""

    def __init__(self, resolution: int, pool: int = 2, width: int = 2048, seed: int = 0):
        pixels = (resolution // pool) ** 2
        gen = torch.Generator().manual_seed(seed)
        self.pool = pool
        self.proj = torch.randn(pixels, width, generator=gen) / math.sqrt(pixels)
        self.bias = torch.rand(width, generator=gen) * 2 - 1
        self.noise_gen = torch.Generator().manual_seed(seed + 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        g = _grey(images, self.pool)
        return torch.cat([g, torch.relu(g @ self.proj + self.bias)], 1).double()

    def noisy(self, images: torch.Tensor, max_std: float = 0.2) -> torch.Tensor:
        """Copies in [-1, 1] with pixel noise of a per-image std uniform in [0, max_std]."""
        x = images.float() / 127.5 - 1.0
        std = torch.rand(len(x), 1, 1, 1, generator=self.noise_gen) * max_std
        return (x + std * torch.randn(x.shape, generator=self.noise_gen)).clamp(-1, 1)

    def fit(self, images, targets: torch.Tensor, val_images, val_targets: torch.Tensor,
            lambdas=(1.0, 10.0, 100.0, 1000.0, 10000.0)) -> "FactorReader":
        x = torch.cat([self.features(images), self.features(self.noisy(images))])
        xv = torch.cat([self.features(val_images), self.features(self.noisy(val_images))])
        y, yv = targets.double().repeat(2, 1), val_targets.double().repeat(2, 1)
        self.mu, self.sd = x.mean(0), x.std(0).clamp_min(1e-6)
        self.y_mean = y.mean(0)
        a, av = (x - self.mu) / self.sd, (xv - self.mu) / self.sd
        gram, rhs = a.T @ a, a.T @ (y - self.y_mean)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype)
        best = torch.full((y.shape[1],), math.inf, dtype=torch.float64)
        self.coef = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64)
        for lam in lambdas:
            coef = torch.linalg.solve(gram + lam * eye, rhs)
            err = ((av @ coef + self.y_mean) - yv).pow(2).mean(0)
            better = err < best
            self.coef[:, better], best = coef[:, better], torch.where(better, err, best)
        return self

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return (((self.features(images) - self.mu) / self.sd) @ self.coef + self.y_mean).float()


def r2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per column: 1 - SS(pred - target) / SS(target - mean target)."""
    pred, target = pred.double(), target.double()
    return (1 - (pred - target).pow(2).sum(0) / (target - target.mean(0)).pow(2).sum(0).clamp_min(1e-12)).float()


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


# ---------------------------------------------------------------------------------------------- the runs
def train_run(name: str, parent: Path, s: float, args, out: Path) -> tuple:
    import pytorch_lightning as pl

    from lightning_modules.expansion import ExpansionModule

    tasks = [{"type": "color", "name": "red", "color": list(RED)}, {"type": "flip", "name": "mirror"}]
    options = {}
    if name == "finetune":
        options = dict(lambda_replay_l2=0.0, lambda_replay_lpips=0.0, adversarial=False)
    elif name == "top_dims":
        tasks = [{**tasks[0], "dimension": 0}, {**tasks[1], "dimension": 1}]
    module = ExpansionModule(generator=str(parent), gan=GAN, tasks=tasks, distance=s, replay_lpips_weights="random",
                             lambda_expand=args.lambda_expand, seed=args.seed, total_kimg=args.kimg, **options)
    data = ToyDataModule(resolution=32, num_images=NUM_TRAIN, batch_size=args.batch, seed=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_epochs=-1,
                         default_root_dir=str(out / name))
    start = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - start
    log.info("%s: %d iterations (%.2f kimg) in %.0f s; dims %s, module dormancy report %s", name, module.iteration,
             module.kimg, seconds, module.dims, {d: round(v, 4) for d, v in module.dormancy.items()})
    return module.eval(), seconds


class Evaluator:
    """Fixed instruments: held-out z, the parent, the FID features of the toy faces, the factor reader."""

    def __init__(self, parent: Path, args):
        loaded = checkpoints.load(str(parent), networks=("g_ema", "g"))
        self.p_ema = loaded.g_ema.eval().requires_grad_(False)
        self.p_g = (loaded.g if loaded.g is not None else loaded.g_ema).eval().requires_grad_(False)
        self.args = args
        self.style_dim = self.p_ema.style_dim
        self.z = seeded_normal(range(args.n_fid), args.eval_seed, self.style_dim)
        with torch.no_grad():
            self.w = self.p_ema.style(self.z)
        self.red = torch.tensor(RED).view(1, 3)
        self.fid_net = random_features()
        train_faces, _ = render_toy(range(NUM_TRAIN), 32)
        self.ref_feats = self.features(train_faces)
        held_out, _ = render_toy(range(NUM_TRAIN, NUM_TRAIN + args.n_fid), 32)
        self.real_fid = fid_from_features(self.features(held_out), self.ref_feats)
        start = time.perf_counter()
        xr, fr = render_toy(range(READER_START, READER_START + args.n_reader), 32)
        xv, fv = render_toy(range(READER_TEST_START, READER_TEST_START + 1024), 32)
        stack = lambda f: torch.stack([f[k] for k in FACE_FACTORS], 1)  # noqa: E731
        self.reader = FactorReader(32).fit(xr[:-512], stack(fr)[:-512], xr[-512:], stack(fr)[-512:])
        self.reader_r2 = dict(zip(FACE_FACTORS, r2(self.reader.predict(xv), stack(fv)).tolist()))
        self.reader_r2_noisy = dict(zip(FACE_FACTORS, r2(self.reader.predict(self.reader.noisy(xv)),
                                                         stack(fv)).tolist()))
        self.used = [FACE_FACTORS.index(k) for k in GEOMETRY if self.reader_r2[k] >= args.reader_min_r2]
        self.face_x = FACE_FACTORS.index("face_x")
        log.info("factor reader (%.0f s): R2 on held-out faces %s (with pixel noise: %s); geometry factors used: "
                 "%s", time.perf_counter() - start, {k: round(v, 2) for k, v in self.reader_r2.items()},
                 {k: round(v, 2) for k, v in self.reader_r2_noisy.items()}, [FACE_FACTORS[i] for i in self.used])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.fid_net(quantize(x).float()) for x in images.split(256)])

    def fid(self, images: torch.Tensor) -> float:
        return fid_from_features(self.features(images), self.ref_feats)

    def color_score(self, x: torch.Tensor) -> float:
        return float((x.mean(dim=(2, 3)) - self.red).pow(2).mean(1).mean())

    @staticmethod
    def flip_score(x: torch.Tensor, x_base: torch.Tensor) -> float:
        return float((x - x_base.flip(3)).pow(2).mean())

    def agree(self, x: torch.Tensor, expected: torch.Tensor) -> float:
        return float(r2(self.reader.predict(x)[:, self.used], self.reader.predict(expected)[:, self.used]).mean())

    def score(self, base: torch.Tensor, red: torch.Tensor, mirror: torch.Tensor, parent_base: torch.Tensor,
              parent_g_base: torch.Tensor, fids: bool = True) -> dict:
        """Every column of one row (images: the first ``n_eval`` for the per-image scores, all for FID)."""
        n = self.args.n_eval
        b, r, m = base[:n], red[:n], mirror[:n]
        fx = lambda x: self.reader.predict(x)[:, self.face_x]  # noqa: E731
        row = {
            "replay_mse": float((b - parent_base[:n]).pow(2).mean()),
            "replay_mse_G": float((b - parent_g_base[:n]).pow(2).mean()),
            "replay_mse_8px": float((F.avg_pool2d(b, 4) - F.avg_pool2d(parent_base[:n], 4)).pow(2).mean()),
            "base_agree": self.agree(b, parent_base[:n]),
            "color": {"base": self.color_score(b), "own": self.color_score(r), "other": self.color_score(m)},
            "flip": {"base": self.flip_score(b, b), "own": self.flip_score(m, b), "other": self.flip_score(r, b)},
            "agree": {"red": self.agree(r, b), "mirror": self.agree(m, b.flip(3))},
            "face_x_corr": {"red": corr(fx(r), fx(b)), "mirror": corr(fx(m), fx(b))},
        }
        if fids:
            row["fid"] = {"base": self.fid(base), "red": self.fid(red), "mirror": self.fid(mirror)}
        return row

    def grid(self, path: Path, *rows: torch.Tensor, n: int = 8) -> None:
        """One row of the first ``n`` images per set, 3x nearest upscaled."""
        from torchvision.utils import save_image

        images = torch.cat([r[:n] for r in rows]) * 0.5 + 0.5
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(F.interpolate(images, scale_factor=3, mode="nearest"), str(path), nrow=n, padding=2)

    def parent_row(self, basis: torch.Tensor, dims, s: float, w_mean: torch.Tensor, grid: Path) -> dict:
        """The untrained parent: its base projection and its own steps of s along ``dims``."""
        wb = project_base(self.w, basis, dims, w_mean)
        base = render(self.p_ema, wb)
        red = render(self.p_ema, wb + s * basis[:, dims[0]])
        mirror = render(self.p_ema, wb + s * basis[:, dims[1]])
        self.grid(grid, base, red, mirror)
        return self.score(base, red, mirror, base, render(self.p_g, wb))

    def run_row(self, module, grid: Path) -> dict:
        samplers = module.samplers()
        idx = list(range(self.args.n_fid))
        with torch.no_grad():
            base = samplers["base"].render(idx, self.args.eval_seed)
            red = samplers["domain/red"].render(idx, self.args.eval_seed)
            mirror = samplers["domain/mirror"].render(idx, self.args.eval_seed)
        state = module.basis_state
        wb = state.base(self.w)
        parent_base = render(self.p_ema, wb)
        self.grid(grid, parent_base, base, red, mirror)
        row = self.score(base, red, mirror, parent_base, render(self.p_g, wb))
        with torch.no_grad():  # off the base subspace: the full-W samples of the trained G_ema vs the parent
            full = render(module.g_ema, self.w[:self.args.n_eval])
            row["full_w_mse"] = float((full - render(self.p_ema, self.w[:self.args.n_eval])).pow(2).mean())
        return row


# ---------------------------------------------------------------------------------------------- report
def fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 10 ** 4):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def table(headers, rows) -> str:
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def report(results: dict) -> str:
    out = []
    dt, s = results["dormancy"], results["s"]
    grid = results["s_grid"]
    out.append("Dormancy of the parent's SeFa directions (image change of a step s / sample spread; 0 = dormant), "
               "W spread = std of v_d . w:")
    out.append(table(["dim", "W spread", *[f"s={g:g}" for g in grid]],
                     [[d, v["spread"], *[v["dormancy"][float(g)] for g in grid]] for d, v in dt.items()]))
    out.append(f"chosen s = {s:g} ({results['s_rule']}); s / W spread on the dormant dims = "
               + ", ".join(f"{s / dt[d]['spread']:.2f}" for d in results["dormant_dims"])
               + "; dormancy at s: " + ", ".join(f"dim {d}: {v:.4f}" for d, v in results["dormancy_at_s"].items()))
    out.append("")
    rows = results["rows"]
    out.append(f"Held-out z (seed {results['eval_seed']}; scores on {results['n_eval']} images, FID on "
               f"{results['n_fid']} vs the {NUM_TRAIN} training faces). Stand-in FID: real held-out faces "
               f"{results['fid_real']:.3f}, parent on full W {results['fid_parent_full']:.3f}.")
    out.append("Preservation of the source domain (base subspace):")
    out.append(table(["row", "dims", "kimg", "replay MSE", "replay 8px", "replay(G)", "full-W MSE", "base agree",
                      "FID base",
                      "FID red", "FID mirror"],
                     [[k, "/".join(map(str, r["dims"])), r.get("kimg"), r["replay_mse"], r["replay_mse_8px"],
                       r["replay_mse_G"],
                       r.get("full_w_mse"), r["base_agree"], r["fid"]["base"], r["fid"]["red"], r["fid"]["mirror"]]
                      for k, r in rows.items()]))
    out.append("")
    out.append("Domains (task scores: lower = more of the task; own = at the task's direction, other = at the "
               "other task's direction):")
    out.append(table(["row", "color@base", "color@red", "color@mirror", "flip@base", "flip@mirror", "flip@red",
                      "agree red", "agree mirror", "face_x corr red", "face_x corr mirror"],
                     [[k, r["color"]["base"], r["color"]["own"], r["color"]["other"], r["flip"]["base"],
                       r["flip"]["own"], r["flip"]["other"], r["agree"]["red"], r["agree"]["mirror"],
                       r["face_x_corr"]["red"], r["face_x_corr"]["mirror"]] for k, r in rows.items()]))
    out.append("")
    out.append("replay MSE: base images vs the parent's G_ema on the same base codes (replay 8px: both 4x4 "
               "average-pooled, the coarse content; replay(G): vs the parent's raw G, the module's replay target); "
               "full-W MSE: unprojected W; parent rows: the untrained parent (replay 0 by definition; FID base = the "
               "parent on that base subspace).")
    out.append("agree: R2 of the factor reader's geometry factors on the domain image vs on the expected image (base "
               "for red, mirrored base for mirror); face_x corr: +1 pose kept, -1 mirrored.")
    return "\n".join(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    p.add_argument("--parent", type=Path, default=None, help="a demo generator.pt (default: train one)")
    p.add_argument("--demo-kimg", type=float, default=16.0, help="the parent's training length (the demo's 16)")
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    p.add_argument("--kimg", type=float, default=4.0, help="training length of every run (thousand images)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lambda-expand", type=float, default=1.0, help="the task-loss weight (the module's 1)")
    p.add_argument("--s", type=float, default=None, help="step size (overrides --s-rule)")
    p.add_argument("--s-rule", choices=("dormancy", "spread"), default="dormancy")
    p.add_argument("--s-grid", type=float, nargs="+", default=[1, 2, 3, 4, 5, 6, 8, 10, 15, 20])
    p.add_argument("--max-dormancy", type=float, default=0.1)
    p.add_argument("--spread-k", type=float, default=4.0)
    p.add_argument("--dormancy-n", type=int, default=64, help="samples of each dormancy value")
    p.add_argument("--n-eval", type=int, default=256, help="held-out z of the per-image scores")
    p.add_argument("--n-fid", type=int, default=1024, help="images per stand-in FID (>= --n-eval)")
    p.add_argument("--n-reader", type=int, default=4096, help="rendered faces fitting the factor reader")
    p.add_argument("--reader-min-r2", type=float, default=0.5)
    p.add_argument("--eval-seed", type=int, default=12345)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.n_fid = max(args.n_fid, args.n_eval)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    out = args.out or Path(tempfile.mkdtemp(prefix="expansion_toy-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    wall = {}

    parent = args.parent
    if parent is None:
        parent, wall["demo"] = train_demo(out, args.demo_kimg, args.threads)
    log.info("parent: %s", parent)

    t = time.perf_counter()
    p_ema = checkpoints.load(str(parent), networks=("g_ema",)).g_ema.eval().requires_grad_(False)
    D = p_ema.style_dim
    basis = sefa_basis(p_ema)
    dormant, top = [D - 1, D - 2], [0, 1]
    dt = dormancy_table(p_ema, basis, [0, 1, D - 2, D - 1], args.s_grid, args.dormancy_n)
    s, rule = choose_s(dt, dormant, args)
    at_s = {d: dormancy(p_ema, basis, [d], distance=s, n=args.dormancy_n)[d] for d in [0, 1, D - 2, D - 1]}
    wall["dormancy"] = time.perf_counter() - t
    log.info("s = %g (%s); dormancy at s: %s", s, rule, {d: round(v, 4) for d, v in at_s.items()})

    t = time.perf_counter()
    ev = Evaluator(parent, args)
    wall["instruments"] = time.perf_counter() - t

    results = {"parent": str(parent), "style_dim": D, "s": s, "s_rule": rule, "s_grid": args.s_grid,
               "dormant_dims": dormant, "dormancy": dt, "dormancy_at_s": at_s, "eval_seed": args.eval_seed,
               "n_eval": args.n_eval, "n_fid": args.n_fid, "fid_real": ev.real_fid,
               "fid_parent_full": ev.fid(render(ev.p_ema, ev.w)), "reader_r2": ev.reader_r2,
               "reader_r2_noisy": ev.reader_r2_noisy,
               "reader_factors": [FACE_FACTORS[i] for i in ev.used], "args": {k: str(v) for k, v in vars(args).items()},
               "rows": {}, "wall_s": wall}

    modules = {}
    for name in args.runs:
        module, seconds = train_run(name, parent, s, args, out)
        wall[f"train_{name}"] = seconds
        modules[name] = module
        results.setdefault("module_dormancy", {})[name] = {int(k): v for k, v in module.dormancy.items()}

    t = time.perf_counter()
    w_mean = None
    for name, module in modules.items():
        w_mean = module.w_mean.detach().cpu()
        if not torch.allclose(module.basis.cpu(), basis):
            log.warning("%s: the module's basis differs from SeFa of the parent's G_ema", name)
    if w_mean is None:
        avg = checkpoints.load(str(parent), networks=()).latent_avg
        w_mean = avg.reshape(-1).float() if avg is not None else ev.w.mean(0)
    grids = out / "samples"
    results["rows"]["parent"] = {"dims": dormant, "kimg": 0.0,
                                 **ev.parent_row(basis, dormant, s, w_mean, grids / "parent.png")}
    results["rows"]["parent@top"] = {"dims": top, "kimg": 0.0,
                                     **ev.parent_row(basis, top, s, w_mean, grids / "parent@top.png")}
    for name, module in modules.items():
        results["rows"][name] = {"dims": list(module.dims), "kimg": round(module.kimg, 3),
                                 **ev.run_row(module, grids / f"{name}.png")}
    wall["evaluation"] = time.perf_counter() - t
    wall["total"] = time.perf_counter() - start

    text = report(results)
    print(text)
    print("wall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items()))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "table.txt").write_text(text + "\n")
    print(f"results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
