"""Frame samplers: indices, masks, determinism, CLIP4Clip and Prompt Switch parity with naive re-implementations."""
from __future__ import annotations

import numpy as np
import pytest

from vidclip.data.samplers import FrameIndices, create_sampler
from vidclip.errors import ConfigError
from vidclip.registry import SAMPLERS

ALL = ["uniform", "clip4clip", "segment_random", "segment_center", "prompt_switch"]


def check_valid(result: FrameIndices, size: int, num_frames: int):
    assert result.indices.dtype == np.int64 and result.indices.shape == (size,)
    assert result.mask.dtype == bool and result.mask.shape == (size,)
    assert result.indices.min() >= 0 and result.indices.max() < num_frames


# --------------------------------------------------------------------------------------------- naive references
class FakeCapture:
    """Just enough of cv2.VideoCapture: frame count, fps, seek by frame number, read fails past the end."""

    def __init__(self, frame_count: int, fps: float):
        self.frame_count, self.fps, self.pos = frame_count, fps, 0

    def set_pos(self, pos):
        self.pos = pos

    def read(self):
        ok = self.pos < self.frame_count
        frame = self.pos if ok else None
        self.pos += 1
        return ok, frame


def clip4clip_reference(frame_count, fps_float, max_frames, sample_fp=1, slice_framepos=2, start=None, end=None):
    """CLIP4Clip's RawVideoExtractorCV2.video_to_tensor + slice_framepos, written out as published."""
    cap = FakeCapture(frame_count, fps_float)
    fps = int(cap.fps)
    total_duration = (frame_count + fps - 1) // fps
    start_sec, end_sec = 0, total_duration
    if start is not None:
        start_sec, end_sec = start, end if end <= total_duration else total_duration
        cap.set_pos(int(start * fps))
    interval = fps // sample_fp if sample_fp > 0 else 1
    interval = interval or 1
    inds = [ind for ind in np.arange(0, fps, interval)][:sample_fp]
    ret, images = True, []
    for sec in np.arange(start_sec, end_sec + 1):
        if not ret:
            break
        sec_base = int(sec * fps)
        for ind in inds:
            cap.set_pos(sec_base + ind)
            ret, frame = cap.read()
            if not ret:
                break
            images.append(frame)
    if len(images) > max_frames:
        if slice_framepos == 0:
            images = images[:max_frames]
        elif slice_framepos == 1:
            images = images[-max_frames:]
        else:
            images = [images[i] for i in np.linspace(0, len(images) - 1, num=max_frames, dtype=int)]
    return images


def prompt_switch_reference(vlen, num_frames, num_prompts, sample="uniform"):
    """Prompt Switch's VideoCapture.load_frames_from_video index logic (test mode), as published."""
    acc_samples = min(num_prompts, vlen)
    intervals = np.linspace(start=0, stop=vlen, num=acc_samples + 1).astype(int)
    num_chunks = num_frames // num_prompts
    ranges = [(interv, intervals[idx + 1] - 1) for idx, interv in enumerate(intervals[:-1])]
    frame_idxs = []
    for i in range(num_chunks):
        frame_idxs.extend([(x[1] - x[0]) // (num_chunks + 1) * (i + 1) + x[0] for x in ranges])
    return frame_idxs


# --------------------------------------------------------------------------------------------- generic contract
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("video_len", [1, 5, 12, 100, 1001])
def test_every_sampler_returns_valid_indices(name, video_len):
    kwargs = {"num_prompts": 4} if name == "prompt_switch" else {}
    sampler = create_sampler(name, 12, **kwargs)
    result = sampler(video_len, 30.0, generator=np.random.default_rng(0))
    check_valid(result, 12, video_len)
    assert result.mask[0]
    assert name in SAMPLERS.names()


@pytest.mark.parametrize("name", ALL)
def test_deterministic_for_a_seed(name):
    kwargs = {"num_prompts": 4, "train": True} if name == "prompt_switch" else {}
    sampler = create_sampler(name, 8, **kwargs)
    draws = [sampler(500, 25.0, generator=np.random.default_rng(7)).indices for _ in range(2)]
    np.testing.assert_array_equal(draws[0], draws[1])


def test_unknown_sampler_lists_the_available_ones():
    with pytest.raises(ConfigError, match="Available: .*uniform"):
        create_sampler("nope", 8)


# --------------------------------------------------------------------------------------------- uniform
def test_uniform_spans_the_video_with_unique_indices():
    result = create_sampler("uniform", 12)(330, 30.0)
    assert result.indices[0] == 0 and result.indices[-1] == 329 and result.mask.all()
    assert len(np.unique(result.indices)) == 12 and np.all(np.diff(result.indices) > 0)
    np.testing.assert_allclose(result.indices, np.linspace(0, 329, 12), atol=0.5)
    exact = create_sampler("uniform", 12)(12, 30.0)  # step exactly 1 must stay unique
    np.testing.assert_array_equal(exact.indices, np.arange(12))


def test_uniform_short_video_pads_with_masked_repeats():
    result = create_sampler("uniform", 12)(5, 30.0)
    np.testing.assert_array_equal(result.indices, [0, 1, 2, 3, 4] + [4] * 7)
    np.testing.assert_array_equal(result.mask, [True] * 5 + [False] * 7)


@pytest.mark.parametrize("name", ["uniform", "segment_center", "segment_random", "clip4clip"])
def test_start_end_window_is_honoured(name):
    sampler = create_sampler(name, 6)
    result = sampler(900, 30.0, start=10.0, end=20.0, generator=np.random.default_rng(0))
    assert result.indices[result.mask].min() >= 300 and result.indices.max() <= 630
    clipped = sampler(900, 30.0, start=25.0, end=99.0, generator=np.random.default_rng(0))  # end past the video
    check_valid(clipped, 6, 900)
    assert clipped.indices.min() >= 750


def test_window_needs_fps():
    with pytest.raises(ValueError, match="fps is 0"):
        create_sampler("uniform", 4)(100, 0.0, start=1.0, end=2.0)


# --------------------------------------------------------------------------------------------- segments (TSN)
def test_segment_samplers_pick_one_frame_per_segment():
    edges = np.floor(np.arange(9) * 100 / 8).astype(int)  # 8 segments of a 100-frame video
    center = create_sampler("segment_center", 8)(100, 25.0).indices
    np.testing.assert_array_equal(center, (edges[:-1] + edges[1:]) // 2)
    rng = np.random.default_rng(3)
    for _ in range(20):
        picks = create_sampler("segment_random", 8)(100, 25.0, generator=rng).indices
        assert np.all(picks >= edges[:-1]) and np.all(picks < edges[1:])
    seen = {tuple(create_sampler("segment_random", 8)(100, 25.0, generator=rng).indices) for _ in range(5)}
    assert len(seen) > 1


# --------------------------------------------------------------------------------------------- CLIP4Clip
@pytest.mark.parametrize("fps", [29.97, 30.0, 25.0])
@pytest.mark.parametrize("length", [7, 36, 120, 330, 419, 1000, 3001])
@pytest.mark.parametrize("max_frames,slice_pos", [(12, 2), (12, 0), (12, 1), (64, 2)])
def test_clip4clip_matches_the_published_procedure(fps, length, max_frames, slice_pos):
    sampler = create_sampler("clip4clip", max_frames, sample_fps=1, slice=slice_pos)
    expected = clip4clip_reference(length, fps, max_frames, 1, slice_pos)
    result = sampler(length, fps)
    count = len(expected)
    np.testing.assert_array_equal(result.indices[:count], expected)
    np.testing.assert_array_equal(result.mask, np.arange(max_frames) < count)
    check_valid(result, max_frames, length)


@pytest.mark.parametrize("start,end", [(0, 5), (3, 9), (10, 40), (25, 30)])
@pytest.mark.parametrize("sample_fp", [1, 3])
def test_clip4clip_windows_and_sample_fps_match_the_published_procedure(start, end, sample_fp):
    sampler = create_sampler("clip4clip", 64, sample_fps=sample_fp, slice="uniform")
    expected = clip4clip_reference(900, 29.97, 64, sample_fp, 2, start=start, end=end)
    result = sampler(900, 29.97, start=start, end=end)
    np.testing.assert_array_equal(result.indices[: len(expected)], expected)
    assert result.mask.sum() == len(expected)


def test_clip4clip_rejects_fps_below_one():
    with pytest.raises(ValueError, match="fps 0.5 truncates to 0"):
        create_sampler("clip4clip", 12)(100, 0.5)
    with pytest.raises(ConfigError, match="slice"):
        create_sampler("clip4clip", 12, slice="middle")


# --------------------------------------------------------------------------------------------- Prompt Switch
@pytest.mark.parametrize("vlen", [6, 7, 50, 331, 1000])
@pytest.mark.parametrize("num_frames,num_prompts", [(6, 6), (12, 6), (12, 4)])
def test_prompt_switch_test_mode_matches_reference(vlen, num_frames, num_prompts):
    result = create_sampler("prompt_switch", num_frames, num_prompts=num_prompts)(vlen, 30.0)
    np.testing.assert_array_equal(result.indices, prompt_switch_reference(vlen, num_frames, num_prompts))
    assert result.mask.all()


def test_prompt_switch_order_is_chunk_major():
    result = create_sampler("prompt_switch", 12, num_prompts=6)(600, 30.0).indices
    chunks = result.reshape(2, 6)  # (C, P)
    assert np.all(np.diff(chunks, axis=1) > 0), "each chunk walks through all segments"
    assert np.all(chunks[0] < chunks[1]), "chunk 1 takes a later frame of the same segment"
    segments = np.arange(6) * 100
    assert np.all(chunks >= segments) and np.all(chunks < segments + 100)


def test_prompt_switch_train_draws_inside_segments():
    sampler = create_sampler("prompt_switch", 12, num_prompts=6, train=True)
    rng = np.random.default_rng(0)
    for _ in range(20):
        chunks = sampler(600, 30.0, generator=rng).indices.reshape(2, 6)  # (C, P)
        lows = np.arange(6) * 100
        assert np.all(chunks >= lows) and np.all(chunks < lows + 99)  # [a, b) with b = next start - 1
    test_mode = sampler(600, 30.0)  # no generator: the deterministic test positions
    np.testing.assert_array_equal(test_mode.indices, prompt_switch_reference(600, 12, 6))


def test_prompt_switch_short_video_options():
    repeat = create_sampler("prompt_switch", 12, num_prompts=6)(4, 30.0)
    np.testing.assert_array_equal(repeat.indices[:8], prompt_switch_reference(4, 12, 6))
    assert np.all(repeat.indices[8:] == repeat.indices[7]) and repeat.mask.all()  # the reference's behaviour
    masked = create_sampler("prompt_switch", 12, num_prompts=6, short="mask")(4, 30.0)
    np.testing.assert_array_equal(masked.mask, np.arange(12) < 8)
    with pytest.raises(ConfigError, match="multiple of num_prompts"):
        create_sampler("prompt_switch", 10, num_prompts=6)


def test_prompt_switch_window():
    result = create_sampler("prompt_switch", 6, num_prompts=6)(900, 30.0, start=10.0, end=20.0)
    np.testing.assert_array_equal(result.indices, 300 + np.asarray(prompt_switch_reference(300, 6, 6)))
