"""Readers: frame-exact access against a plain sequential PyAV decode, true frame counts, damaged files."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest

from vidclip.data.readers import open_video
from vidclip.errors import VideoDecodeError

HAS_DECORD = importlib.util.find_spec("decord") is not None
BACKENDS = ["auto", "pyav", pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="no decord"))]
REAL_VIDEOS = ["misc/Effet_force_magnetique.ogv", "misc/balle1-vp9.avi", "misc/bikes.mp4",
               "misc/carphone_pristine.mp4", "misc/cockatoo.mp4", "misc/realshort.mp4",
               "msrvtt/video9770.mp4", "msrvtt/video9771.mp4"]


def sequential_decode(path) -> np.ndarray:
    """The ground truth: every frame of ``container.decode(video=0)``, in order, as RGB."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def index_sets(num_frames: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    yield np.linspace(0, num_frames - 1, 12).astype(np.int64)  # uniform, sorted
    yield rng.integers(0, num_frames, size=9)  # random order with possible repeats
    yield np.array([num_frames - 1, 0, num_frames // 2, num_frames - 1])  # backwards jumps and a repeat


def remux_faststart(src: Path, dst: Path) -> Path:
    """Copy ``src``'s video packets into an MP4 whose index (moov) precedes the data, so truncation keeps it."""
    with av.open(str(src)) as source, av.open(str(dst), "w", options={"movflags": "faststart"}) as target:
        stream_in = source.streams.video[0]
        stream_out = target.add_stream_from_template(stream_in)
        for packet in source.demux(stream_in):
            if packet.dts is None:
                continue
            packet.stream = stream_out
            target.mux(packet)
    return dst


# ------------------------------------------------------------------------------------------- synthetic videos
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gop", [None, 8])
def test_lossless_video_exact_frames(make_video, backend, gop):
    path, frames = make_video(num_frames=40, gop=gop)
    with open_video(path, backend=backend) as reader:
        assert reader.num_frames == 40 and (reader.height, reader.width) == frames.shape[1:3]
        assert reader.fps == pytest.approx(25) and reader.duration == pytest.approx(40 / 25)
        for indices in index_sets(40):
            got = reader.get_frames(indices)
            assert got.dtype == np.uint8 and got.shape == (len(indices), 48, 64, 3)
            np.testing.assert_array_equal(got, frames[indices])


def test_keyframe_seeks_are_exact_on_lossy_bframe_video(make_video):
    """Forced keyframe seeks on an H.264 stream with B-frames give the same images as the sequential decode."""
    path, _ = make_video(num_frames=90, codec="libx264", gop=10)
    truth = sequential_decode(path)
    seeking = open_video(path, backend="pyav", seek_min_gap=1)
    assert seeking.num_frames == len(truth) == 90
    for seed in range(3):
        for indices in index_sets(90, seed):
            np.testing.assert_array_equal(seeking.get_frames(indices), truth[indices])


def test_empty_index_list_and_bad_indices(make_video):
    path, _ = make_video(num_frames=10)
    reader = open_video(path)
    assert reader.get_frames([]).shape == (0, 48, 64, 3)
    with pytest.raises(VideoDecodeError, match=r"clip\.mp4.*frame index 10"):
        reader.get_frames([3, 10])
    with pytest.raises(VideoDecodeError, match="frame index -1"):
        reader.get_frames([-1])
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video(path, backend="opencv")


# ------------------------------------------------------------------------------------------- real files
@pytest.fixture(scope="module")
def truths(shared_data):
    return {}


@pytest.mark.parametrize("name", REAL_VIDEOS)
def test_real_files_auto_is_exact(shared_data, truths, name):
    path = shared_data / "videos" / name
    truth = truths.setdefault(name, sequential_decode(path))
    with open_video(path, backend="auto") as reader:
        assert reader.backend == "pyav"
        assert reader.num_frames == len(truth), "num_frames must be the decodable count"
        for indices in index_sets(len(truth)):
            np.testing.assert_array_equal(reader.get_frames(indices), truth[indices])


@pytest.mark.parametrize("name", REAL_VIDEOS)
def test_real_files_forced_keyframe_seeks_are_exact(shared_data, truths, name):
    path = shared_data / "videos" / name
    truth = truths.setdefault(name, sequential_decode(path))
    reader = open_video(path, backend="pyav", seek_min_gap=1)
    for seed in range(2):
        for indices in index_sets(len(truth), seed):
            np.testing.assert_array_equal(reader.get_frames(indices), truth[indices])


def test_frame_counts_ignore_lying_headers(shared_data):
    videos = shared_data / "videos" / "misc"
    with av.open(str(videos / "balle1-vp9.avi")) as container:
        assert container.streams.video[0].frames == 300  # the header's claim
    assert open_video(videos / "balle1-vp9.avi").num_frames == 295
    assert open_video(videos / "Effet_force_magnetique.ogv").num_frames == 34


@pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")
def test_decord_is_wrong_on_cockatoo_which_is_why_auto_avoids_it(shared_data, truths):
    path = shared_data / "videos" / "misc" / "cockatoo.mp4"
    truth = truths.setdefault("misc/cockatoo.mp4", sequential_decode(path))
    reader = open_video(path, backend="decord")
    frames = reader.get_frames([200])  # a seek into the last GOP
    assert not np.array_equal(frames[0], truth[200]), "decord became exact here: revisit the auto policy"
    np.testing.assert_array_equal(open_video(path, backend="auto").get_frames([200])[0], truth[200])


@pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")
def test_decord_cannot_open_ogv_and_says_so(shared_data):
    path = shared_data / "videos" / "misc" / "Effet_force_magnetique.ogv"
    with pytest.raises(VideoDecodeError, match=r"Effet_force_magnetique\.ogv.*backend='pyav'"):
        open_video(path, backend="decord")


# ------------------------------------------------------------------------------------------- damaged files
def test_missing_empty_and_text_files(tmp_path):
    with pytest.raises(VideoDecodeError, match=r"nope\.mp4: file not found"):
        open_video(tmp_path / "nope.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match=r"empty\.mp4: file is empty"):
        open_video(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoDecodeError, match=r"notes\.mp4: not a readable media file"):
        open_video(text)


def test_audio_only_file(tmp_path):
    path = tmp_path / "speech.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 16000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    with pytest.raises(VideoDecodeError, match=r"speech\.mp4: no video stream \(audio only\)"):
        open_video(path)


def test_truncated_files_keep_the_decodable_prefix(make_video, tmp_path):
    source, _ = make_video(num_frames=60, codec="libx264", gop=12)
    full = remux_faststart(source, tmp_path / "faststart.mp4").read_bytes()
    truth = sequential_decode(tmp_path / "faststart.mp4")
    outcomes = []
    for fraction in (0.001, 0.02, 0.3, 0.6, 0.9, 0.999):
        cut = tmp_path / f"cut_{fraction}.mp4"
        cut.write_bytes(full[: int(len(full) * fraction)])
        plain = []
        try:  # the plain loop raises at the damaged packet; keep what it produced before that
            with av.open(str(cut)) as container:
                plain.extend(frame.to_ndarray(format="rgb24") for frame in container.decode(video=0))
        except (av.error.FFmpegError, IndexError):  # IndexError: the cut left no video stream
            pass
        try:
            reader = open_video(cut)
        except VideoDecodeError as exc:
            assert str(cut) in str(exc)
            assert not plain, "a file with decodable frames must open"
            outcomes.append("error")
            continue
        assert len(plain) <= reader.num_frames < 60
        everything = reader.get_frames(np.arange(reader.num_frames))
        np.testing.assert_array_equal(everything[: len(plain)], np.stack(plain))
        np.testing.assert_array_equal(everything, truth[: reader.num_frames])  # a prefix of the intact file
        with pytest.raises(VideoDecodeError, match=f"frame index {reader.num_frames}"):
            reader.get_frames([reader.num_frames])
        outcomes.append("prefix")
    assert "error" in outcomes and outcomes.count("prefix") >= 3


def test_truncated_moov_at_end_file_is_an_error(shared_data, tmp_path):
    data = (shared_data / "videos" / "msrvtt" / "video9770.mp4").read_bytes()
    cut = tmp_path / "video9770.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) sits at the end of this file
    with pytest.raises(VideoDecodeError, match=r"video9770\.mp4: not a readable media file"):
        open_video(cut)


def test_decord_import_error_is_actionable(make_video, monkeypatch):
    import builtins

    path, _ = make_video(num_frames=4)
    real_import = builtins.__import__

    def no_decord(name, *args, **kwargs):
        if name == "decord":
            raise ImportError("No module named 'decord'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_decord)
    with pytest.raises(ImportError, match="backend='pyav'"):
        open_video(path, backend="decord")
    assert open_video(path, backend="auto").num_frames == 4  # auto never needs decord
