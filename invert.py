"""Invert real images into W+ codes of a generator: ``python invert.py --help`` (launch/invert.py)."""
import sys

from launch.invert import main

if __name__ == "__main__":
    sys.exit(main())
