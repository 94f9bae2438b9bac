"""Side-by-side timing of our StyleGAN2 backbone against the reference implementations
(docs/methods/stylegan2.md, "Fast paths").

The references are imported at run time from checkouts you point to; nothing of theirs lives in this
repository. A reference that is not given is skipped with a message.

    python bench/compare_reference.py --rosinality ~/src/stylegan2-pytorch --ada ~/src/stylegan2-ada-pytorch
    python bench/compare_reference.py --rosinality DIR --rows g_infer --sizes 64 --pairs 7

Both networks of a row get the same weights (rosinality: the same state dict; ADA: converted with
``models.checkpoint_formats.convert.to_nvidia_state_dict``) and the same inputs with the stored noise, so the
``maxdiff`` column is the largest absolute difference of the outputs. Timings are interleaved: each pair
runs ours and theirs back to back (alternating which goes first), and the table reports the median over the
pairs of ``ours / theirs`` with its min-max, so a loaded machine slows both sides of a pair alike.
On CPU the references run their own pure-PyTorch fallbacks: rosinality's ``op`` package compiles a CUDA
extension at import, which is skipped here (``torch.utils.cpp_extension.load`` is stubbed while it is
imported, so its CPU branches are used); ADA falls back to its reference ops by itself.

``--ours DIR`` imports our backbone from another StyleShift checkout (e.g. an export of an older revision)
for before/after tables; ``--baseline DIR`` times ours directly against such a checkout (rows ``baseline``,
same weights), which isolates one change from the references' own run-to-run spread.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]

#: (reference, kind, size, batch) of the default table
DEFAULT_ROWS = [
    ("rosinality", "g_infer", 64, 1), ("rosinality", "g_infer", 64, 8),
    ("rosinality", "g_infer", 256, 1), ("rosinality", "g_infer", 256, 4),
    ("rosinality", "g_train", 64, 1), ("rosinality", "g_train", 64, 8), ("rosinality", "g_train", 256, 2),
    ("rosinality", "d_train", 64, 4), ("rosinality", "d_train", 256, 2),
    ("rosinality", "iteration", 64, 4),
    ("ada", "g_infer", 64, 8), ("ada", "g_infer", 256, 4),
    ("ada", "g_train", 64, 8), ("ada", "g_train", 256, 2),
    ("ada", "d_train", 64, 4),
]
#: rows of ``--baseline`` (ours against another checkout of ours)
BASELINE_ROWS = [("baseline", kind, size, batch) for _, kind, size, batch in DEFAULT_ROWS[:10]] + \
    [("baseline", "g_train", 256, 2)]


# ------------------------------------------------------------------------------------------------ imports
def import_ours(root: Path):
    sys.path.insert(0, str(root))
    try:
        for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
            del sys.modules[name]
        mod = importlib.import_module("models.stylegan2")
        conv = importlib.import_module("models.checkpoint_formats.convert")
    finally:
        sys.path.remove(str(root))
    return mod, conv


@contextlib.contextmanager
def _no_extension_build():
    """Make ``torch.utils.cpp_extension.load`` return None while a reference package is imported."""
    import torch.utils.cpp_extension as ext
    saved = ext.load
    ext.load = lambda *a, **k: None
    try:
        yield
    finally:
        ext.load = saved


def import_rosinality(root: Path):
    sys.path.insert(0, str(root))
    try:
        if torch.cuda.is_available():
            return importlib.import_module("model")
        with _no_extension_build():
            return importlib.import_module("model")
    finally:
        sys.path.remove(str(root))


def import_ada(root: Path):
    sys.path.insert(0, str(root))
    return importlib.import_module("training.networks")


# ------------------------------------------------------------------------------------------------ networks
class Pair:
    """Our network and a reference network with the same weights, behind one calling convention."""

    def __init__(self, ours, conv, ref_name: str, ref_mod, size: int, device: torch.device):
        torch.manual_seed(0)
        self.size, self.device = size, device
        self.g = ours.Generator(size).to(device)
        self.d = ours.Discriminator(size).to(device)
        with torch.no_grad():  # non-trivial noise strengths and biases
            for p in list(self.g.parameters()) + list(self.d.parameters()):
                if p.ndim <= 1 or p.shape[-1] == 1:
                    p.add_(0.05 * torch.randn_like(p))
        self.ref_name = ref_name
        if ref_name == "baseline":  # another checkout of ours: same classes, same state dicts
            self.rg = ref_mod.Generator(size).to(device)
            self.rd = ref_mod.Discriminator(size).to(device)
            self.rg.load_state_dict(self.g.state_dict(), strict=True)
            self.rd.load_state_dict(self.d.state_dict(), strict=True)
        elif ref_name == "rosinality":
            self.rg = ref_mod.Generator(size, 512, 8).to(device)
            self.rd = ref_mod.Discriminator(size).to(device)
            self.rg.load_state_dict(self.g.state_dict(), strict=True)
            self.rd.load_state_dict(self.d.state_dict(), strict=True)
        else:
            self.rg = ref_mod.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=size, img_channels=3,
                                        mapping_kwargs=dict(num_layers=8)).to(device)
            self.rd = ref_mod.Discriminator(c_dim=0, img_resolution=size, img_channels=3).to(device)
            w_avg = torch.zeros(512)
            self.rg.load_state_dict(conv.to_nvidia_state_dict(self.g.state_dict(), "G", w_avg), strict=True)
            self.rd.load_state_dict(conv.to_nvidia_state_dict(self.d.state_dict(), "D"), strict=True)

    def gen(self, which: str, z: torch.Tensor) -> torch.Tensor:
        if which == "ours":
            return self.g([z], noise_mode="const")[0]
        if self.ref_name == "baseline":
            return self.rg([z], noise_mode="const")[0]
        if self.ref_name == "rosinality":
            return self.rg([z], randomize_noise=False)[0]
        return self.rg(z, z.new_zeros(z.shape[0], 0), noise_mode="const")

    def disc(self, which: str, x: torch.Tensor) -> torch.Tensor:
        if which == "ours" or self.ref_name == "baseline":
            return (self.d if which == "ours" else self.rd)(x)
        if self.ref_name == "rosinality":
            return self.rd(x)
        return self.rd(x, x.new_zeros(x.shape[0], 0))

    def nets(self, which: str):
        return (self.g, self.d) if which == "ours" else (self.rg, self.rd)


def make_step(pair: Pair, kind: str, batch: int) -> Callable[[str], torch.Tensor]:
    """``step(which) -> output`` for row ``kind``; the output is compared across implementations."""
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(batch, 512, generator=gen).to(pair.device)
    real = (torch.rand(batch, 3, pair.size, pair.size, generator=gen) * 2 - 1).to(pair.device)

    def g_infer(which):
        g, _ = pair.nets(which)
        g.eval()
        with torch.no_grad():
            return pair.gen(which, z)

    def g_train(which):
        g, _ = pair.nets(which)
        g.train()
        g.zero_grad(set_to_none=True)
        img = pair.gen(which, z)
        img.square().mean().backward()
        return img.detach()

    def d_train(which):
        _, d = pair.nets(which)
        d.zero_grad(set_to_none=True)
        logits = pair.disc(which, real)
        F.softplus(logits).mean().backward()
        return logits.detach()

    def iteration(which):  # G main + D main + R1 (lazy interval 1)
        g, d = pair.nets(which)
        g.train()
        g.zero_grad(set_to_none=True)
        d.zero_grad(set_to_none=True)
        fake = pair.gen(which, z)
        F.softplus(-pair.disc(which, fake)).mean().backward()
        x = real.detach().requires_grad_(True)
        logits_real = pair.disc(which, x)
        (grad,) = torch.autograd.grad(logits_real.sum(), x, create_graph=True)
        loss_d = (F.softplus(pair.disc(which, fake.detach())).mean() + F.softplus(-logits_real).mean()
                  + 5.0 * grad.square().sum([1, 2, 3]).mean())
        loss_d.backward()
        return logits_real.detach()

    return {"g_infer": g_infer, "g_train": g_train, "d_train": d_train, "iteration": iteration}[kind]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step: Callable[[str], torch.Tensor], pairs: int, device: torch.device) -> dict:
    """Interleaved timing: per pair ours and theirs back to back, alternating the order."""
    a, b = step("ours"), step("ref")  # warm-up, and the outputs to compare
    maxdiff = (a.float() - b.float()).abs().max().item()
    t_ours, t_ref, ratios = [], [], []
    for k in range(pairs):
        times = {}
        for which in (("ours", "ref") if k % 2 == 0 else ("ref", "ours")):
            _sync(device)
            t0 = time.perf_counter()
            step(which)
            _sync(device)
            times[which] = (time.perf_counter() - t0) * 1e3
        t_ours.append(times["ours"])
        t_ref.append(times["ref"])
        ratios.append(times["ours"] / times["ref"])
    return dict(ours=statistics.median(t_ours), ref=statistics.median(t_ref), ratio=statistics.median(ratios),
                lo=min(ratios), hi=max(ratios), maxdiff=maxdiff)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rosinality", type=Path, default=None, help="checkout of rosinality/stylegan2-pytorch")
    ap.add_argument("--ada", type=Path, default=None, help="checkout of NVlabs/stylegan2-ada-pytorch")
    ap.add_argument("--ours", type=Path, default=REPO, help="StyleShift checkout to import our backbone from")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another StyleShift checkout to time ours against directly (before/after of a change)")
    ap.add_argument("--rows", nargs="+", default=None, choices=["g_infer", "g_train", "d_train", "iteration"],
                    help="only these kinds of rows")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="only these resolutions")
    ap.add_argument("--pairs", type=int, default=5, help="interleaved measurement pairs per row")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    refs = {}
    if args.baseline is not None:
        refs["baseline"] = import_ours(args.baseline.resolve())[0]
    ours, conv = import_ours(args.ours.resolve())
    for name, path, loader in (("rosinality", args.rosinality, import_rosinality), ("ada", args.ada, import_ada)):
        if path is None:
            print(f"# {name}: skipped (pass --{name} DIR, a checkout of the reference repository)")
            continue
        refs[name] = loader(path.resolve())
    rows = [r for r in DEFAULT_ROWS + BASELINE_ROWS if r[0] in refs and (args.rows is None or r[1] in args.rows)
            and (args.sizes is None or r[2] in args.sizes)]
    where = f"cpu x{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"# ours from {args.ours}, torch {torch.__version__}, {where}, fp32, {args.pairs} interleaved pairs, "
          f"ratio = ours / theirs (median of per-pair ratios, min-max)")
    header = f"{'reference':<11}{'row':<10}{'size':>5}{'batch':>6} | {'ours ms':>9}{'ref ms':>9} | " \
             f"{'ratio':>6} {'min-max':>11} | {'maxdiff':>8}"
    print(header)
    print("-" * len(header))
    pairs: dict[tuple[str, int], Pair] = {}
    for ref_name, kind, size, batch in rows:
        key = (ref_name, size)
        if key not in pairs:
            pairs.clear()
            pairs[key] = Pair(ours, conv, ref_name, refs[ref_name], size, device)
        r = measure(make_step(pairs[key], kind, batch), args.pairs, device)
        print(f"{ref_name:<11}{kind:<10}{size:>5}{batch:>6} | {r['ours']:>9.1f}{r['ref']:>9.1f} | "
              f"{r['ratio']:>6.2f} {r['lo']:>5.2f}-{r['hi']:<5.2f} | {r['maxdiff']:>8.1e}", flush=True)


if __name__ == "__main__":
    main()
