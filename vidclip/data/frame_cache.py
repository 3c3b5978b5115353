"""Decoded-frame cache (``data.frame_cache: DIR``): decode every video once, keep the frames a sampler can ask for at
the model's input size, and read them back in later epochs and runs instead of decoding again.

Layout (one root holds any number of settings side by side)::

    DIR/<sampler>-<S>px-<key>/identity.json     what produced the frames; <key> is a hash of it
    DIR/<sampler>-<S>px-<key>/shard_00000.npy   uint8 (rows, S, S, 3), memory-mapped when read
    DIR/<sampler>-<S>px-<key>/shard_00000.json  per video (absolute path): source size and mtime, num_frames, fps,
                                                frame indices, first row
    DIR/<sampler>-<S>px-<key>.lock              held while a process checks or builds the cache

What a video keeps: ``sampler.candidates(...)`` (the frames a deterministic sampler picks; every frame of the window
for a random one) after the transform's evaluation geometry (PIL bicubic resize of the short side to S, centre crop
S), frame by frame with the code the live path runs. The cached reader hands those S x S frames to the unchanged
transform, whose resize and crop are then the identity, so batches are bit-identical to live decoding; a random
sampler sees the same ``num_frames`` and ``fps`` and draws the same indices from the same seeded generator.
Random-crop augmentation (``data.train_augment=crop_flip``) crops before resizing and is refused.

Identity: format version, image size and geometry, the sampler (class and settings) and the reader backend; any
change selects another sub-folder, built on first use. Per video: the source file's size and mtime; a changed file is
decoded again (its new entry, in a new shard, supersedes the old one) and a shard no entry uses is deleted.
Building is resumable (each shard is written atomically, frames first, then its index; a killed build keeps every
complete shard) and parallel (``num_workers`` DataLoader workers decode, the main process writes shards).
A video that fails to decode is recorded with its error; the cached reader raises the same ``VideoDecodeError``, so
the dataset skips it as it does when decoding live.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, IntegrityError, VideoDecodeError
from ..identity import describe_changes, differing_keys, sha256_json
from ..io import atomic_write, atomic_write_json
from .lists import VideoRecord, resolve_video_path
from .readers import open_video
from .readers.base import VideoReader
from .transforms import VideoTransform, as_frames

_logger = logging.getLogger(__name__)

FORMAT = "vidclip-frame-cache"
VERSION = 1
GEOMETRY = "pil-bicubic-short-side-then-center-crop"  # VideoTransform.resize_center_crop
SHARD_VIDEOS = 256
_SHARD_RE = re.compile(r"^shard_(\d{5,})\.json$")


# ------------------------------------------------------------------------------------------------------ identity
def cache_identity(sampler: Any, image_size: int, backend: str) -> dict[str, Any]:
    """Everything that decides the cached frames, besides the source files themselves."""
    kind = type(sampler)
    return {"format": FORMAT, "version": VERSION, "geometry": GEOMETRY, "image_size": int(image_size),
            "sampler": repr(sampler), "sampler_class": f"{kind.__module__}.{kind.__qualname__}",
            "reader_backend": str(backend)}


def cache_folder(root: str | os.PathLike, identity: dict[str, Any]) -> Path:
    """``<root>/<sampler>-<S>px-<hash of the identity>``."""
    name = identity["sampler_class"].rsplit(".", 1)[-1].replace("Sampler", "").lower() or "sampler"
    return Path(root) / f"{name}-{identity['image_size']}px-{sha256_json(identity)[:16]}"


def source_stamp(path: str | os.PathLike) -> dict[str, int] | None:
    """Size and mtime (ns) of a source video; None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


# ------------------------------------------------------------------------------------------------ cached reader
class CachedVideoReader(VideoReader):
    """A reader over the cached S x S frames of one video; asking for a frame that was not cached is an error."""

    backend = "frame_cache"

    def __init__(self, path: Path, entry: dict[str, Any], shard: np.ndarray, size: int, folder: Path):
        super().__init__(path, int(entry["num_frames"]), float(entry["fps"]), size, size)
        self._indices = np.asarray(entry["frames"], dtype=np.int64)  # sorted, unique
        self._rows = int(entry["row"]) + np.arange(len(self._indices))
        self._shard, self._folder = shard, folder

    def _decode_sorted(self, wanted: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._indices, wanted)
        missing = (pos >= len(self._indices)) | (self._indices[np.minimum(pos, len(self._indices) - 1)] != wanted)
        if missing.any():
            raise ConfigError(f"frame cache {self._folder}: frame {int(wanted[missing][0])} of {self.path} is not "
                              "cached (the sampler's candidates() left it out); fix the sampler's candidates() or "
                              "set data.frame_cache=null")
        return np.ascontiguousarray(self._shard[self._rows[pos]])  # (U, S, S, 3)


# ------------------------------------------------------------------------------------------------------ building
def _identity_collate(item: Any) -> Any:
    return item


class _DecodeJobs(Dataset):
    """Item i: decode the candidate frames of one source video and resize them (runs in DataLoader workers)."""

    def __init__(self, jobs: Sequence[tuple[str, list[tuple]]], sampler: Any, image_size: int,
                 reader_factory: Callable):
        self.jobs, self.sampler, self.reader_factory = list(jobs), sampler, reader_factory
        self.transform = VideoTransform(image_size)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[dict[str, Any], np.ndarray | None]:
        path, windows = self.jobs[index]
        entry: dict[str, Any] = {"path": path, "source": source_stamp(path)}  # stamped before decoding
        try:
            with self.reader_factory(path) as reader:
                wanted = np.unique(np.concatenate([
                    self.sampler.candidates(reader.num_frames, reader.fps, start=start, end=end)
                    for start, end in windows]))
                frames = reader.get_frames(wanted)  # (K, H, W, 3) uint8
                entry.update(num_frames=int(reader.num_frames), fps=float(reader.fps))
        except VideoDecodeError as exc:
            entry["error"] = exc.reason
            return entry, None
        entry["frames"] = wanted.tolist()
        return entry, self.transform.resize_center_crop(as_frames(frames))  # (K, S, S, 3) uint8


@dataclass
class _ShardWriter:
    """Collects decoded videos and writes them as numbered shards (frames first, then the index)."""

    folder: Path
    image_size: int
    next_id: int
    shard_videos: int = SHARD_VIDEOS
    entries: list[dict[str, Any]] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)
    rows: int = 0
    written: list[int] = field(default_factory=list)

    def add(self, entry: dict[str, Any], pixels: np.ndarray | None) -> None:
        if pixels is not None:
            entry["row"] = self.rows
            self.rows += len(pixels)
            self.arrays.append(pixels)
        self.entries.append(entry)
        if len(self.entries) >= self.shard_videos:
            self.flush()

    def flush(self) -> None:
        if not self.entries:
            return
        size = self.image_size
        data = np.concatenate(self.arrays) if self.arrays else np.zeros((0, size, size, 3), np.uint8)
        stem = self.folder / f"shard_{self.next_id:05d}"

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, data)

        atomic_write(stem.with_suffix(".npy"), save)
        atomic_write_json(stem.with_suffix(".json"), {"format": FORMAT, "rows": int(len(data)),
                                                      "videos": self.entries}, indent=None)
        self.written.append(self.next_id)
        self.next_id += 1
        self.entries, self.arrays, self.rows = [], [], 0


# --------------------------------------------------------------------------------------------------- the cache
class FrameCache:
    """The cached frames of one identity (sub-folder); ``open_reader(path)`` is a drop-in ``reader_factory``.

    Picklable (DataLoader workers): shards are memory-mapped lazily in each process.
    """

    def __init__(self, folder: Path, image_size: int, entries: dict[str, dict[str, Any]]):
        self.folder, self.image_size = Path(folder), int(image_size)
        self._entries = entries  # absolute source path -> its latest entry
        self._shards: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_shards"] = {}
        return state

    def __contains__(self, path: str) -> bool:
        return str(path) in self._entries

    def _shard(self, shard_id: int) -> np.ndarray:
        if shard_id not in self._shards:
            self._shards[shard_id] = np.load(self.folder / f"shard_{shard_id:05d}.npy", mmap_mode="r")
        return self._shards[shard_id]

    def open_reader(self, path: str | os.PathLike) -> CachedVideoReader:
        """Reader of the cached frames of ``path`` (as the dataset resolves it); raises the recorded decode error."""
        entry = self._entries.get(str(path))
        if entry is None:
            raise ConfigError(f"frame cache {self.folder}: {path} is not cached; the cache was built for another "
                              "data list. Rebuild it through build_dataset or set data.frame_cache=null")
        if "error" in entry:
            raise VideoDecodeError(path, entry["error"])
        return CachedVideoReader(Path(path), entry, self._shard(entry["shard"]), self.image_size, self.folder)

    def stats(self) -> dict[str, Any]:
        """Videos, failed videos, frames and bytes of the shards the entries use."""
        entries = self._entries.values()
        frames = sum(len(e.get("frames", ())) for e in entries)
        size = frames * self.image_size * self.image_size * 3  # uint8 RGB rows of these videos
        videos = len(self._entries)
        return {"folder": str(self.folder), "videos": videos, "failed": sum("error" in e for e in entries),
                "frames": frames, "bytes": size, "bytes_per_video": size / max(videos, 1),
                "shards": len({e["shard"] for e in entries})}


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive lock next to the cache folder (processes of one run, or several runs, build it once)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_identity(folder: Path, identity: dict[str, Any]) -> None:
    path = folder / "identity.json"
    if not path.is_file():
        atomic_write_json(path, identity)
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"frame cache {path}: unreadable ({exc}); delete the folder {folder} to rebuild it"
                             ) from exc
    changed = differing_keys(recorded, identity)
    if changed:
        raise IntegrityError(f"frame cache {path} was built with other settings "
                             f"({describe_changes(recorded, identity, changed)}); delete the folder {folder} to "
                             "rebuild it, or point data.frame_cache elsewhere")


def _read_shards(folder: Path, size: int) -> tuple[dict[str, dict[str, Any]], int]:
    """Latest entry per video (absolute path) over the complete shards, and the next free shard number."""
    entries: dict[str, dict[str, Any]] = {}
    next_id = 0
    for name in sorted(os.listdir(folder)):
        match = _SHARD_RE.match(name)
        if not match:
            continue
        shard_id = int(match.group(1))
        next_id = max(next_id, shard_id + 1)
        try:
            index = json.loads((folder / name).read_text())
            data = np.load(folder / f"shard_{shard_id:05d}.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            _logger.warning("frame cache %s: dropping unreadable shard %d (%s); its videos are decoded again",
                            folder, shard_id, exc)
            continue
        if index.get("format") != FORMAT or data.shape != (index.get("rows"), size, size, 3) or data.dtype != np.uint8:
            _logger.warning("frame cache %s: shard %d holds %s %s, its index says %s rows of %dx%d; decoding its "
                            "videos again", folder, shard_id, data.dtype, data.shape, index.get("rows"), size, size)
            continue
        for entry in index["videos"]:
            entries[entry["path"]] = dict(entry, shard=shard_id)
    return entries, next_id


def _prune(folder: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Delete shards that no latest entry uses any more (every video in them was decoded again since)."""
    used = {e["shard"] for e in entries.values()}
    for name in os.listdir(folder):
        match = _SHARD_RE.match(name)
        if match and int(match.group(1)) not in used:
            for suffix in (".json", ".npy"):
                (folder / f"shard_{int(match.group(1)):05d}{suffix}").unlink(missing_ok=True)
            _logger.info("frame cache %s: removed superseded shard %s", folder, match.group(1))


def _jobs(records: Sequence[VideoRecord], videos_root: str,
          entries: dict[str, dict[str, Any]]) -> tuple[list[tuple[str, list[tuple]]], set[str]]:
    """(videos to decode with every window of their records, absolute paths of the records' videos).

    Entries are keyed by absolute path, so lists of other datasets (other videos roots) can share one cache root.
    """
    windows: dict[str, list[tuple]] = {}
    for record in records:
        spans = windows.setdefault(str(resolve_video_path(videos_root, record)), [])
        if (record.start, record.end) not in spans:
            spans.append((record.start, record.end))
    todo = []
    for path, spans in windows.items():
        entry = entries.get(path)
        if entry is None or entry.get("source") != source_stamp(path):
            todo.append((path, spans))
            continue
        cached = [tuple(w) for w in entry.get("windows", [])]
        if not set(spans) <= set(cached):  # a new time window of an unchanged video: decode the union
            todo.append((path, cached + [w for w in spans if w not in cached]))
    return todo, set(windows)


def build_frame_cache(root: str | os.PathLike, records: Sequence[VideoRecord], videos_root: str, sampler: Any,
                      image_size: int, backend: str = "auto", num_workers: int = 0,
                      shard_videos: int = SHARD_VIDEOS, reader_factory: Callable | None = None,
                      multiprocessing_context: str | None = None) -> FrameCache:
    """Open the cache of these settings under ``root``, decoding whatever is missing or stale first.

    Args:
        root: ``data.frame_cache``; the settings' sub-folder is created on first use.
        records: the data list; each distinct video is decoded once for all of its records' time windows.
        videos_root: folder the records' paths resolve against.
        sampler: the frame sampler of the dataset (its ``candidates`` decide the frames kept).
        image_size: model input size S.
        backend: reader backend used to decode.
        num_workers: DataLoader worker processes decoding in parallel (0: in this process).
        shard_videos: videos per shard file.
        reader_factory: ``path -> reader`` (default ``open_video(path, backend)``).
        multiprocessing_context: of the decoding workers (``spawn`` when they decode on a GPU).

    Raises:
        IntegrityError: the sub-folder's identity.json disagrees with these settings (edited or corrupt).
    """
    identity = cache_identity(sampler, image_size, backend)
    folder = cache_folder(root, identity)
    factory = reader_factory or partial(open_video, backend=backend)
    with _locked(folder):
        folder.mkdir(parents=True, exist_ok=True)
        _check_identity(folder, identity)
        entries, next_id = _read_shards(folder, image_size)
        todo, absolute = _jobs(records, videos_root, entries)
        if todo:
            _build(folder, todo, sampler, image_size, factory, num_workers, next_id, shard_videos,
                   multiprocessing_context)
            entries, _ = _read_shards(folder, image_size)
            _prune(folder, entries)
    by_path = {path: entry for path, entry in entries.items() if path in absolute}
    cache = FrameCache(folder, image_size, by_path)
    stats = cache.stats()
    _logger.info("frame cache %s: %d videos (%d failed), %d frames, %.1f MB (%.1f kB per video)", folder,
                 stats["videos"], stats["failed"], stats["frames"], stats["bytes"] / 1e6,
                 stats["bytes_per_video"] / 1e3)
    return cache


def _build(folder: Path, todo: list[tuple[str, list[tuple]]], sampler: Any, image_size: int,
           factory: Callable, num_workers: int, next_id: int, shard_videos: int,
           multiprocessing_context: str | None = None) -> None:
    start = time.perf_counter()
    _logger.info("frame cache %s: decoding %d videos with %d worker(s)", folder, len(todo), num_workers)
    loader = DataLoader(_DecodeJobs(todo, sampler, image_size, factory), batch_size=None, shuffle=False,
                        num_workers=num_workers, collate_fn=_identity_collate,
                        multiprocessing_context=multiprocessing_context if num_workers > 0 else None)
    writer = _ShardWriter(folder, image_size, next_id, shard_videos)
    for (_, spans), (entry, pixels) in zip(todo, loader):
        entry["windows"] = [list(w) for w in spans]
        writer.add(entry, pixels)
    writer.flush()
    _logger.info("frame cache %s: decoded %d videos into %d shard(s) in %.1f s", folder, len(todo),
                 len(writer.written), time.perf_counter() - start)
