"""The ``auto`` backend: what ``open_video`` uses unless told otherwise.

torchcodec when it imports and its FFmpeg libraries load (exact mode; the reader hands the files it cannot prove
exact, e.g. truncated ones, to PyAV itself), otherwise PyAV with keyframe seeking for long videos. decord is never
chosen automatically (not faster on real clips and not always right).
"""
from __future__ import annotations

from pathlib import Path

from ...registry import READERS
from .base import VideoReader

AUTO_SEEK_MIN_GAP = 300  # frames of decoding a keyframe seek must save before PyAV seeks


@READERS.register("auto", gpu_decode=True)
def open_auto(path: Path, seek_min_gap: int | None = None, device: str = "cpu") -> VideoReader:
    """torchcodec when usable, else PyAV (seeking to a keyframe when that skips ``seek_min_gap``, default 300,
    frames); ``device="cuda"`` needs torchcodec."""
    from .pyav import PyAVReader
    from .torchcodec import TorchCodecReader, torchcodec_status

    gap = AUTO_SEEK_MIN_GAP if seek_min_gap is None else seek_min_gap
    usable, reason = torchcodec_status()
    if usable:
        return TorchCodecReader(Path(path), device=device, seek_min_gap=gap)
    if device != "cpu":
        raise ImportError(f"decode device {device!r} needs torchcodec: {reason}")
    return PyAVReader(Path(path), seek_min_gap=gap)
