#!/usr/bin/env python
"""Shim for ``vidclip prepare-data``: the parser and printing live in vidclip/cli/prepare_data.py."""
from vidclip.cli.prepare_data import main

if __name__ == "__main__":
    raise SystemExit(main())
