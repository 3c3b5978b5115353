"""The built-in synthetic video-text dataset: one coloured shape that moves, grows, shrinks or stays still.

Deterministic for a seed: real H.264 .mp4 files written with PyAV plus unified JSONL lists (architecture.md §3)::

    <out>/videos/{train,val,test}/<video_id>.mp4
    <out>/synthetic_{train,val,test}.jsonl      paths relative to <out>/videos

Each record carries ``meta = {"colour", "shape", "motion", "pair_id", "twin", "trajectory"}``.

Why it tests temporal modelling: a clip moving right is exactly the time reversal of a clip moving left over the same
positions (likewise down/up and grow/shrink), and start positions, travel distances and sizes are drawn from
distributions that are symmetric under that reversal. A frame-order-invariant model (mean pooling of per-frame
features) therefore cannot tell the directions apart. The val and test splits are made of *twin pairs*: a clip and
its exact time reversal (same colour, shape and frames, reversed order and opposite motion; the default lossless
codec makes the decoded frame sets identical too), so ``vidclip.metrics.motion_direction_accuracy`` (with
``twin_indices``) can measure how often the true clip outscores its twin. Order-invariant models sit at exactly
0.5 there.

Why a model can learn it: the training split is laid out the same way by default (``twins+still``: every direction
clip next to its reversed twin under one ``meta.pair_id``, plus unpaired still clips). Colour and shape alone solve
the contrastive task against random in-batch negatives, so nothing pushes a model towards frame order unless the
reversed twin is in the same batch; ``data.group_by_meta=pair_id`` (see ``configs/data/synthetic.yaml``) keeps it
there, which makes the twin the hardest negative of every direction caption.

Splits: every colour, shape and axis (motion, for ``single`` training) is drawn from a refilled shuffled bag, so each
appears in training as soon as the split has as many draws as that attribute has values. Colour-shape-motion triples
are shared between splits (the vocabulary is small), but trajectories are not: a video whose (colour, shape, axis,
trajectory quantised to ``size/16`` px) is already used by an earlier split is redrawn. Test is drawn first, then
val, then train, each from its own random stream, so the test split does not change with the number of training
videos.

CLI: ``python tools/make_synthetic.py --out DIR [--num-videos N] [--seed S] [--frames F] [--size PX] [--fps FPS]
[--train-layout twins+still|twins|single]`` (also ``vidclip make-synthetic``; the parser is in
:mod:`vidclip.cli.make_synthetic`).
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from .lists import VideoRecord, write_list

_logger = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 245), "yellow": (240, 220, 40),
    "purple": (165, 60, 210), "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SHAPE_NOUNS: dict[str, str] = {"circle": "ball", "square": "block", "triangle": "triangle"}  # paraphrase nouns
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "grow", "shrink", "still")
REVERSE: dict[str, str] = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink",
                           "shrink": "grow"}
AXES: dict[str, tuple[str, str]] = {"horizontal": ("right", "left"), "vertical": ("down", "up"),
                                    "scale": ("grow", "shrink")}  # axis -> (forward motion, its time reversal)
AXIS_OF: dict[str, str] = {m: axis for axis, pair in AXES.items() for m in pair}
# {c}: colour, {s}: shape, {n}: a paraphrase noun of the shape ("ball" for a circle).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("a {c} {s} moves to the left", "a {c} {s} is moving left", "the {c} {n} slides leftwards",
             "a {c} {s} travels from right to left"),
    "right": ("a {c} {s} moves to the right", "a {c} {s} is moving right", "the {c} {n} slides rightwards",
              "a {c} {s} travels from left to right"),
    "up": ("a {c} {s} moves up", "a {c} {s} is rising", "the {c} {n} goes upwards",
           "a {c} {s} travels from bottom to top"),
    "down": ("a {c} {s} moves down", "a {c} {s} is falling", "the {c} {n} goes downwards",
             "a {c} {s} travels from top to bottom"),
    "grow": ("a {c} {s} is growing", "a {c} {s} gets bigger", "the {c} {n} expands",
             "a small {c} {s} becomes large"),
    "shrink": ("a {c} {s} is shrinking", "a {c} {s} gets smaller", "the {c} {n} contracts",
               "a large {c} {s} becomes small"),
    "still": ("a {c} {s} stays still", "a {c} {s} does not move", "the {c} {n} rests in place",
              "a motionless {c} {s}"),
}
CODECS = ("libx264rgb", "libx264")
SPLIT_STREAMS = {"test": 2, "val": 1, "train": 0}  # generation order test -> val -> train, one random stream each


@dataclass(frozen=True)
class SyntheticSettings:
    """Clip geometry and encoding shared by all splits."""

    size: int = 64  # frame width and height (px)
    frames: int = 16
    fps: int = 8
    codec: str = "libx264rgb"  # lossless RGB H.264; "libx264" = yuv420p, near-lossless (crf 12)

    def __post_init__(self) -> None:
        if self.size < 16 or self.frames < 2 or self.fps < 1:
            raise ValueError(f"synthetic clips need size >= 16 px, frames >= 2 and fps >= 1; got size={self.size}, "
                             f"frames={self.frames}, fps={self.fps}")
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; choose one of {', '.join(CODECS)}")


# ------------------------------------------------------------------------------------------------ geometry
def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean (H, W) mask of ``shape`` centred at (cx, cy) with half-extent ``r``."""
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    if shape == "triangle":  # pointing up, height 2r, base width 2.4r
        top = cy - r
        return (yy >= top) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - top) * 0.6)
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def forward_trajectory(axis: str, size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T, 3) float array of (cx, cy, r) per frame for the forward motion of ``axis`` (right, down, grow).

    Start, end (hence speed) and the fixed coordinates are random per video; the reversed motion is ``[::-1]``.
    """
    t = np.linspace(0.0, 1.0, frames)[:, None]  # (T, 1)
    r = rng.uniform(0.12, 0.16) * size
    lo, hi = r + 1.0, size - r - 1.0
    if axis in ("horizontal", "vertical"):
        a, b = rng.uniform(lo, 0.35 * size), rng.uniform(0.65 * size, hi)  # travel >= 30% of the frame
        fixed = rng.uniform(lo, hi)
        moving = a + (b - a) * t[:, 0]  # (T,)
        cx, cy = (moving, np.full(frames, fixed)) if axis == "horizontal" else (np.full(frames, fixed), moving)
        return np.stack([cx, cy, np.full(frames, r)], axis=1)  # (T, 3)
    if axis == "scale":
        r0, r1 = rng.uniform(0.05, 0.08) * size, rng.uniform(0.24, 0.3) * size
        cx, cy = rng.uniform(0.38 * size, 0.62 * size, size=2)
        radius = r0 + (r1 - r0) * t[:, 0]  # (T,)
        return np.stack([np.full(frames, cx), np.full(frames, cy), radius], axis=1)  # (T, 3)
    raise ValueError(f"unknown motion axis {axis!r}; known axes: {', '.join(AXES)}")


def trajectory(motion: str, size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T, 3) (cx, cy, r) per frame for any motion in ``MOTIONS``."""
    if motion == "still":
        r = rng.uniform(0.12, 0.16) * size
        cx, cy = rng.uniform(r + 1.0, size - r - 1.0, size=2)
        return np.tile([[cx, cy, r]], (frames, 1))  # (T, 3)
    if motion not in AXIS_OF:
        raise ValueError(f"unknown motion {motion!r}; known motions: {', '.join(MOTIONS)}")
    path = forward_trajectory(AXIS_OF[motion], size, frames, rng)
    return path if AXES[AXIS_OF[motion]][0] == motion else path[::-1].copy()


def render_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3) dark grey background, plain or lightly textured (static over the clip)."""
    base = int(rng.integers(15, 60))
    amplitude = int(rng.choice([0, 6, 12, 18]))
    noise = rng.integers(0, amplitude + 1, size=(size, size, 1)) if amplitude else np.zeros((size, size, 1), int)
    return np.repeat(base + noise, 3, axis=2).astype(np.uint8)  # (H, W, 3)


def render_clip(shape: str, colour: str, path: np.ndarray, background: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) clip: ``background`` with the shape drawn at every (cx, cy, r) row of ``path``."""
    size = background.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres, (H, W) each
    clip = np.repeat(background[None], len(path), axis=0)  # (T, H, W, 3)
    for k, (cx, cy, r) in enumerate(path):
        clip[k][_shape_mask(shape, xx, yy, cx, cy, r)] = COLOURS[colour]
    return clip


def write_mp4(path: Path, clip: np.ndarray, fps: int, codec: str = "libx264rgb") -> Path:
    """Encode uint8 (T, H, W, 3) frames with PyAV, single-threaded so the bytes are reproducible."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = clip.shape[2], clip.shape[1]
        if codec == "libx264rgb":
            stream.pix_fmt, stream.options = "rgb24", {"qp": "0", "preset": "fast", "threads": "1"}
        else:
            stream.pix_fmt, stream.options = "yuv420p", {"crf": "12", "preset": "fast", "threads": "1"}
        stream.codec_context.thread_count = 1
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ------------------------------------------------------------------------------------------------ captions, plans
def captions_for(colour: str, shape: str, motion: str, rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct paraphrases (random templates) naming the colour, shape and motion."""
    templates = TEMPLATES[motion]
    order = rng.permutation(len(templates))[:max(1, min(count, len(templates)))]
    return [templates[i].format(c=colour, s=shape, n=SHAPE_NOUNS[shape]) for i in order]


def _bag(values: Sequence[str], rng: np.random.Generator) -> Iterator[str]:
    """Endless draws where every value appears once per round of ``len(values)`` (balanced prefixes)."""
    while True:
        for i in rng.permutation(len(values)):
            yield values[i]


def _trajectory_key(colour: str, shape: str, motion: str, path: np.ndarray, size: int) -> tuple:
    """Direction-agnostic identity of a clip's frame set, quantised to ``size/16`` px cells."""
    cell = max(1.0, size / 16)
    ends = sorted(tuple(np.round(row / cell).astype(int).tolist()) for row in (path[0], path[-1]))
    return (colour, shape, AXIS_OF.get(motion, "still"), *ends)


def _draw_new_trajectory(colour: str, shape: str, motion: str, settings: SyntheticSettings, rng: np.random.Generator,
                         taken: set[tuple], tries: int = 50) -> np.ndarray:
    for _ in range(tries):
        path = trajectory(motion, settings.size, settings.frames, rng)
        key = _trajectory_key(colour, shape, motion, path, settings.size)
        if key not in taken:
            break
    else:
        _logger.warning("no unused trajectory for a %s %s (%s) after %d tries; re-using one", colour, shape, motion,
                        tries)
    taken.add(key)
    return path


@dataclass
class ClipSpec:
    """Everything needed to render, encode and describe one video."""

    video_id: str
    colour: str
    shape: str
    motion: str
    path: np.ndarray  # (T, 3) cx, cy, r
    background: np.ndarray  # (H, W, 3) uint8
    captions: list[str]
    pair_id: str | None = None
    twin: str | None = None


LAYOUTS = ("twins", "twins+still", "single")  # how a split is drawn, see plan_split


def _next_motion(layout: str, room_for_pair: bool, axes: Iterator[str], motions: Iterator[str],
                 rng: np.random.Generator) -> tuple[str, bool]:
    """(motion, paired) of the next draw of ``plan_split``."""
    if layout == "single":
        return next(motions), False
    axis = next(axes)
    if axis == "still" or not room_for_pair:
        return "still", False
    return AXES[axis][int(rng.integers(2))], True


def plan_split(split: str, count: int, settings: SyntheticSettings, rng: np.random.Generator, taken: set[tuple],
               layout: str, captions_per_video: int) -> list[ClipSpec]:
    """Draw ``count`` clip specifications laid out as ``layout``.

    ``twins``: (clip, time-reversed clip) pairs of direction motions only, an odd count ending with one still clip
    (evaluation). ``twins+still``: draws from the bag {horizontal, vertical, scale, still}, a direction axis giving
    a twin pair and ``still`` one unpaired clip, so every motion appears and each clip's reversal sits next to it
    (training with hard negatives). ``single``: independent clips, motions drawn from a bag of the seven motions.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown split layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    colours, shapes = _bag(list(COLOURS), rng), _bag(SHAPES, rng)
    motions = _bag(MOTIONS, rng)
    axes = _bag(list(AXES) + (["still"] if layout == "twins+still" else []), rng)
    specs: list[ClipSpec] = []
    while len(specs) < count:
        colour, shape = next(colours), next(shapes)
        vid = f"{split}{len(specs):05d}"
        motion, paired = _next_motion(layout, len(specs) + 2 <= count, axes, motions, rng)
        path = _draw_new_trajectory(colour, shape, motion, settings, rng, taken)
        background = render_background(settings.size, rng)
        caps = captions_for(colour, shape, motion, rng, captions_per_video)
        if not paired:
            specs.append(ClipSpec(vid, colour, shape, motion, path, background, caps))
            continue
        twin_id, twin_motion = f"{split}{len(specs) + 1:05d}", REVERSE[motion]
        pair_id = f"{split}-pair{len(specs) // 2:04d}"
        twin_caps = captions_for(colour, shape, twin_motion, rng, captions_per_video)
        specs.append(ClipSpec(vid, colour, shape, motion, path, background, caps, pair_id, twin_id))
        specs.append(ClipSpec(twin_id, colour, shape, twin_motion, path[::-1].copy(), background, twin_caps, pair_id,
                              vid))
    return specs


def _record(split: str, spec: ClipSpec) -> VideoRecord:
    meta = {"colour": spec.colour, "shape": spec.shape, "motion": spec.motion, "pair_id": spec.pair_id,
            "twin": spec.twin, "trajectory": {"start": np.round(spec.path[0], 2).tolist(),
                                              "end": np.round(spec.path[-1], 2).tolist()}}
    return VideoRecord(video_id=spec.video_id, path=f"{split}/{spec.video_id}.mp4", captions=spec.captions,
                       meta=meta)


# ------------------------------------------------------------------------------------------------ dataset
def make_synthetic_dataset(out: Union[str, Path], num_train: int = 1200, num_val: int = 48, num_test: int = 64,
                           seed: int = 0, size: int = 64, frames: int = 16, fps: int = 8,
                           captions_per_video: int = 4, codec: str = "libx264rgb",
                           show_progress: bool | None = None, train_layout: str = "twins+still",
                           workers: int = 0) -> dict[str, Path]:
    """Write the three splits under ``out`` and return ``{split: path of its JSONL list}``.

    Training videos get ``captions_per_video`` paraphrases and are laid out as ``train_layout`` (default
    ``twins+still``: direction clips come with their time-reversed twin, sharing ``meta.pair_id``, so a batch that
    keeps twins together — ``data.group_by_meta=pair_id`` — holds the one negative that only frame order can tell
    apart; ``single``: independent clips). Val and test videos get exactly one caption (one text per video, the
    layout ``motion_direction_accuracy`` expects) and come as time-reversed twin pairs (an odd count ends with one
    unpaired still clip). Same arguments, same lists and the same decoded frames, for any number of ``workers``
    (processes encoding clips in parallel; 0 encodes in this process).
    """
    for name, count in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if count < 0:
            raise ValueError(f"{name} must be >= 0, got {count}")
    settings = SyntheticSettings(size=size, frames=frames, fps=fps, codec=codec)
    out = Path(out)
    if train_layout not in LAYOUTS:
        raise ValueError(f"train_layout={train_layout!r}; choose one of {', '.join(LAYOUTS)}")
    plan = {"test": (num_test, "twins", 1), "val": (num_val, "twins", 1),
            "train": (num_train, train_layout, captions_per_video)}
    taken: set[tuple] = set()
    specs: dict[str, list[ClipSpec]] = {}
    for split in SPLIT_STREAMS:  # test first: it must not depend on the number of training videos
        count, layout, caps = plan[split]
        rng = np.random.default_rng([seed, SPLIT_STREAMS[split]])
        specs[split] = plan_split(split, count, settings, rng, taken, layout, caps)
    _encode_all(out / "videos", specs, settings, show_progress, workers)
    lists = {}
    for split in ("train", "val", "test"):
        lists[split] = write_list([_record(split, s) for s in specs[split]], out / f"synthetic_{split}.jsonl")
        _logger.info("synthetic %s: %d videos -> %s", split, len(specs[split]), lists[split])
    return lists


def _encode_one(job: tuple[Path, ClipSpec, SyntheticSettings]) -> None:
    path, spec, settings = job
    clip = render_clip(spec.shape, spec.colour, spec.path, spec.background)  # (T, H, W, 3)
    write_mp4(path, clip, settings.fps, settings.codec)


def _encode_all(videos_root: Path, specs: dict[str, list[ClipSpec]], settings: SyntheticSettings,
                show_progress: bool | None, workers: int = 0) -> None:
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    total = sum(len(v) for v in specs.values())
    disable = not sys.stderr.isatty() if show_progress is None else not show_progress
    _logger.info("writing %d synthetic clips (%d frames, %dx%d px, %d fps, %s) under %s", total, settings.frames,
                 settings.size, settings.size, settings.fps, settings.codec, videos_root)
    jobs = [(videos_root / split / f"{spec.video_id}.mp4", spec, settings)
            for split, split_specs in specs.items() for spec in split_specs]
    with tqdm(total=total, desc="synthetic videos", unit="video", disable=disable) as bar:
        if workers <= 0:
            for job in jobs:
                _encode_one(job)
                bar.update(1)
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_encode_one, jobs, chunksize=16):
                bar.update(1)


# ------------------------------------------------------------------------------------------------ evaluation
def twin_indices(records: Sequence[VideoRecord]) -> np.ndarray:
    """(N,) int64 index of each record's time-reversed twin, -1 for none (for ``metrics.motion_direction_accuracy``).

    The twin is named by ``meta.twin`` or, failing that, is the other record sharing ``meta.pair_id``.
    """
    index = {r.video_id: i for i, r in enumerate(records)}
    by_pair: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        pair = (record.meta or {}).get("pair_id")
        if pair is not None:
            by_pair.setdefault(str(pair), []).append(i)
    twins = np.full(len(records), -1, dtype=np.int64)
    for i, record in enumerate(records):
        meta = record.meta or {}
        if meta.get("twin") in index:
            twins[i] = index[meta["twin"]]
        elif meta.get("pair_id") is not None and len(by_pair[str(meta["pair_id"])]) == 2:
            a, b = by_pair[str(meta["pair_id"])]
            twins[i] = b if i == a else a
    return twins

