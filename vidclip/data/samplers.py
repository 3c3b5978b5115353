"""Frame samplers: which frame indices to decode, chosen from metadata only (frame count, fps) before decoding.

Every sampler is built by ``create_sampler(name, num_frames, **kwargs)`` and called as
``sampler(video_num_frames, fps, *, start=None, end=None, generator=None) -> FrameIndices``. ``indices`` are valid
frame indices (int64, ``(num_frames,)``) for the reader; ``mask`` (bool) is False for padding slots, which repeat a
valid index so that decoding never fails but must not be used as content. ``start``/``end`` are seconds (DiDeMo
moments), clipped to the video. Randomised samplers draw only from the ``np.random.Generator`` they are given, so
a seed fixes the result.

Samplers (register more with ``@SAMPLERS.register("name")`` from any module; the name is then valid for
``data.train_sampler``, and for ``data.test_sampler`` when the sampler's ``deterministic`` is true). The data
pipeline builds a sampler with ``cls.from_config(cfg, num_frames, train)`` when it has one, else
``cls(num_frames=...)``; ``FrameSampler.from_config`` passes the config values named in ``config_keys``.
    uniform         evenly spaced over the window (``np.linspace``, rounded half up); shorter windows give every frame
                    once, then mask-False padding.
    clip4clip       CLIP4Clip's cv2 protocol (landscape.md §4.1-4.3): int(fps), the first frame of each second,
                    then a head / tail / uniform slice to the budget; short videos are mask-padded.
    segment_random  TSN training: ``num_frames`` equal segments, one random frame in each.
    segment_center  TSN testing: the centre frame of each segment.
    prompt_switch   Prompt Switch (methods.md §2.3): ``num_prompts`` segments x ``num_frames // num_prompts`` chunks in
                    chunk-major order; random inside each segment when training with a generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from omegaconf import OmegaConf

from ..errors import ConfigError
from ..registry import SAMPLERS

SLICES = ("head", "tail", "uniform")
SLICE_CODES = {0: "head", 1: "tail", 2: "uniform"}  # CLIP4Clip's slice_framepos values


@dataclass(frozen=True)
class FrameIndices:
    """Frame indices to decode and which of them are real content."""

    indices: np.ndarray  # int64 (T,)
    mask: np.ndarray  # bool (T,), True = real frame

    def __len__(self) -> int:
        return len(self.indices)


def _padded(valid: list[int] | np.ndarray, size: int, pad_as_content: bool = False) -> FrameIndices:
    """``valid`` indices followed by repeats of the last one; padding is masked out unless ``pad_as_content``."""
    valid = np.asarray(valid, dtype=np.int64)[:size]
    count = len(valid)
    if count == 0:
        raise ValueError("a sampler produced no frame index; the video or window is empty")
    indices = np.concatenate([valid, np.full(size - count, valid[-1], dtype=np.int64)])
    mask = np.ones(size, dtype=bool) if pad_as_content else np.arange(size) < count
    return FrameIndices(indices, mask)


class FrameSampler:
    """Base class: validates the call and turns ``start``/``end`` seconds into a frame window."""

    deterministic: ClassVar[bool] = True  # same indices on every call (allowed as data.test_sampler)
    config_keys: ClassVar[dict[str, str]] = {}  # constructor argument -> dotted config key it is read from

    @classmethod
    def from_config(cls, cfg: Any, num_frames: int, train: bool) -> FrameSampler:
        """The sampler for ``num_frames`` frames, with the constructor arguments named in ``config_keys``."""
        return cls(num_frames, **{arg: OmegaConf.select(cfg, key) for arg, key in cls.config_keys.items()})

    def __init__(self, num_frames: int):
        if int(num_frames) < 1:
            raise ConfigError(f"{type(self).__name__}: num_frames must be >= 1, got {num_frames}")
        self.num_frames = int(num_frames)

    def __call__(self, video_num_frames: int, fps: float, *, start: float | None = None,
                 end: float | None = None, generator: np.random.Generator | None = None) -> FrameIndices:
        if int(video_num_frames) < 1:
            raise ValueError(f"{type(self).__name__}: the video has {video_num_frames} frames; nothing to sample")
        return self.sample(int(video_num_frames), float(fps or 0.0), start, end, generator)

    def sample(self, n: int, fps: float, start: float | None, end: float | None,
               generator: np.random.Generator | None) -> FrameIndices:
        raise NotImplementedError

    @staticmethod
    def window(n: int, fps: float, start: float | None, end: float | None) -> tuple[int, int]:
        """Frames ``[first, stop)`` covered by the ``start``/``end`` seconds, clipped to the video (never empty)."""
        if start is None and end is None:
            return 0, n
        if fps <= 0:
            raise ValueError(f"fps is {fps}: cannot turn start={start} / end={end} seconds into frame indices; "
                             "fix the video's frame rate metadata or drop the time window")
        first = 0 if start is None else int(math.floor(max(0.0, start) * fps))
        stop = n if end is None else int(math.ceil(end * fps))
        first = min(first, n - 1)
        return first, max(first + 1, min(stop, n))

    def candidates(self, video_num_frames: int, fps: float, *, start: float | None = None,
                   end: float | None = None) -> np.ndarray:
        """Sorted unique frame indices this sampler can ever return for the video (what a frame cache stores).

        A deterministic sampler: the indices it picks. Otherwise every frame of the window; a random sampler that
        draws from fewer frames can override this to keep a frame cache small.
        """
        if self.deterministic:
            return np.unique(self(video_num_frames, fps, start=start, end=end).indices)
        first, stop = self.window(int(video_num_frames), float(fps or 0.0), start, end)
        return np.arange(first, stop, dtype=np.int64)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


@SAMPLERS.register("uniform")
class UniformSampler(FrameSampler):
    """Evenly spaced frames over the window, first and last included; unique, mask-padded when too short."""

    def sample(self, n, fps, start, end, generator):
        first, stop = self.window(n, fps, start, end)
        length = stop - first
        if length <= self.num_frames:
            return _padded(np.arange(first, stop), self.num_frames)
        positions = np.linspace(first, stop - 1, self.num_frames)
        return _padded(np.floor(positions + 0.5).astype(np.int64), self.num_frames)


class _SegmentSampler(FrameSampler):
    """``num_frames`` equal segments of the window; short windows give every frame once plus mask padding."""

    def sample(self, n, fps, start, end, generator):
        first, stop = self.window(n, fps, start, end)
        length = stop - first
        if length < self.num_frames:
            return _padded(np.arange(first, stop), self.num_frames)
        edges = first + length * np.arange(self.num_frames + 1) / self.num_frames  # (T + 1,)
        return _padded(self.pick(np.floor(edges).astype(np.int64), generator), self.num_frames)

    def pick(self, edges: np.ndarray, generator: np.random.Generator | None) -> np.ndarray:
        raise NotImplementedError


@SAMPLERS.register("segment_center")
class SegmentCenterSampler(_SegmentSampler):
    """TSN test sampling: the centre frame of each segment."""

    def pick(self, edges, generator):
        return (edges[:-1] + edges[1:]) // 2


@SAMPLERS.register("segment_random")
class SegmentRandomSampler(_SegmentSampler):
    """TSN training sampling: one uniformly random frame per segment (an unseeded generator when none is given)."""

    deterministic = False

    def pick(self, edges, generator):
        rng = generator if generator is not None else np.random.default_rng()
        return rng.integers(edges[:-1], edges[1:])  # segment i: [edges[i], edges[i+1])


@SAMPLERS.register("clip4clip")
class CLIP4ClipSampler(FrameSampler):
    """CLIP4Clip's ``RawVideoExtractorCV2`` + ``slice_framepos`` protocol on frame indices.

    ``fps`` is truncated to int; seconds ``start_sec..end_sec`` (inclusive, end clipped to the ceil duration) each
    contribute the frames ``sec * fps + offset`` for ``sample_fps`` offsets spaced ``fps // sample_fps`` apart
    (one frame per second: the first frame of each second); collection stops at the first index past the video, as
    cv2's failed read does. Over budget: ``head`` keeps the first, ``tail`` the last, ``uniform`` takes
    ``np.linspace(0, n - 1, num_frames, dtype=int)``. Under budget: every frame, then mask-False padding.
    A window with no frame (start past the end) falls back to the window's first frame.
    """

    config_keys = {"sample_fps": "data.sample_fps", "slice": "data.slice"}

    def __init__(self, num_frames: int, sample_fps: float = 1.0, slice: str | int = "uniform"):
        super().__init__(num_frames)
        self.slice = SLICE_CODES.get(slice, slice) if isinstance(slice, int) else slice
        if self.slice not in SLICES:
            raise ConfigError(f"clip4clip sampler: slice={slice!r} is not one of {', '.join(SLICES)} (or 0/1/2)")
        self.sample_fps = int(sample_fps)

    def sample(self, n, fps, start, end, generator):
        positions = self.second_positions(n, fps, start, end)
        if not positions:
            positions = [self.window(n, fps, start, end)[0]]
        if len(positions) > self.num_frames:
            if self.slice == "head":
                positions = positions[: self.num_frames]
            elif self.slice == "tail":
                positions = positions[-self.num_frames:]
            else:
                keep = np.linspace(0, len(positions) - 1, num=self.num_frames, dtype=int)
                positions = [positions[i] for i in keep]
        return _padded(positions, self.num_frames)

    def second_positions(self, n: int, fps: float, start: float | None, end: float | None) -> list[int]:
        """Frame indices the cv2 loop reads, before slicing (stops at the first index past the last frame)."""
        fps_int = int(fps)
        if fps_int <= 0:
            raise ValueError(f"clip4clip sampler: fps {fps} truncates to 0 frames per second; the protocol needs "
                             "fps >= 1 (use the uniform sampler for such videos, or fix their metadata)")
        total_duration = (n + fps_int - 1) // fps_int
        start_sec, end_sec = 0, total_duration
        if start is not None or end is not None:
            start_sec = max(0.0, start or 0.0)
            end_sec = total_duration if end is None else min(end, total_duration)
        sample_fps = self.sample_fps if self.sample_fps > 0 else fps_int
        interval = max(fps_int // sample_fps, 1)
        offsets = list(range(0, fps_int, interval))[:sample_fps]
        positions: list[int] = []
        for sec in np.arange(start_sec, end_sec + 1):
            base = int(sec * fps_int)
            for offset in offsets:
                if base + offset >= n:
                    return positions
                positions.append(base + offset)
        return positions


@SAMPLERS.register("prompt_switch")
class PromptSwitchSampler(FrameSampler):
    """Prompt Switch's ``load_frames_from_video`` indices (methods.md §2.3), chunk-major.

    The window is cut into ``P = min(num_prompts, length)`` segments ``[a, b]`` (``b`` = next start - 1); chunk ``i``
    of ``C = num_frames // num_prompts`` takes from every segment ``a + (b - a) // (C + 1) * (i + 1)`` (test) or a
    random index in ``[a, b)`` (train, with a generator). Order: ``[chunk0: seg0..segP-1, chunk1: ...]``.
    Videos shorter than ``num_prompts`` yield fewer than ``num_frames`` indices; ``short="repeat"`` pads with the
    last index as real content, as the reference does; ``short="mask"`` pads with mask False instead.
    Deterministic in evaluation (``train=False``); random per segment when training.
    """

    prompt_chunks = True  # frames come in chunks of model.prompt.num_prompts (load_config checks the frame counts)

    @classmethod
    def from_config(cls, cfg: Any, num_frames: int, train: bool) -> PromptSwitchSampler:
        """Chunks of ``model.prompt.num_prompts`` frames; random inside each segment when ``train``."""
        return cls(num_frames, num_prompts=cfg.model.prompt.num_prompts, train=train)

    def __init__(self, num_frames: int, num_prompts: int = 6, train: bool = False, short: str = "repeat"):
        super().__init__(num_frames)
        if num_prompts < 1 or num_frames % num_prompts:
            raise ConfigError(f"prompt_switch sampler: num_frames ({num_frames}) must be a positive multiple of "
                              f"num_prompts ({num_prompts})")
        if short not in ("repeat", "mask"):
            raise ConfigError(f"prompt_switch sampler: short={short!r}; use 'repeat' (reference) or 'mask'")
        self.num_prompts, self.train, self.short = int(num_prompts), bool(train), short

    def sample(self, n, fps, start, end, generator):
        first, stop = self.window(n, fps, start, end)
        length = stop - first
        segments = min(self.num_prompts, length)
        bounds = np.linspace(0, length, num=segments + 1).astype(int)  # (P + 1,)
        lows, highs = bounds[:-1], bounds[1:] - 1  # segment s = [lows[s], highs[s]]
        chunks = self.num_frames // self.num_prompts
        rows = []
        for i in range(chunks):
            if self.train and generator is not None:
                rows.append(generator.integers(lows, np.maximum(highs, lows + 1)))  # [a, b) as the reference
            else:
                rows.append((highs - lows) // (chunks + 1) * (i + 1) + lows)
        indices = first + np.concatenate(rows)  # (C * P,) chunk-major
        return _padded(indices, self.num_frames, pad_as_content=self.short == "repeat")

    def candidates(self, video_num_frames, fps, *, start=None, end=None):
        """Training draws from every frame of the window; evaluation picks fixed frames."""
        if not self.train:
            return super().candidates(video_num_frames, fps, start=start, end=end)
        first, stop = self.window(int(video_num_frames), float(fps or 0.0), start, end)
        return np.arange(first, stop, dtype=np.int64)


def create_sampler(name: str, num_frames: int, **kwargs) -> FrameSampler:
    """Build the sampler registered as ``name`` (see the module docstring) for ``num_frames`` frames per video."""
    return SAMPLERS.create(name, num_frames=num_frames, **kwargs)


def sampler_from_config(cfg: Any, name: str, num_frames: int, train: bool) -> FrameSampler:
    """The sampler registered as ``name``, built from the config (``from_config``) when it knows how."""
    factory = SAMPLERS.get(name)
    from_config = getattr(factory, "from_config", None)
    if from_config is None:
        return factory(num_frames=num_frames)
    return from_config(cfg, num_frames, train)
