"""``vidclip make-synthetic`` / ``tools/make_synthetic.py --out DIR [--num-videos N] [--seed S] ...``.

Writes the built-in synthetic video-text dataset; see :mod:`vidclip.data.synthetic`.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from ..data.synthetic import CODECS, LAYOUTS, make_synthetic_dataset
from . import common

_logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make_synthetic", description="The built-in synthetic video-text dataset: "
                                     "one coloured shape that moves, grows, shrinks or stays still.")
    parser.add_argument("--out", required=True, help="output directory (videos/ and synthetic_*.jsonl)")
    parser.add_argument("--num-videos", type=int, default=1200, help="training videos (default 1200)")
    parser.add_argument("--num-val-videos", type=int, default=48, help="validation videos, twin pairs (default 48)")
    parser.add_argument("--num-test-videos", type=int, default=64, help="test videos, twin pairs (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    parser.add_argument("--size", type=int, default=64, help="frame width and height in pixels (default 64)")
    parser.add_argument("--fps", type=int, default=8, help="frame rate of the files (default 8)")
    parser.add_argument("--captions-per-video", type=int, default=4, help="paraphrases per training video")
    parser.add_argument("--train-layout", choices=LAYOUTS, default="twins+still",
                        help="training split: twins+still (default: reversed twin pairs plus still clips), twins, "
                             "or single (independent clips)")
    parser.add_argument("--codec", choices=CODECS, default="libx264rgb",
                        help="libx264rgb: lossless RGB (default); libx264: yuv420p")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.setup_logging()
    lists = make_synthetic_dataset(args.out, args.num_videos, args.num_val_videos, args.num_test_videos, args.seed,
                                   args.size, args.frames, args.fps, args.captions_per_video, args.codec,
                                   train_layout=args.train_layout)
    _logger.info("videos root: %s; lists: %s", Path(args.out) / "videos", ", ".join(str(p) for p in lists.values()))
    return 0
