"""What every subcommand shares: console logging set-up (the library itself only calls ``logging.getLogger``)."""
from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: int = logging.INFO, main_process: bool = True) -> None:
    """Console logging for an entry point; non-main processes only report warnings and errors."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if main_process else logging.WARNING)


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` / ``accelerate launch`` job (or a plain single process), from the environment."""
    return int(os.environ.get("RANK", "0")) == 0
