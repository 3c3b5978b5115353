"""Robustness 1: damaged and unusual video files through the reader, the dataset, training, evaluation, extraction.

Every file gives the right frames or a clear error naming it; training, evaluation and extraction skip, count and
report broken files instead of stopping or producing NaN.
"""
from __future__ import annotations

import json
import logging
import math
import time

import av
import numpy as np
import pytest
import torch
from conftest import numbered_frames, write_video

from vidclip.config import load_config
from vidclip.data.collate import make_collate
from vidclip.data.dataset import VideoTextDataset
from vidclip.data.lists import VideoRecord, read_list, write_list
from vidclip.data.readers import open_video
from vidclip.data.samplers import create_sampler
from vidclip.data.transforms import create_video_transform
from vidclip.errors import VideoDecodeError

from .helpers import TINY_CONFIG, synth_overrides, write_faststart


def plain_decode(path) -> np.ndarray:
    """Ground truth: every frame of PyAV's plain sequential decode."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def open_clip_reference(frames: np.ndarray, size: int) -> torch.Tensor:
    """open_clip's own evaluation preprocessing of each frame: (T, 3, S, S)."""
    from open_clip.transform import image_transform
    from PIL import Image

    preprocess = image_transform(size, is_train=False)
    return torch.stack([preprocess(Image.fromarray(f)) for f in frames])


# ------------------------------------------------------------------------------------------------- reader
def test_reader_errors_name_the_file_for_every_broken_kind(tmp_path, broken_videos):
    for kind, path in broken_videos(tmp_path / "bad").items():
        with pytest.raises(VideoDecodeError) as info:
            open_video(path)
        assert str(path) in str(info.value) and info.value.path == str(path), kind
        assert len(info.value.reason) > 10, f"{kind}: the reason must say what is wrong"


def test_truncated_mp4_cut_points_give_prefix_or_named_error(tmp_path):
    full_path = write_faststart(tmp_path / "full.mp4", numbered_frames(40, 48, 64, seed=1))
    truth = plain_decode(full_path)
    data = full_path.read_bytes()
    kinds = []
    for fraction in (0.005, 0.05, 0.25, 0.5, 0.75, 0.95):
        cut = tmp_path / f"cut{fraction}.mp4"
        cut.write_bytes(data[: int(len(data) * fraction)])
        try:
            reader = open_video(cut)
        except VideoDecodeError as exc:
            assert str(cut) in str(exc)
            kinds.append("error")
            continue
        assert 1 <= reader.num_frames < 40
        np.testing.assert_array_equal(reader.get_frames(np.arange(reader.num_frames)), truth[: reader.num_frames])
        kinds.append("prefix")
    assert kinds[0] == "error" and kinds.count("prefix") >= 3, kinds


def test_header_frame_count_larger_than_decodable(shared_data):
    path = shared_data / "videos" / "misc" / "balle1-vp9.avi"
    truth = plain_decode(path)
    reader = open_video(path)
    assert reader.num_frames == len(truth) == 295  # header says 300
    sampler = create_sampler("uniform", 8)
    picked = sampler(reader.num_frames, reader.fps)
    assert picked.indices[-1] == 294 and picked.mask.all()
    np.testing.assert_array_equal(reader.get_frames(picked.indices), truth[picked.indices])
    with pytest.raises(VideoDecodeError, match=r"balle1-vp9\.avi: frame index 299"):
        reader.get_frames([299])


@pytest.mark.slow
def test_decord_problem_files_are_exact_with_auto_and_named_errors_with_decord(shared_data):
    pytest.importorskip("decord")
    videos = shared_data / "videos" / "misc"
    cockatoo = plain_decode(videos / "cockatoo.mp4")
    np.testing.assert_array_equal(open_video(videos / "cockatoo.mp4").get_frames([200, 3])[0], cockatoo[200])
    dataset = VideoTextDataset([VideoRecord("ogv", "Effet_force_magnetique.ogv", ["x"])], str(videos),
                               create_sampler("uniform", 4), create_video_transform(32, train=False), mode="eval",
                               backend="decord")
    item = dataset[0]
    assert "Effet_force_magnetique.ogv" in item["error"] and "backend='pyav'" in item["error"]
    auto = VideoTextDataset(dataset.records, str(videos), dataset.sampler, dataset.transform, mode="eval")
    assert auto[0]["video"].shape == (4, 3, 32, 32)


def test_single_frame_video_is_one_real_frame_plus_masked_padding(make_video):
    path, frames = make_video(num_frames=1, name="one.mp4")
    reader = open_video(path)
    assert reader.num_frames == 1
    for name in ("uniform", "segment_center", "clip4clip"):
        picked = create_sampler(name, 8)(reader.num_frames, reader.fps)
        assert picked.mask.tolist() == [True] + [False] * 7, name
        np.testing.assert_array_equal(reader.get_frames(picked.indices), np.repeat(frames, 8, axis=0))


def test_very_long_video_sampling_and_reading_stay_fast_and_exact(tmp_path):
    frames = numbered_frames(3000, 16, 16, seed=2)
    path = write_video(tmp_path / "long.mp4", frames, gop=250)
    start = time.perf_counter()
    reader = open_video(path)
    picked = create_sampler("uniform", 12)(reader.num_frames, reader.fps)
    got = reader.get_frames(picked.indices)
    elapsed = time.perf_counter() - start
    assert reader.num_frames == 3000 and picked.indices[-1] == 2999
    np.testing.assert_array_equal(got, frames[picked.indices])
    window = create_sampler("uniform", 8)(reader.num_frames, reader.fps, start=100.0, end=110.0)  # 25 fps
    np.testing.assert_array_equal(reader.get_frames(window.indices), frames[window.indices])
    assert window.indices[0] == 2500 and window.indices[-1] == 2749
    assert elapsed < 5.0, f"3,000-frame clip took {elapsed:.1f}s to sample and read 12 frames"


def test_odd_sizes_match_open_clip_preprocessing(tmp_path, odd_videos):
    transform = create_video_transform(32, train=False)
    for kind, (path, frames) in odd_videos(tmp_path / "odd").items():
        if kind in ("vfr", "rotated"):
            continue
        reader = open_video(path)
        assert (reader.height, reader.width) == frames.shape[1:3], kind
        decoded = reader.get_frames(np.arange(reader.num_frames))
        np.testing.assert_array_equal(decoded, frames)
        torch.testing.assert_close(transform(decoded), open_clip_reference(decoded, 32), rtol=0, atol=1e-5)


def test_rotation_metadata_is_ignored_frames_come_in_stored_orientation(tmp_path, odd_videos):
    path, frames = odd_videos(tmp_path / "odd")["rotated"]
    with av.open(str(path)) as container:
        assert abs(next(container.decode(video=0)).rotation) == 90, "the file must really carry a rotation"
    reader = open_video(path)
    assert (reader.width, reader.height) == (64, 48)  # stored size, not the displayed 48x64
    np.testing.assert_array_equal(reader.get_frames(np.arange(6)), frames)


def test_variable_frame_rate_frames_are_counted_not_timed(tmp_path, odd_videos):
    path, frames = odd_videos(tmp_path / "odd")["vfr"]
    with av.open(str(path)) as container:
        pts = [f.pts for f in container.decode(video=0)]
    assert len(set(np.diff(pts).tolist())) > 1, "timestamps must be irregular"
    reader = open_video(path, backend="pyav", seek_min_gap=1)  # force the timestamp-based seek path too
    assert reader.num_frames == 20 and reader.fps > 0
    for indices in (np.arange(20), np.array([19, 0, 7, 7, 13])):
        np.testing.assert_array_equal(reader.get_frames(indices), frames[indices])


# ------------------------------------------------------------------------------------------------- dataset
def test_dataset_reports_each_broken_file_and_decodes_the_odd_ones(tmp_path, broken_videos, odd_videos,
                                                                    shared_data):
    root = tmp_path / "videos"
    bad = broken_videos(root)
    odd = odd_videos(root)
    balle = shared_data / "videos" / "misc" / "balle1-vp9.avi"
    (root / "balle1.avi").symlink_to(balle)
    records = [VideoRecord(k, p.name, [f"caption {k}"]) for k, p in bad.items()]
    records += [VideoRecord(k, p.name, [f"caption {k}"]) for k, (p, _) in odd.items()]
    records.append(VideoRecord("balle1", "balle1.avi", ["a ball"]))
    dataset = VideoTextDataset(records, str(root), create_sampler("uniform", 8), create_video_transform(32, False),
                               mode="eval")
    collate = make_collate(32)
    batch = collate([dataset[i] for i in range(len(dataset))])
    failed = {item["index"]: item["error"] for item in batch["failed_items"]}
    assert sorted(records[i].video_id for i in failed) == sorted(bad)
    for index, error in failed.items():
        assert records[index].path in error
    assert batch["video_ids"] == list(odd) + ["balle1"]
    assert batch["video"].shape == (len(odd) + 1, 8, 3, 32, 32) and torch.isfinite(batch["video"]).all()
    assert batch["video_mask"][0].tolist() == [True] + [False] * 7  # the single-frame clip
    assert dataset.num_failed == len(bad)


# ------------------------------------------------------------------------------------------------- pipelines
def _list_with_broken(synth, tmp_path, broken_videos, split: str, count: int):
    """The split's list with its first ``count`` entries pointing at broken files (kept under the videos root)."""
    bad = list(broken_videos(synth / "videos" / f"broken_{tmp_path.name}").values())
    records = read_list(synth / f"synthetic_{split}.jsonl")
    for record, path in zip(records[:count], bad):
        record.path = str(path.relative_to(synth / "videos"))
    return write_list(records, tmp_path / f"{split}_broken.jsonl"), records[:count]


def test_training_over_broken_videos_finishes_with_finite_loss_and_logs_paths(synth, tmp_path, broken_videos,
                                                                              caplog):
    from vidclip.engine.train import Trainer

    train_list, broken = _list_with_broken(synth, tmp_path, broken_videos, "train", 5)
    cfg = load_config(TINY_CONFIG, synth_overrides(synth, **{"data.train_list": str(train_list),
                                                             "data.val_list": "null", "train.batch_size": "2",
                                                             "train.epochs": "1",
                                                             "train.output_dir": str(tmp_path / "run")}))
    trainer = Trainer(cfg)
    losses = []
    compute = trainer.objective.losses

    def recording(outputs):
        out = compute(outputs)
        losses.append(float(out["loss"].detach()))
        return out

    trainer.objective.losses = recording
    with caplog.at_level(logging.WARNING):
        trainer.fit()
    # one epoch (train.epochs=1): skipped batches do not count as optimiser steps and do not extend the run
    assert trainer.state.skipped_batches >= 1 and trainer.state.failed_videos == 5
    assert trainer.state.step == trainer.total_steps - trainer.state.skipped_batches
    assert losses and all(math.isfinite(x) for x in losses)
    for record in broken:
        assert record.path in caplog.text, f"{record.path} was not logged"


@pytest.mark.parametrize("mode", ["clip4clip", "strict"])
def test_evaluation_reports_broken_videos_and_strict_counts_them_as_misses(synth, tmp_path, broken_videos,
                                                                           tiny_checkpoint, mode):
    from vidclip.cli.eval import main as eval_main

    test_list, broken = _list_with_broken(synth, tmp_path, broken_videos, "test", 3)
    out = tmp_path / "metrics.json"
    eval_main(["--config", str(TINY_CONFIG), "--checkpoint", str(tiny_checkpoint),
               *synth_overrides(synth, **{"data.test_list": str(test_list), "eval.mode": mode,
                                          "eval.output": str(out), "model.arch": "tiny-vifi"})])
    report = json.loads(out.read_text())
    assert report["num_failed_videos"] == 3 and report["num_videos"] == 6
    assert sorted(f["video_id"] for f in report["failed_videos"]) == sorted(r.video_id for r in broken)
    for entry, record in zip(sorted(report["failed_videos"], key=lambda f: f["video_id"]),
                             sorted(broken, key=lambda r: r.video_id)):
        assert record.path in entry["error"]
    t2v = report["t2v"]
    assert all(math.isfinite(t2v[k]) for k in ("R@1", "R@5", "MdR", "MnR"))
    if mode == "strict":  # 6 queries, 3 of which can never be answered; the others rank among the 3 decodable videos
        assert t2v["n"] == 6 and t2v["n_failed"] == 3
        assert t2v["R@5"] == 50.0 and t2v["MnR"] >= (3 * 7 + 3 * 1) / 6
    else:  # the published protocol drops the failed rows
        assert t2v["n_dropped"] == 3 and t2v["R@5"] == 100.0


def test_extraction_skips_and_counts_broken_videos(synth, tmp_path, broken_videos, odd_videos, tiny_checkpoint):
    import vidclip
    from vidclip.engine.extract import read_manifest, run_extraction

    folder = tmp_path / "videos"
    bad = broken_videos(folder)
    odd = odd_videos(folder)
    bad.pop("missing")  # a folder input lists existing files only; missing files are covered through a list below
    cfg = load_config(TINY_CONFIG, synth_overrides(synth, **{"extract.shard_size": "3", "model.arch": "tiny-vifi"}))
    model = vidclip.create_model(cfg.model, pretrained=str(tiny_checkpoint)).eval()
    summary = run_extraction(cfg, model, str(folder), tmp_path / "emb", resume=False)
    entries = {e["video_id"]: e for e in read_manifest(tmp_path / "emb")}
    assert summary["failed"] == len(bad) and summary["manifest_lines"] == len(bad) + len(odd)
    for path in bad.values():
        assert entries[path.stem]["status"] == "failed" and path.name in entries[path.stem]["error"]
    for kind in odd:
        assert entries[kind]["status"] == "ok", entries[kind]
    assert entries["single_frame"]["num_frames"] == 1
    listed = write_list([VideoRecord("gone", "gone.mp4", ["x"]), VideoRecord("ok", "vfr.mp4", ["y"])],
                        tmp_path / "list.jsonl")
    cfg.data.videos_root = str(folder)
    summary = run_extraction(cfg, model, str(listed), tmp_path / "emb2", resume=False)
    lines = read_manifest(tmp_path / "emb2")
    assert summary["failed"] == 1 and lines[0]["status"] == "failed" and "gone.mp4" in lines[0]["error"]


def test_strict_metrics_with_failed_videos_by_hand():
    from vidclip.metrics import retrieval_metrics

    sim = np.array([[0.9, 0.1, 0.95, 0.2],  # text 0: video 2 (failed) would outrank the answer
                    [0.3, 0.8, 0.1, 0.9],   # text 1: rank 2 behind video 3
                    [0.1, 0.2, 0.7, 0.3],   # text 2: its video failed -> a miss
                    [0.2, 0.3, 0.1, 0.6]])
    sim[:, 2] = np.nan  # what evaluation writes into a failed video's column
    out = retrieval_metrics(sim, mode="strict", failed_videos=[2])
    # t2v ranks (1-based): 1, 2, miss (N + 1 = 5), 1
    assert out["t2v"]["R@1"] == 50.0 and out["t2v"]["R@5"] == 75.0 and out["t2v"]["R@10"] == 75.0
    assert out["t2v"]["MnR"] == (1 + 2 + 5 + 1) / 4 and out["t2v"]["n_failed"] == 1
    # v2t (columns): video 0 -> text 0 first; video 1 -> text 1 first; video 2 miss; video 3 -> text 1 (0.9) > 0.6
    assert out["v2t"]["R@1"] == 50.0 and out["v2t"]["R@50"] == 75.0 and out["v2t"]["n_failed"] == 1
    assert out["v2t"]["MnR"] == (1 + 1 + 5 + 2) / 4
