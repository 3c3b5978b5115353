"""Helpers of the robustness suite: config overrides for the synthetic data and writers of unusual videos."""
from __future__ import annotations

import fractions
import struct
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "synthetic_tiny_vifi.yaml"


def synth_overrides(synth: Path, **extra: str) -> list:
    """key=value overrides pointing the tiny config at the synthetic data (no workers, 8 frames)."""
    values = {"data.videos_root": str(synth / "videos"), "data.train_list": str(synth / "synthetic_train.jsonl"),
              "data.val_list": str(synth / "synthetic_val.jsonl"),
              "data.test_list": str(synth / "synthetic_test.jsonl"),
              "data.num_workers": "0", "data.num_frames": "8", "train.tensorboard": "false",
              "extract.dtype": "float32"}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


# ----------------------------------------------------------------------------------------------- damaged videos
def write_faststart(path: Path, frames: np.ndarray, gop: int = 6) -> Path:
    """Lossy H.264 MP4 with the index (moov) first, so a truncated copy keeps a decodable prefix."""
    t, h, w, _ = frames.shape
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(list(stream.encode(frame)) + list(stream.encode()))
    return path


def write_vfr(path: Path, frames: np.ndarray, gaps_ms=(10, 40, 100, 33)) -> Path:
    """Lossless video whose frame timestamps are irregular (variable frame rate)."""
    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.options = w, h, "rgb24", {"qp": "0"}
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        pts = 0
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
            pts += gaps_ms[k % len(gaps_ms)]
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def set_mp4_rotation(path: Path, degrees: int = 90) -> Path:
    """Patch the MP4 track header matrix (display rotation), as phones record portrait video."""
    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd")
    assert box > 0 and data[box + 4] == 0, "expected a version-0 tkhd box"
    matrix = box + 4 + 4 + 20 + 8 + 8  # type, version/flags, times/track/duration, reserved, layer..volume
    cos, sin = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees]
    data[matrix:matrix + 36] = struct.pack(">9i", cos << 16, sin << 16, 0, -sin << 16, cos << 16, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    return path
