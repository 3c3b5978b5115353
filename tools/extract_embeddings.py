#!/usr/bin/env python
"""Shim for ``vidclip extract``: the parser and printing live in vidclip/cli/extract.py."""
from vidclip.cli.extract import main

if __name__ == "__main__":
    from vidclip.cli.common import exit_on_expected_errors

    raise SystemExit(exit_on_expected_errors(main))  # expected faults: one line, exit status 2
