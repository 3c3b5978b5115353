"""``vidclip prepare-data`` / ``tools/prepare_data.py {msrvtt,msvd,didemo,activitynet} --annotations DIR --videos DIR
--out DIR``.

Prints one row per written split and the checks that failed; see :mod:`vidclip.data.prepare`.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from ..data import prepare as prep
from ..errors import DataListError
from ..registry import DATASETS
from . import common

_logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prepare_data.py", description=prep.__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=DATASETS.names())
    parser.add_argument("--annotations", required=True, type=Path, help="folder holding the official files")
    parser.add_argument("--videos", required=True, type=Path, help="videos root the lists' paths are relative to")
    parser.add_argument("--out", required=True, type=Path, help="folder for <dataset>_<split>.jsonl")
    parser.add_argument("--ext", default=None, help="video file extension, e.g. .mp4 (default: whatever is on disk, "
                        "else .mp4 for MSR-VTT and ActivityNet, .avi for MSVD, the original name for DiDeMo)")
    parser.add_argument("--val-size", type=int, default=prep.MSRVTT_VAL_SIZE,
                        help="MSR-VTT / ActivityNet: videos held out of the training ids for validation")
    parser.add_argument("--drop-missing", action="store_true", help="leave videos not found on disk out of the lists")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a count or checksum check fails")
    parser.add_argument("--expected", type=Path, default=None,
                        help=f"reference facts (default {prep.DEFAULT_EXPECTED})")
    return parser


def format_report(report: prep.PrepareReport) -> str:
    """Human-readable summary: one row per written split, then what is missing and which checks failed."""
    lines = [f"{'split':<22} {'videos':>7} {'captions':>9} {'sentences':>9} {'missing':>8}  file"]
    for split, info in report.written.items():
        lines.append(f"{split:<22} {info['videos']:>7} {info['captions']:>9} {info.get('sentences', '-'):>9} "
                     f"{info['missing_videos']:>8}  {info['path']}")
    lines += [f"not written: {split} ({why})" for split, why in report.missing_splits.items()]
    lines += [f"note: {note}" for note in report.notes]
    lines += [f"CHECK FAILED: {p}" for p in report.problems] or ["all checks passed"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging()
    if args.ext and not args.ext.startswith("."):
        args.ext = "." + args.ext
    try:
        report = prep.prepare(args.dataset, args.annotations, args.videos, args.out, ext=args.ext,
                              drop_missing=args.drop_missing, val_size=args.val_size, expected_path=args.expected)
    except DataListError as exc:
        _logger.error("%s", exc)
        return 1
    print(format_report(report))
    return 1 if (args.strict and report.problems) else 0
