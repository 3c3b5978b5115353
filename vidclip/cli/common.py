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
    # FAISS probes its CPU builds at import and logs each miss ("No module named 'faiss.swigfaiss_avx512'") at INFO:
    # expected, harmless, and read as errors by newcomers. Its warnings still show.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` / ``accelerate launch`` job (or a plain single process), from the environment."""
    return int(os.environ.get("RANK", "0")) == 0


def exit_on_expected_errors(body) -> int:
    """Run ``body()``; an expected fault (any ``VidclipError``) is one logged line and exit status 2, no traceback.

    Every such error names the file or key at fault and the way out; set ``VIDCLIP_TRACEBACK=1`` to see the stack.
    """
    from ..errors import VidclipError

    try:
        return int(body() or 0)
    except VidclipError as exc:
        if os.environ.get("VIDCLIP_TRACEBACK"):
            raise
        logging.getLogger("vidclip").error("%s: %s", type(exc).__name__, exc)
        return 2
