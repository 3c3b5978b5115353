#!/usr/bin/env python
"""Thin entry point: see `vidclip.engine.evaluate` (also `vidclip eval`)."""
import sys

from vidclip.engine.evaluate import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
