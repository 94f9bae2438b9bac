"""Speed of In-Domain GAN Inversion: encoder training throughput and inversion time, fp32, random networks.

Two measurements per resolution, width and device:

* **train img/s**: one iteration of ``lightning_modules.idinvert.IDInvertModule`` - the E step (``G(E(x))``,
  pixel + VGG + adversarial loss, backward, Adam) then the D step (fresh reconstruction, logistic loss + R1
  every iteration, backward, Adam), each with the other network frozen and the batch mirrored as in
  ``training_step``; the iteration is run outside Lightning (``encoder_loss`` / ``discriminator_loss`` and the
  module's own optimizers), images per second of the median of ``--iters`` timed iterations after one
  warm-up;
* **invert s/img**: ``models.inversion.Inverter.invert`` with the ``in_domain`` preset (pixel + VGG +
  domain term, Adam lr 0.01) at batch 1 and 4, seconds per image for 100 steps. The time of a 0-step call
  (E's initial code, the target features, the final losses) and of a ``--inv-steps`` call are measured (after
  a warm-up call) and the 100-step time is ``t0 + 100 * (t_k - t0) / k``: every step does the same work, so
  timing a few of them gives the cost of 100 without running 100 on a slow CPU (``--inv-steps 100`` times the
  real thing).

Widths (each a consistent setting, as ``configs/idinvert/ffhq256.yaml`` and ``configs/idinvert/toy.yaml``):

* ``full``: StyleGAN2 config-f G and D (style_dim 512, 8 mapping layers, channel multiplier 2), encoder B
  at full width (stem 64, max 512 channels), VGG at 256 px (``perceptual_size`` 256, the official setting);
* ``toy``: the demo's small G and D (style_dim 64, 2 mapping layers, channels 64-64-32-16 and 16 above 32
  px), encoder B at toy width (stem 32, max 128), VGG at the images' own size.

The VGG is the seeded random stand-in (``weights=None``): the same architecture and cost as the Caffe VGG16.
Networks are new and random (``GeneratorSpec(resolution=R, ...)``); speed does not depend on the weights.

Defaults finish in a few minutes on a CPU: sizes 64 and 256, but on CPU the ``full`` width runs only up to
``--cpu-full-max`` px (64): a full-width 256 px E+D iteration is hundreds of GFLOPs per image and its
100-step inversion minutes per image. Skipped cases are listed under the table; ``--cpu-full-max 256``
runs them. On CUDA (when available) every case runs. ``--threads`` sets the CPU threads (1 by default).

    python bench/idinvert_speed.py                                    # defaults: 64 and 256 px, CPU (+CUDA)
    python bench/idinvert_speed.py --sizes 64 --widths full --iters 5 --inv-steps 20
    python bench/idinvert_speed.py --sizes 256 --cpu-full-max 256 --devices cpu --json OUT_DIR/speed.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_modules.idinvert import IDInvertModule  # noqa: E402
from models.frozen import trainable  # noqa: E402
from models.inversion import Inverter, settings_from  # noqa: E402

TOY_CHANNELS = {4: 64, 8: 64, 16: 32, 32: 16, 64: 16, 128: 16, 256: 16, 512: 16, 1024: 16}
WIDTHS = {
    "full": dict(generator=dict(style_dim=512, n_mlp=8, channel_multiplier=2),
                 encoder_widths=dict(stem_channels=64, max_channels=512), perceptual_size=256),
    "toy": dict(generator=dict(style_dim=64, n_mlp=2), encoder_widths=dict(stem_channels=32, max_channels=128),
                perceptual_size=None),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(width: str, size: int, device: torch.device) -> IDInvertModule:
    spec = dict(WIDTHS[width])
    generator = dict(spec.pop("generator"), resolution=size, init_seed=0)
    if width == "toy":
        generator["channels"] = {r: c for r, c in TOY_CHANNELS.items() if r <= size}
    torch.manual_seed(0)
    module = IDInvertModule(generator=generator, encoder="B", perceptual=None, seed=0, **spec)
    return module.to(device)


def train_iteration(module: IDInvertModule, opt_e, opt_d, x: torch.Tensor) -> None:
    """``training_step`` without Lightning: the E step, then the D step (plain backward, Adam)."""
    module.reseed()
    x_e, x_d = module.flip(x), module.flip(x)
    with trainable([module.encoder], [module.discriminator]):
        loss, _ = module.encoder_loss(x_e)
        opt_e.zero_grad(set_to_none=True)
        loss.backward()
        opt_e.step()
    with trainable([module.discriminator], [module.encoder]):
        loss, _ = module.discriminator_loss(x_d)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
    module.iteration += 1


def time_train(module: IDInvertModule, batch: int, iters: int, device: torch.device) -> float:
    """Images per second of one E+D iteration (median of ``iters`` after a warm-up)."""
    module.train()
    opt_e, opt_d = module.configure_optimizers()
    x = torch.rand(batch, 3, module.g.size, module.g.size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x = x.to(device)
    times = []
    for i in range(iters + 1):
        _sync(device)
        t0 = time.perf_counter()
        train_iteration(module, opt_e, opt_d, x)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def time_invert(module: IDInvertModule, batch: int, steps: int, device: torch.device) -> float:
    """Seconds per image of a 100-step ``in_domain`` inversion (``t0 + 100 (t_k - t0) / k``, see the docstring)."""
    module.eval()
    inverter = Inverter(module.g, module.encoder, module.vgg)
    x = torch.rand(batch, 3, module.g.size, module.g.size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    x = x.to(device)

    def run(k: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        inverter.invert(x, settings_from("in_domain", steps=k))
        _sync(device)
        return time.perf_counter() - t0

    run(1)  # warm-up
    t_zero, t_k = run(0), run(steps)
    per_step = max(t_k - t_zero, 0.0) / steps
    return (t_zero + 100 * per_step) / batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--widths", nargs="+", default=["toy", "full"], choices=sorted(WIDTHS))
    p.add_argument("--train-batch", type=int, default=4, help="batch of the E+D iteration (4)")
    p.add_argument("--invert-batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--iters", type=int, default=2, help="timed E+D iterations per case (after one warm-up)")
    p.add_argument("--inv-steps", type=int, default=3, help="timed inversion steps extrapolated to 100")
    p.add_argument("--cpu-full-max", type=int, default=64, help="largest size of the full width on CPU")
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if "cuda" in devices and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), fp32, devices {devices}"
          + (f" ({torch.cuda.get_device_name()})" if "cuda" in devices and torch.cuda.is_available() else ""))
    inv_cols = [f"inv s/img b{b}" for b in args.invert_batches]
    head = f"{'device':<6} {'size':>5} {'width':<5} {'E params':>9} {'train img/s':>12} " + " ".join(
        f"{c:>14}" for c in inv_cols) + f" {'case s':>7}"
    print(head)
    print("-" * len(head))
    rows, skipped = [], []
    start = time.perf_counter()
    for name in devices:
        if name == "cuda" and not torch.cuda.is_available():
            skipped.append("cuda: not available")
            continue
        device = torch.device(name)
        for size in args.sizes:
            for width in args.widths:
                if device.type == "cpu" and width == "full" and size > args.cpu_full_max:
                    skipped.append(f"cpu {size}px full width (> --cpu-full-max {args.cpu_full_max})")
                    continue
                t0 = time.perf_counter()
                module = build(width, size, device)
                row = {"device": name, "size": size, "width": width, "train_batch": args.train_batch,
                       "encoder_params": module.encoder.parameter_counts()["total"],
                       "train_img_per_s": time_train(module, args.train_batch, args.iters, device),
                       "invert_s_per_img": {b: time_invert(module, b, args.inv_steps, device)
                                            for b in args.invert_batches}}
                row["case_s"] = time.perf_counter() - t0
                rows.append(row)
                print(f"{name:<6} {size:>5} {width:<5} {row['encoder_params'] / 1e6:8.2f}M "
                      f"{row['train_img_per_s']:12.3f} "
                      + " ".join(f"{row['invert_s_per_img'][b]:14.3f}" for b in args.invert_batches)
                      + f" {row['case_s']:7.0f}", flush=True)
                del module
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print(f"train: batch {args.train_batch}, median of {args.iters} iteration(s); invert: in_domain preset, "
          f"100 steps extrapolated from {args.inv_steps} timed step(s); total {time.perf_counter() - start:.0f} s")
    for s in skipped:
        print(f"skipped: {s}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "skipped": skipped, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
