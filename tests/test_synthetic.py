"""The built-in synthetic dataset: determinism, real decodable files, captions that match the pixels, reversed twins,
the motion-direction accuracy, and the CLI layout."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest

from vidclip.data.lists import read_list
from vidclip.data.synthetic import COLOURS, make_synthetic_dataset, render_clip, trajectory, twin_indices
from vidclip.metrics import motion_direction_accuracy as _accuracy


def motion_direction_accuracy(sim, records, text_to_video=None):
    """The metric on a data list: twins read from the records' meta, then the plain-array metric."""
    return _accuracy(sim, twin_indices(records), text_to_video=text_to_video)

SMALL = dict(num_train=15, num_val=2, num_test=5, size=32, frames=6, fps=8)  # >= 6 draws: every colour in train
MOTION_WORDS = {  # written independently of the templates: any caption must use one of these
    "left": ("left",), "right": ("right",), "up": ("up", "rising", "to top"), "down": ("down", "falling", "to bottom"),
    "grow": ("grow", "bigger", "expand", "becomes large"), "shrink": ("shrink", "smaller", "contract", "becomes small"),
    "still": ("still", "not move", "rests", "motionless"),
}
SHAPE_WORDS = {"circle": ("circle", "ball"), "square": ("square", "block"), "triangle": ("triangle",)}


def decode(path: Path) -> np.ndarray:
    """Plain sequential PyAV decode: uint8 (T, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def all_records(out: Path) -> dict:
    return {split: read_list(out / f"synthetic_{split}.jsonl") for split in ("train", "val", "test")}


def all_frames(out: Path) -> dict:
    return {r.video_id: decode(out / "videos" / r.path) for recs in all_records(out).values() for r in recs}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(out, seed=3, **SMALL)
    return out


def test_same_seed_same_lists_bytes_and_frames_other_seed_differs(tmp_path, small_set):
    make_synthetic_dataset(tmp_path / "again", seed=3, workers=2, **SMALL)  # parallel encoding: same bytes
    make_synthetic_dataset(tmp_path / "other", seed=4, **SMALL)
    for split in ("train", "val", "test"):
        name = f"synthetic_{split}.jsonl"
        assert (small_set / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
        assert (small_set / name).read_bytes() != (tmp_path / "other" / name).read_bytes()
    first, again, other = all_frames(small_set), all_frames(tmp_path / "again"), all_frames(tmp_path / "other")
    assert first.keys() == again.keys() == other.keys()
    for vid in first:
        np.testing.assert_array_equal(first[vid], again[vid])
        assert not np.array_equal(first[vid], other[vid])
    for path in (small_set / "videos").rglob("*.mp4"):  # single-threaded x264: byte-identical files
        twin = tmp_path / "again" / "videos" / path.relative_to(small_set / "videos")
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(twin.read_bytes()).digest()


def test_files_decode_to_the_right_frame_count_size_and_rate(small_set):
    records = all_records(small_set)
    assert [len(records[s]) for s in ("train", "val", "test")] == [15, 2, 5]
    for recs in records.values():
        for record in recs:
            path = small_set / "videos" / record.path
            frames = decode(path)
            assert frames.shape == (6, 32, 32, 3), record.video_id
            with av.open(str(path)) as container:
                assert float(container.streams.video[0].average_rate) == pytest.approx(8)
            assert record.start is None and record.end is None


def test_lossless_frames_equal_the_rendered_clip_and_lossy_codec_is_close(tmp_path):
    rng = np.random.default_rng(0)
    path = trajectory("right", 32, 6, rng)
    clip = render_clip("circle", "red", path, np.full((32, 32, 3), 30, np.uint8))
    from vidclip.data.synthetic import write_mp4

    np.testing.assert_array_equal(decode(write_mp4(tmp_path / "a.mp4", clip, 8)), clip)
    lossy = decode(write_mp4(tmp_path / "b.mp4", clip, 8, codec="libx264"))
    assert lossy.shape == clip.shape
    assert np.abs(lossy.astype(int) - clip.astype(int)).mean() < 4


def _shape_pixels(frame: np.ndarray, colour: str) -> np.ndarray:
    """(K, 2) (y, x) of pixels close to the named colour."""
    distance = np.abs(frame.astype(int) - np.array(COLOURS[colour])).sum(axis=-1)  # (H, W)
    return np.argwhere(distance < 30)


def test_captions_name_colour_shape_motion_and_the_pixels_agree(small_set):
    for recs in all_records(small_set).values():
        for record in recs:
            meta = record.meta
            for caption in record.captions:
                assert meta["colour"] in caption, caption
                assert any(w in caption for w in SHAPE_WORDS[meta["shape"]]), caption
                assert any(w in caption for w in MOTION_WORDS[meta["motion"]]), caption
            frames = decode(small_set / "videos" / record.path)
            pixels = [_shape_pixels(f, meta["colour"]) for f in frames]
            assert all(len(p) > 0 for p in pixels), record.video_id
            y0, x0 = pixels[0].mean(axis=0)
            y1, x1 = pixels[-1].mean(axis=0)
            area0, area1 = len(pixels[0]), len(pixels[-1])
            expected = {"left": x1 < x0 - 3, "right": x1 > x0 + 3, "up": y1 < y0 - 3, "down": y1 > y0 + 3,
                        "grow": area1 > 2 * area0, "shrink": area0 > 2 * area1,
                        "still": all(np.array_equal(p, pixels[0]) for p in pixels)}
            assert expected[meta["motion"]], (record.video_id, meta["motion"], (x0, y0, area0), (x1, y1, area1))


def _check_twins(records, frames, captions_per_video, unpaired_limit):
    """Twins share colour, shape, pair_id and the multiset of frames, in reversed order with the opposite motion."""
    reverse = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow"}
    by_id = {r.video_id: r for r in records}
    unpaired = [r for r in records if r.meta["pair_id"] is None]
    assert len(unpaired) <= unpaired_limit
    for record in records:
        assert len(record.captions) == captions_per_video
        if record.meta["pair_id"] is None:
            assert record.meta["motion"] == "still"
            continue
        twin = by_id[record.meta["twin"]]
        assert twin.meta["pair_id"] == record.meta["pair_id"] and twin.meta["twin"] == record.video_id
        assert (twin.meta["colour"], twin.meta["shape"]) == (record.meta["colour"], record.meta["shape"])
        assert twin.meta["motion"] == reverse[record.meta["motion"]]
        a, b = frames[record.video_id], frames[twin.video_id]
        np.testing.assert_array_equal(a, b[::-1])  # lossless codec: exactly the reversed clip
        assert not np.array_equal(a, b)
        np.testing.assert_array_equal(a.mean(axis=0), b.mean(axis=0))  # mean pooling sees the same clip
    pairs = [r.meta["pair_id"] for r in records if r.meta["pair_id"] is not None]
    assert all(pairs.count(p) == 2 for p in pairs)


def test_eval_splits_are_reversed_twins_with_identical_frame_sets(small_set):
    frames = all_frames(small_set)
    for split in ("val", "test"):
        records = read_list(small_set / f"synthetic_{split}.jsonl")
        _check_twins(records, frames, captions_per_video=1, unpaired_limit=len(records) % 2)


def test_training_split_holds_twin_pairs_next_to_each_other_plus_still_clips(small_set):
    records = read_list(small_set / "synthetic_train.jsonl")
    _check_twins(records, all_frames(small_set), captions_per_video=4, unpaired_limit=len(records))
    ids = [r.video_id for r in records]
    for i, record in enumerate(records):  # the twin is the neighbour in list order
        if record.meta["pair_id"] is not None:
            assert record.meta["twin"] in ids[max(0, i - 1):i + 2]
    assert sum(r.meta["pair_id"] is not None for r in records) >= len(records) // 2  # mostly pairs


def test_single_training_layout_has_no_twins(tmp_path):
    make_synthetic_dataset(tmp_path, seed=3, train_layout="single", **dict(SMALL, num_train=7))
    train = read_list(tmp_path / "synthetic_train.jsonl")
    assert all(r.meta["pair_id"] is None and r.meta["twin"] is None for r in train)
    assert {r.meta["motion"] for r in train} == {"left", "right", "up", "down", "grow", "shrink", "still"}
    with pytest.raises(ValueError, match="train_layout"):
        make_synthetic_dataset(tmp_path / "bad", train_layout="pairs", **SMALL)


def test_splits_disjoint_in_trajectories_and_training_covers_every_attribute(small_set):
    records = all_records(small_set)
    train = records["train"]
    assert {r.meta["motion"] for r in train} == {"left", "right", "up", "down", "grow", "shrink", "still"}
    assert {r.meta["colour"] for r in train} == set(COLOURS)
    assert {r.meta["shape"] for r in train} == {"circle", "square", "triangle"}
    ids = [r.video_id for recs in records.values() for r in recs]
    assert len(ids) == len(set(ids))

    def identity(r):  # direction-agnostic frame-set identity
        m = r.meta
        ends = sorted([tuple(m["trajectory"]["start"]), tuple(m["trajectory"]["end"])])
        return m["colour"], m["shape"], tuple(ends)

    train_ids = {identity(r) for r in train}
    for split in ("val", "test"):
        assert not train_ids & {identity(r) for r in records[split]}


def test_order_invariant_features_score_exactly_chance_order_aware_features_score_one(small_set):
    records = read_list(small_set / "synthetic_test.jsonl")
    frames = [decode(small_set / "videos" / r.path).astype(np.float64) for r in records]
    projection = np.random.default_rng(0).normal(size=(32 * 32 * 3, 16))
    texts = np.random.default_rng(1).normal(size=(len(records), 16))
    pooled = np.stack([(f.reshape(len(f), -1) @ projection).mean(axis=0) for f in frames])  # (N, 16)
    assert motion_direction_accuracy(texts @ pooled.T, records) == 0.5
    # order-aware: colour-centroid displacement + area change, matched by a text "motion vector"
    vectors = {"left": (-1, 0, 0), "right": (1, 0, 0), "up": (0, -1, 0), "down": (0, 1, 0), "grow": (0, 0, 1),
               "shrink": (0, 0, -1), "still": (0, 0, 0)}
    video = []
    for r, f in zip(records, frames):
        p0, p1 = _shape_pixels(f[0], r.meta["colour"]), _shape_pixels(f[-1], r.meta["colour"])
        dy, dx = p1.mean(axis=0) - p0.mean(axis=0)
        video.append((dx, dy, np.sqrt(len(p1)) - np.sqrt(len(p0))))
    text = np.array([vectors[r.meta["motion"]] for r in records], dtype=float)
    assert motion_direction_accuracy(text @ np.array(video).T, records) == 1.0


def _record(vid, pair=None, twin=None, motion="left"):
    from vidclip.data.lists import VideoRecord

    return VideoRecord(vid, f"{vid}.mp4", [f"caption {vid}"], meta={"motion": motion, "pair_id": pair, "twin": twin})


def test_motion_direction_accuracy_hand_computed():
    records = [_record("a", "p0", "b"), _record("b", "p0", "a", "right"), _record("c", "p1"), _record("d", "p1"),
               _record("s", motion="still")]
    sim = np.array([  # rows: texts of a, b, c, d, s; columns: videos a, b, c, d, s
        [0.9, 0.2, 0.0, 0.0, 5.0],  # a: own 0.9 > twin 0.2 -> 1 (the big score on s does not matter)
        [0.7, 0.3, 0.0, 0.0, 0.0],  # b: own 0.3 < twin 0.7 -> 0
        [0.0, 0.0, 0.4, 0.4, 0.0],  # c: tie with twin d -> 0.5 (pair found through pair_id only)
        [0.0, 0.0, 0.1, 0.6, 0.0],  # d: own 0.6 > 0.1 -> 1
        [0.0, 0.0, 0.0, 0.0, 0.0],  # s: no twin, not counted
    ])
    assert motion_direction_accuracy(sim, records) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    import torch

    assert motion_direction_accuracy(torch.tensor(sim, dtype=torch.float32), records) == pytest.approx(2.5 / 4)
    # several texts per video: rows 0, 1 describe video a, row 2 video b
    multi = np.array([[0.9, 0.2, 0, 0, 0], [0.1, 0.2, 0, 0, 0], [0.5, 0.6, 0, 0, 0]])
    assert motion_direction_accuracy(multi, records, text_to_video=[0, 0, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="expected"):
        motion_direction_accuracy(sim[:4], records)
    assert np.isnan(motion_direction_accuracy(np.zeros((1, 1)), [_record("s", motion="still")]))


def test_cli_writes_the_documented_layout(tmp_path):
    from vidclip.cli import main as cli_main

    out = tmp_path / "data"
    argv = ["make-synthetic", "--out", str(out), "--num-videos", "3", "--num-val-videos", "2", "--num-test-videos",
            "3", "--frames", "5", "--size", "24", "--fps", "10", "--seed", "1"]
    assert cli_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["synthetic_test.jsonl", "synthetic_train.jsonl",
                                                     "synthetic_val.jsonl", "videos"]
    for split, count in (("train", 3), ("val", 2), ("test", 3)):
        lines = (out / f"synthetic_{split}.jsonl").read_text().splitlines()
        assert len(lines) == count
        for line in lines:
            obj = json.loads(line)
            assert set(obj) == {"video_id", "path", "captions", "start", "end", "meta"}
            assert obj["path"] == f"{split}/{obj['video_id']}.mp4" and obj["start"] is None and obj["end"] is None
            assert {"colour", "shape", "motion", "pair_id"} <= set(obj["meta"])
            assert decode(out / "videos" / obj["path"]).shape == (5, 24, 24, 3)
    assert len(read_list(out / "synthetic_train.jsonl")[0].captions) == 4
    assert [r.meta["pair_id"] is None for r in read_list(out / "synthetic_test.jsonl")] == [False, False, True]


def test_shipped_data_config_samples_twins_as_exact_reversals(tmp_path):
    """The frames the model sees (configs/data/synthetic.yaml sampler and frame count on clips of the generator's
    default length) keep the twin property: an order-invariant model still scores exactly 0.5."""
    import inspect

    import torch

    import vidclip
    from vidclip.data.builders import build_dataset

    default_frames = inspect.signature(make_synthetic_dataset).parameters["frames"].default
    lists = make_synthetic_dataset(tmp_path, num_train=4, num_val=0, num_test=4, size=32, seed=1)
    repo = Path(__file__).resolve().parents[1]
    cfg = vidclip.load_config(repo / "configs" / "synthetic_tiny_seqtransf.yaml", [
        f"data.videos_root={tmp_path / 'videos'}", f"data.train_list={lists['train']}",
        f"data.test_list={lists['test']}"])
    assert decode(tmp_path / "videos" / read_list(lists["test"])[0].path).shape[0] == default_frames
    for split, train in (("test", False), ("train", True)):
        dataset = build_dataset(cfg, split, train=train)
        index = {r.video_id: i for i, r in enumerate(dataset.records)}
        pairs = [(i, index[r.meta["twin"]]) for i, r in enumerate(dataset.records) if r.meta["twin"]]
        assert pairs, split
        for a, b in pairs:
            clip, twin = dataset[a], dataset[b]
            assert clip["video"].shape[0] == cfg.data.num_frames and bool(clip["video_mask"].all())
            torch.testing.assert_close(clip["video"], twin["video"].flip(0), rtol=0, atol=0)
