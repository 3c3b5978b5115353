"""Readers: frame-exact access against a plain sequential PyAV decode, true frame counts, damaged files.

Every backend test runs on PyAV and, where it loads (``pip install vidclip[torchcodec]`` plus the system FFmpeg
libraries), torchcodec; decord where installed. Skipped backends say why in the ``-ra`` summary.
"""
from __future__ import annotations

import hashlib
import importlib.util
import struct
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vidclip.data.readers import open_video
from vidclip.data.readers.torchcodec import iso_bmff_complete, torchcodec_status
from vidclip.errors import ConfigError, VideoDecodeError

HAS_DECORD = importlib.util.find_spec("decord") is not None
HAS_TORCHCODEC, TORCHCODEC_REASON = torchcodec_status()
needs_torchcodec = pytest.mark.skipif(not HAS_TORCHCODEC, reason=f"torchcodec backend unavailable: {TORCHCODEC_REASON}")
TORCHCODEC = pytest.param("torchcodec", marks=needs_torchcodec)
EXACT_BACKENDS = ["pyav", TORCHCODEC]  # backends exact on every file, damaged ones included
BACKENDS = ["auto", *EXACT_BACKENDS,
            pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="no decord"))]
REAL_VIDEOS = ["misc/Effet_force_magnetique.ogv", "misc/balle1-vp9.avi", "misc/bikes.mp4",
               "misc/carphone_pristine.mp4", "misc/cockatoo.mp4", "misc/realshort.mp4",
               "msrvtt/video9770.mp4", "msrvtt/video9771.mp4"]


def sequential_decode(path) -> np.ndarray:
    """The ground truth: every frame of ``container.decode(video=0)``, in order, as RGB."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def digest(frame) -> tuple:
    """Shape and SHA-1 of one uint8 RGB frame (equal digests: equal images), to hold big videos' truth in little
    memory."""
    frame = np.ascontiguousarray(frame)
    return frame.shape, hashlib.sha1(frame.tobytes()).hexdigest()


def sequential_digests(path) -> list[tuple]:
    """The ground truth as digests: frame k of a plain sequential decode, for every k."""
    with av.open(str(path)) as container:
        return [digest(frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]


def assert_frames_match(got, truth: list[tuple], indices, label: str = "") -> None:
    assert got.dtype == np.uint8 and len(got) == len(indices)
    wrong = [int(k) for frame, k in zip(got, indices) if digest(frame) != truth[int(k)]]
    assert not wrong, f"{label}: frames {wrong[:10]} differ from the sequential decode"


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
    """name -> digests of every frame of its sequential decode (computed once per module)."""
    cache: dict[str, list[tuple]] = {}

    def get(name: str) -> list[tuple]:
        if name not in cache:
            cache[name] = sequential_digests(shared_data / "videos" / name)
        return cache[name]

    return get


@pytest.mark.parametrize("name", REAL_VIDEOS)
def test_real_files_auto_is_exact(shared_data, truths, name):
    path = shared_data / "videos" / name
    truth = truths(name)
    with open_video(path, backend="auto") as reader:
        assert reader.backend == ("torchcodec" if HAS_TORCHCODEC else "pyav")
        assert reader.num_frames == len(truth), "num_frames must be the decodable count"
        for indices in index_sets(len(truth)):
            assert_frames_match(reader.get_frames(indices), truth, indices, name)


@needs_torchcodec
@pytest.mark.parametrize("name", REAL_VIDEOS)
def test_real_files_torchcodec_is_exact_frame_by_frame(shared_data, truths, name):
    """Every frame of every real file, read by torchcodec itself (no PyAV hand-over), equals the sequential decode;
    so do scattered, backwards and repeated reads, and metadata matches the PyAV reader's."""
    path = shared_data / "videos" / name
    truth = truths(name)
    reader = open_video(path, backend="torchcodec")
    assert reader.decoder == "torchcodec", "a real file must not need the PyAV hand-over"
    pyav = open_video(path, backend="pyav")
    assert (reader.num_frames, reader.fps, reader.width, reader.height) == (
        pyav.num_frames, pyav.fps, pyav.width, pyav.height) and reader.num_frames == len(truth)
    for start in range(0, len(truth), 32):  # consecutive chunks: every frame, bounded memory
        chunk = np.arange(start, min(start + 32, len(truth)))
        assert_frames_match(reader.get_frames(chunk), truth, chunk, name)
    for seed in range(2):
        for indices in index_sets(len(truth), seed):
            assert_frames_match(reader.get_frames(indices), truth, indices, name)
    n = len(truth)
    for k in (n - 1, n // 2, 2 * n // 3, n // 3):  # a fresh reader whose first read needs a keyframe seek
        assert_frames_match(open_video(path, backend="torchcodec").get_frames([k]), truth, [k], f"{name} fresh")


@needs_torchcodec
def test_raw_torchcodec_seek_on_cockatoo_is_wrong_which_is_why_the_reader_primes(shared_data, truths):
    """A decoder that never decoded packet 0 misses the x264 version SEI (FFmpeg's 4:4:4 workaround switch) and
    returns a wrong frame 200 after its keyframe seek; the reader decodes frame 0 first and is exact."""
    from torchcodec.decoders import VideoDecoder

    path = shared_data / "videos" / "misc" / "cockatoo.mp4"
    truth = truths("misc/cockatoo.mp4")
    raw = VideoDecoder(str(path), seek_mode="exact", dimension_order="NHWC")
    assert digest(raw.get_frames_at([200]).data.numpy()[0]) != truth[200], "torchcodec became exact: drop priming?"
    assert_frames_match(open_video(path, backend="torchcodec").get_frames([200, 150]), truth, [200, 150])


@pytest.mark.parametrize("name", REAL_VIDEOS)
def test_real_files_forced_keyframe_seeks_are_exact(shared_data, truths, name):
    path = shared_data / "videos" / name
    truth = truths(name)
    reader = open_video(path, backend="pyav", seek_min_gap=1)
    for seed in range(2):
        for indices in index_sets(len(truth), seed):
            assert_frames_match(reader.get_frames(indices), truth, indices, name)
    n = len(truth)
    for k in (n - 1, n // 2):  # the first read seeks (cockatoo.mp4: wrong unless packet 0 was decoded first)
        assert_frames_match(reader.get_frames([k]), truth, [k], f"{name} seek first")


@pytest.mark.parametrize("backend", BACKENDS[:3])
def test_frame_counts_ignore_lying_headers(shared_data, backend):
    videos = shared_data / "videos" / "misc"
    with av.open(str(videos / "balle1-vp9.avi")) as container:
        assert container.streams.video[0].frames == 300  # the header's claim
    assert open_video(videos / "balle1-vp9.avi", backend=backend).num_frames == 295
    assert open_video(videos / "Effet_force_magnetique.ogv", backend=backend).num_frames == 34


@pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")
def test_decord_is_wrong_on_cockatoo_which_is_why_auto_avoids_it(shared_data, truths):
    path = shared_data / "videos" / "misc" / "cockatoo.mp4"
    truth = truths("misc/cockatoo.mp4")
    reader = open_video(path, backend="decord")
    frames = reader.get_frames([200])  # a seek into the last GOP
    assert digest(frames[0]) != truth[200], "decord became exact here: revisit the auto policy"
    assert_frames_match(open_video(path, backend="auto").get_frames([200]), truth, [200])


@pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")
def test_decord_cannot_open_ogv_and_says_so(shared_data):
    path = shared_data / "videos" / "misc" / "Effet_force_magnetique.ogv"
    with pytest.raises(VideoDecodeError, match=r"Effet_force_magnetique\.ogv.*backend='pyav'"):
        open_video(path, backend="decord")


# ------------------------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("backend", BACKENDS[:3])
def test_missing_empty_and_text_files(tmp_path, backend):
    with pytest.raises(VideoDecodeError, match=r"nope\.mp4: file not found"):
        open_video(tmp_path / "nope.mp4", backend=backend)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match=r"empty\.mp4: file is empty"):
        open_video(empty, backend=backend)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoDecodeError, match=r"notes\.mp4: not a readable media file"):
        open_video(text, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS[:3])
def test_audio_only_file(tmp_path, backend):
    path = tmp_path / "speech.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 16000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    with pytest.raises(VideoDecodeError, match=r"speech\.mp4: no video stream \(audio only\)"):
        open_video(path, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS[:3])
def test_truncated_files_keep_the_decodable_prefix(make_video, tmp_path, backend):
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
            reader = open_video(cut, backend=backend)
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


@pytest.mark.parametrize("backend", BACKENDS[:3])
def test_truncated_moov_at_end_file_is_an_error(shared_data, tmp_path, backend):
    data = (shared_data / "videos" / "msrvtt" / "video9770.mp4").read_bytes()
    cut = tmp_path / "video9770.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) sits at the end of this file
    with pytest.raises(VideoDecodeError, match=r"video9770\.mp4: not a readable media file"):
        open_video(cut, backend=backend)


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


# ------------------------------------------------------------------------------------------- torchcodec specifics
@needs_torchcodec
def test_torchcodec_alone_fails_on_a_truncated_file_which_is_why_pyav_takes_it(shared_data, tmp_path):
    """bikes.mp4 with its index first and its last byte cut: raw torchcodec counts 250 frames (header and scan
    agree, no hint there) and fails on frame 247, both unlike the damaged file's sequential decode (249 frames);
    the reader sees the truncation (the top-level boxes no longer fill the file) and hands the file to PyAV."""
    from torchcodec.decoders import VideoDecoder

    faststart = remux_faststart(shared_data / "videos" / "misc" / "bikes.mp4", tmp_path / "bikes_faststart.mp4")
    cut = tmp_path / "bikes_cut.mp4"
    cut.write_bytes(faststart.read_bytes()[:-1])
    truth = sequential_digests(faststart)
    raw = VideoDecoder(str(cut), seek_mode="exact", dimension_order="NHWC")
    assert len(raw) == raw.metadata.num_frames_from_header == 250
    raw.get_frames_at([246])
    with pytest.raises(RuntimeError):
        raw.get_frames_at([247])
    reader = open_video(cut, backend="torchcodec")
    assert reader.decoder == "pyav" and reader.num_frames == 249
    assert_frames_match(reader.get_frames([0, 247]), truth, [0, 247], "bikes_cut")
    # frame 248 lost a reference with the cut packet: the truth is the damaged file's own sequential decode
    np.testing.assert_array_equal(reader.get_frames([248]), open_video(cut, backend="pyav").get_frames([248]))


def test_iso_bmff_completeness(make_video, tmp_path, shared_data):
    path, _ = make_video(num_frames=8)
    assert iso_bmff_complete(path)
    data = path.read_bytes()
    for name, content in (("cut.mp4", data[:-1]), ("tail.mp4", data + b"\0" * 4)):
        (tmp_path / name).write_bytes(content)
        assert not iso_bmff_complete(tmp_path / name), name
    assert iso_bmff_complete(remux_faststart(path, tmp_path / "faststart.mp4"))
    assert not iso_bmff_complete(shared_data / "videos" / "misc" / "Effet_force_magnetique.ogv")
    assert not iso_bmff_complete(shared_data / "videos" / "misc" / "balle1-vp9.avi")


def with_display_rotation(src: Path, dst: Path, degrees: int) -> Path:
    """Copy of an MP4 whose track header (tkhd, version 0) carries a display matrix rotating by ``degrees``."""
    data = bytearray(src.read_bytes())
    at = data.find(b"tkhd")
    assert at > 0 and data[at + 4] == 0, "expected a version-0 tkhd box"
    matrix_at = at + 4 + 4 + 5 * 4 + 8 + 4 * 2  # type, version+flags, 5 words, reserved, layer/group/volume/reserved
    cos, sin = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees]
    a, b, c, d = (int(v * 65536) for v in (cos, sin, -sin, cos))
    data[matrix_at: matrix_at + 20] = struct.pack(">iiiii", a, b, 0, c, d)
    dst.write_bytes(bytes(data))
    return dst


@needs_torchcodec
@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_torchcodec_returns_stored_orientation(make_video, tmp_path, degrees):
    """torchcodec applies the display rotation; the reader undoes it, so frames equal PyAV's stored ones."""
    from torchcodec.decoders import VideoDecoder

    source, frames = make_video(num_frames=6)
    path = with_display_rotation(source, tmp_path / f"rot{degrees}.mp4", degrees)
    raw = VideoDecoder(str(path), dimension_order="NHWC").get_frames_at([0]).data.numpy()
    assert raw.shape[1:3] != frames.shape[1:3] or not np.array_equal(raw[0], frames[0]), "no rotation applied"
    reader = open_video(path, backend="torchcodec")
    assert (reader.height, reader.width) == frames.shape[1:3]
    np.testing.assert_array_equal(reader.get_frames([5, 0, 3]), frames[[5, 0, 3]])
    np.testing.assert_array_equal(reader.get_frames([5, 0, 3]), open_video(path, backend="pyav").get_frames([5, 0, 3]))


def test_auto_without_torchcodec_uses_pyav(make_video, monkeypatch):
    from vidclip.data.readers import torchcodec as torchcodec_backend

    path, frames = make_video(num_frames=6)
    monkeypatch.setattr(torchcodec_backend, "torchcodec_status", lambda: (False, "torchcodec is not installed"))
    reader = open_video(path, backend="auto")
    assert reader.backend == "pyav"
    np.testing.assert_array_equal(reader.get_frames([4, 1]), frames[[4, 1]])
    with pytest.raises(ImportError, match="torchcodec is not installed.*backend='pyav'"):
        open_video(path, backend="torchcodec")
    with pytest.raises(ImportError, match="decode device 'cuda' needs torchcodec"):
        open_video(path, backend="auto", device="cuda")


def test_decode_device_errors_name_the_key(make_video):
    from vidclip.config import load_config

    path, _ = make_video(num_frames=4)
    with pytest.raises(ConfigError, match="data.decode_device.*auto, torchcodec; got backend 'pyav'"):
        open_video(path, backend="pyav", device="cuda")
    with pytest.raises(ConfigError, match="data.decode_device=cuda needs data.reader_backend"):
        load_config(overrides=["data.decode_device=cuda", "data.reader_backend=pyav"])
    assert load_config(overrides=["data.decode_device=cuda"]).data.decode_device == "cuda"  # checked at open
    if not torch.cuda.is_available() and HAS_TORCHCODEC:
        with pytest.raises(ConfigError, match="torch sees no CUDA device; set data.decode_device=cpu"):
            open_video(path, backend="torchcodec", device="cuda")


@pytest.mark.gpu
@needs_torchcodec
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["msrvtt/video9770.mp4", "misc/cockatoo.mp4", "misc/Effet_force_magnetique.ogv"])
def test_gpu_decoding_matches_cpu_closely(shared_data, name):
    """NVDEC (``data.decode_device=cuda``): same count and size; pixels within a few levels of the CPU frames
    (NVDEC's colour conversion is not bit-identical; codecs it lacks fall back to the CPU inside torchcodec)."""
    path = shared_data / "videos" / name
    cpu = open_video(path, backend="torchcodec")
    gpu = open_video(path, backend="torchcodec", device="cuda")
    assert (gpu.num_frames, gpu.width, gpu.height) == (cpu.num_frames, cpu.width, cpu.height)
    indices = np.array([cpu.num_frames - 1, 0, cpu.num_frames // 2, 0])
    got = gpu.get_frames(indices)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8 and got.shape == (4, cpu.height, cpu.width, 3)
    difference = (got.cpu().float() - torch.from_numpy(cpu.get_frames(indices)).float()).abs()
    assert difference.mean() < 2.0 and difference.quantile(0.99) <= 8, (difference.mean(), difference.max())


def test_gpu_decoding_workers_are_spawned_and_the_reader_factory_pickles(make_video):
    """CUDA cannot run in a forked child of a process using it: GPU-decoding DataLoader workers are spawned, which
    pickles the dataset and its reader factory."""
    import pickle

    from vidclip.config import load_config
    from vidclip.data.builders import build_reader_factory, worker_context

    path, frames = make_video(num_frames=5)
    gpu = load_config(overrides=["data.decode_device=cuda", "data.num_workers=2"])
    assert worker_context(gpu) == "spawn"
    assert worker_context(load_config(overrides=["data.decode_device=cuda", "data.num_workers=0"])) is None
    cpu = load_config(overrides=["data.num_workers=2", "data.reader_backend=pyav"])
    assert worker_context(cpu) is None
    factory = pickle.loads(pickle.dumps(build_reader_factory(cpu)))
    with factory(str(path)) as reader:
        assert reader.backend == "pyav"
        np.testing.assert_array_equal(reader.get_frames([4, 0]), frames[[4, 0]])
