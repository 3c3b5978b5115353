#!/usr/bin/env python
"""Thin entry point: see `vidclip.engine.train` (also `vidclip train`)."""
import sys

from vidclip.engine.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
