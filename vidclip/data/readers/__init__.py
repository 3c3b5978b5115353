"""Video readers: frame-exact random access on top of PyAV (always), torchcodec or decord (optional).

One file per backend, each registering its opener in ``vidclip.registry.READERS`` (a class or function called as
``opener(path, **options) -> VideoReader``); every module of this package is imported on first use, so a new
backend is one new file here with ``@READERS.register("name")``, selectable as ``data.reader_backend=name``.
A backend living outside vidclip registers the same way from its own module.

Ground truth: frame ``k`` of a video is the ``k``-th frame of a plain sequential PyAV decode
(``container.decode(video=0)``, counting from 0) converted with ``to_ndarray(format="rgb24")``. Every backend
returns exactly that image or raises :class:`~vidclip.errors.VideoDecodeError`; none returns a wrong frame silently.

Backends
    ``pyav``   threaded (``thread_type="AUTO"``) sequential decode that stops after the last requested frame and
               converts only the requested frames to RGB. Real clips have very long GOPs (2 keyframes in 330
               frames for MSR-VTT), so this is both the fastest path and correct by construction. For long videos a
               keyframe seek is used when it skips at least ``seek_min_gap`` frames of decoding (off by default
               except in ``auto``); frames after a seek are identified by their timestamp, never by counting, and
               seeking is disabled for files whose timestamps cannot identify frames (missing or duplicate pts).
    ``decord`` ``VideoReader.get_batch`` (imported lazily; ``num_frames`` still comes from PyAV). It is exact on most
               H.264 files for sorted indices read once, but returns corrupted frames after a seek into some streams
               (misc/cockatoo.mp4, yuv444p: frame 200 read first is wrong) and cannot open Theora/Ogg; use it only
               on material you have verified.
    ``torchcodec`` ``VideoDecoder(seek_mode="exact").get_frames_at`` (optional package plus the system FFmpeg
               libraries): exact on every real test file and faster than decord (BENCHMARKS.md); files it cannot
               prove exact (truncated, frame counts that disagree, unopenable) are decoded by PyAV inside the
               reader (``reader.decoder``). ``device="cuda"`` decodes on NVDEC (close to, not bit-identical with,
               the CPU frames). See ``torchcodec.py``.
    ``auto``   ``torchcodec`` when it imports and its FFmpeg libraries load, otherwise ``pyav`` with keyframe seeking
               for long videos (``seek_min_gap=AUTO_SEEK_MIN_GAP`` frames). decord is never chosen automatically:
               it is not faster on real clips (perf-notes.md) and not always right.

Frame count (``num_frames``)
    Container headers lie (balle1-vp9.avi: header 300, 295 decodable; Ogg has no count). At open the reader demuxes
    the video stream once without decoding (about 1 ms for a 330-frame clip) and counts the non-empty packets up to
    the first truncated (``is_corrupt``) packet. That count is *trusted* when it equals the header's frame count and
    no packet was truncated; otherwise (no header count, header disagrees, truncated file) the reader counts frames
    with one threaded decode without RGB conversion, cached per (path, size, mtime) in the process, so such files
    cost one extra decode once, and trusted files (every MP4/MKV clip tested) none. The trust rests on decoders
    emitting one frame per packet; if a file breaks it, a read still cannot be silently wrong: a decode that ends
    before a requested frame raises ``VideoDecodeError`` naming the file and index, and corrects ``num_frames``.

Damaged files
    Missing, empty, non-video (e.g. text renamed .mp4), audio-only and video-less files raise ``VideoDecodeError``
    naming the path and the problem. A truncated file whose index survives (moov atom first) keeps its decodable
    prefix: decoding stops at the first truncated packet or decoder error, then the decoder is flushed, so
    ``num_frames`` reflects the frames that really exist (the plain ``container.decode`` loop raises at that point and
    loses the few frames still buffered in the decoder; frames before that point are identical).

Orientation
    Rotation metadata (display matrix) is ignored: frames come in *stored* orientation, as PyAV's plain decode
    returns them, and ``width``/``height`` describe the stored frame. Keep one backend per dataset so training and
    evaluation see the same orientation.
"""
from __future__ import annotations

import os
import pkgutil
from importlib import import_module
from pathlib import Path
from typing import Union

from ...errors import ConfigError
from ...registry import READERS
from .auto import AUTO_SEEK_MIN_GAP
from .base import VideoReader

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        import_module(f"{__name__}.{_module.name}")


def open_video(path: Union[str, os.PathLike], backend: str = "auto", seek_min_gap: int | None = None,
               device: str = "cpu") -> VideoReader:
    """Open a video for frame-exact random access.

    Args:
        path: the video file.
        backend: a name registered in ``READERS``: ``auto`` (torchcodec when usable, else PyAV), ``torchcodec``,
            ``pyav`` (sequential only unless ``seek_min_gap`` is given), ``decord``, or your own.
        seek_min_gap: PyAV only: seek to a keyframe when that skips at least this many frames of decoding
            (``auto`` defaults to ``AUTO_SEEK_MIN_GAP``; ``None`` with ``pyav`` never seeks).
        device: ``cpu``, or ``cuda`` for GPU decoding with backends registered with ``gpu_decode=True``
            (``auto``, ``torchcodec``); frames then come back as a CUDA uint8 tensor.

    Returns:
        A reader with ``num_frames``, ``fps``, ``duration``, ``width``, ``height``, ``backend`` and ``get_frames``.

    Raises:
        VideoDecodeError: the file is missing, empty, not a video, or holds no decodable frame.
        ConfigError: ``backend`` is not registered (the message lists the registered ones), or ``device`` is not
            ``cpu`` and the backend cannot decode on a GPU or no CUDA device is visible.
    """
    options: dict = {} if seek_min_gap is None else {"seek_min_gap": seek_min_gap}
    if device != "cpu":
        if not READERS.info(backend, "gpu_decode", False):
            raise ConfigError(f"decode device {device!r} (data.decode_device) needs a backend that decodes on the "
                              f"GPU: {', '.join(READERS.names(gpu_decode=True))}; got backend {backend!r}")
        options["device"] = device
    return READERS.get(backend)(Path(path), **options)


def list_backends() -> list[str]:
    """Names accepted by ``open_video(backend=...)`` and ``data.reader_backend``."""
    return READERS.names()


__all__ = ["AUTO_SEEK_MIN_GAP", "VideoReader", "list_backends", "open_video"]
