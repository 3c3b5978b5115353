#!/usr/bin/env python
"""Thin entry point: see `vidclip.data.prepare` (also `vidclip prepare-data`)."""
import sys

from vidclip.data.prepare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
