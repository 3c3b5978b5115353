#!/usr/bin/env python
"""Thin entry point: see `vidclip.engine.search` (also `vidclip search`)."""
import sys

from vidclip.engine.search import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
