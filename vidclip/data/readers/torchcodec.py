"""torchcodec backend (``torchcodec``, optional): ``VideoDecoder(seek_mode="exact").get_frames_at``, CPU or NVDEC.

torchcodec (``pip install vidclip[torchcodec]``) needs the system FFmpeg shared libraries (e.g. Debian 12's
``libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8``). Its exact mode
scans the file once at open and then returns, for index ``k``, the frame with the ``k``-th smallest timestamp: on
every real test file (H.264 4:2:0 and 4:4:4, VP9 in AVI with a lying header, Theora in Ogg) that is exactly the
``k``-th frame of a plain sequential PyAV decode (with the priming below), in about 0.8x decord's and 0.85x the
PyAV backend's CPU time (``BENCHMARKS.md``, ``benchmarks/bench_decode.py``).

Where torchcodec alone cannot guarantee that, this reader decodes with PyAV instead (``reader.decoder`` says which):
- Frame count: torchcodec counts the packets its scan saw. The count is *trusted* when it equals the header's and
  the file is a complete ISO BMFF file (MP4/MOV: the top-level boxes end exactly at the end of the file, checked
  from a few box headers), the common case, which costs nothing beyond torchcodec's own scan. Any other file (no or
  different header count, Ogg, AVI, MKV, trailing bytes) is probed by PyAV's rules (``pyav.probe``).
- Truncated files: torchcodec counts the cut packet as a frame and fails on a frame the sequential decode yields
  (bikes.mp4 with its index first, minus its last byte: 250 frames counted, frame 247 fails; PyAV decodes 249).
  A file PyAV finds truncated, or whose decodable count differs from torchcodec's, is decoded by PyAV, which keeps
  the exact decodable prefix.
- Files torchcodec cannot open but PyAV can (another FFmpeg build, a codec the system libraries lack).
- A torchcodec error during a read (never expected on a trusted file): that read is redone by PyAV, which either
  returns the exact frames or raises ``VideoDecodeError`` naming the file and index.

Priming: a fresh decoder's first read always includes frame 0. FFmpeg learns stream facts from the first packet
only; e.g. the x264 version in its SEI switches on a workaround for old x264 4:4:4 streams, so misc/cockatoo.mp4
read from a keyframe seek by a decoder that never saw packet 0 gives wrong frames (as decord and a fresh PyAV seek
do). Decoding frame 0 first (one intra frame; free when the sampler asks for it anyway) keeps every later seek
exact, since a seek flushes the decoder's pictures but not what it learnt.

Orientation: torchcodec applies rotation metadata; this reader undoes it (a lossless ``rot90``), so frames come in
the *stored* orientation like every other backend.

GPU (``device="cuda"``, ``data.decode_device=cuda``): NVDEC decoding; frames are a CUDA uint8 tensor
``(T, H, W, 3)``. NVDEC's colour conversion is not bit-identical to the CPU path (a few levels on some pixels), so
keep one decode device per experiment (training and evaluation alike). Codecs NVDEC lacks fall back to the CPU
inside torchcodec.
"""
from __future__ import annotations

import functools
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, VideoDecodeError
from ...registry import READERS
from .base import VideoReader
from .base import short_error as _short
from .pyav import PyAVReader, _check_file, probe

_logger = logging.getLogger(__name__)

_ISO_BMFF_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}
_MAX_TOP_LEVEL_BOXES = 4096


@functools.lru_cache(maxsize=1)
def torchcodec_status() -> tuple[bool, str]:
    """(usable, reason): whether ``torchcodec`` imports and loads its FFmpeg libraries (checked once per process)."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads libtorchcodec and the FFmpeg libraries)
    except ImportError as exc:
        return False, f"torchcodec is not installed ({_short(exc)}); `pip install vidclip[torchcodec]`"
    except Exception as exc:  # RuntimeError / OSError: the FFmpeg shared libraries are missing or incompatible
        return False, (f"torchcodec cannot load the system FFmpeg libraries ({_short(exc)}); install them, e.g. "
                       "`apt-get install libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 "
                       "libavdevice59 libavfilter8`")
    return True, "torchcodec and its FFmpeg libraries load"


def torchcodec_available() -> bool:
    """True when ``torchcodec`` imports and its FFmpeg libraries load (what ``auto`` checks)."""
    return torchcodec_status()[0]


def iso_bmff_complete(path: Path) -> bool:
    """True when ``path`` is an ISO BMFF file (MP4, MOV, M4V, 3GP) with a ``moov`` box whose top-level boxes end
    exactly at the end of the file (so no sample can be cut off). False for anything else, including a last box of
    size 0 ("up to the end of the file"), which cannot be checked."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        position, kinds = 0, set()
        while position < size and len(kinds) < _MAX_TOP_LEVEL_BOXES:
            handle.seek(position)
            header = handle.read(16)
            if len(header) < 8:
                return False
            box_size, kind = struct.unpack(">I4s", header[:8])
            if position == 0 and kind not in _ISO_BMFF_FIRST_BOXES:
                return False
            if box_size == 1:  # 64-bit size follows the type
                if len(header) < 16:
                    return False
                box_size = struct.unpack(">Q", header[8:16])[0]
            if box_size < 8:  # 0 ("to the end of the file") or malformed
                return False
            kinds.add(kind)
            position += box_size
    return position == size and b"moov" in kinds


def check_decode_device(device: str) -> str:
    """``cpu`` or a CUDA device torch can see (``cuda``, ``cuda:N``); anything else raises ``ConfigError``."""
    device = str(device)
    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise ConfigError(f"decode device {device!r} is not supported: use 'cpu' or 'cuda' (data.decode_device)")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"decode device {device!r} asked for (data.decode_device), but torch sees no CUDA device; "
                          "set data.decode_device=cpu")
    return device


def _trusted_facts(decoder, path: Path) -> tuple[int, float] | None:
    """(num_frames, fps) from torchcodec alone when they can be trusted (see the module doc), else None."""
    if decoder is None:
        return None
    metadata = decoder.metadata
    header = metadata.num_frames_from_header
    if header and header == len(decoder) and metadata.average_fps_from_header and iso_bmff_complete(path):
        return len(decoder), metadata.average_fps_from_header  # avg_frame_rate, as PyAV's average_rate
    return None


def _probed_facts(decoder, error: str, path: Path) -> tuple[tuple[int, float], Any]:
    """((num_frames, fps), decoder or None) by PyAV's rules; None when PyAV must decode (truncated, counts disagree,
    torchcodec cannot open). Raises PyAV's ``VideoDecodeError`` for files nobody can read."""
    container, _, index, num_frames, fps = probe(path)
    container.close()
    if decoder is None or index.truncated or num_frames != len(decoder):
        why = (f"torchcodec cannot open it ({error})" if decoder is None else "the file is truncated"
               if index.truncated else f"torchcodec counts {len(decoder)} frames, a sequential decode {num_frames}")
        _logger.info("%s: decoding with PyAV: %s", path, why)
        decoder = None
    return (num_frames, fps), decoder


@READERS.register("torchcodec", gpu_decode=True)
class TorchCodecReader(VideoReader):
    """torchcodec exact-mode decoding (CPU or NVDEC), PyAV where torchcodec cannot be proven exact.

    Args:
        path: the video file.
        device: ``cpu`` or ``cuda`` / ``cuda:N`` (NVDEC; frames come back as a CUDA tensor).
        num_threads: FFmpeg decoding threads (0: FFmpeg decides, like PyAV's ``thread_type="AUTO"``).
        seek_min_gap: passed to the PyAV reader used for files torchcodec cannot decode exactly.
    """

    backend = "torchcodec"

    def __init__(self, path: Path, device: str = "cpu", num_threads: int = 0, seek_min_gap: int | None = None):
        path = Path(path)
        usable, reason = torchcodec_status()
        if not usable:
            raise ImportError(f"backend='torchcodec': {reason}. Use backend='pyav' or 'auto', which need only PyAV.")
        _check_file(path)
        self.device = check_decode_device(device)
        self.seek_min_gap = seek_min_gap
        self._pyav: PyAVReader | None = None
        self._decoder, self._unrotate, self._num_threads, self._primed = None, 0, num_threads, False
        decoder, error = self._open_decoder(path)
        facts = _trusted_facts(decoder, path)
        if facts is None:
            facts, decoder = _probed_facts(decoder, error, path)
        if decoder is None:
            self._pyav = PyAVReader(path, seek_min_gap=seek_min_gap)
            super().__init__(path, self._pyav.num_frames, self._pyav.fps, self._pyav.width, self._pyav.height)
            return
        self._decoder, metadata = decoder, decoder.metadata
        self._unrotate = int(round(-(metadata.rotation or 0.0) / 90.0)) % 4  # rot90 turns undoing the rotation
        width, height = (metadata.height, metadata.width) if self._unrotate % 2 else (metadata.width, metadata.height)
        super().__init__(path, facts[0], float(facts[1]), int(width), int(height))

    @property
    def decoder(self) -> str:
        """Which library decodes this file: ``torchcodec`` or ``pyav`` (see the module doc for when)."""
        return "pyav" if self._pyav is not None else "torchcodec"

    def _open_decoder(self, path: Path) -> tuple[Any, str]:
        from torchcodec.decoders import VideoDecoder

        try:
            return VideoDecoder(str(path), seek_mode="exact", dimension_order="NHWC", device=self.device,
                                num_ffmpeg_threads=self._num_threads), ""
        except Exception as exc:  # torchcodec raises RuntimeError/ValueError for unreadable media
            return None, _short(exc)

    def get_frames(self, indices):
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(T, H, W, 3)`` RGB: a numpy array, or a
        CUDA tensor when decoding on the GPU."""
        if self._pyav is not None:
            try:
                return self._pyav.get_frames(indices)
            finally:
                self.num_frames = self._pyav.num_frames  # PyAV corrects it when a read ends early
        indices = self._check_indices(indices)
        wanted = np.unique(indices)
        if len(wanted) == 0:
            return super().get_frames(indices)
        decoded = self._decode_sorted(wanted)  # (U, H, W, 3) in the order of ``wanted``
        if len(wanted) == len(indices) and np.array_equal(wanted, indices):
            return decoded  # sorted without repeats: no gather copy
        order = np.searchsorted(wanted, indices)
        if isinstance(decoded, np.ndarray):
            return decoded[order]  # (T, H, W, 3)
        import torch

        return decoded[torch.from_numpy(order).to(decoded.device)]  # (T, H, W, 3) on the GPU

    def _decode_sorted(self, wanted: np.ndarray):
        if self._decoder is None:  # closed: reopen (the exactness checks were made at open)
            self._decoder, error = self._open_decoder(self.path)
            self._primed = False
            if self._decoder is None:
                raise VideoDecodeError(self.path, f"torchcodec cannot reopen the file ({error})")
        prime = not self._primed and wanted[0] != 0  # see "Priming" in the module doc
        try:
            frames = self._decoder.get_frames_at(([0] if prime else []) + wanted.tolist()).data  # (U', H', W', 3)
            frames = frames[1:] if prime else frames  # (U, H', W', 3) uint8, display orientation
            self._primed = True
        except Exception as exc:
            _logger.warning("%s: torchcodec failed on frames %s (%s); reading them with PyAV", self.path,
                            wanted.tolist()[:8], _short(exc))
            return self._read_with_pyav(wanted)
        if self._unrotate:
            frames = frames.rot90(self._unrotate, dims=(1, 2))  # (U, H, W, 3) stored orientation
        if tuple(frames.shape) != (len(wanted), self.height, self.width, 3):
            raise VideoDecodeError(self.path, f"torchcodec returned shape {tuple(frames.shape)} for {len(wanted)} "
                                              f"frames of {self.width}x{self.height}; use backend='pyav'")
        return frames.contiguous() if self.device != "cpu" else np.ascontiguousarray(frames.numpy())

    def _read_with_pyav(self, wanted: np.ndarray) -> np.ndarray:
        reader = PyAVReader(self.path, seek_min_gap=self.seek_min_gap)
        try:
            return reader._decode_sorted(wanted)
        except VideoDecodeError:
            self.num_frames = min(self.num_frames, reader.num_frames)
            raise
        finally:
            reader.close()

    def close(self) -> None:
        self._decoder, self._primed = None, False
        if self._pyav is not None:
            self._pyav.close()

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", decoder={self.decoder!r}, device={self.device!r})"

