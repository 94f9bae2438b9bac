"""In-Domain GAN Inversion's claim on the toy faces, offline on a CPU: in-domain codes are far more editable
than codes optimized for pixels alone, at a reconstruction within a small factor of theirs, and ``lambda_dom``
trades one for the other (Zhu et al., "In-Domain GAN Inversion for Real Image Editing", ECCV 2020).

Steps (each of the first two is skipped when its file is given):

1. the 32 px toy StyleGAN2 with the demo recipe (``configs/demo.yaml``, ``--demo-kimg``) -> ``generator.pt``
   (``--generator`` to reuse one; its D is the realism critic below);
2. the domain-guided encoder E with ``configs/idinvert/toy.yaml`` (``--encoder-kimg``, 16 as the config)
   -> ``encoder.pt`` (``--encoder`` to reuse one);
3. every method inverts the same real toy faces, which neither G nor E has seen, and is scored.

Methods (``models.inversion`` presets, all with ``--steps`` Adam steps except the encoder):
``mse_from_mean`` (W+ from the mean W, pixel loss only), ``encoder`` (E(x), no optimization) and
``in_domain`` with each ``--lambda-doms`` (0 is the ``from_encoder`` preset: E(x) init, no domain term).
The perceptual term uses the random VGG stand-in, so by default ``--lambda-vgg 0``: every optimizing method
then minimises the pixel loss, and the in-domain rows differ from ``mse_from_mean`` only in the encoder
initialisation and the domain regularizer (``--lambda-vgg 5e-5`` adds the stand-in feature term, slower).

Image sets (toy faces are a pure function of their index, ``datamodules.toy.render_toy``):

* **eval**: the first ``--n-eval`` held-out faces of ``ToyDataModule(holdout=256)`` (indices 2048..), the
  only faces the methods invert; every column is measured on them;
* **reader**: ``--n-reader`` further unseen faces (indices 20000..), never inverted, that fit the factor
  readers below;
* **reference**: the 2048 training faces, the real side of the stand-in FID; **fresh**: unseen faces from
  index 10000, as many as midpoints, the ``real`` reference row.

Code features: every probe reads the **mean over the W+ layers** of a code (``style_dim`` numbers, 64 here)
rather than the flattened W+ code (``n_latent * style_dim``, 512): a hundred-odd faces cannot fit 512
weights per factor well, and the edits below add the same vector to every layer, which moves exactly this
mean. Probes and readers are ridge regressions in closed form on standardized features, the ridge weight
of each factor chosen by its exact leave-one-out error (SVD).

Columns of the table:

* ``MSE`` / ``PSNR``: pixel error of ``G(w)`` (clamped to [-1, 1]) against the face, in the [-1, 1] range
  (``PSNR = 10 log10(4 / MSE)``), averaged over faces;
* ``probe R2``: how linearly each method's codes encode the 15 true factors: ridge probes code -> factors
  fit on that method's own eval codes, scored by ``--folds``-fold cross-validation (every face predicted by
  a probe that did not see it); the mean out-of-fold R2 over the factors;
* ``edit`` / ``leak``: editability. A **factor reader** ``R(x)``, a ridge probe on the pixels (2x average-
  pooled, 768 numbers) fit on the reader faces' true factors, turns any image into factor estimates in units
  of each factor's standard deviation over real faces; it involves no network any method uses, and the toy
  faces are simple enough for it to read most factors well (its R2 on the eval faces is printed). Edit
  directions are the generator's own (InterFaceGAN-style, as the paper's boundaries): ``--n-samples``
  codes ``w = mapping(z)`` are rendered and labelled by R, and a ridge probe ``w -> factor`` is fit on 80%
  of them; its weight vector, normalised, is the direction ``n_f``, and the edit distance ``d_f`` is
  ``--edit-std`` standard deviations of ``n_f . w`` over the samples. Edited factors: those R reads with
  R2 >= ``--reader-min-r2`` on the eval faces and the probe predicts with R2 >= ``--direction-min-r2`` on
  the other 20% (a factor that W does not encode linearly has no direction to edit along). The same
  ``(n_f, d_f)`` edit every method's codes on all layers, ``w +- d_f n_f``; ``edit`` is the mean over
  edited factors of ``(R_f(G(w + d n)) - R_f(G(w - d n))) / 2`` and ``leak`` the mean absolute such change
  of the *other* edited factors (per face, then averaged); ``edit/leak`` is their ratio. Reading both ends
  with the same R cancels its bias. The same edit applied to 20%-split samples gives the reference row
  ``sampled W``. Cross-checks in ``results.json`` (``readers.E``) and under the table: the same edited
  images read by a second reader, a ridge probe on E's mean-layer code; and the edits along each method's
  *own* probe directions (``own_probe_edit``: the unit weight vector of its probe fit on all its eval codes;
  distance ``--edit-std`` standard deviations of the sampled W along it, so every method's edit has the
  generator's scale).
* ``D(mid)`` / ``FID(mid)``: realism of interpolation midpoints ``G((w_i + w_j) / 2)`` for the pairs
  ``(i, i + k mod n)``, ``k = 1..--mid-pairs``: the mean logit of the checkpoint's D (the GAN's own critic,
  not the one trained with E; higher = more real) and the stand-in FID (``metrics.standin``, a random-feature
  extractor, only comparable within this table) against the training faces. Reference rows: real faces
  (``real``: as many fresh faces as midpoints) and midpoints of sampled W codes.
* ``dom.gap``: ``mean (w - E(G(w)))^2``, the domain term itself (how far the code is from E's image of its
  own reconstruction); on the ``sampled W`` row it says whether E's range is the generator's own W;
* ``W z``: ``sqrt(mean ((w - mean_W) / std_W)^2)`` over layers and dimensions, the distance of the codes
  from the distribution of sampled W (per dimension, in its standard deviations; sampled W: about 1);
* ``s/img``: inversion seconds per face (batches of ``--batch``).

Caveats: the toy G, E and D are small and briefly trained; R is linear in pixels, so it reads colours and
positions better than small parts (its R2 per factor is printed) and is trusted only on renders that look
like faces; E was trained against a D initialised from the checkpoint's D, so ``D(mid)`` may favour images
from E's range; FID on a few hundred images is biased upwards (compare rows, not values); one seed.

    python bench/idinvert_toy.py --out OUT_DIR                 # everything: ~7 min on 2 idle cores
    python bench/idinvert_toy.py --generator RUN/generator.pt --encoder RUN2/encoder.pt --out OUT_DIR
    python bench/idinvert_toy.py --n-eval 256 --steps 200 --lambda-doms 0 0.5 2 8 32
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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.toy import FACE_FACTORS, ToyDataModule, render_toy  # noqa: E402
from metrics.features import quantize  # noqa: E402
from metrics.fid import fid_from_features  # noqa: E402
from metrics.standin import random_features  # noqa: E402
from models import checkpoints  # noqa: E402
from models.encoders import load_encoder  # noqa: E402
from models.inversion import Inverter, settings_from  # noqa: E402
from models.perceptual import VGG16Perceptual  # noqa: E402

log = logging.getLogger("idinvert_toy")
RESOLUTION, NUM_TRAIN, HOLDOUT = 32, 2048, 256
FRESH_START, READER_START = 10_000, 20_000


# ---------------------------------------------------------------------------------------------- training
def train_run(config: str, run_dir: Path, overrides: list[str], threads: int) -> float:
    """``python train.py config`` into ``run_dir`` (no W&B, no sample grids or metrics); returns seconds."""
    cmd = [sys.executable, str(ROOT / "train.py"), str(ROOT / "configs" / config), f"output_dir={run_dir}",
           "logger.wandb.mode=disabled", "callbacks.samples=null", "callbacks.metrics=null",
           "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "checkpoint.every_kimg=null",
           *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    log_path = run_dir.parent / f"{run_dir.name}.log"
    log.info("training: %s (log: %s)", " ".join(cmd[1:]), log_path)
    start = time.perf_counter()
    with open(log_path, "w") as out:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        raise SystemExit(f"training failed (exit {rc}): {' '.join(cmd)}\n{tail}")
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- ridge probes
class Ridge:
    """Multi-output ridge regression ``y ~ x @ coef + intercept`` in closed form.

    Columns of ``x`` are standardized; each output picks its own ridge weight from ``lambdas`` (multiples
    of the number of samples) by the exact leave-one-out squared error of the SVD solution.
    """

    def __init__(self, lambdas=tuple(10.0 ** (k / 2) for k in range(-8, 5))):
        self.lambdas = lambdas

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> "Ridge":
        x, y = x.double(), y.double()
        n = x.shape[0]
        mu, sd = x.mean(0), x.std(0).clamp_min(1e-8)
        y_mean = y.mean(0)
        u, s, vh = torch.linalg.svd((x - mu) / sd, full_matrices=False)
        uty = u.T @ (y - y_mean)
        best_err = torch.full((y.shape[1],), math.inf, dtype=torch.float64)
        coef = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64)
        self.chosen = torch.zeros(y.shape[1], dtype=torch.float64)
        for lam in self.lambdas:
            lam = lam * n
            shrink = s ** 2 / (s ** 2 + lam)
            fitted = u @ (shrink[:, None] * uty)
            leverage = (u ** 2) @ shrink + 1.0 / n
            loo = (((y - y_mean) - fitted) / (1 - leverage)[:, None]).pow(2).mean(0)
            better = loo < best_err
            if better.any():
                c = vh.T @ ((s / (s ** 2 + lam))[:, None] * uty)
                coef[:, better] = c[:, better]
                best_err = torch.where(better, loo, best_err)
                self.chosen[better] = lam / n
        self.coef = coef / sd[:, None]  # in the raw feature coordinates
        self.intercept = y_mean - mu @ self.coef
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() @ self.coef + self.intercept).float()

    def directions(self) -> torch.Tensor:
        """Unit gradient of each output in feature space: [outputs, features]."""
        c = self.coef.T.float()
        return c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)


def r2_scores(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """R2 of each column (1 - SS_res / SS_tot about the column's own mean)."""
    pred, y = pred.double(), y.double()
    ss_res = (y - pred).pow(2).sum(0)
    ss_tot = (y - y.mean(0)).pow(2).sum(0).clamp_min(1e-12)
    return (1 - ss_res / ss_tot).float()


def cross_validated_r2(x: torch.Tensor, y: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """R2 of each column of ``y`` from out-of-fold ridge predictions (``folds`` seeded folds)."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    pred = torch.empty_like(y)
    for k in range(folds):
        test = order[k::folds]
        train = torch.ones(len(x), dtype=torch.bool)
        train[test] = False
        pred[test] = Ridge().fit(x[train], y[train]).predict(x[test])
    return r2_scores(pred, y)


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """The pixel reader's features: images 2x average-pooled and flattened (768 numbers at 32 px)."""
    return torch.nn.functional.avg_pool2d(images, 2).flatten(1)


def code_features(codes: torch.Tensor) -> torch.Tensor:
    """The probe features of W+ codes [N, n_latent, style_dim]: the mean over layers [N, style_dim]."""
    return codes.mean(1)


def factor_matrix(factors: dict) -> torch.Tensor:
    return torch.stack([factors[name].float() for name in FACE_FACTORS], 1)


# ---------------------------------------------------------------------------------------------- the evaluation
class Toolkit:
    """The frozen networks and the fixed measuring instruments shared by every method."""

    def __init__(self, generator_path: Path, encoder_path: Path, args):
        loaded = checkpoints.load(str(generator_path), networks=("g_ema", "g", "d"))
        self.g = (loaded.g_ema if loaded.g_ema is not None else loaded.g).eval().requires_grad_(False)
        if loaded.d is None:
            raise SystemExit(f"{generator_path} has no discriminator: the midpoint realism needs the GAN's D")
        self.d = loaded.d.eval().requires_grad_(False)
        self.e, self.e_config = load_encoder(encoder_path)
        self.e.requires_grad_(False)
        if (self.e.n_latent, self.e.style_dim) != (self.g.n_latent, self.g.style_dim):
            raise SystemExit(f"encoder codes {(self.e.n_latent, self.e.style_dim)} do not fit the generator "
                             f"{(self.g.n_latent, self.g.style_dim)}")
        with torch.no_grad():
            z = torch.randn(4096, self.g.style_dim, generator=torch.Generator().manual_seed(args.seed))
            self.mean_w = loaded.latent_avg if loaded.latent_avg is not None else self.g.style(z).mean(0)
        self.vgg = VGG16Perceptual(None, image_size=None) if args.lambda_vgg > 0 else None
        self.inverter = Inverter(self.g, self.e, self.vgg, self.mean_w.reshape(-1))
        self.batch = args.batch
        self.fid_net = random_features()

    # -- rendering helpers (all batched, no grad)
    @torch.no_grad()
    def render(self, codes: torch.Tensor) -> torch.Tensor:
        out = [self.g([c], input_is_latent=True, randomize_noise=False)[0].clamp(-1, 1)
               for c in codes.split(self.batch)]
        return torch.cat(out)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.e(x) for x in images.split(self.batch)])

    @torch.no_grad()
    def d_logits(self, images: torch.Tensor) -> torch.Tensor:
        """D logits in batches of ``--batch`` (a multiple of the minibatch-stddev group of 4; pads the last)."""
        out = []
        for x in images.split(self.batch):
            pad = (-len(x)) % 4
            xp = torch.cat([x, x[:pad]]) if pad else x
            out.append(self.d(xp).view(-1)[:len(x)])
        return torch.cat(out)

    @torch.no_grad()
    def fid_features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.fid_net(quantize(x).float()) for x in images.split(256)])


def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 127.5 - 1.0


def invert_all(kit: Toolkit, images: torch.Tensor, settings) -> tuple[torch.Tensor, float]:
    """Codes of ``images`` in batches; returns (codes, seconds per image)."""
    codes, seconds = [], 0.0
    for x in images.split(kit.batch):
        result = kit.inverter.invert(x, settings)
        codes.append(result.codes)
        seconds += result.seconds
    return torch.cat(codes), seconds / len(images)


def edit_effects(kit: Toolkit, readers: dict, codes: torch.Tensor, directions: torch.Tensor,
                 distances: torch.Tensor, edited: list[int]) -> dict:
    """Mean factor changes (reader units) of ``w +- d_f n_f`` for each edited factor ``f``, read by each of
    ``readers`` (name -> images -> [N, factors]); the first reader's numbers are also at the top level."""
    out = {}
    for name in readers:
        out[name] = {"target": [], "leak": [], "per_factor": {}}
    for f in edited:
        step = (distances[f] * directions[f]).view(1, 1, -1)
        plus, minus = kit.render(codes + step), kit.render(codes - step)
        others = [g for g in edited if g != f]
        for name, read in readers.items():
            delta = (read(plus) - read(minus)) / 2  # [N, factors]
            t = float(delta[:, f].mean())
            lk = float(delta[:, others].abs().mean()) if others else 0.0
            out[name]["target"].append(t)
            out[name]["leak"].append(lk)
            out[name]["per_factor"][FACE_FACTORS[f]] = {"target": t, "leak": lk}
    result = {}
    for name, r in out.items():
        result[name] = {"edit": sum(r["target"]) / len(edited), "leak": sum(r["leak"]) / len(edited),
                        "per_factor": r["per_factor"]}
    first = result[next(iter(readers))]
    return {"edit": first["edit"], "leak": first["leak"], "readers": result}


def domain_gap(kit: Toolkit, codes: torch.Tensor, images: torch.Tensor) -> float:
    """``mean (w - E(G(w)))^2`` over the codes (the domain term of the inversion objective)."""
    return float((codes - kit.encode(images)).pow(2).flatten(1).mean(1).mean())


def midpoint_pairs(n: int, k_max: int) -> tuple[list[int], list[int]]:
    k_max = min(k_max, max(n // 2, 1))
    a = [i for k in range(1, k_max + 1) for i in range(n)]
    b = [(i + k) % n for k in range(1, k_max + 1) for i in range(n)]
    return a, b


def realism(kit: Toolkit, codes: torch.Tensor, pairs, ref_feats: torch.Tensor) -> dict:
    a, b = pairs
    mid = kit.render((codes[a] + codes[b]) / 2)
    return {"d_mid": float(kit.d_logits(mid).mean()), "fid_mid": fid_from_features(kit.fid_features(mid), ref_feats)}


def evaluate(kit: Toolkit, args) -> dict:
    t0 = time.perf_counter()
    dm = ToyDataModule(resolution=RESOLUTION, num_images=NUM_TRAIN, holdout=HOLDOUT)
    dm.setup()
    if args.n_eval > HOLDOUT:
        raise SystemExit(f"--n-eval is at most {HOLDOUT} (the held-out faces)")
    eval_x = to_unit(dm.holdout_images[:args.n_eval])
    eval_y = factor_matrix({k: v[:args.n_eval] for k, v in dm.holdout_factors.items()})
    reader_u8, reader_f = render_toy(range(READER_START, READER_START + args.n_reader), RESOLUTION)
    reader_y = factor_matrix(reader_f)
    factor_std = reader_y.std(0)

    # the factor readers, fit on real faces, outputs in factor-std units: R (primary) a ridge probe on the
    # 2x-pooled pixels, which no method uses; R_E (cross-check) a ridge probe on E's mean-layer code
    reader_x = to_unit(reader_u8)
    pixel_probe = Ridge().fit(pixel_features(reader_x), reader_y / factor_std)
    code_probe = Ridge().fit(code_features(kit.encode(reader_x)), reader_y / factor_std)
    readers = {"pixel": lambda images: pixel_probe.predict(pixel_features(images)),
               "E": lambda images: code_probe.predict(code_features(kit.encode(images)))}
    reader_r2 = {name: r2_scores(read(eval_x), eval_y / factor_std) for name, read in readers.items()}
    log.info("reader R2 on the eval faces: %s", {name: {n: round(float(v), 3) for n, v in zip(FACE_FACTORS, r2)}
                                                 for name, r2 in reader_r2.items()})

    # the generator's own edit directions: ridge from sampled W to R's reading of G(w)
    with torch.no_grad():
        z = torch.randn(args.n_samples, kit.g.style_dim, generator=torch.Generator().manual_seed(args.seed + 1))
        w_samples = kit.g.style(z)
    sample_codes = w_samples.unsqueeze(1).repeat(1, kit.g.n_latent, 1)
    sample_read = readers["pixel"](kit.render(sample_codes))
    split = int(0.8 * args.n_samples)
    native_probe = Ridge().fit(w_samples[:split], sample_read[:split])
    native_r2 = r2_scores(native_probe.predict(w_samples[split:]), sample_read[split:])
    native_dirs = native_probe.directions()
    native_dist = args.edit_std * (w_samples @ native_dirs.T).std(0)
    edited = [f for f in range(len(FACE_FACTORS))
              if reader_r2["pixel"][f] >= args.reader_min_r2 and native_r2[f] >= args.direction_min_r2]
    if not edited:
        raise SystemExit(f"no factor has reader R2 >= {args.reader_min_r2} and direction R2 >= "
                         f"{args.direction_min_r2}: nothing to edit")
    held_samples = sample_codes[split:split + args.n_eval]  # not used to fit the directions
    w_mean, w_std = w_samples.mean(0), w_samples.std(0)

    def w_distance(codes: torch.Tensor) -> float:
        return float(((codes - w_mean) / w_std).pow(2).mean().sqrt())

    ref_feats = kit.fid_features(to_unit(dm.images))
    pairs = midpoint_pairs(args.n_eval, args.mid_pairs)
    n_mid = len(pairs[0])
    fresh_u8, _ = render_toy(range(FRESH_START, FRESH_START + n_mid), RESOLUTION)
    reference_rows = {
        "real": {"d_mid": float(kit.d_logits(to_unit(fresh_u8)).mean()),
                 "fid_mid": fid_from_features(kit.fid_features(to_unit(fresh_u8)), ref_feats),
                 "d_eval_faces": float(kit.d_logits(eval_x).mean())},
        "sampled W": {**realism(kit, held_samples, midpoint_pairs(len(held_samples), args.mid_pairs), ref_feats),
                      **edit_effects(kit, readers, held_samples, native_dirs, native_dist, edited),
                      "domain_gap": domain_gap(kit, held_samples, kit.render(held_samples)),
                      "w_z": w_distance(held_samples)},
    }
    log.info("instruments ready in %.0f s; edited factors: %s", time.perf_counter() - t0,
             [FACE_FACTORS[f] for f in edited])

    methods = [("mse_from_mean", settings_from("mse_from_mean", steps=args.steps, lr=args.lr)),
               ("encoder", settings_from("encoder", lambda_vgg=args.lambda_vgg))]
    for lam in args.lambda_doms:
        methods.append((f"in_domain l_dom={lam:g}",
                        settings_from("in_domain", steps=args.steps, lr=args.lr, lambda_dom=lam,
                                      lambda_vgg=args.lambda_vgg)))
    rows = {}
    for name, settings in methods:
        t1 = time.perf_counter()
        codes, sec_per_image = invert_all(kit, eval_x, settings)
        recon = kit.render(codes)
        mse = (recon - eval_x).pow(2).flatten(1).mean(1)
        own_r2 = cross_validated_r2(code_features(codes), eval_y, args.folds, args.seed)
        own_dirs = Ridge().fit(code_features(codes), eval_y).directions()
        own_dist = args.edit_std * (w_samples @ own_dirs.T).std(0)  # the generator's spread, not the method's
        row = {
            "settings": {k: getattr(settings, k) for k in ("steps", "lr", "lambda_vgg", "lambda_dom", "init")},
            "mse": float(mse.mean()), "psnr": float((10 * torch.log10(4 / mse.clamp_min(1e-10))).mean()),
            "probe_r2": float(own_r2.mean()),
            "probe_r2_per_factor": {n: float(r) for n, r in zip(FACE_FACTORS, own_r2)},
            **edit_effects(kit, readers, codes, native_dirs, native_dist, edited),
            "own_probe_edit": edit_effects(kit, readers, codes, own_dirs, own_dist, edited),
            **realism(kit, codes, pairs, ref_feats),
            "d_recon": float(kit.d_logits(recon).mean()),
            "seconds_per_image": sec_per_image,
            "domain_gap": domain_gap(kit, codes, recon), "w_z": w_distance(codes),
        }
        rows[name] = row
        log.info("%s: mse %.4f, probe R2 %.3f, edit %.3f, leak %.3f (%.0f s)", name, row["mse"], row["probe_r2"],
                 row["edit"], row["leak"], time.perf_counter() - t1)
    return {
        "methods": rows, "reference": reference_rows,
        "reader_r2": {name: {n: float(v) for n, v in zip(FACE_FACTORS, r2)} for name, r2 in reader_r2.items()},
        "edited_factors": [FACE_FACTORS[f] for f in edited],
        "native_direction_r2": {n: float(v) for n, v in zip(FACE_FACTORS, native_r2)},
        "native_edit_distance": {FACE_FACTORS[f]: float(native_dist[f]) for f in edited},
        "n_midpoints": n_mid, "eval_seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------- report
def table(results: dict) -> str:
    head = (f"{'method':<22} {'MSE':>7} {'PSNR':>6} {'probeR2':>8} {'edit':>6} {'leak':>6} {'edit/leak':>9} "
            f"{'D(mid)':>7} {'FID(mid)':>9} {'dom.gap':>8} {'W z':>5} {'s/img':>6}")
    lines = [head, "-" * len(head)]
    for name, r in results["methods"].items():
        lines.append(f"{name:<22} {r['mse']:7.4f} {r['psnr']:6.2f} {r['probe_r2']:8.3f} {r['edit']:6.3f} "
                     f"{r['leak']:6.3f} {r['edit'] / max(r['leak'], 1e-9):9.2f} {r['d_mid']:7.2f} "
                     f"{r['fid_mid']:9.2f} {r['domain_gap']:8.4f} {r['w_z']:5.2f} {r['seconds_per_image']:6.3f}")
    s = results["reference"]["sampled W"]
    lines.append(f"{'(sampled W)':<22} {'':>7} {'':>6} {'':>8} {s['edit']:6.3f} {s['leak']:6.3f} "
                 f"{s['edit'] / max(s['leak'], 1e-9):9.2f} {s['d_mid']:7.2f} {s['fid_mid']:9.2f} "
                 f"{s['domain_gap']:8.4f} {s['w_z']:5.2f}")
    real = results["reference"]["real"]
    lines.append(f"{'(real faces)':<22} {'':>7} {'':>6} {'':>8} {'':>6} {'':>6} {'':>9} {real['d_mid']:7.2f} "
                 f"{real['fid_mid']:9.2f}")
    lines.append("")
    lines.append("own-probe edits (each method's probe direction): "
                 + ", ".join(f"{n}: edit {r['own_probe_edit']['edit']:.3f} leak {r['own_probe_edit']['leak']:.3f}"
                             for n, r in results["methods"].items()))
    lines.append("E-reader cross-check (edit / leak): " + ", ".join(
        f"{n}: {r['readers']['E']['edit']:.3f} / {r['readers']['E']['leak']:.3f}"
        for n, r in [*results["methods"].items(), ("sampled W", results["reference"]["sampled W"])]))
    for name, r2 in results["reader_r2"].items():
        lines.append(f"{name}-reader R2 (eval faces): " + ", ".join(f"{k} {v:.2f}" for k, v in r2.items()))
    lines.append("edited factors: " + ", ".join(results["edited_factors"]))
    lines.append("native direction R2 (held-out samples): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in results["native_direction_r2"].items()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--generator", help="a demo generator.pt (with D): skips step 1")
    p.add_argument("--encoder", help="an idinvert encoder.pt for that generator: skips step 2")
    p.add_argument("--demo-kimg", type=float, default=16.0, help="kimg of the demo GAN (16, the demo recipe)")
    p.add_argument("--encoder-kimg", type=float, default=16.0, help="kimg of the encoder (16, toy.yaml)")
    p.add_argument("--n-eval", type=int, default=128, help="held-out faces inverted and scored (<= 256)")
    p.add_argument("--folds", type=int, default=8, help="cross-validation folds of the code probes")
    p.add_argument("--n-reader", type=int, default=2048, help="unseen faces encoded to fit the factor reader")
    p.add_argument("--n-samples", type=int, default=2048, help="sampled W codes for the edit directions")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lambda-doms", type=float, nargs="+", default=[0.0, 0.5, 2.0, 8.0],
                   help="domain weights of the in-domain rows (0: the from_encoder preset)")
    p.add_argument("--lambda-vgg", type=float, default=0.0,
                   help="perceptual weight of the in-domain rows (0: the stand-in VGG is random)")
    p.add_argument("--edit-std", type=float, default=2.0, help="edit distance in std of the samples' projection")
    p.add_argument("--reader-min-r2", type=float, default=0.5, help="edit factors the reader reads this well")
    p.add_argument("--direction-min-r2", type=float, default=0.3,
                   help="... and the sampled W predicts (held-out R2 of the direction probe) this well")
    p.add_argument("--mid-pairs", type=int, default=4, help="midpoints per eval face")
    p.add_argument("--batch", type=int, default=64, help="inversion / rendering batch")
    p.add_argument("--threads", type=int, default=2, help="torch threads (also of the training runs)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="idinvert_toy-"))
    if out.resolve().is_relative_to(ROOT.resolve()):
        raise SystemExit(f"--out {out} is inside the repository; write outputs elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings = {}
    generator = Path(args.generator) if args.generator else None
    if generator is None:
        timings["train_gan_s"] = train_run("demo.yaml", out / "demo", [f"model.total_kimg={args.demo_kimg}"],
                                           args.threads)
        generator = out / "demo" / "generator.pt"
    encoder = Path(args.encoder) if args.encoder else None
    if encoder is None:
        timings["train_encoder_s"] = train_run("idinvert/toy.yaml", out / "encoder",
                                               [f"model.generator={generator}",
                                                f"model.total_kimg={args.encoder_kimg}"], args.threads)
        encoder = out / "encoder" / "encoder.pt"
    kit = Toolkit(generator, encoder, args)
    results = evaluate(kit, args)
    timings["evaluate_s"] = results.pop("eval_seconds")
    timings["total_s"] = time.perf_counter() - start
    results.update(args=vars(args), generator=str(generator), encoder=str(encoder), timings=timings,
                   encoder_kimg=kit.e_config.get("metadata", {}).get("kimg"), torch=torch.__version__)
    text = table(results)
    print(text)
    print("timings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.txt").write_text(text + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
