"""Render images of a generator for seeds or saved codes: ``python generate.py --help`` (launch/generate.py)."""
import sys

from launch.generate import main

if __name__ == "__main__":
    sys.exit(main())
