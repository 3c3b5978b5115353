#!/usr/bin/env python
"""Shim for ``vidclip extract``: the parser and printing live in vidclip/cli/extract.py."""
from vidclip.cli.extract import main

if __name__ == "__main__":
    raise SystemExit(main())
