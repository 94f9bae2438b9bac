"""Throughput of the evaluation layer (docs/metrics.md). Run by hand::

    python bench/metrics.py [--num 64] [--res 256] [--batch 16] [--device cpu|cuda] [--lpips-net alex]

Prints images/second for

* FID feature extraction, ours (NVIDIA quantization + clean-fid's PIL-bicubic resize in a thread pool +
  extractor) vs clean-fid's own ``get_model_features`` (``gen=`` path: per-image serial resize) on the
  same generated images, and vs clean-fid's folder path (PNG decode + resize, ``num_workers=0``);
* intra-cluster LPIPS, ours (batched pairs) vs a per-pair loop of single forwards (CDC's reference loop).

The extractor is clean-fid's Inception when ``inception-2015-12-05`` is in the asset cache, otherwise a
random-weight torchvision Inception-v3 trunk of the same cost (reported as such).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics.features import FeatureExtractor, custom_extractor, inception_extractor, quantize  # noqa: E402
from metrics.lpips_family import LPIPSDistance, intra_cluster_lpips, load_lpips  # noqa: E402
from metrics.streams import generated_stats  # noqa: E402
from models.sampler import Sampler  # noqa: E402


class InceptionCostStandIn(torch.nn.Module):
    """torchvision Inception-v3 trunk with random weights: pool features [B, 2048] of 299x299 inputs."""

    def __init__(self):
        super().__init__()
        import torchvision

        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        net.fc = torch.nn.Identity()
        self.net = net.eval()

    def forward(self, x):
        return self.net((x - 128) / 128)


def extractor(device) -> tuple[FeatureExtractor, str]:
    try:
        return inception_extractor(device=device), "clean-fid Inception (asset)"
    except FileNotFoundError:
        return custom_extractor(InceptionCostStandIn(), "inception-standin", device=device), \
            "random torchvision Inception-v3 (asset missing)"


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_fid(args, rows):
    from cleanfid import fid as cleanfid

    device = torch.device(args.device)
    ex, ex_name = extractor(device)
    rs = np.random.RandomState(0)
    images = torch.from_numpy(rs.randint(0, 256, (args.num, 3, args.res, args.res), dtype=np.uint8))
    sampler = Sampler(render=lambda idx, seed: images[list(idx)].float() / 127.5 - 1.0)

    t, _ = timed(lambda: generated_stats(sampler, ex, args.num, 0, args.batch, show_progress=False))
    rows.append(("FID features: ours (threaded clean resize)", args.num / t, ex_name))

    state = {"i": 0}

    def gen(z):
        s = state["i"]
        state["i"] += z.shape[0]
        return quantize(images[s:s + z.shape[0]].float() / 127.5 - 1).float()

    t, _ = timed(lambda: cleanfid.get_model_features(gen, ex.net, mode="clean", z_dim=8, num_gen=args.num,
                                                     batch_size=args.batch, device=device, verbose=False))
    rows.append(("FID features: clean-fid gen= (serial resize)", args.num / t, ex_name))

    with tempfile.TemporaryDirectory() as folder:
        for i, img in enumerate(images):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(f"{folder}/{i:05d}.png")
        t, _ = timed(lambda: cleanfid.get_folder_features(folder, ex.net, num_workers=0, batch_size=args.batch,
                                                          device=device, mode="clean", verbose=False))
    rows.append(("FID features: clean-fid folder (decode+resize)", args.num / t, ex_name))

    from metrics.features import make_resize

    resize = make_resize("clean")
    t, _ = timed(lambda: [resize(images[s:s + args.batch]) for s in range(0, args.num, args.batch)])
    rows.append(("clean resize only: ours (thread pool)", args.num / t, f"{args.res}px -> 299"))
    from cleanfid.resize import build_resizer

    serial = build_resizer("clean")
    t, _ = timed(lambda: [serial(img.permute(1, 2, 0).numpy()) for img in images])
    rows.append(("clean resize only: clean-fid (serial)", args.num / t, f"{args.res}px -> 299"))


def bench_intra_lpips(args, rows):
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, name, sha = load_lpips(args.lpips_net, trunk=None, device=device)
    dist = LPIPSDistance(model, name, sha, resolution=None, batch_size=args.batch)
    rs = np.random.RandomState(1)
    n, k, res = args.lpips_num, 5, args.lpips_res
    images = torch.from_numpy(rs.randint(0, 256, (n, 3, res, res), dtype=np.uint8))
    centers = torch.from_numpy(rs.randint(0, 256, (k, 3, res, res), dtype=np.uint8))
    t, result = timed(lambda: intra_cluster_lpips(dist, images, centers, cluster_size=50, seed=0))
    pairs = sum(s * (s - 1) // 2 for s in (min(c, 50) for c in result.cluster_sizes))
    rows.append(("intra-LPIPS: ours (batched)", n / t, f"{name} {res}px, {n} imgs, {k} centers, {pairs} pairs"))

    def loop():
        x = images.to(device).float() / 127.5 - 1
        c = centers.to(device).float() / 127.5 - 1
        with torch.no_grad():
            assign = [int(np.argmin([float(model(x[i:i + 1], c[j:j + 1])) for j in range(k)])) for i in range(n)]
            rng = np.random.RandomState(0)
            for cl in range(k):
                m = rng.permutation(np.flatnonzero(np.array(assign) == cl))[:50]
                [float(model(x[m[i]:m[i] + 1], x[m[j]:m[j] + 1])) for i in range(len(m)) for j in range(i + 1, len(m))]

    t, _ = timed(loop)
    rows.append(("intra-LPIPS: per-pair loop (CDC style)", n / t, f"{name} {res}px"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lpips-net", default="alex")
    parser.add_argument("--lpips-num", type=int, default=60)
    parser.add_argument("--lpips-res", type=int, default=128)
    parser.add_argument("--skip-fid", action="store_true")
    args = parser.parse_args()
    rows: list[tuple[str, float, str]] = []
    if not args.skip_fid:
        bench_fid(args, rows)
    bench_intra_lpips(args, rows)
    print(f"\ndevice: {args.device}, torch threads: {torch.get_num_threads()}")
    print(f"{'what':<48} {'images/s':>10}  notes")
    for what, ips, note in rows:
        print(f"{what:<48} {ips:>10.1f}  {note}")


if __name__ == "__main__":
    main()
