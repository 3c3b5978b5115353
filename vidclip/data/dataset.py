"""``VideoTextDataset``: data list -> reader metadata -> sampler -> ``get_frames`` -> transform -> sample dict.

Modes:
- ``train`` + ``caption_sampling="random"``: one item per video per epoch, its caption drawn from (seed, epoch, index);
- ``train`` + ``"all"``: one item per (video, caption) pair;
- ``eval``: one item per video (each video decoded exactly once); ``texts`` and ``text_to_video`` give every caption
  and the index of its video for the (multi-caption) metrics.
A video that fails to decode yields ``{"failed": path, "error": message, "index": i}`` — never a zero tensor — and is
logged once with its path and counted; the collate function drops such items and reports them.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import VideoDecodeError
from .lists import VideoRecord, resolve_video_path
from .readers import open_video

_logger = logging.getLogger(__name__)


class VideoTextDataset(Dataset):
    """Videos and captions of a data list, decoded on demand.

    Args:
        records: the data list.
        videos_root: folder the records' relative paths resolve against.
        sampler: frame sampler (``sampler(num_frames, fps, start=, end=, generator=) -> FrameIndices``).
        transform: uint8 (T, H, W, 3) -> float (T, 3, S, S).
        mode: ``train`` or ``eval``.
        caption_sampling: ``random`` (one caption per video per epoch) or ``all`` (every pair), training only.
        backend: video reader backend.
        seed: seeds caption choice and random frame sampling: item i of epoch e is a function of (seed, e, i).
        reader_factory: ``path -> reader`` (default ``open_video(path, backend)``); the reader is a context manager.
        max_failures_logged: distinct failed videos logged with a warning; later ones are logged at debug level.
        sentence_groups: training only; > 0 makes each item a group of up to this many timed sentences of one video
            (``record.sentences``, a random run of consecutive ones when there are more; a record without sentences
            is one group of its caption over its whole span), each sentence paired with frames sampled inside its
            moment: ``video`` (K, T, 3, S, S), ``video_mask`` (K, T), ``caption`` a list of K sentences,
            ``group_size`` K. Norton's video-paragraph loss needs these groups.

    Raises:
        DataListError: a record's path escapes ``videos_root`` (checked for every record up front).

    Failures are counted per process: with DataLoader workers, ``num_failed`` / ``failed_paths`` of the dataset in
    the main process stay empty; the batches' ``"failed"`` lists are the reliable record.
    """

    def __init__(self, records: Sequence[VideoRecord], videos_root: str, sampler: Callable, transform: Callable,
                 mode: str = "train", caption_sampling: str = "random", backend: str = "auto", seed: int = 0,
                 reader_factory: Callable | None = None, max_failures_logged: int = 20, sentence_groups: int = 0):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if caption_sampling not in ("random", "all"):
            raise ValueError(f"caption_sampling must be 'random' or 'all', got {caption_sampling!r}")
        self.records = list(records)
        self.videos_root = videos_root
        self._paths = [resolve_video_path(videos_root, r) for r in self.records]  # refuses paths escaping the root
        self.sampler, self.transform = sampler, transform
        self.mode, self.caption_sampling, self.backend, self.seed = mode, caption_sampling, backend, seed
        self.reader_factory = reader_factory or partial(open_video, backend=backend)  # picklable for workers
        self.epoch = 0
        self.max_failures_logged = max_failures_logged
        self._failed: dict[int, str] = {}  # video index -> record path
        self._index_of_path = {r.path: i for i, r in reversed(list(enumerate(self.records)))}  # first one wins
        self.texts: list[str] = [c for r in self.records for c in r.captions]
        self.text_to_video: list[int] = [i for i, r in enumerate(self.records) for _ in r.captions]
        self._pairs = ([(i, j) for i, r in enumerate(self.records) for j in range(len(r.captions))]
                       if mode == "train" and caption_sampling == "all" else None)
        self.sentence_groups = int(sentence_groups) if mode == "train" else 0
        if self.sentence_groups:
            self._pairs = None  # one item per video: its sentences are the pairs

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random captions / frame offsets items are drawn from."""
        self.epoch = int(epoch)

    @property
    def num_failed(self) -> int:
        """Distinct videos that failed to decode in this process."""
        return len(self._failed)

    @property
    def failed_paths(self) -> list[str]:
        """Record paths of the videos that failed to decode in this process, in list order."""
        return [self._failed[i] for i in sorted(self._failed)]

    def index_of_path(self, path: str) -> int:
        """Video index of a record path (as reported in a batch's ``"failed"``); -1 when unknown."""
        return self._index_of_path.get(str(path), -1)

    def __len__(self) -> int:
        return len(self._pairs) if self._pairs is not None else len(self.records)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _caption(self, video_index: int, caption_index: int | None, rng: np.random.Generator) -> str:
        captions = self.records[video_index].captions
        if not captions:
            return ""
        if caption_index is None:
            caption_index = int(rng.integers(len(captions))) if self.mode == "train" else 0
        return captions[caption_index]

    def load_video(self, video_index: int, rng: np.random.Generator | None = None):
        """(frames float (T, 3, S, S), mask bool (T,)) of a record; raises VideoDecodeError."""
        record = self.records[video_index]
        return self.load_moments(video_index, [(record.start, record.end)], rng)[0]

    def load_moments(self, video_index: int, spans: Sequence[tuple[float | None, float | None]],
                     rng: np.random.Generator | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(frames (T, 3, S, S), mask (T,)) for each (start, end) seconds span of one video, decoded with one reader."""
        with self.reader_factory(str(self._paths[video_index])) as reader:
            picked = [self.sampler(reader.num_frames, reader.fps, start=start, end=end,
                                   generator=rng if self.mode == "train" else None) for start, end in spans]
            raw = [(np.asarray(p.mask, dtype=bool), reader.get_frames(np.asarray(p.indices)[np.asarray(p.mask, bool)]))
                   for p in picked]  # [(valid (T,), uint8 (T_valid, H, W, 3))]
        return [self._to_pixels(frames, valid, rng) for valid, frames in raw]

    def _to_pixels(self, frames: np.ndarray, valid: np.ndarray, rng: np.random.Generator | None):
        """uint8 (T_valid, H, W, 3) decoded frames -> (float (T, 3, S, S) with zero padding slots, mask (T,))."""
        torch_gen = None
        if self.mode == "train" and rng is not None:  # augmentation drawn from (seed, epoch, index) too
            torch_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        pixels = self.transform(frames, generator=torch_gen)  # (T_valid, 3, S, S)
        out = pixels.new_zeros((len(valid),) + tuple(pixels.shape[1:]))  # (T, 3, S, S), padding slots masked out
        out[torch.from_numpy(valid)] = pixels
        return out, torch.from_numpy(valid)

    def _record_failure(self, video_index: int, exc: Exception) -> None:
        if video_index in self._failed:
            return
        self._failed[video_index] = self.records[video_index].path
        if len(self._failed) <= self.max_failures_logged:
            _logger.warning("skipping video %s (%s): %s", self.records[video_index].path, self._paths[video_index], exc)
            if len(self._failed) == self.max_failures_logged:
                _logger.warning("%d videos failed; further failures are counted but logged at debug level only",
                                self.max_failures_logged)
        else:
            _logger.debug("skipping video %s: %s", self._paths[video_index], exc)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_index, caption_index = self._pairs[index] if self._pairs is not None else (index, None)
        rng = self._rng(index)
        record = self.records[video_index]
        if self.sentence_groups:
            return self._sentence_group(video_index, rng)
        try:
            video, mask = self.load_video(video_index, rng)
        except VideoDecodeError as exc:
            self._record_failure(video_index, exc)
            return {"failed": record.path, "error": str(exc), "index": video_index, "video_id": record.video_id}
        return {"video": video, "video_mask": mask, "caption": self._caption(video_index, caption_index, rng),
                "video_id": record.video_id, "index": video_index}

    def _sentence_group(self, video_index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Item of up to ``sentence_groups`` timed sentences of a video, each with the frames of its moment."""
        record = self.records[video_index]
        sentences = record.sentences or [{"text": self._caption(video_index, None, rng), "start": record.start,
                                          "end": record.end}]
        if len(sentences) > self.sentence_groups:  # a random run of consecutive sentences
            first = int(rng.integers(len(sentences) - self.sentence_groups + 1))
            sentences = sentences[first:first + self.sentence_groups]
        try:
            clips = self.load_moments(video_index, [(s.get("start"), s.get("end")) for s in sentences], rng)
        except VideoDecodeError as exc:
            self._record_failure(video_index, exc)
            return {"failed": record.path, "error": str(exc), "index": video_index, "video_id": record.video_id}
        return {"video": torch.stack([c[0] for c in clips]), "video_mask": torch.stack([c[1] for c in clips]),
                "caption": [str(s["text"]) for s in sentences], "group_size": len(sentences),
                "video_id": record.video_id, "index": video_index}  # video (K, T, 3, S, S), video_mask (K, T)
