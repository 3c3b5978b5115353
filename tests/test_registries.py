"""Registries are the one source of names: a sampler and a reader registered here (a user module, no edit to
vidclip) are valid config values and are what the dataset uses; the frame count and image size of a model agree
with the data config (UCoFiA's ISA matrices on DiDeMo's 64 frames run a forward on a tiny model)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidclip.config import choices_for, load_config
from vidclip.data.builders import build_dataset
from vidclip.data.lists import VideoRecord, write_list
from vidclip.data.readers.pyav import PyAVReader
from vidclip.data.samplers import FrameIndices, FrameSampler
from vidclip.errors import ConfigError
from vidclip.registry import READERS, SAMPLERS, TEMPORAL

REPO = Path(__file__).resolve().parents[1]
T = 4
OPENED: list[tuple[str, list[int]]] = []  # (path, indices) of every get_frames through the test reader


class LastFramesReversed(FrameSampler):
    """The last ``num_frames`` frames, newest first (deterministic); ``data.slice`` only proves config_keys work."""

    config_keys = {"slice": "data.slice"}

    def __init__(self, num_frames: int, slice: str = "uniform"):
        super().__init__(num_frames)
        self.slice = slice

    def sample(self, n, fps, start, end, generator):
        indices = np.maximum(np.arange(n - 1, n - 1 - self.num_frames, -1), 0)  # (T,)
        return FrameIndices(indices.astype(np.int64), np.ones(self.num_frames, dtype=bool))


class RecordingReader(PyAVReader):
    """A PyAV reader that records which frames were asked for."""

    backend = "test_recording"

    def get_frames(self, indices):
        OPENED.append((str(self.path), [int(i) for i in indices]))
        return super().get_frames(indices)


def random_sampler(num_frames: int):
    """A plain function factory, registered as a non-deterministic sampler."""
    return LastFramesReversed(num_frames)


@pytest.fixture
def user_entries():
    SAMPLERS.register("test_last_reversed")(LastFramesReversed)
    SAMPLERS.register("test_random", deterministic=False)(random_sampler)
    READERS.register("test_recording")(RecordingReader)
    OPENED.clear()
    yield
    for registry, name in ((SAMPLERS, "test_last_reversed"), (SAMPLERS, "test_random"),
                           (READERS, "test_recording")):
        registry.unregister(name)


def _lists(make_video, tmp_path, num_frames=10):
    make_video(num_frames=num_frames, name="videos/a.mp4", seed=1)
    return write_list([VideoRecord("a", "a.mp4", ["a caption"])], tmp_path / "test.jsonl")


def test_user_sampler_and_reader_are_selectable_by_name_and_used_by_the_dataset(user_entries, make_video, tmp_path):
    test_list = _lists(make_video, tmp_path)
    cfg = load_config(None, ["model.arch=tiny-vifi", f"data.videos_root={tmp_path / 'videos'}",
                             f"data.test_list={test_list}", f"data.num_frames={T}", "data.slice=tail",
                             "data.test_sampler=test_last_reversed", "data.train_sampler=test_random",
                             "data.reader_backend=test_recording"])
    dataset = build_dataset(cfg, "test", train=False)
    assert isinstance(dataset.sampler, LastFramesReversed) and dataset.sampler.slice == "tail"  # via config_keys
    item = dataset[0]
    assert OPENED == [(str(tmp_path / "videos" / "a.mp4"), [9, 8, 7, 6])]  # our reader, our sampler's indices
    assert item["video"].shape == (T, 3, 32, 32)


def test_registry_facts_filter_the_choices(user_entries):
    assert "test_random" in choices_for("data.train_sampler")
    assert "test_random" not in choices_for("data.test_sampler")  # not deterministic
    assert "segment_random" not in choices_for("data.test_sampler")
    with pytest.raises(ConfigError, match="data.test_sampler"):
        load_config(None, ["data.test_sampler=test_random"])
    assert "test_recording" in choices_for("data.reader_backend")


def test_unregistered_names_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="data.reader_backend.*Valid choices: auto, decord"):
        load_config(None, ["data.reader_backend=test_recording"])
    with pytest.raises(ConfigError, match="unknown temporal module 'lstm'. Available: mean, seq_transformer"):
        TEMPORAL.get("lstm")


def test_builtins_are_imported_lazily_on_first_lookup(tmp_path, monkeypatch):
    from vidclip.registry import Registry

    things = Registry("thing", builtins="vidclip_test_plugin")
    (tmp_path / "vidclip_test_plugin.py").write_text(
        "from tests_registry_target import THINGS\n@THINGS.register('made')\ndef made():\n    return 1\n")
    target = type(sys)("tests_registry_target")
    target.THINGS = things
    monkeypatch.setitem(sys.modules, "tests_registry_target", target)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "vidclip_test_plugin" not in sys.modules  # nothing imported at construction
    assert things.names() == ["made"] and things.create("made") == 1
    monkeypatch.delitem(sys.modules, "vidclip_test_plugin")


def test_didemo_ucofia_configs_build_and_run_a_forward_on_a_tiny_model():
    import vidclip

    for name in ("ucofia_b16", "ucofia_b32"):
        cfg = load_config(REPO / "configs" / "didemo" / f"{name}.yaml",
                          ["model.arch=tiny-ucofia", "model.pretrained=null", "data.image_size=32"])
        assert cfg.data.num_frames == 64 and cfg.model.head.kwargs.max_frames == 64
    torch.manual_seed(0)
    model = vidclip.create_model(cfg).double().eval()
    frames = torch.randn(2, 64, 3, 32, 32, dtype=torch.float64)  # (B, T, 3, S, S)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 40:] = False  # a shorter second video
    with torch.no_grad():
        sim = model.similarity(model.encode_text(["a paragraph", "another one"]), model.encode_video(frames, mask))
    assert sim.shape == (2, 2) and torch.isfinite(sim).all()
