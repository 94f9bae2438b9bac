"""Benchmark of one StyleGAN-NADA training iteration (docs/methods/nada.md, "Memory and compute").

One iteration = [adaptive layer selection: a W+ SGD step at batch ``--selection-batch``] + two generator
forwards + the CLIP loss + backward + Adam step, exactly :meth:`NADAModule.nada_iteration`. Measured with and
without layer selection, for a tiny CLIP (3.4 M parameters, 64 px input) and a ViT-B/32-sized CLIP (random
weights, no download), on a random StyleGAN2 generator (FFHQ-256 architecture by default). Each case runs
in its own process so that peak memory is that case's: CPU = peak resident set size (``ru_maxrss``), CUDA =
``torch.cuda.max_memory_allocated``; "over idle" is the increase over the built, not yet run module (the
activations, gradients and Adam state of the iterations).

    python bench/nada.py                                   # 256 px, batch 2, both CLIPs, selection on/off
    python bench/nada.py --device cuda --batch 4 --iters 10

Keep fp32 on CPUs without native bf16 (bf16 convolutions are 10-100x slower there).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_CLIP = {"name": "StyleShift-Bench-Tiny-CLIP", "pretrained": None, "config": {
    "embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}}
VIT_B_32 = {"name": "ViT-B-32", "pretrained": None}  # the architecture of the OpenAI model, random weights
CLIPS = {"tiny": TINY_CLIP, "vit-b-32": VIT_B_32}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_case(args: dict, queue) -> None:
    """Build the module, warm up, time ``iters`` iterations; put a result row on ``queue``."""
    import torch

    from lightning_modules.nada import NADAModule

    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    module = NADAModule(generator={"resolution": args["resolution"], "channel_multiplier": args["channel_multiplier"]},
                        target_text="sketch", clip_models=[CLIPS[args["clip"]]],
                        templates=["a photo of a {}.", "a sketch of a {}."],
                        auto_layer_iters=1 if args["selection"] else 0, auto_layer_batch=args["selection_batch"],
                        auto_layer_k=None, seed=0).to(device)
    optimizer = module.configure_optimizers()
    z = torch.randn(args["batch"], module.z_dim, device=device, generator=torch.Generator(device).manual_seed(0))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    idle = _rss_mib()  # networks built, nothing run yet
    idle_cuda = torch.cuda.memory_allocated(device) / 2 ** 20 if device.type == "cuda" else 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    module.reseed()
    module.nada_iteration(z, optimizer)  # warm-up (also encodes the texts; Adam allocates its state)
    sync()
    times = []
    for i in range(args["iters"]):
        module.iteration = i + 1
        module.reseed()
        t0 = time.perf_counter()
        module.nada_iteration(z, optimizer)
        sync()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    row = {"clip": args["clip"], "selection": "on" if args["selection"] else "off", "batch": args["batch"],
           "s/iter": seconds, "images/s": args["batch"] / seconds}
    if device.type == "cuda":
        row["peak MiB"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        row["over idle MiB"] = row["peak MiB"] - idle_cuda
    else:
        row["peak MiB"] = _rss_mib()
        row["over idle MiB"] = row["peak MiB"] - idle
    queue.put(row)


def format_table(rows: list[dict]) -> str:
    columns = ["clip", "selection", "batch", "s/iter", "images/s", "peak MiB", "over idle MiB"]
    cells = [[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--channel-multiplier", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="main batch (README: 2)")
    parser.add_argument("--selection-batch", type=int, default=8, help="auto_layer_batch (README: 8)")
    parser.add_argument("--clips", nargs="+", choices=sorted(CLIPS), default=["tiny", "vit-b-32"])
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per case (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch_threads_default())
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda but CUDA is not available")
    from tqdm import tqdm

    cases = [dict(vars(args), clip=clip, selection=sel) for clip in args.clips for sel in (False, True)]
    ctx = mp.get_context("spawn")  # a fresh process per case: its own peak memory
    rows = []
    for case in tqdm(cases, desc="NADA iteration cases", unit="case"):
        queue = ctx.Queue()
        proc = ctx.Process(target=run_case, args=(case, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"case {case['clip']} selection={case['selection']} failed (exit {proc.exitcode})", file=sys.stderr)
            return 1
        rows.append(queue.get())
    print(f"\nNADA training iteration: {args.resolution} px generator (channel multiplier {args.channel_multiplier}), "
          f"batch {args.batch}, selection batch {args.selection_batch}, fp32, device {args.device}, "
          f"{args.threads} threads, median of {args.iters}")
    print(format_table(rows))
    return 0


def torch_threads_default() -> int:
    return max(1, min(os.cpu_count() or 1, 16))


if __name__ == "__main__":
    sys.exit(main())
