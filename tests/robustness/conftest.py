"""Fixtures of the robustness suite: a small synthetic dataset, a tiny checkpoint and a zoo of damaged videos."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import numbered_frames, write_video

from .helpers import set_mp4_rotation, write_audio_only, write_faststart, write_vfr


@pytest.fixture(scope="package")
def synth(tmp_path_factory) -> Path:
    """8 train / 4 val / 6 test synthetic clips (lists + lossless mp4s)."""
    from vidclip.data.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("robust_synth")
    make_synthetic_dataset(out, num_train=8, num_val=4, num_test=6, seed=11)
    return out


@pytest.fixture(scope="package")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Random-init tiny-vifi weights in vidclip's safetensors format."""
    import vidclip
    from vidclip.models.weights import save_model_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("robust_ckpt") / "model.safetensors"
    return save_model_weights(vidclip.create_model("tiny-vifi"), path, arch="tiny-vifi")


@pytest.fixture
def broken_videos(tmp_path) -> Callable[[Path], dict[str, Path]]:
    """Factory: write every kind of unusable file into a folder; returns {kind: path}."""

    def _make(folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        out = {"missing": folder / "missing.mp4", "empty": folder / "empty.mp4", "text": folder / "text.mp4",
               "audio_only": write_audio_only(folder / "audio_only.mp4")}
        out["empty"].write_bytes(b"")
        out["text"].write_text("this is a text file renamed .mp4\n" * 20)
        full = write_faststart(folder / "_intact.mp4", numbered_frames(30, 48, 64, seed=3)).read_bytes()
        (folder / "_intact.mp4").unlink()
        for fraction in (0.001, 0.01):  # cut inside the header / before the first frame: nothing decodable
            cut = folder / f"cut_{fraction}.mp4"
            cut.write_bytes(full[: max(1, int(len(full) * fraction))])
            out[f"truncated_{fraction}"] = cut
        return out

    return _make


@pytest.fixture
def odd_videos(tmp_path) -> Callable[[Path], dict[str, tuple]]:
    """Factory: decodable but unusual videos; returns {kind: (path, frames)}."""

    def _make(folder: Path) -> dict[str, tuple]:
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, (t, h, w) in {"single_frame": (1, 48, 64), "tiny_8x8": (5, 8, 8), "odd_17x33": (5, 17, 33),
                                "portrait_64x24": (5, 64, 24)}.items():
            frames = numbered_frames(t, h, w, seed=t + h)
            out[name] = (write_video(folder / f"{name}.mp4", frames), frames)
        frames = numbered_frames(20, 48, 64, seed=5)
        out["vfr"] = (write_vfr(folder / "vfr.mp4", frames), frames)
        frames = numbered_frames(6, 48, 64, seed=6)
        out["rotated"] = (set_mp4_rotation(write_video(folder / "rotated.mp4", frames)), frames)
        return out

    return _make


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on 2 shared cores: one intra-op thread is several times faster than oversubscribed threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
