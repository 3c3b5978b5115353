"""decord backend (``decord``, optional package): ``VideoReader.get_batch`` with the frame count from PyAV.

Exact on most H.264 files for sorted indices read once, but returns corrupted frames after a seek into some streams
and cannot open Theora/Ogg; never chosen by ``auto``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import VideoDecodeError
from ...registry import READERS
from .base import VideoReader
from .base import short_error as _short
from .pyav import probe


@READERS.register("decord")
class DecordReader(VideoReader):
    """decord ``get_batch`` with the frame count taken from PyAV (decord trusts container headers)."""

    backend = "decord"

    def __init__(self, path: Path, num_threads: int = 0):
        decord = _import_decord()
        container, stream, _, num_frames, fps = probe(path)
        super().__init__(path, num_frames, fps, stream.codec_context.width, stream.codec_context.height)
        container.close()
        try:
            self._reader = decord.VideoReader(str(path), num_threads=num_threads)
        except Exception as exc:  # decord raises its own DECORDError for everything
            raise VideoDecodeError(path, f"decord cannot open this file ({_short(exc)}); use backend='pyav'") from exc
        self.num_frames = min(self.num_frames, len(self._reader))

    def _decode_sorted(self, wanted: np.ndarray) -> np.ndarray:
        try:
            frames = self._reader.get_batch(wanted.tolist()).asnumpy()  # (U, H, W, 3)
        except Exception as exc:
            reason = f"decord failed to read frames {wanted.tolist()} ({_short(exc)})"
            raise VideoDecodeError(self.path, reason) from exc
        if frames.shape != (len(wanted), self.height, self.width, 3):
            raise VideoDecodeError(self.path, f"decord returned shape {frames.shape} for {len(wanted)} frames")
        return frames

    def close(self) -> None:
        self._reader = None


def _import_decord():
    try:
        import decord
    except ImportError as exc:
        raise ImportError("backend='decord' needs the decord package (`pip install decord`; no wheels exist for "
                          "macOS/ARM). Use backend='pyav' or 'auto', which need only PyAV.") from exc
    decord.bridge.set_bridge("native")
    return decord
