"""DualStyleGAN's claim on the toy faces, offline on a CPU (Yang, Jiang, Liu, Loy, "Pastiche Master:
Exemplar-Based High-Resolution Portrait Style Transfer", CVPR 2022; docs/methods/dualstylegan.md): exemplar-based
style transfer keeps the content's identity (intrinsic path) while it takes the exemplar's colours *and*
structure (extrinsic path); a StyleGAN fine-tuned on the styles with layer swapping takes the colours but not the
structure.

Toy styles (``datamodules.toy.render_toy_styles``): exemplar ``i`` is the plain toy face ``i`` with bigger eyes
(``eye_size`` x U(1.2, 2.0)), another face aspect (x U(0.8, 1.25)) and a cartoon palette (green / blue /
lavender / orange skin, bright hair, a saturated background). Their factors, with the multipliers actually
applied, are known, so structure and palette transfer can be measured.

Pipeline (each step a subprocess into ``OUT``; a step whose product is already there is reused, so a rerun
continues where it stopped, and a step's half-written run directory is removed first):

a. ``demo/generator.pt``: the content generator g, ``configs/demo.yaml`` for ``--demo-kimg`` (or ``--parent``);
b. ``encoder/encoder.pt``: a W+ encoder of g, ``configs/idinvert/toy.yaml`` for ``--encoder-kimg`` (or
   ``--encoder``);
c. ``styles/``: ``--n-styles`` toy style exemplars (``write_toy_style_folder``, indices 0..); Stage I
   prerequisite ``finetune/generator.pt``: g fine-tuned on them, ``configs/stylegan2/finetune.yaml`` with toy
   overrides (32 px, CPU, the demo's small-image GAN settings, ``--finetune-kimg``);
d. ``codes.pt``: facial destylization, ``python -m launch.destylize`` (``--destylize-steps``, ``--no-identity``,
   random LPIPS trunk, losses at 32 px);
e. ``structure/generator.pt``: Stage II, ``configs/dualstylegan/toy_structure.yaml`` with the encoder
   (``--structure-kimg``); ``style/generator.pt``: Stage III, ``configs/dualstylegan/toy_style.yaml`` with the
   code table and the styles folder (``--style-kimg``);
f. evaluation (in this process).

Evaluation. Content: ``--n-content`` codes, half W = mapping(z) of random z, half E(x) of plain toy faces no
network has seen (indices 50000..). Exemplars: the first ``--n-exemplars`` of the code table (their extrinsic
codes, as the paper's exemplar-based transfer); the ``DualStyleGAN (unseen)`` row uses ``--n-exemplars`` further
style images (indices 100000..) with e = E(S). Every content is combined with every exemplar (a grid).

Rows: ``DualStyleGAN`` (Stage III's G_ema, the official inference weights: ``--w-structure`` (0.75) on the
structure rows, 1 on the colour rows); ``Stage II product`` and ``Stage I (initial path)`` (the same weights on
Stage II's export and on a freshly initialised extrinsic path: what the training stages added); ``layer swap``
(the baseline: the fine-tuned g' on W+ rows ``<= res_index`` from the content and rows above from the exemplar's
extrinsic code, i.e. structure from the content, colour from the exemplar); reference rows ``g'(content)``
(the fine-tuned generator on the content code: the style domain's average structure), ``content only``
(g(content)) and ``exemplar itself`` (S).

Instruments: a **factor reader** (``bench.expansion_toy.FactorReader``: ridge regression on the per-image
standardized grey image and random ReLU features of it) fit on ``--n-reader`` plain toy faces *and* as many toy
styles (indices 30000.. and 130000..) to their true factors, so it reads the geometry under both palettes; its
R2 on held-out faces and styles is printed, and on ``g(E(x))`` against the true factors of the plain faces x
(how well it reads the generator's own, grainier images). Columns:

* ``keep corr`` / ``keep R2``: content identity: mean correlation / R2 of the read ``face_x, face_y, gaze,
  mouth_curve`` of the output against the read factors of ``content only`` (1 = kept; R2 also penalises the
  reader's offset between domains, so it goes negative easily); ``fx~content`` / ``fx~ex``: correlation of the
  read ``face_x`` of the output with the content's read / the exemplar's true ``face_x`` (kept: ~1 / ~0);
* ``eye~ex`` / ``asp~ex``: structure follows the exemplar: within each content (centred per content), the
  correlation of the read ``eye_size`` / ``face_aspect`` of the output with the exemplar's multiplier
  ``eye_scale`` / ``aspect_scale`` (0 when it does not depend on the exemplar); ``d_eye``: mean read
  ``eye_size`` of the output minus that of ``content only``;
* ``bg dist`` / ``mean dist``: palette distance to the exemplar: RGB distance (in [0, 1] units) of the mean
  colour of the four 3x3 corners (the background) / of the whole image; ``bg->content``: the corner distance to
  the content image.

Structure-weight sweep: DualStyleGAN with ``w_structure`` in ``--sweep`` (colour rows 1): mean read eye size, its
change from the content and ``eye~ex``; below it the rank correlation (Spearman) of the weights with the mean
read eye size (1 = monotone), the mean per-pair Spearman over the (content, exemplar) grid and the fraction of
pairs whose read eye size at w = 1 exceeds that at w = 0.

Writes ``OUT/results.json``, ``OUT/table.txt`` and sample grids ``OUT/samples/<row>.png`` (first row: the
exemplars, first column: the contents, ``OUT/samples/sweep.png``: one content x exemplar pair per row over the
sweep).

Run time on 2 shared CPU cores (measured with ``--parent`` / ``--encoder`` given): fine-tuning 1 kimg ~1.5 min,
destylization of 100 styles x 20 steps ~5 min, Stage II 2 kimg ~8 min, Stage III 1 kimg ~8 min, evaluation
~1-1.5 min; training the demo (16 kimg) adds ~8 min and the encoder ~3 min per kimg on idle cores (several
times that when the cores are busy).

Caveats: one seed; a 32 px toy generator (its W+ has 8 rows, structure rows 0-2 at 4-8 px, where a 2-3 px eye
is barely represented); short Stage I-III runs; the VGG19, LPIPS and identity networks are random stand-ins
(offline), so the perceptual, contextual and destylization losses only carry what random features do; the
reader is linear.

    python bench/dualstylegan_toy.py --out OUT                         # everything
    python bench/dualstylegan_toy.py --out OUT --parent G.pt --encoder E.pt --threads 2
    python bench/dualstylegan_toy.py --out OUT --train-only            # the products only (a rerun evaluates)
    python bench/dualstylegan_toy.py --out OUT --structure-kimg 4 --style-kimg 2 --destylize-steps 100
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
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
from bench.expansion_toy import FactorReader, fmt, r2, table  # noqa: E402
from bench.idinvert_toy import train_run  # noqa: E402
from datamodules.toy import (FACE_FACTORS, render_toy, render_toy_styles, toy_style_name,  # noqa: E402
                             write_toy_style_folder)
from models import checkpoints  # noqa: E402
from models import dualstylegan as dsg  # noqa: E402
from models.encoders import load_encoder  # noqa: E402
from models.style_codes import StyleCodes  # noqa: E402

log = logging.getLogger("dualstylegan_toy")
RESOLUTION = 32
KEEP = ("face_x", "face_y", "gaze", "mouth_curve")
#: the demo's small-image GAN settings for the fine-tuning (configs/demo.yaml), at a lower learning rate
GAN_SMALL = {"g_lr": 0.002, "d_lr": 0.002, "r1_gamma": 0.05, "pl_weight": 0.0, "mixing_prob": 0.0, "ema_kimg": 0.5}
READER_FACES, READER_STYLES, READER_TEST = 30_000, 130_000, 5_000
CONTENT_FACES, UNSEEN_STYLES = 50_000, 100_000


# ---------------------------------------------------------------------------------------------- pipeline
def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "disabled"}


def _record(out: Path, step: str, seconds: float) -> None:
    """Keep each step's wall time in ``out/timings.json``, so a rerun that reuses the step still reports it."""
    path = out / "timings.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored[step] = seconds
    path.write_text(json.dumps(stored, indent=1))


def train_step(name: str, config: str, out: Path, product: str, overrides: list[str], threads: int,
               timings: dict) -> Path:
    """``train.py config`` into ``out/name`` unless ``out/name/product`` exists; returns the product."""
    run_dir = out / name
    if (run_dir / product).is_file():
        log.info("%s: reusing %s", name, run_dir / product)
        return run_dir / product
    if run_dir.exists():  # a half-written run of an interrupted bench
        shutil.rmtree(run_dir)
    timings[name] = train_run(config, run_dir, overrides, threads)
    _record(out, name, timings[name])
    if not (run_dir / product).is_file():
        raise SystemExit(f"{name}: {run_dir / product} was not written (log: {out / (name + '.log')})")
    log.info("%s: %.0f s", name, timings[name])
    return run_dir / product


def destylize_step(out: Path, styles: Path, finetuned: Path, source: Path, encoder: Path, args,
                   timings: dict) -> Path:
    """``python -m launch.destylize`` -> ``out/codes.pt`` (the CLI itself resumes a partial table)."""
    codes = out / "codes.pt"
    if codes.is_file() and len(StyleCodes.load(codes)) >= args.n_styles:
        log.info("destylize: reusing %s", codes)
        return codes
    cmd = [sys.executable, "-m", "launch.destylize", "--styles", str(styles), "--finetuned", str(finetuned),
           "--source", str(source), "--encoder", str(encoder), "--out", str(codes),
           "--steps", str(args.destylize_steps), "--no-identity", "--lpips-weights", "random",
           "--loss-size", str(RESOLUTION), "--batch", str(args.destylize_batch), "--device", "cpu",
           "--previews", str(out / "destylize_previews")]
    log_path = out / "destylize.log"
    log.info("destylize: %s (log: %s)", " ".join(cmd[1:]), log_path)
    start = time.perf_counter()
    with open(log_path, "w") as stream:
        rc = subprocess.run(cmd, cwd=ROOT, env=_env(args.threads), stdout=stream, stderr=subprocess.STDOUT).returncode
    if rc or not codes.is_file():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        raise SystemExit(f"destylization failed (exit {rc}): {' '.join(cmd)}\n{tail}")
    timings["destylize"] = time.perf_counter() - start
    _record(out, "destylize", timings["destylize"])
    return codes


def pipeline(out: Path, args, timings: dict) -> dict[str, Path]:
    t = args.threads
    parent = Path(args.parent) if args.parent else train_step(
        "demo", "demo.yaml", out, "generator.pt", [f"model.total_kimg={args.demo_kimg}"], t, timings)
    encoder = Path(args.encoder) if args.encoder else train_step(
        "encoder", "idinvert/toy.yaml", out, "encoder.pt",
        [f"model.generator={parent}", f"model.total_kimg={args.encoder_kimg}"], t, timings)
    styles = out / "styles"
    if len(list(styles.glob("*.png"))) != args.n_styles:
        if styles.exists():
            shutil.rmtree(styles)
        write_toy_style_folder(styles, args.n_styles, RESOLUTION)
    finetuned = train_step(
        "finetune", "stylegan2/finetune.yaml", out, "generator.pt",
        [f"model.generator={parent}", f"data.path={styles}", f"data.resolution={RESOLUTION}",
         f"model.total_kimg={args.finetune_kimg}", *[f"model.gan.{k}={v}" for k, v in GAN_SMALL.items()],
         "trainer.accelerator=cpu", "trainer.devices=1", f"data.batch_size={args.batch}"], t, timings)
    codes = destylize_step(out, styles, finetuned, parent, encoder, args, timings)
    structure = train_step(
        "structure", "dualstylegan/toy_structure.yaml", out, "generator.pt",
        [f"model.generator={parent}", f"model.encoder={encoder}", f"model.total_kimg={args.structure_kimg}",
         f"data.batch_size={args.batch}"], t, timings)
    style = train_step(
        "style", "dualstylegan/toy_style.yaml", out, "generator.pt",
        [f"model.init={structure}", f"model.codes={codes}", f"model.styles={styles}", f"data.path={styles}",
         f"model.total_kimg={args.style_kimg}", f"data.batch_size={args.batch}"], t, timings)
    return {"parent": parent, "encoder": encoder, "styles": styles, "finetuned": finetuned, "codes": codes,
            "structure": structure, "style": style}


# ---------------------------------------------------------------------------------------------- evaluation
def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def factor_matrix(factors: dict) -> torch.Tensor:
    return torch.stack([factors[k].float() for k in FACE_FACTORS], 1)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation; 0 when either side is constant (nothing follows)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    if a.norm() < 1e-9 or b.norm() < 1e-9:
        return 0.0
    return float((a * b).sum() / (a.norm() * b.norm()))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    rank = lambda v: v.double().argsort().argsort().double()  # noqa: E731 - no ties in read values
    return corr(rank(a), rank(b))


def corners(images: torch.Tensor) -> torch.Tensor:
    """Mean RGB in [0, 1] of the four 3 x 3 corners (the background of every toy face): [N, 3]."""
    x = images * 0.5 + 0.5
    parts = [x[:, :, :3, :3], x[:, :, :3, -3:], x[:, :, -3:, :3], x[:, :, -3:, -3:]]
    return torch.stack([q.mean((2, 3)) for q in parts]).mean(0)


@torch.no_grad()
def render_batched(fn, *tensors: torch.Tensor, batch: int = 128) -> torch.Tensor:
    n = len(tensors[0])
    return torch.cat([fn(*(t[s:s + batch] for t in tensors)).clamp(-1, 1) for s in range(0, n, batch)])


class Evaluator:
    """The frozen networks, the content and exemplar sets and the factor reader."""

    def __init__(self, paths: dict[str, Path], args):
        self.args = args
        self.g = checkpoints.load(str(paths["parent"]), networks=("g_ema",)).g_ema.eval().requires_grad_(False)
        self.g_ft = checkpoints.load(str(paths["finetuned"]), networks=("g_ema",)).g_ema.eval().requires_grad_(False)
        self.model = dsg.load(paths["style"]).eval().requires_grad_(False)
        self.stage2 = dsg.load(paths["structure"]).eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # Stage I: the initial extrinsic path (colour transfer only)
            torch.manual_seed(args.seed)
            self.stage1 = dsg.DualStyleGAN(self.model.generator, res_index=self.model.res_index).eval()
        self.encoder, _ = load_encoder(paths["encoder"])
        self.encoder.eval().requires_grad_(False)
        self.n_latent, self.res_index = self.model.n_latent, self.model.res_index
        self.codes = StyleCodes.load(paths["codes"])
        start = time.perf_counter()
        self.fit_reader(args.n_reader)
        log.info("factor reader (%.0f s): R2 faces %s; styles %s", time.perf_counter() - start,
                 {k: round(v, 2) for k, v in self.reader_r2["faces"].items()},
                 {k: round(v, 2) for k, v in self.reader_r2["styles"].items()})
        self.make_sets(args)

    # -- instruments
    def fit_reader(self, n: int) -> None:
        xf, ff = render_toy(range(READER_FACES, READER_FACES + n), RESOLUTION)
        xs, fs = render_toy_styles(range(READER_STYLES, READER_STYLES + n), RESOLUTION)
        x, y = torch.cat([xf, xs]), torch.cat([factor_matrix(ff), factor_matrix(fs)])
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.args.seed))
        x, y = x[order], y[order]
        self.reader = FactorReader(RESOLUTION, seed=self.args.seed).fit(x[:-512], y[:-512], x[-512:], y[-512:])
        tf, tff = render_toy(range(READER_FACES + n, READER_FACES + n + 512), RESOLUTION)
        ts, tfs = render_toy_styles(range(READER_STYLES + n, READER_STYLES + n + 512), RESOLUTION)
        self.reader_r2 = {name: dict(zip(FACE_FACTORS, r2(self.reader.predict(img), factor_matrix(f)).tolist()))
                          for name, img, f in (("faces", tf, tff), ("styles", ts, tfs))}

    def read(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = torch.cat([self.reader.predict(x) for x in images.split(512)])
        return {k: pred[:, i] for i, k in enumerate(FACE_FACTORS)}

    # -- content and exemplars
    @torch.no_grad()
    def make_sets(self, args) -> None:
        n_z = args.n_content // 2
        n_f = args.n_content - n_z
        z = torch.randn(n_z, self.g.style_dim, generator=torch.Generator().manual_seed(args.seed + 7))
        w_z = self.g.style(z).unsqueeze(1).repeat(1, self.n_latent, 1)
        faces, face_factors = render_toy(range(CONTENT_FACES, CONTENT_FACES + n_f), RESOLUTION)
        w_f = torch.cat([self.encoder(to_unit(x)) for x in faces.split(64)])
        self.content = torch.cat([w_z, w_f])
        self.content_images = render_batched(lambda w: self.g([w], input_is_latent=True, randomize_noise=False)[0],
                                             self.content)
        # how well the reader reads the generator's own images: g(E(x)) against the true factors of x
        recon = self.read(self.content_images[n_z:])
        self.reader_r2["g(E(face)) vs face"] = {
            k: float(r2(recon[k][:, None], face_factors[k][:, None])[0]) for k in FACE_FACTORS}
        names = self.codes.names[:args.n_exemplars]
        rows = [self.codes.index(n) for n in names]
        indices = [int(Path(n).stem.split("_")[-1]) for n in names]
        if [toy_style_name(i) for i in indices] != names:
            raise SystemExit(f"{names[:3]}...: the code table does not name toy style images")
        images, factors = render_toy_styles(indices, RESOLUTION)
        self.exemplars = {"table": (to_unit(images), factors, self.codes.extrinsic[rows].float())}
        unseen = list(range(UNSEEN_STYLES, UNSEEN_STYLES + args.n_exemplars))
        images, factors = render_toy_styles(unseen, RESOLUTION)
        x = to_unit(images)
        self.exemplars["unseen"] = (x, factors, torch.cat([self.encoder(b) for b in x.split(64)]))

    def grid_inputs(self, which: str):
        """Every content x every exemplar (item ``i * n_e + j``): intrinsic W+, extrinsic W+, images, factors."""
        x, f, e = self.exemplars[which]
        n_c, n_e = len(self.content), len(x)
        return (self.content.repeat_interleave(n_e, 0), e.repeat(n_c, 1, 1), self.content_images.repeat_interleave(
            n_e, 0), x.repeat(n_c, 1, 1, 1), {k: v.repeat(n_c) for k, v in f.items()}, n_c, n_e)

    # -- generators
    def dualstylegan(self, latent: torch.Tensor, e: torch.Tensor, w_structure: float, model=None) -> torch.Tensor:
        model = self.model if model is None else model
        weights = dsg.inference_weights(self.n_latent, self.res_index, structure=w_structure, colour=1.0)
        return render_batched(lambda a, b: model([a], b, input_is_latent=True, randomize_noise=False,
                                                 interp_weights=weights)[0], latent, e)

    def layer_swap(self, latent: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        n_s = self.res_index + 1
        swapped = torch.cat([latent[:, :n_s], e[:, n_s:]], 1)
        return render_batched(lambda w: self.g_ft([w], input_is_latent=True, randomize_noise=False)[0], swapped)

    def finetuned(self, latent: torch.Tensor) -> torch.Tensor:
        return render_batched(lambda w: self.g_ft([w], input_is_latent=True, randomize_noise=False)[0], latent)

    # -- scores
    def score(self, out: torch.Tensor, content: torch.Tensor, exemplar: torch.Tensor, factors: dict, n_c: int,
              n_e: int, read_content: dict | None = None) -> dict:
        ro = self.read(out)
        rc = read_content if read_content is not None else self.read(content)
        centred = lambda v: (v.view(n_c, n_e) - v.view(n_c, n_e).mean(1, keepdim=True)).flatten()  # noqa: E731
        keep = r2(torch.stack([ro[k] for k in KEEP], 1), torch.stack([rc[k] for k in KEEP], 1))
        keep_corr = {k: corr(ro[k], rc[k]) for k in KEEP}
        return {
            "keep_corr": sum(keep_corr.values()) / len(KEEP), "keep_corr_per_factor": keep_corr,
            "keep_r2": float(keep.mean()), "keep_r2_per_factor": dict(zip(KEEP, keep.tolist())),
            "face_x_corr_content": corr(ro["face_x"], rc["face_x"]),
            "face_x_corr_exemplar": corr(ro["face_x"], factors["face_x"]),
            "eye_corr_exemplar": corr(centred(ro["eye_size"]), centred(factors["eye_scale"])),
            "aspect_corr_exemplar": corr(centred(ro["face_aspect"]), centred(factors["aspect_scale"])),
            "eye_corr_exemplar_size": corr(centred(ro["eye_size"]), centred(factors["eye_size"])),
            "read_eye": float(ro["eye_size"].mean()), "d_eye": float((ro["eye_size"] - rc["eye_size"]).mean()),
            "read_aspect": float(ro["face_aspect"].mean()),
            "d_aspect": float((ro["face_aspect"] - rc["face_aspect"]).mean()),
            "bg_dist": float((corners(out) - corners(exemplar)).norm(dim=1).mean()),
            "mean_dist": float(((out - exemplar).mean((2, 3)) / 2).norm(dim=1).mean()),
            "bg_dist_content": float((corners(out) - corners(content)).norm(dim=1).mean()),
        }


def save_grid(path: Path, contents: torch.Tensor, exemplars: torch.Tensor, outputs: torch.Tensor, n_e: int,
              rows: list[int], cols: int = 8) -> None:
    """First row: a blank and the exemplars; then per content: the content and its outputs; 3x nearest."""
    from torchvision.utils import save_image

    blank = torch.ones_like(contents[:1])
    tiles = [blank, exemplars[:cols]]
    for i in rows:
        tiles += [contents[i:i + 1], outputs[i * n_e:i * n_e + cols]]
    images = torch.cat(tiles) * 0.5 + 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(F.interpolate(images, scale_factor=3, mode="nearest"), str(path), nrow=cols + 1, padding=2)


def evaluate(paths: dict[str, Path], args, out: Path, timings: dict) -> dict:
    t0 = time.perf_counter()
    ev = Evaluator(paths, args)
    rows: dict[str, dict] = {}
    grids = out / "samples"
    n_half = len(ev.content) // 2
    show = list(range(min(4, n_half))) + list(range(n_half, min(n_half + 4, len(ev.content))))
    latent, e, content, exemplar, factors, n_c, n_e = ev.grid_inputs("table")
    read_content = ev.read(content)
    outputs = {
        f"DualStyleGAN (w_s={args.w_structure:g})": ev.dualstylegan(latent, e, args.w_structure),
        "Stage II product": ev.dualstylegan(latent, e, args.w_structure, ev.stage2),
        "Stage I (initial path)": ev.dualstylegan(latent, e, args.w_structure, ev.stage1),
        "layer swap (g')": ev.layer_swap(latent, e),
        "g'(content)": ev.finetuned(latent),
        "content only": content,
        "exemplar itself": exemplar,
    }
    for name, images in outputs.items():
        rows[name] = ev.score(images, content, exemplar, factors, n_c, n_e, read_content)
        if name not in ("content only", "exemplar itself", "Stage I (initial path)"):
            slug = name.split(" (")[0].replace(" ", "_").replace("'", "p").replace("(", "").replace(")", "")
            save_grid(grids / f"{slug}.png", ev.content_images, ev.exemplars["table"][0], images, n_e, show)
    u_latent, u_e, u_content, u_exemplar, u_factors, _, _ = ev.grid_inputs("unseen")
    unseen = ev.dualstylegan(u_latent, u_e, args.w_structure)
    rows[f"DualStyleGAN (w_s={args.w_structure:g}, unseen, e=E(S))"] = ev.score(
        unseen, u_content, u_exemplar, u_factors, n_c, n_e, read_content)
    save_grid(grids / "DualStyleGAN_unseen.png", ev.content_images, ev.exemplars["unseen"][0], unseen, n_e, show)
    rows["layer swap (g', unseen)"] = ev.score(ev.layer_swap(u_latent, u_e), u_content, u_exemplar, u_factors,
                                               n_c, n_e, read_content)

    sweep, eyes, sweep_images = [], [], []
    for ws in args.sweep:
        images = ev.dualstylegan(latent, e, ws)
        row = ev.score(images, content, exemplar, factors, n_c, n_e, read_content)
        sweep.append({"w_structure": ws, **row})
        eyes.append(ev.read(images)["eye_size"])
        sweep_images.append(images)
    eyes = torch.stack(eyes)  # [n_sweep, N]
    weights = torch.tensor(args.sweep)
    pair_rho = [spearman(weights, eyes[:, k]) for k in range(eyes.shape[1])]
    sweep_summary = {"spearman_mean_eye": spearman(weights, eyes.mean(1)),
                     "pairs_spearman_mean": sum(pair_rho) / len(pair_rho),
                     "pairs_increasing_fraction": float(((eyes[-1] - eyes[0]) > 0).float().mean()),
                     "spearman_mean_aspect": spearman(weights, torch.tensor([r["read_aspect"] for r in sweep]))}
    # the sweep grid: per shown pair, content | exemplar | outputs over the sweep
    from torchvision.utils import save_image

    pairs = [(i, j) for i, j in zip(show, range(len(show)))]
    tiles = []
    for i, j in pairs:
        k = i * n_e + j
        tiles += [ev.content_images[i:i + 1], ev.exemplars["table"][0][j:j + 1], *[s[k:k + 1] for s in sweep_images]]
    save_image(F.interpolate(torch.cat(tiles) * 0.5 + 0.5, scale_factor=3, mode="nearest"), str(grids / "sweep.png"),
               nrow=2 + len(sweep_images), padding=2)
    timings["evaluation"] = time.perf_counter() - t0
    return {"rows": rows, "sweep": sweep, "sweep_summary": sweep_summary, "reader_r2": ev.reader_r2,
            "res_index": ev.res_index, "n_latent": ev.n_latent, "n_content": n_c, "n_exemplars": n_e,
            "exemplar_eye_scale_mean": float(ev.exemplars["table"][1]["eye_scale"].mean()),
            "kimg": {k: _kimg(paths[k]) for k in ("parent", "finetuned", "structure", "style")},
            "destylization": StyleCodes.load(paths["codes"]).meta}


def _kimg(path: Path):
    cfg = path.parent / "config.yaml"
    if not cfg.is_file():
        return None
    import yaml

    return (yaml.safe_load(cfg.read_text()).get("model") or {}).get("total_kimg")


# ---------------------------------------------------------------------------------------------- report
def report(results: dict) -> str:
    out = [f"{results['n_content']} contents (half random z, half E(plain toy face)) x {results['n_exemplars']} "
           f"exemplars; W+ {results['n_latent']} rows, structure rows 0..{results['res_index']}; kimg "
           + ", ".join(f"{k} {v}" for k, v in results["kimg"].items()) + "."]
    heads = ["row", "keep corr", "keep R2", "fx~content", "fx~ex", "eye~ex", "asp~ex", "read eye", "d_eye",
             "d_aspect", "bg dist", "mean dist", "bg->content"]
    keys = ["keep_corr", "keep_r2", "face_x_corr_content", "face_x_corr_exemplar", "eye_corr_exemplar",
            "aspect_corr_exemplar", "read_eye", "d_eye", "d_aspect", "bg_dist", "mean_dist", "bg_dist_content"]
    out.append(table(heads, [[name, *[r[k] for k in keys]] for name, r in results["rows"].items()]))
    out.append("")
    out.append("Structure-weight sweep (DualStyleGAN, colour rows 1, exemplars of the table):")
    out.append(table(["w_structure", "read eye", "d_eye", "eye~ex", "asp~ex", "d_aspect", "keep corr", "bg dist"],
                     [[s["w_structure"], s["read_eye"], s["d_eye"], s["eye_corr_exemplar"],
                       s["aspect_corr_exemplar"], s["d_aspect"], s["keep_corr"], s["bg_dist"]]
                      for s in results["sweep"]]))
    sm = results["sweep_summary"]
    out.append(f"monotonicity: Spearman(w_structure, mean read eye) {fmt(sm['spearman_mean_eye'])}; mean per-pair "
               f"Spearman {fmt(sm['pairs_spearman_mean'])}; pairs with eye(w=1) > eye(w=0) "
               f"{fmt(sm['pairs_increasing_fraction'])}; Spearman(w_structure, mean read aspect) "
               f"{fmt(sm['spearman_mean_aspect'])}")
    out.append("")
    for name, r2s in results["reader_r2"].items():
        out.append(f"reader R2 on held-out {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in r2s.items()))
    out.append(f"exemplars' mean eye_scale {results['exemplar_eye_scale_mean']:.2f}. keep corr / R2: corr / R2 "
               f"of the read {', '.join(KEEP)} of the output vs of g(content); fx~content / fx~ex: read face_x vs "
               "the content's read / the exemplar's true one; eye~ex / asp~ex: per-content centred corr of read "
               "eye_size / face_aspect with the exemplar's multiplier; d_*: read output - read content; bg / mean "
               "dist: RGB distance to the exemplar's corners / image mean; bg->content: corners vs the content's.")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    p.add_argument("--parent", default=None, help="content generator.pt (with D; default: train the demo)")
    p.add_argument("--encoder", default=None, help="W+ encoder.pt of the parent (default: train one)")
    p.add_argument("--demo-kimg", type=float, default=16.0, help="the content generator (the demo's 16)")
    p.add_argument("--encoder-kimg", type=float, default=4.0, help="the encoder (configs/idinvert/toy.yaml: 16)")
    p.add_argument("--n-styles", type=int, default=100, help="toy style exemplars (Stage I and III data)")
    p.add_argument("--finetune-kimg", type=float, default=1.0, help="Stage I prerequisite: g fine-tuned on them")
    p.add_argument("--destylize-steps", type=int, default=20, help="destylization steps per image (official 300)")
    p.add_argument("--destylize-batch", type=int, default=25)
    p.add_argument("--structure-kimg", type=float, default=2.0, help="Stage II (toy_structure.yaml: 4)")
    p.add_argument("--style-kimg", type=float, default=1.0, help="Stage III (toy_style.yaml: 2)")
    p.add_argument("--batch", type=int, default=8, help="batch of every training step")
    p.add_argument("--train-only", action="store_true", help="stop after the pipeline's products are written")
    p.add_argument("--n-content", type=int, default=32, help="contents (half random z, half inverted faces)")
    p.add_argument("--n-exemplars", type=int, default=16, help="exemplars of the table (and as many unseen)")
    p.add_argument("--w-structure", type=float, default=0.75, help="structure weight of the main row (official 0.75)")
    p.add_argument("--sweep", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--n-reader", type=int, default=3072, help="faces and as many styles fitting the reader")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (also of the subprocesses)")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    out = (args.out or Path(tempfile.mkdtemp(prefix="dualstylegan_toy-"))).resolve()
    if out.is_relative_to(ROOT.resolve()):
        raise SystemExit(f"--out {out} is inside the repository; write outputs elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    paths = pipeline(out, args, timings)
    if args.train_only:
        print("products: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
        return {}
    results = evaluate(paths, args, out, timings)
    timings["total"] = time.perf_counter() - start
    stored = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}
    step_seconds = {k: v for k, v in {**stored, **timings}.items() if k != "total"}
    step_seconds["sum"] = sum(step_seconds.values())
    results.update(args={k: str(v) for k, v in vars(args).items()}, paths={k: str(v) for k, v in paths.items()},
                   timings=timings, step_seconds=step_seconds)
    text = report(results)
    print(text)
    print("wall seconds (this run): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print("wall seconds per step (as first run, from timings.json): "
          + ", ".join(f"{k} {v:.0f}" for k, v in step_seconds.items()))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "table.txt").write_text(text + "\n")
    print(f"results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
