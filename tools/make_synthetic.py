#!/usr/bin/env python
"""Thin entry point: see `vidclip.data.synthetic` (also `vidclip make-synthetic`)."""
import sys

from vidclip.data.synthetic import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
