"""``vidclip train`` / ``tools/train.py --config C [--resume [auto|PATH]] [key=value ...]``.

Runs as one process or under ``accelerate launch --num_processes N`` / ``torchrun``; see
:mod:`vidclip.engine.train` for what the loop does and writes.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train", description="Train a text-video retrieval model from a config.")
    parser.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="'auto' (default when given without value): newest checkpoint of train.output_dir, "
                             "or a run directory / checkpoint folder")
    parser.add_argument("--overwrite", action="store_true", help="train.output_dir holds checkpoints: delete them "
                        "and start over (without it, such a folder is refused unless --resume)")
    parser.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                        help="with --resume: accept a changed config key that alters the optimisation (logged); "
                             "repeat for several")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup_logging(main_process=common.is_main_process())  # before accelerate's state exists
    from ..config import load_config
    from ..engine.train import train


    def body() -> int:
        train(load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite,
              allow_changes=args.allow_change)
        return 0

    return body()
