"""The ``auto`` backend: what ``open_video`` uses unless told otherwise.

Today: PyAV with keyframe seeking for long videos. decord is never chosen automatically (not faster on real clips
and not always right). A faster backend that is exact on every test file may take over here.
"""
from __future__ import annotations

from pathlib import Path

from ...registry import READERS
from .base import VideoReader

AUTO_SEEK_MIN_GAP = 300  # frames of decoding a keyframe seek must save before ``auto`` seeks


@READERS.register("auto")
def open_auto(path: Path, seek_min_gap: int | None = None) -> VideoReader:
    """PyAV reader that seeks to a keyframe when that skips at least ``seek_min_gap`` (default 300) frames."""
    from .pyav import PyAVReader

    return PyAVReader(Path(path), seek_min_gap=AUTO_SEEK_MIN_GAP if seek_min_gap is None else seek_min_gap)
