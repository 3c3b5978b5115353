"""The reader interface every backend implements: metadata attributes plus ``get_frames`` (see the package doc)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from ...errors import VideoDecodeError


def short_error(exc: BaseException) -> str:
    """One-line, at most 200 characters, text of an exception (for error messages naming a file)."""
    text = str(exc).strip().replace("\n", " ")
    return text if len(text) < 200 else text[:197] + "..."


class VideoReader:
    """Common interface: metadata attributes plus ``get_frames``; usable as a context manager."""

    backend: str = ""

    def __init__(self, path: Path, num_frames: int, fps: float, width: int, height: int):
        self.path = path
        self.num_frames = num_frames
        self.fps = fps
        self.width = width
        self.height = height

    @property
    def duration(self) -> float:
        """Seconds covered by the decodable frames (``num_frames / fps``; 0 when fps is unknown)."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    def get_frames(self, indices: Union[Sequence[int], np.ndarray]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(T, H, W, 3)`` RGB."""
        indices = self._check_indices(indices)
        if len(indices) == 0:
            return np.zeros((0, self.height, self.width, 3), dtype=np.uint8)
        wanted = np.unique(indices)
        decoded = self._decode_sorted(wanted)  # (U, H, W, 3) in the order of ``wanted``
        return decoded[np.searchsorted(wanted, indices)]  # (T, H, W, 3)

    def _check_indices(self, indices) -> np.ndarray:
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
            raise ValueError(f"{self.path}: frame indices must be a 1-D integer sequence, got {indices!r}")
        indices = indices.astype(np.int64)
        bad = indices[(indices < 0) | (indices >= self.num_frames)]
        if bad.size:
            raise VideoDecodeError(self.path, f"frame index {int(bad[0])} is out of range: the video has "
                                              f"{self.num_frames} decodable frames (valid 0..{self.num_frames - 1})")
        return indices

    def _decode_sorted(self, wanted: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file handles (idempotent)."""

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={str(self.path)!r}, backend={self.backend!r}, "
                f"num_frames={self.num_frames}, fps={self.fps:.3f}, size={self.width}x{self.height})")

