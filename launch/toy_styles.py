"""``python -m launch.toy_styles --out DIR [--n 100] [--resolution 32] [--seed 0]``: write the toy style
exemplars (``datamodules.toy.write_toy_style_folder``: toy faces with bigger eyes, another face aspect and a
cartoon palette, and their factors in ``factors.json``), the style set of the offline DualStyleGAN pipeline
(docs/methods/dualstylegan.md, "Pipeline")."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.toy_styles", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument("--n", type=int, default=100, help="number of exemplars")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1 or args.resolution < 8:
        print("error: --n must be >= 1 and --resolution >= 8", file=sys.stderr)
        return 2
    from datamodules.toy import write_toy_style_folder

    path = write_toy_style_folder(args.out, args.n, args.resolution, args.seed)
    print(f"wrote {args.n} toy style exemplars to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
