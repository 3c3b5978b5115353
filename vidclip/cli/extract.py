"""``vidclip extract`` / ``tools/extract_embeddings.py --config C --videos DIR_OR_LIST --out DIR [--checkpoint P]
[--shard-size N] [--resume] [key=value ...]``; runs under ``accelerate launch`` / ``torchrun`` too.

See :mod:`vidclip.engine.extract` for the output layout.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from . import common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extract_embeddings", description="Offline video embeddings into sharded "
                                     "safetensors, resumable.")
    parser.add_argument("--config", required=True, help="experiment YAML (model + preprocessing)")
    parser.add_argument("--videos", required=True, help="folder of videos (recursive) or a JSONL data list")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--checkpoint", help="vidclip checkpoint or open_clip weights (default: model.pretrained)")
    parser.add_argument("--shard-size", type=int, default=None, help="videos per shard (default extract.shard_size)")
    parser.add_argument("--resume", action="store_true", help="continue an extraction of the same config, weights, "
                        "inputs and shard size (damaged shards are redone; anything else is refused)")
    parser.add_argument("--overwrite", action="store_true", help="discard an earlier extraction in --out first")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup_logging(main_process=common.is_main_process())
    from ..config import load_config
    from ..engine.extract import extract_embeddings

    overrides = list(args.overrides) + ([f"extract.shard_size={args.shard_size}"] if args.shard_size else [])

    def body() -> int:
        cfg = load_config(args.config, overrides)
        summary = extract_embeddings(cfg, args.videos, Path(args.out), checkpoint=args.checkpoint,
                                     resume=args.resume, overwrite=args.overwrite)
        if summary["is_main_process"]:
            print(f"extracted {summary['manifest_lines']} videos ({summary['failed']} failed) into {args.out}")
        return 0

    return body()
