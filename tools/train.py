#!/usr/bin/env python
"""Shim for ``vidclip train``: the parser and printing live in vidclip/cli/train.py."""
from vidclip.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
