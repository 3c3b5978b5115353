"""PyAV backend (``pyav``): threaded sequential decode, optional keyframe seeks; also the frame-count probe.

See the package docstring for the ground truth (frame ``k`` = the ``k``-th frame of a plain sequential decode), the
frame-count rules and the handling of damaged files. Other backends take ``num_frames`` from :func:`probe`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import VideoDecodeError
from ...registry import READERS
from .base import VideoReader
from .base import short_error as _short

_logger = logging.getLogger(__name__)

_SEEK_OVERHEAD = 16  # extra frames decoded after a seek before the target can come out (B-frame delay, flush)

_FRAME_COUNT_CACHE: dict[tuple[str, int, int], int] = {}


# ------------------------------------------------------------------------------------------------ stream facts
@dataclass
class _StreamIndex:
    """What one demux pass (no decoding) tells about the video stream."""

    num_packets: int  # non-empty packets before the first truncated one
    truncated: bool  # a truncated (corrupt) packet ended the stream
    pts: np.ndarray | None  # presentation timestamps in decode order (None when some are missing)
    keyframes: np.ndarray  # decode-order positions of keyframe packets


def _import_av():
    import av  # PyAV is a hard dependency

    return av


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "file not found; check the data list path and the videos root")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes); re-download or remove it from the data list")


def _open_container(path: Path):
    av = _import_av()
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        reason = f"not a readable media file ({_short(exc)}); is it truncated or not a video?"
        raise VideoDecodeError(path, reason) from exc


def _video_stream(container, path: Path):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        what = "audio only" if kinds == ["audio"] else (f"streams: {', '.join(kinds)}" if kinds else "no streams")
        raise VideoDecodeError(path, f"no video stream ({what})")
    return container.streams.video[0]



def _index_stream(container, stream, path: Path) -> _StreamIndex:
    """Demux the video stream once (no decoding): packet count, timestamps and keyframe positions."""
    pts: list[int | None] = []
    keyframes: list[int] = []
    truncated = False
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.is_corrupt:
                truncated = True
                break
            if packet.is_keyframe:
                keyframes.append(len(pts))
            pts.append(packet.pts)
    except _import_av().error.FFmpegError as exc:
        _logger.warning("%s: demuxing stopped after %d packets (%s)", path, len(pts), _short(exc))
        truncated = True
    valid_pts = None
    if pts and all(p is not None for p in pts):
        valid_pts = np.asarray(pts, dtype=np.int64)
        if len(np.unique(valid_pts)) != len(valid_pts):
            valid_pts = None
    return _StreamIndex(len(pts), truncated, valid_pts, np.asarray(keyframes, dtype=np.int64))


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _decoded_frames(container, stream, path: Path) -> Iterator:
    """Sequential decode from the current position: stops at a truncated packet or decoder error, then flushes."""
    av = _import_av()
    flushed = False
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt and packet.size > 0:
                _logger.warning("%s: truncated packet at pts %s; keeping the frames before it", path, packet.pts)
                break
            flushed = packet.size == 0
            yield from packet.decode()
    except av.error.FFmpegError as exc:
        _logger.warning("%s: decoding stopped (%s); keeping the frames decoded so far", path, _short(exc))
    if not flushed:
        try:
            yield from stream.codec_context.decode(None)
        except av.error.FFmpegError:
            pass


def _count_by_decoding(path: Path) -> int:
    """Frames a threaded sequential decode yields (no RGB conversion); cached per (path, size, mtime)."""
    key = _file_key(path)
    if key not in _FRAME_COUNT_CACHE:
        with _open_container(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            _FRAME_COUNT_CACHE[key] = sum(1 for _ in _decoded_frames(container, stream, path))
    return _FRAME_COUNT_CACHE[key]


def probe(path: Path):
    """Open ``path`` with PyAV and return (container, stream, index, num_frames, fps); errors name the file."""
    _check_file(path)
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        index = _index_stream(container, stream, path)
        header = stream.frames or 0
        if index.num_packets == 0:
            raise VideoDecodeError(path, "the video stream holds no frame data (truncated or empty stream)")
        if index.truncated or header != index.num_packets:
            num_frames = _count_by_decoding(path)
            if header and header != num_frames:
                _logger.info("%s: header says %d frames, %d are decodable", path, header, num_frames)
        else:
            num_frames = index.num_packets
        if num_frames == 0:
            raise VideoDecodeError(path, "no decodable video frame (the stream is damaged or truncated)")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        return container, stream, index, num_frames, fps
    except BaseException:
        container.close()
        raise


@READERS.register("pyav")
class PyAVReader(VideoReader):
    """Threaded sequential decode up to the last wanted frame; optional keyframe seeks for long videos."""

    backend = "pyav"

    def __init__(self, path: Path, seek_min_gap: int | None = None):
        container, stream, index, num_frames, fps = probe(path)
        super().__init__(path, num_frames, fps, stream.codec_context.width, stream.codec_context.height)
        container.close()
        self.seek_min_gap = seek_min_gap
        self._index = index
        self._sorted_pts = np.sort(index.pts) if index.pts is not None else None  # frame k <-> k-th smallest pts
        self._container = None

    def _open(self):
        self.close()
        self._container = _open_container(self.path)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        return self._container, stream

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _decode_sorted(self, wanted: np.ndarray) -> np.ndarray:
        if self._can_seek():
            frames = self._decode_with_seeks(wanted)
            if frames is not None:
                return frames
        return self._decode_sequential(wanted)

    def _decode_sequential(self, wanted: np.ndarray) -> np.ndarray:
        container, stream = self._open()
        out = np.empty((len(wanted), self.height, self.width, 3), dtype=np.uint8)  # (U, H, W, 3)
        slot, decoded, last = 0, 0, int(wanted[-1])
        for frame in _decoded_frames(container, stream, self.path):
            if decoded == wanted[slot]:
                out[slot] = self._to_rgb(frame)  # only wanted frames are converted to RGB
                slot += 1
            decoded += 1
            if decoded > last:
                break
        self.close()
        if slot < len(wanted):
            self._stream_ended_early(int(wanted[slot]), decoded)
        return out

    def _to_rgb(self, frame) -> np.ndarray:
        image = frame.to_ndarray(format="rgb24")
        if image.shape[:2] != (self.height, self.width):
            raise VideoDecodeError(self.path, f"frame size changes mid-stream ({image.shape[1]}x{image.shape[0]} "
                                              f"vs {self.width}x{self.height}); re-encode the video")
        return image

    def _stream_ended_early(self, index: int, decoded: int) -> None:
        self.num_frames = min(self.num_frames, decoded)
        _FRAME_COUNT_CACHE[_file_key(self.path)] = decoded
        raise VideoDecodeError(self.path, f"frame index {index} requested but decoding ended after {decoded} "
                                          f"frames (the file is damaged or its index lies)")

    # -------------------------------------------------------------------------------------------- keyframe seeks
    def _can_seek(self) -> bool:
        index = self._index
        return (self.seek_min_gap is not None and self._sorted_pts is not None and len(index.keyframes) > 1
                and not index.truncated and index.num_packets == self.num_frames)

    def _plan_segments(self, wanted: np.ndarray) -> list[tuple[int, list[int]]]:
        """Group wanted frames into (keyframe decode position, frames) runs; a new run starts where a seek pays."""
        decode_pos = np.argsort(self._index.pts, kind="stable")  # frame k -> decode-order position of its packet
        key_pos = self._index.keyframes
        key_pts = self._index.pts[key_pos]
        segments: list[tuple[int, list[int]]] = [(0, [])]
        reached = 0  # decode-order position the current run decodes up to
        for k in wanted.tolist():
            pos = int(decode_pos[k])
            usable = key_pos[(key_pos <= pos) & (key_pts <= self._sorted_pts[k])]  # leading frames stay behind
            start = int(usable[-1]) if usable.size else 0
            if start > reached + self.seek_min_gap + _SEEK_OVERHEAD:
                segments.append((start, []))
            segments[-1][1].append(k)
            reached = max(reached, pos)
        return [s for s in segments if s[1]]

    def _decode_with_seeks(self, wanted: np.ndarray) -> np.ndarray | None:
        """Decode with keyframe seeks, identifying frames by pts; None when a seek is not worth it or not exact."""
        segments = self._plan_segments(wanted)
        if all(start == 0 for start, _ in segments):
            return None
        container, stream = self._open()
        found: dict[int, np.ndarray] = {}
        try:
            if segments[0][0] > 0:  # decode frame 0 first: FFmpeg learns stream facts (e.g. the x264 version SEI
                next(iter(_decoded_frames(container, stream, self.path)), None)  # of cockatoo.mp4) from packet 0
            for start, frames in segments:
                if start > 0:
                    container.seek(int(self._index.pts[start]), stream=stream, backward=True, any_frame=False)
                if not self._collect_segment(container, stream, frames, found):
                    _logger.debug("%s: keyframe seek was not exact; decoding sequentially", self.path)
                    return None
        except _import_av().error.FFmpegError as exc:
            _logger.debug("%s: seek failed (%s); decoding sequentially", self.path, _short(exc))
            return None
        finally:
            self.close()
        return np.stack([found[k] for k in wanted.tolist()])  # (U, H, W, 3)

    def _collect_segment(self, container, stream, frames: list[int], found: dict[int, np.ndarray]) -> bool:
        targets = {int(self._sorted_pts[k]): k for k in frames}
        last_pts = max(targets)
        for frame in _decoded_frames(container, stream, self.path):
            if frame.pts is None:
                return False
            if frame.pts in targets:
                found[targets[frame.pts]] = self._to_rgb(frame)
            if frame.pts >= last_pts:
                break
        return all(k in found for k in frames)
