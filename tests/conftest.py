"""Shared fixtures: the real reference data folder, and a writer for small synthetic videos."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VIDCLIP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real annotations and videos); tests using it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real reference data not found at {SHARED_DATA} (set VIDCLIP_SHARED_DATA to its path)")
    return SHARED_DATA


def write_video(path: Path, frames: np.ndarray, fps: int = 25, codec: str = "libx264rgb",
                lossless: bool = True, gop: int | None = None) -> Path:
    """Write uint8 frames ``(T, H, W, 3)`` to ``path`` with PyAV.

    ``libx264rgb`` with ``qp=0`` stores RGB losslessly, so decoded frames equal the input exactly.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        if codec == "libx264rgb":
            stream.pix_fmt = "rgb24"
            stream.options = {"qp": "0"} if lossless else {"crf": "23"}
        else:
            stream.pix_fmt = "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def numbered_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Distinct frames ``(T, H, W, 3)``: random texture plus the frame index burnt into the first pixel row."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(num_frames, height, width, 3), dtype=np.uint8)
    for k in range(num_frames):
        frames[k, 0, :, :] = k % 256
    return frames


@pytest.fixture
def make_video(tmp_path):
    """Factory fixture: ``make_video(num_frames=.., name=.., **write_video_kwargs) -> (path, frames)``."""

    def _make(num_frames: int = 16, name: str = "clip.mp4", height: int = 48, width: int = 64, seed: int = 0,
              **kwargs):
        frames = numbered_frames(num_frames, height, width, seed)
        return write_video(tmp_path / name, frames, **kwargs), frames

    return _make
