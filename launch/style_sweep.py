"""``python -m launch.style_sweep``: how DualStyleGAN's structure weight trades content for style
(docs/methods/dualstylegan.md, "Inference"; the metrics: docs/metrics.md, "Style transfer")::

    python -m launch.style_sweep --network runs/<run>/generator.pt --styles a.png,b.png \\
        --structure 0,0.25,0.5,0.75,1 --n 64 --styles-dir /data/cartoon/images --csv sweep.csv

For every exemplar of ``--styles`` (file names, stems or rows of the code table ``--codes``, default the one the
export records) and every structure weight s of ``--structure``, ``--n`` random contents (image i from
``RandomState(seed + i)``, as every sampler) are rendered with w = [s] on the structure rows and ``--color`` on
the colour rows. Each row of the table holds, for those images:

* ``identity``: ``identity_similarity`` to the intrinsic rendering of the same latent (ArcFace cosine, higher =
  identity kept; ``--identity random`` is an offline stand-in);
* ``style_gram`` (or ``style_cx`` with ``--measure cx``): ``style_similarity`` to the exemplar image, read from
  ``--styles-dir`` (lower = closer; the column is left out without ``--styles-dir``);
* ``lpips_content``: ``lpips_align`` to the intrinsic rendering (lower = closer to the content).

The same metric runners as in training compute them (``metrics.suite.MetricSuite``), so the numbers are
those a run logs for the same protocol. The table is printed and written to ``--csv``.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from launch.generate import (GenerateError, load_style_codes, load_style_network, parse_styles, read_photo,
                             render_style, style_truncate)

CONTENT = "content"


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise GenerateError(f"{flag} {text!r}: comma-separated numbers, e.g. 0,0.25,0.5,0.75,1") from None
    if not values:
        raise GenerateError(f"{flag}: no values")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.style_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", required=True, help="DualStyleGAN export or official generator file")
    p.add_argument("--codes", default=None, help="code table (default: the one the export records)")
    p.add_argument("--styles", required=True, help="exemplars: comma-separated file names, stems or rows, or all")
    p.add_argument("--styles-dir", default=None, help="folder of the exemplar images (for the style column)")
    p.add_argument("--structure", default="0,0.25,0.5,0.75,1", help="structure weights (comma-separated)")
    p.add_argument("--color", type=float, default=1.0, help="weight of the colour rows (1)")
    p.add_argument("--n", type=int, default=64, help="contents per row of the table (64)")
    p.add_argument("--seed", type=int, default=0, help="first seed of the content stream (0)")
    p.add_argument("--trunc", type=float, default=1.0, help="truncation psi of the intrinsic code (1)")
    p.add_argument("--trunc-center", default="mean", choices=("mean", "zero"))
    p.add_argument("--identity", default="auto", help="ArcFace weights: auto (asset), a file, or random (stand-in)")
    p.add_argument("--vgg", default="auto", help="VGG19 weights: auto (asset), a file, or random (stand-in)")
    p.add_argument("--measure", default="gram", choices=("gram", "cx"), help="style distance (gram)")
    p.add_argument("--resolution", type=int, default=256, help="VGG input size of the style column (256)")
    p.add_argument("--lpips-net", default="vgg", choices=("alex", "vgg", "squeeze"))
    p.add_argument("--lpips-trunk", default="auto", help="auto (asset registry) or random (stand-in)")
    p.add_argument("--lpips-resolution", type=int, default=None,
                   help="resize to this before LPIPS (default: as rendered)")
    p.add_argument("--csv", default="style_sweep.csv", help="CSV file to write (style_sweep.csv)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def build_samplers(net, table, rows: Sequence[int], structure: Sequence[float], color: float, args,
                   device: torch.device) -> tuple[dict[str, Any], list[tuple[str, float, str]]]:
    """``content`` (the intrinsic rendering) and one :class:`models.sampler.StyleSampler` per (exemplar,
    structure weight); the second value lists ``(exemplar, weight, sampler name)`` in table order."""
    from models import dualstylegan as dsg
    from models.sampler import Sampler, StyleSampler, seeded_normal

    def latents(idx, seed):
        with torch.no_grad():
            w = net.model.generator.style(seeded_normal(idx, seed, net.style_dim).to(device))
        wplus = w[:, None].repeat(1, net.n_latent, 1)
        return style_truncate(net, wplus, args.trunc, args.trunc_center)

    def content(idx, seed):
        return render_style(net, latents(idx, seed), None, [0.0] * net.n_latent, "const", idx, use_res=False)

    samplers: dict[str, Any] = {CONTENT: Sampler(content, truncation=args.trunc)}
    order = []
    for row in rows:
        name = table.names[row]
        e = table.extrinsic[row].to(device)
        exemplar = None
        if args.styles_dir is not None:
            path = Path(args.styles_dir) / name
            if not path.is_file():
                raise GenerateError(f"--styles-dir: {path} not found (the code table names {name})")
            def exemplar(p=path, size=int(net.model.size)):
                return read_photo(p, size)[None]
        for s in structure:
            w = dsg.inference_weights(net.n_latent, net.res_index, structure=s, colour=color)

            def render(idx, seed, e=e, w=w):
                lat = latents(idx, seed)
                return render_style(net, lat, e.expand(lat.shape[0], -1, -1), w, "const", idx)

            key = f"style/{Path(name).stem}@s={s:g}"
            samplers[key] = StyleSampler(render, truncation=args.trunc, content=CONTENT, exemplar=name,
                                         exemplar_image=exemplar)
            order.append((name, float(s), key))
    return samplers, order


def sweep(args) -> list[dict[str, Any]]:
    """The table rows: ``style``, ``structure``, ``identity``, ``style_<measure>`` (with a style folder) and
    ``lpips_content``."""
    from metrics.specs import parse_spec
    from metrics.suite import MetricSuite

    if args.n < 1:
        raise GenerateError("--n must be at least 1")
    structure = parse_floats(args.structure, "--structure")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = load_style_network(args.network, device)
    table = load_style_codes(args.codes, net)
    rows = parse_styles(args.styles, table)
    samplers, order = build_samplers(net, table, rows, structure, args.color, args, device)
    names = [key for _, _, key in order]
    common = {"num_gen": args.n, "seed": args.seed, "samplers": names}
    specs = {"identity_similarity": parse_spec("identity_similarity", {**common, "identity": args.identity}),
             "lpips_align": parse_spec("lpips_align", {**common, "source": CONTENT, "net": args.lpips_net,
                                                       "trunk": args.lpips_trunk,
                                                       "resolution": args.lpips_resolution})}
    if args.styles_dir is not None:
        specs["style_similarity"] = parse_spec("style_similarity", {**common, "vgg": args.vgg, "measure": args.measure,
                                                                    "resolution": args.resolution})
    suite = MetricSuite(specs, device=device, batch_size=args.batch_size, show_progress=not args.quiet)
    values = suite.evaluate(samplers, None)
    by = {(v.metric, v.sampler): v.value for v in values}
    out = []
    for style, s, key in order:
        row: dict[str, Any] = {"style": style, "structure": s, "identity": by[("identity_similarity", key)]}
        if args.styles_dir is not None:
            row[f"style_{args.measure}"] = by[("style_similarity", key)]
        row["lpips_content"] = by[("lpips_align", key)]
        out.append(row)
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    cells = [[f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = sweep(args)
    except (GenerateError, FileNotFoundError, KeyError, ValueError) as err:
        if os.environ.get("STYLESHIFT_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print(f"wrote {write_csv(rows, args.csv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
