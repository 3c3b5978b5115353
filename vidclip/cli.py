"""``vidclip <subcommand>``: the same entry points as the scripts in tools/, with the same flags."""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

# subcommand -> (module, help). Each module exposes ``main(argv) -> int``.
SUBCOMMANDS = {
    "train": ("vidclip.engine.train", "train a model (works under accelerate launch)"),
    "eval": ("vidclip.engine.evaluate", "retrieval evaluation, writes metrics.json"),
    "extract": ("vidclip.engine.extract", "offline video embeddings into sharded safetensors"),
    "search": ("vidclip.engine.search", "text-to-video search over extracted embeddings"),
    "prepare-data": ("vidclip.data.prepare", "convert MSR-VTT / MSVD / DiDeMo annotations to unified JSONL"),
    "make-synthetic": ("vidclip.data.synthetic", "write the built-in synthetic video-text dataset"),
    "demo": ("vidclip.engine.demo", "the end-to-end demo on the synthetic dataset"),
}


def _usage() -> str:
    lines = ["usage: vidclip <subcommand> [args...]", "", "subcommands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"vidclip: unknown subcommand '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
