"""Decoded-frame cache: dataset items and batches read through the cache equal live decoding bit for bit
(deterministic samplers) and follow the same seeded draws (random samplers); the cache is reused without decoding,
resumes a killed build, decodes changed source files again and refuses a folder whose identity was altered."""
from __future__ import annotations

import json
import os
from functools import partial

import numpy as np
import pytest
import torch
from conftest import numbered_frames, write_video
from torch.utils.data import DataLoader

from vidclip.config import load_config
from vidclip.data.builders import build_frame_reader
from vidclip.data.collate import make_collate
from vidclip.data.dataset import VideoTextDataset
from vidclip.data.frame_cache import build_frame_cache
from vidclip.data.lists import VideoRecord
from vidclip.data.readers import open_video
from vidclip.data.samplers import create_sampler
from vidclip.data.transforms import create_video_transform
from vidclip.errors import ConfigError, IntegrityError

SIZE, T = 32, 4
LENGTHS = (3, 10, 16, 23)  # the first is shorter than the frame budget: mask-padded


class CountingOpener:
    """``open_video`` that counts the files it opens and can fail after a number of opens (a killed build)."""

    def __init__(self, fail_after: int | None = None):
        self.paths: list[str] = []
        self.fail_after = fail_after

    def __call__(self, path):
        if self.fail_after is not None and len(self.paths) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.paths.append(str(path))
        return open_video(path, backend="pyav")


@pytest.fixture
def clips(tmp_path):
    """Four lossless 48x64 clips (resized and cropped to 32x32), one with a time window, and one broken file."""
    root = tmp_path / "videos"
    records = []
    for i, n in enumerate(LENGTHS):
        write_video(root / f"v{i}.mp4", numbered_frames(n, seed=i), fps=8)
        records.append(VideoRecord(f"v{i}", f"v{i}.mp4", [f"video {i} caption {j}" for j in range(3)]))
    records.append(VideoRecord("v3w", "v3.mp4", ["a window of video 3"], start=0.5, end=2.0))
    (root / "broken.mp4").write_text("not a video")
    records.append(VideoRecord("bad", "broken.mp4", ["broken"]))
    return root, records


def _dataset(root, records, sampler, mode, reader_factory, **kwargs):
    return VideoTextDataset(records, str(root), sampler, create_video_transform(SIZE, train=False), mode=mode,
                            backend="pyav", seed=3, reader_factory=reader_factory, **kwargs)


def _items(dataset, epochs=(0,)):
    out = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        out += [dataset[i] for i in range(len(dataset))]
    return out


def _assert_same(live, cached):
    assert len(live) == len(cached)
    for a, b in zip(live, cached):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


@pytest.mark.parametrize("name", ["uniform", "clip4clip", "segment_center"])
def test_deterministic_sampler_items_and_batches_are_bit_identical(clips, tmp_path, name):
    root, records = clips
    sampler = create_sampler(name, T)
    live_factory = partial(open_video, backend="pyav")
    cache = build_frame_cache(tmp_path / "cache", records, str(root), sampler, SIZE, backend="pyav")
    for mode in ("eval", "train"):
        live = _dataset(root, records, sampler, mode, live_factory)
        cached = _dataset(root, records, sampler, mode, cache.open_reader)
        _assert_same(_items(live), _items(cached))
    collate = make_collate(16)
    batches = [list(DataLoader(_dataset(root, records, sampler, "eval", f), batch_size=4, collate_fn=collate))
               for f in (live_factory, cache.open_reader)]
    for a, b in zip(*batches):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["video_mask"], b["video_mask"])
        assert a["failed"] == b["failed"] == [] or a["failed_items"] == b["failed_items"]
    # only the frames the sampler picks are stored: the cache holds exactly the unique indices per video
    expected = sum(len(np.unique(sampler(n, 8).indices)) for n in LENGTHS)
    expected += len(np.unique(sampler(23, 8, start=0.5, end=2.0).indices)) - len(
        np.intersect1d(np.unique(sampler(23, 8).indices), np.unique(sampler(23, 8, start=0.5, end=2.0).indices)))
    stats = cache.stats()
    assert stats["frames"] == expected and stats["failed"] == 1 and stats["videos"] == 5
    assert stats["bytes"] == expected * SIZE * SIZE * 3


@pytest.mark.parametrize("name", ["segment_random", "prompt_switch"])
def test_random_sampler_follows_the_same_seeded_draws(clips, tmp_path, name):
    root, records = clips
    sampler = (create_sampler(name, T) if name == "segment_random"
               else create_sampler(name, T, num_prompts=2, train=True))
    cache = build_frame_cache(tmp_path / "cache", records, str(root), sampler, SIZE, backend="pyav")
    live = _dataset(root, records, sampler, "train", partial(open_video, backend="pyav"))
    cached = _dataset(root, records, sampler, "train", cache.open_reader)
    live_items, cached_items = _items(live, epochs=(0, 1, 2)), _items(cached, epochs=(0, 1, 2))
    _assert_same(live_items, cached_items)
    first = [it["video"] for it in live_items[:4]]
    again = [it["video"] for it in live_items[2 * len(records):2 * len(records) + 4]]
    assert any(not torch.equal(a, b) for a, b in zip(first, again))  # the draws do change with the epoch
    assert cache.stats()["frames"] == sum(LENGTHS)  # every frame is a candidate (v3's window is inside v3)


def test_reused_without_decoding_and_changed_sources_decoded_again(clips, tmp_path):
    root, records = clips
    sampler = create_sampler("uniform", T)
    build_frame_cache(tmp_path / "cache", records, str(root), sampler, SIZE, backend="pyav", shard_videos=2)
    opener = CountingOpener()
    build_frame_cache(tmp_path / "cache", records, str(root), sampler, SIZE, backend="pyav", reader_factory=opener)
    assert opener.paths == []
    # rewrite v1 with other frames (another mtime and content): only v1 is decoded again
    write_video(root / "v1.mp4", numbered_frames(10, seed=99), fps=8)
    os.utime(root / "v1.mp4", ns=(os.stat(root / "v1.mp4").st_atime_ns, os.stat(root / "v1.mp4").st_mtime_ns + 10**9))
    opener = CountingOpener()
    cache = build_frame_cache(tmp_path / "cache", records, str(root), sampler, SIZE, backend="pyav",
                              reader_factory=opener)
    assert opener.paths == [str(root / "v1.mp4")]
    live = _dataset(root, records, sampler, "eval", partial(open_video, backend="pyav"))
    _assert_same(_items(live), _items(_dataset(root, records, sampler, "eval", cache.open_reader)))


def test_other_settings_use_another_folder_and_an_altered_identity_is_refused(clips, tmp_path):
    root, records = clips
    first = build_frame_cache(tmp_path / "cache", records, str(root), create_sampler("uniform", T), SIZE, "pyav")
    other = build_frame_cache(tmp_path / "cache", records, str(root), create_sampler("uniform", T + 1), SIZE, "pyav")
    bigger = build_frame_cache(tmp_path / "cache", records, str(root), create_sampler("uniform", T), 16, "pyav")
    assert len({first.folder, other.folder, bigger.folder}) == 3
    identity = json.loads((first.folder / "identity.json").read_text())
    identity["image_size"] = 64
    (first.folder / "identity.json").write_text(json.dumps(identity))
    with pytest.raises(IntegrityError, match="image_size 32 -> 64|image_size 64 -> 32"):
        build_frame_cache(tmp_path / "cache", records, str(root), create_sampler("uniform", T), SIZE, "pyav")


def test_killed_build_resumes_with_the_missing_videos_only(clips, tmp_path):
    root, records = clips
    sampler = create_sampler("uniform", T)
    with pytest.raises(KeyboardInterrupt):
        build_frame_cache(tmp_path / "cache", records, str(root), sampler, SIZE, "pyav", shard_videos=1,
                          reader_factory=CountingOpener(fail_after=2))
    opener = CountingOpener()
    cache = build_frame_cache(tmp_path / "cache", records, str(root), sampler, SIZE, "pyav", shard_videos=1,
                              reader_factory=opener)
    assert opener.paths == [str(root / p) for p in ("v2.mp4", "v3.mp4", "broken.mp4")]
    live = _dataset(root, records, sampler, "eval", partial(open_video, backend="pyav"))
    _assert_same(_items(live), _items(_dataset(root, records, sampler, "eval", cache.open_reader)))
    assert not list(cache.folder.glob("*.tmp"))


def test_parallel_build_writes_the_same_shards(clips, tmp_path):
    root, records = clips
    sampler = create_sampler("uniform", T)
    serial = build_frame_cache(tmp_path / "a", records, str(root), sampler, SIZE, "pyav", num_workers=0)
    parallel = build_frame_cache(tmp_path / "b", records, str(root), sampler, SIZE, "pyav", num_workers=2)
    for name in ("shard_00000.npy", "shard_00000.json"):
        assert (serial.folder / name).read_bytes() == (parallel.folder / name).read_bytes()


def test_config_refuses_random_crops_with_a_cache(tmp_path):
    cfg = load_config(None, [f"data.frame_cache={tmp_path}", "data.train_augment=crop_flip"])
    with pytest.raises(ConfigError, match="data.train_augment=crop_flip"):
        build_frame_reader(cfg, [], create_sampler("uniform", T), train=True)


@pytest.mark.slow
def test_train_loader_workers_draw_each_epochs_choices(clips, tmp_path):
    """With DataLoader workers, epoch e's batches hold the captions and random frames of ``dataset.set_epoch(e)``."""
    from vidclip.data.loaders import build_train_loader

    root, records = clips
    cfg = load_config(None, ["data.num_workers=1", "train.batch_size=2", "train.seed=3", "model.context_length=16"])
    sampler = create_sampler("segment_random", T)
    cache = build_frame_cache(tmp_path / "cache", records, str(root), sampler, SIZE, backend="pyav")
    dataset = _dataset(root, records[:4], sampler, "train", cache.open_reader)
    reference = _dataset(root, records[:4], sampler, "train", partial(open_video, backend="pyav"))
    loader = build_train_loader(cfg, dataset)
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        reference.set_epoch(epoch)
        for batch in loader:
            expected = [reference[i] for i in batch["indices"].tolist()]
            assert batch["captions"] == [it["caption"] for it in expected]
            assert torch.equal(batch["video"], torch.stack([it["video"] for it in expected]))
