"""The built-in synthetic video-text dataset: coloured shapes that move, grow, shrink or stay still.

Deterministic for a seed; real H.264 mp4 files written with PyAV plus unified JSONL lists::

    <out>/videos/{train,val,test}/<id>.mp4
    <out>/synthetic_{train,val,test}.jsonl     (records carry meta: colour, shape, motion, pair_id)

Why it is a real learning test: a clip moving right is exactly the time reversal of its twin moving left (same
frames, opposite order), likewise up/down and grow/shrink. A frame-order-invariant model (mean pooling of per-frame
features) therefore gives both twins the same score and cannot do better than chance on the direction queries; the
test split holds every direction clip together with its reversed twin, and ``motion_direction_accuracy`` measures
how often the true clip outscores its twin.

CLI: ``python tools/make_synthetic.py --out DIR [--num-videos N] [--seed S]`` (also ``vidclip make-synthetic``).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .lists import VideoRecord, write_list

_logger = logging.getLogger(__name__)

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 240), "yellow": (240, 220, 40),
    "purple": (160, 60, 200), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "still")
REVERSE = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow"}
TEMPLATES: Dict[str, Sequence[str]] = {
    "left": ("a {c} {s} moves to the left", "a {c} {s} is moving left", "the {c} {s} slides leftwards",
             "a {c} {s} travels from right to left"),
    "right": ("a {c} {s} moves to the right", "a {c} {s} is moving right", "the {c} {s} slides rightwards",
              "a {c} {s} travels from left to right"),
    "up": ("a {c} {s} moves up", "a {c} {s} is rising", "the {c} {s} goes upward", "a {c} {s} travels from bottom to top"),
    "down": ("a {c} {s} moves down", "a {c} {s} is falling", "the {c} {s} goes downward",
             "a {c} {s} travels from top to bottom"),
    "grow": ("a {c} {s} is growing", "a {c} {s} gets bigger", "the {c} {s} expands", "a small {c} {s} becomes large"),
    "shrink": ("a {c} {s} is shrinking", "a {c} {s} gets smaller", "the {c} {s} contracts",
               "a large {c} {s} becomes small"),
    "still": ("a {c} {s} stays still", "a {c} {s} does not move", "the {c} {s} rests in place",
              "a motionless {c} {s}"),
}


# ------------------------------------------------------------------------------------------------ drawing
def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    top = cy - r  # upward-pointing triangle of height 2r
    return (yy >= top) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - top) * 0.6)


def _trajectory(motion: str, size: int, frames: int, rng: np.random.Generator) -> List[Tuple[float, float, float]]:
    """(cx, cy, r) per frame for the FORWARD version of ``motion`` (left, up, shrink are reversals)."""
    r = float(rng.uniform(0.12, 0.16) * size)
    lo, hi = r + 1, size - r - 1
    a = float(rng.uniform(lo, size * 0.4))
    b = float(rng.uniform(size * 0.6, hi))
    c = float(rng.uniform(lo + 2, hi - 2))
    t = np.linspace(0.0, 1.0, frames)
    if motion in ("right", "left"):
        path = [(a + (b - a) * s, c, r) for s in t]
    elif motion in ("down", "up"):
        path = [(c, a + (b - a) * s, r) for s in t]
    elif motion in ("grow", "shrink"):
        cx, cy = float(rng.uniform(size * 0.35, size * 0.65)), float(rng.uniform(size * 0.35, size * 0.65))
        r0, r1 = size * 0.06, size * 0.3
        path = [(cx, cy, r0 + (r1 - r0) * s) for s in t]
    else:
        path = [(c, float(rng.uniform(lo, hi)), r)] * frames
    return path[::-1] if motion in ("left", "up", "shrink") else path


def render_clip(colour: str, shape: str, motion: str, size: int, frames: int, rng: np.random.Generator,
                path: Optional[List[Tuple[float, float, float]]] = None) -> np.ndarray:
    """uint8 (T, size, size, 3) clip: a static lightly textured background and one moving shape."""
    background = (28 + rng.integers(0, 18, size=(size, size, 1))).astype(np.uint8).repeat(3, axis=2)
    path = path or _trajectory(motion, size, frames, rng)
    clip = np.empty((frames, size, size, 3), dtype=np.uint8)
    for k, (cx, cy, r) in enumerate(path):
        frame = background.copy()
        frame[_shape_mask(shape, size, cx, cy, r)] = COLOURS[colour]
        clip[k] = frame
    return clip


def write_mp4(path: Path, clip: np.ndarray, fps: int) -> None:
    """H.264 (yuv420p, constant quality, single-threaded for reproducibility)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        stream.options = {"crf": "14", "preset": "veryfast", "threads": "1"}
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ------------------------------------------------------------------------------------------------ splits
def _captions(colour: str, shape: str, motion: str, rng: np.random.Generator, count: int) -> List[str]:
    templates = list(TEMPLATES[motion])
    order = rng.permutation(len(templates))[:count]
    return [templates[i].format(c=colour, s=shape) for i in order]


def _make_record(split: str, vid: str, colour: str, shape: str, motion: str, captions: List[str],
                 pair_id: Optional[str]) -> VideoRecord:
    meta = {"colour": colour, "shape": shape, "motion": motion, "pair_id": pair_id}
    return VideoRecord(video_id=vid, path=f"{split}/{vid}.mp4", captions=captions, meta=meta)


def generate_split(out: Path, split: str, count: int, rng: np.random.Generator, size: int, frames: int, fps: int,
                   captions_per_video: int, twins: bool) -> List[VideoRecord]:
    """``count`` videos; with ``twins`` every direction clip is followed by its time-reversed twin."""
    records: List[VideoRecord] = []
    colours = list(COLOURS)
    while len(records) < count:
        colour, shape = colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))]
        motion = MOTIONS[rng.integers(len(MOTIONS))]
        if twins and (motion == "still" or len(records) + 2 > count):
            motion = "still" if len(records) + 2 > count else REVERSE.get(motion, "right")
        clip = render_clip(colour, shape, motion, size, frames, rng)
        vid = f"{split}{len(records):05d}"
        pair = vid if twins and motion != "still" else None
        write_mp4(out / "videos" / split / f"{vid}.mp4", clip, fps)
        records.append(_make_record(split, vid, colour, shape, motion,
                                    _captions(colour, shape, motion, rng, captions_per_video), pair))
        if pair:
            twin_motion, twin_id = REVERSE[motion], f"{split}{len(records):05d}"
            write_mp4(out / "videos" / split / f"{twin_id}.mp4", clip[::-1], fps)
            records.append(_make_record(split, twin_id, colour, shape, twin_motion,
                                        _captions(colour, shape, twin_motion, rng, captions_per_video), pair))
    return records


def make_synthetic_dataset(out: Path, num_train: int = 240, num_val: int = 48, num_test: int = 64, seed: int = 0,
                           size: int = 64, frames: int = 16, fps: int = 8) -> Dict[str, Path]:
    """Write the three splits under ``out`` and return the paths of their lists."""
    out = Path(out)
    lists = {}
    plan = [("train", num_train, 4, False), ("val", num_val, 1, True), ("test", num_test, 1, True)]
    for offset, (split, count, caps, twins) in enumerate(plan):
        rng = np.random.default_rng([seed, offset])
        records = generate_split(out, split, count, rng, size, frames, fps, caps, twins)
        lists[split] = write_list(records, out / f"synthetic_{split}.jsonl")
        _logger.info("synthetic %s: %d videos -> %s", split, len(records), lists[split])
    return lists


def motion_direction_accuracy(sim, records: Sequence[VideoRecord]) -> float:
    """Share of direction queries whose own clip outscores its time-reversed twin (ties count one half).

    ``sim`` is (N_texts, N_videos) with one text per video in list order (text i describes video i); only records
    with a ``meta.pair_id`` take part. Chance, and the ceiling of any frame-order-invariant model, is 0.5.
    """
    import torch

    s = torch.as_tensor(sim, dtype=torch.float64)
    by_pair: Dict[str, List[int]] = {}
    for i, record in enumerate(records):
        pair = (record.meta or {}).get("pair_id")
        if pair:
            by_pair.setdefault(pair, []).append(i)
    scores = []
    for members in by_pair.values():
        if len(members) != 2:
            continue
        for i, j in (members, members[::-1]):
            own, twin = float(s[i, i]), float(s[i, j])
            scores.append(1.0 if own > twin else 0.5 if own == twin else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="make_synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-videos", type=int, default=240, help="training videos")
    parser.add_argument("--num-val-videos", type=int, default=48, help="validation videos (twins included)")
    parser.add_argument("--num-test-videos", type=int, default=64, help="test videos (twins included)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--fps", type=int, default=8)
    args = parser.parse_args(argv)
    lists = make_synthetic_dataset(Path(args.out), args.num_videos, args.num_val_videos, args.num_test_videos,
                                   args.seed, args.size, args.frames, args.fps)
    logging.getLogger(__name__).info("wrote %s", ", ".join(str(p) for p in lists.values()))
    return 0
