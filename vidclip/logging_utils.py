"""One logging set-up for the entry points in tools/ (the library itself only uses logging.getLogger)."""
import logging
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
