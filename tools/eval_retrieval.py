#!/usr/bin/env python
"""Shim for ``vidclip eval``: the parser and printing live in vidclip/cli/eval.py."""
from vidclip.cli.eval import main

if __name__ == "__main__":
    raise SystemExit(main())
