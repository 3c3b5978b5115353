"""``vidclip <subcommand>``: the command-line layer (argparse, printing, logging set-up), one module per subcommand.

Nothing else in ``vidclip`` imports this package; ``tools/*.py`` and the ``vidclip`` console script call it. Each
module exposes ``main(argv) -> int`` with the same flags as the matching script in ``tools/``.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module under vidclip.cli, help)
SUBCOMMANDS = {
    "train": ("train", "train a model (works under accelerate launch)"),
    "eval": ("eval", "retrieval evaluation, writes metrics.json"),
    "extract": ("extract", "offline video embeddings into sharded safetensors"),
    "search": ("search", "text-to-video search over extracted embeddings"),
    "prepare-data": ("prepare_data", "convert MSR-VTT / MSVD / DiDeMo / ActivityNet annotations to unified JSONL"),
    "make-synthetic": ("make_synthetic", "write the built-in synthetic video-text dataset"),
    "demo": ("demo", "the end-to-end demo on the synthetic dataset"),
}


def _usage() -> str:
    lines = ["usage: vidclip <subcommand> [args...]", "", "subcommands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "vidclip <subcommand> --help shows the flags of one subcommand"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to ``vidclip.cli.<module>.main(argv[1:])``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"vidclip: unknown subcommand '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{SUBCOMMANDS[name][0]}")
    from .common import exit_on_expected_errors

    return exit_on_expected_errors(lambda: module.main(rest))  # expected faults: one line, exit status 2


if __name__ == "__main__":
    sys.exit(main())
