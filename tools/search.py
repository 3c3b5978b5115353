#!/usr/bin/env python
"""Shim for ``vidclip search``: the parser and printing live in vidclip/cli/search.py."""
from vidclip.cli.search import main

if __name__ == "__main__":
    raise SystemExit(main())
