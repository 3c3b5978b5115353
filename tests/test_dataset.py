"""VideoTextDataset + collate on real mp4 files (lossless clips from make_video, two real MSR-VTT clips): frames equal
the written frames at the sampler's indices, caption sampling per (seed, epoch, index), decode-once evaluation,
failed videos reported with their path (never zero tensors), batch layout and tokens."""
from __future__ import annotations

import functools
import logging
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vidclip.data.collate import make_collate
from vidclip.data.dataset import VideoTextDataset
from vidclip.data.lists import VideoRecord
from vidclip.data.readers import open_video
from vidclip.data.samplers import create_sampler
from vidclip.data.transforms import create_video_transform
from vidclip.errors import DataListError

SIZE, T, L = 32, 8, 16
SOT, EOT = 49406, 49407
LENGTHS = (6, 10, 16)  # the first is shorter than the frame budget: mask-padded


@pytest.fixture
def clips(make_video, tmp_path):
    """Three lossless clips with 4 captions each; returns (videos root, records, ground-truth frames)."""
    records, frames = [], []
    for i, n in enumerate(LENGTHS):
        _, f = make_video(num_frames=n, name=f"sub/v{i}.mp4", seed=i)
        records.append(VideoRecord(f"v{i}", f"sub/v{i}.mp4", [f"video {i} caption {j}" for j in range(4)]))
        frames.append(f)
    return tmp_path, records, frames


def _dataset(root, records, mode="eval", sampler="uniform", **kwargs):
    return VideoTextDataset(records, str(root), create_sampler(sampler, T), create_video_transform(SIZE, train=False),
                            mode=mode, **kwargs)


class CountingOpener:
    """reader_factory that counts how often each video is opened (one open = one decode of that video)."""

    def __init__(self):
        self.opened = []

    def __call__(self, path):
        self.opened.append(path)
        return open_video(path)


def test_eval_items_equal_the_written_frames_and_decode_once(clips):
    root, records, frames = clips
    opener = CountingOpener()
    dataset = _dataset(root, records, reader_factory=opener)
    transform, sampler = create_video_transform(SIZE, train=False), create_sampler("uniform", T)
    assert len(dataset) == 3
    for i, item in enumerate(dataset):
        picked = sampler(LENGTHS[i], 25.0)
        assert item["video"].shape == (T, 3, SIZE, SIZE) and item["video_mask"].dtype == torch.bool
        assert item["video_mask"].tolist() == picked.mask.tolist()
        expected = transform(frames[i][picked.indices[picked.mask]])  # ground truth: the frames written
        torch.testing.assert_close(item["video"][item["video_mask"]], expected, rtol=0, atol=0)
        assert torch.count_nonzero(item["video"][~item["video_mask"]]) == 0
        assert item["video_id"] == f"v{i}" and item["index"] == i and item["caption"] == records[i].captions[0]
    assert sorted(opener.opened) == sorted(str(root / r.path) for r in records)  # each video decoded exactly once
    assert dataset.texts == [c for r in records for c in r.captions]
    assert dataset.text_to_video == [0] * 4 + [1] * 4 + [2] * 4


def test_start_end_reach_the_sampler(make_video, tmp_path):
    _, frames = make_video(num_frames=30, name="long.mp4", fps=25)
    record = VideoRecord("long", "long.mp4", ["c"], start=0.2, end=0.6)
    item = _dataset(tmp_path, [record])[0]
    picked = create_sampler("uniform", T)(30, 25.0, start=0.2, end=0.6)
    assert picked.indices.min() >= 5 and picked.indices.max() < 15  # frames 5..14 = [0.2 s, 0.6 s)
    expected = create_video_transform(SIZE, train=False)(frames[picked.indices[picked.mask]])
    torch.testing.assert_close(item["video"][item["video_mask"]], expected, rtol=0, atol=0)


def _captions(dataset, epoch):
    dataset.set_epoch(epoch)
    return [dataset[i]["caption"] for i in range(len(dataset))]


def test_train_random_is_a_function_of_seed_epoch_index(clips):
    root, records, _ = clips
    a = _dataset(root, records, mode="train", sampler="segment_random", seed=3)
    b = _dataset(root, records, mode="train", sampler="segment_random", seed=3)
    c = _dataset(root, records, mode="train", sampler="segment_random", seed=4)
    assert len(a) == 3
    per_epoch = [_captions(a, e) for e in range(6)]
    assert per_epoch == [_captions(b, e) for e in range(6)]  # same seed: same draws, epoch by epoch
    assert per_epoch != [_captions(c, e) for e in range(6)]
    assert len({tuple(p) for p in per_epoch}) > 1  # the caption changes with the epoch
    for i, record in enumerate(records):
        drawn = {p[i] for p in per_epoch}
        assert drawn <= set(record.captions) and len(drawn) > 1
    # random frame offsets follow the same key
    a.set_epoch(1)
    b.set_epoch(1)
    torch.testing.assert_close(a[2]["video"], b[2]["video"], rtol=0, atol=0)
    videos = []
    for epoch in range(4):
        a.set_epoch(epoch)
        videos.append(a[2]["video"])
    assert any(not torch.equal(videos[0], v) for v in videos[1:])


def test_train_all_gives_every_pair_once(clips):
    root, records, _ = clips
    dataset = _dataset(root, records, mode="train", caption_sampling="all")
    pairs = [(dataset[i]["video_id"], dataset[i]["caption"]) for i in range(len(dataset))]
    assert len(dataset) == 12 and sorted(pairs) == sorted((r.video_id, c) for r in records for c in r.captions)


def test_failed_videos_are_reported_with_their_path_and_logged_once(clips, caplog):
    root, records, _ = clips
    (root / "broken.mp4").write_text("this is not a video")
    records = [records[0], VideoRecord("broken", "broken.mp4", ["b"]), VideoRecord("gone", "gone.mp4", ["g"])]
    dataset = _dataset(root, records)
    with caplog.at_level(logging.WARNING, logger="vidclip.data.dataset"):
        items = [dataset[i] for i in (0, 1, 2, 1, 2)]
    assert "video" in items[0]
    for item, (index, path) in zip(items[1:], [(1, "broken.mp4"), (2, "gone.mp4")] * 2):
        assert item["failed"] == path and item["index"] == index and "video" not in item and item["error"]
    assert dataset.num_failed == 2 and dataset.failed_paths == ["broken.mp4", "gone.mp4"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("broken.mp4" in m for m in warnings) == 1 and sum("gone.mp4" in m for m in warnings) == 1
    assert dataset.index_of_path("gone.mp4") == 2 and dataset.index_of_path("other.mp4") == -1


def test_failures_beyond_the_log_limit_are_counted_quietly(tmp_path, caplog):
    records = [VideoRecord(f"x{i}", f"x{i}.mp4", ["c"]) for i in range(4)]
    dataset = _dataset(tmp_path, records, max_failures_logged=2)
    with caplog.at_level(logging.WARNING, logger="vidclip.data.dataset"):
        for i in range(4):
            dataset[i]
    assert dataset.num_failed == 4
    skipped = [r for r in caplog.records if r.getMessage().startswith("skipping video")]
    assert [r.getMessage().split()[2] for r in skipped] == ["x0.mp4", "x1.mp4"]
    assert any("further failures are counted" in r.getMessage() for r in caplog.records)


def test_paths_escaping_the_root_fail_at_construction(tmp_path):
    with pytest.raises(DataListError, match="outside the videos root"):
        _dataset(tmp_path, [VideoRecord("v", "../v.mp4", ["c"])])


def test_dataset_pickles_for_worker_processes(clips):
    root, records, _ = clips
    clone = pickle.loads(pickle.dumps(_dataset(root, records)))
    torch.testing.assert_close(clone[1]["video"], _dataset(root, records)[1]["video"], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ collate
@functools.lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def _clip_bpe(text):
    return _bpe().encode(text)


def test_collate_stacks_tokenizes_and_drops_failed(clips):
    root, records, _ = clips
    (root / "broken.mp4").write_text("not a video")
    long_caption = "a very long caption " * 10
    records = [records[0], VideoRecord("broken", "broken.mp4", ["b"]),
               VideoRecord("v2", records[2].path, [long_caption])]
    dataset = _dataset(root, records)
    batch = make_collate(L)([dataset[i] for i in range(3)])
    assert batch["video"].shape == (2, T, 3, SIZE, SIZE) and batch["video"].dtype == torch.float32
    assert batch["video_mask"].shape == (2, T) and batch["video_mask"].dtype == torch.bool
    assert batch["video_mask"][0].tolist() == [True] * 6 + [False] * 2 and batch["video_mask"][1].all()
    assert batch["indices"].tolist() == [0, 2] and batch["video_ids"] == ["v0", "v2"]
    assert batch["captions"] == [records[0].captions[0], long_caption]
    assert batch["failed"] == ["broken.mp4"] and batch["failed_items"][0]["index"] == 1
    tokens = batch["text_tokens"]
    assert tokens.shape == (2, L) and tokens.dtype == torch.long
    short = _clip_bpe(records[0].captions[0])
    assert tokens[0].tolist() == [SOT, *short, EOT] + [0] * (L - len(short) - 2)
    assert tokens[1].tolist() == [SOT, *_clip_bpe(long_caption)[: L - 2], EOT]  # truncated, EOT kept
    torch.testing.assert_close(batch["video"][1], dataset[2]["video"], rtol=0, atol=0)


def test_collate_of_an_all_failed_batch_has_zero_rows(tmp_path):
    dataset = _dataset(tmp_path, [VideoRecord("a", "a.mp4", ["x"]), VideoRecord("b", "b.mp4", ["y"])])
    batch = make_collate(L)([dataset[0], dataset[1]])
    assert batch["video"].shape[0] == 0 and batch["video_mask"].shape[0] == 0
    assert batch["text_tokens"].shape == (0, L) and batch["indices"].shape == (0,)
    assert batch["captions"] == [] and batch["failed"] == ["a.mp4", "b.mp4"]


def test_loader_over_eval_dataset(clips):
    root, records, _ = clips
    dataset = _dataset(root, records)
    loader = DataLoader(dataset, batch_size=2, shuffle=False, collate_fn=make_collate(L))
    batches = list(loader)
    assert [b["indices"].tolist() for b in batches] == [[0, 1], [2]]
    assert torch.cat([b["text_tokens"] for b in batches]).shape == (3, L)


# ------------------------------------------------------------------------------------------------ real clips
def _pyav_frames(path, wanted):
    """Reference decode: plain sequential PyAV decode, frame k = k-th decoded frame."""
    import av

    out = {}
    with av.open(str(path)) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k in wanted:
                out[k] = frame.to_ndarray(format="rgb24")
            if k >= max(wanted):
                break
    return np.stack([out[k] for k in wanted])


def test_real_msrvtt_clips_through_prepared_list(shared_data, tmp_path):
    from vidclip.data.lists import read_list
    from vidclip.data.prepare import prepare

    videos = shared_data / "videos"
    prepare("msrvtt", shared_data / "annotations", videos, tmp_path, drop_missing=True)
    records = read_list(tmp_path / "msrvtt_test_1ka.jsonl")
    dataset = VideoTextDataset(records, str(videos), create_sampler("clip4clip", 12),
                               create_video_transform(SIZE, train=False), mode="eval")
    assert dataset.texts == ["a person is connecting something to system", "a little girl does gymnastics"]
    sampler, transform = create_sampler("clip4clip", 12), create_video_transform(SIZE, train=False)
    for i, (name, frames_in_file, fps) in enumerate([("video9770", 330, 30.0), ("video9771", 419, 29.97)]):
        item = dataset[i]
        picked = sampler(frames_in_file, fps)
        assert item["video_id"] == name and item["video_mask"].tolist() == picked.mask.tolist()
        assert int(picked.mask.sum()) == (11 if name == "video9770" else 12)  # 1 frame per second, 12 at most
        expected = transform(_pyav_frames(videos / "msrvtt" / f"{name}.mp4", list(picked.indices[picked.mask])))
        torch.testing.assert_close(item["video"][item["video_mask"]], expected, rtol=0, atol=0)
