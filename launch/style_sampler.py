"""``python -m launch.style_sampler --codes codes.pt --network G.pt --out sampler.pt``: train DualStyleGAN's
sampling network N on a code table's extrinsic codes (``models.style_sampler``; docs/methods/dualstylegan.md,
"Sampling network"), for random styles: ``python generate.py --network G.pt --style random:8 --sampler
sampler.pt``."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.style_sampler", description=__doc__.splitlines()[0])
    parser.add_argument("--codes", required=True, help="the code table (models.style_codes file)")
    parser.add_argument("--network", default=None, help="the DualStyleGAN generator (for its res_index)")
    parser.add_argument("--res-index", type=int, default=None, help="the last structure row (instead of --network)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--sigma", type=float, default=0.05, help="jitter of the repeated codes (0.05)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 500000 / data points (the reference)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    from models.style_codes import StyleCodes, StyleCodesError
    from models.style_sampler import train_style_sampler

    try:
        table = StyleCodes.load(args.codes)
        if args.res_index is None:
            if args.network is None:
                raise ValueError("give --network (the DualStyleGAN generator) or --res-index")
            from models import dualstylegan as dsg
            try:
                res_index = dsg.load(args.network).res_index
            except Exception:  # noqa: BLE001 - an official file: the same reader as generate.py
                res_index = dsg.load_official(args.network).res_index
        else:
            res_index = args.res_index
        if not 0 <= res_index < table.n_latent - 1:
            raise ValueError(f"res_index {res_index} does not split {table.n_latent} W+ rows")
    except (FileNotFoundError, StyleCodesError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bar = tqdm(desc="IMLE epochs", unit="epoch")
    model, losses = train_style_sampler(table.extrinsic, res_index, sigma=args.sigma, epochs=args.epochs,
                                        seed=args.seed, progress=lambda epoch, loss: bar.update(1))
    bar.close()
    model.save(args.out)
    print(f"wrote {args.out}: final regression MSE structure {losses['structure'][-1]:.4g}, "
          f"colour {losses['colour'][-1]:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
