#!/usr/bin/env python
"""Thin entry point: see `vidclip.engine.extract` (also `vidclip extract`)."""
import sys

from vidclip.engine.extract import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
