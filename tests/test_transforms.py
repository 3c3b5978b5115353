"""Video transforms against open_clip's own image preprocessing, and the crop/flip augmentation."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from vidclip.constants import CLIP_MEAN, CLIP_STD
from vidclip.data.readers import open_video
from vidclip.data.transforms import create_video_transform, random_resized_crop_box
from vidclip.errors import ConfigError

STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
REAL_VIDEOS = ["msrvtt/video9770.mp4", "misc/carphone_pristine.mp4", "misc/bikes.mp4", "misc/cockatoo.mp4",
               "misc/Effet_force_magnetique.ogv"]


def open_clip_reference(frames: np.ndarray, size: int) -> torch.Tensor:
    """open_clip's evaluation preprocessing applied to each frame as a PIL image: (T, 3, S, S)."""
    preprocess = open_clip.image_transform(size, is_train=False)
    return torch.stack([preprocess(Image.fromarray(frame)) for frame in frames])


def unnormalize(clip: torch.Tensor) -> torch.Tensor:
    return clip * STD + MEAN  # back to [0, 1] pixel units


def assert_matches_open_clip(frames: np.ndarray, size: int = 224):
    ours = create_video_transform(size, train=False)(frames)
    assert ours.dtype == torch.float32 and ours.shape == (len(frames), 3, size, size)
    diff = (unnormalize(ours) - unnormalize(open_clip_reference(frames, size))).abs().max().item()
    assert diff <= 1 / 255 + 1e-6, f"max per-pixel difference {diff * 255:.2f}/255"


@pytest.mark.parametrize("name", REAL_VIDEOS)
def test_real_frames_match_open_clip(shared_data, name):
    reader = open_video(shared_data / "videos" / name)
    frames = reader.get_frames(np.linspace(0, reader.num_frames - 1, 3).astype(np.int64))
    assert_matches_open_clip(frames)


@pytest.mark.parametrize("height,width", [(144, 176), (272, 640), (301, 225), (640, 360), (57, 1001), (224, 224),
                                          (225, 224), (31, 17)])
@pytest.mark.parametrize("size", [224, 96])
def test_random_images_match_open_clip(height, width, size):
    frames = np.random.default_rng(height * width).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    assert_matches_open_clip(frames, size)


def test_numpy_and_torch_inputs_agree():
    frames = np.random.default_rng(0).integers(0, 256, (3, 90, 120, 3), dtype=np.uint8)
    transform = create_video_transform(64, train=False)
    torch.testing.assert_close(transform(frames), transform(torch.from_numpy(frames)), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        transform(frames[0])
    with pytest.raises(ValueError, match="uint8"):
        transform(frames.astype(np.float32))


def test_train_without_augment_is_the_eval_transform():
    frames = np.random.default_rng(1).integers(0, 256, (2, 80, 100, 3), dtype=np.uint8)
    eval_out = create_video_transform(64, train=False)(frames)
    torch.testing.assert_close(create_video_transform(64, train=True)(frames), eval_out, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="unknown video augmentation"):
        create_video_transform(64, train=True, augment="mixup")


def test_crop_flip_is_shared_across_frames_and_reproducible():
    frame = np.random.default_rng(2).integers(0, 256, (1, 120, 160, 3), dtype=np.uint8)
    clip = np.repeat(frame, 4, axis=0)  # identical frames must stay identical after augmentation
    outputs = []
    for seed in (0, 0, 1):
        transform = create_video_transform(64, train=True, augment="crop_flip",
                                           generator=torch.Generator().manual_seed(seed))
        out = transform(clip)
        assert out.shape == (4, 3, 64, 64)
        assert all(torch.equal(out[0], out[t]) for t in range(1, 4))
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


def test_crop_flip_equals_an_explicit_pil_crop_and_flip():
    """Replaying the generator: each output is a PIL bicubic resize of a box covering 50-100% of the frame with
    aspect in [3/4, 4/3], flipped about half of the time."""
    height, width, size = 90, 120, 48
    frames = np.random.default_rng(5).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    transform = create_video_transform(size, train=True, augment="crop_flip")
    replay = torch.Generator().manual_seed(11)
    flips = 0
    for trial in range(60):
        out = transform(frames, generator=torch.Generator().manual_seed(trial))
        replay.manual_seed(trial)
        top, left, h, w = random_resized_crop_box(height, width, replay)
        assert 0.5 * height * width * 0.97 <= h * w <= height * width and 0.74 <= w / h <= 1.35
        flip = torch.rand(1, generator=replay).item() < 0.5
        expected = []
        for frame in frames:
            image = Image.fromarray(frame[top:top + h, left:left + w]).resize((size, size), Image.BICUBIC)
            expected.append(np.asarray(image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image))
        pixels = (unnormalize(out) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(pixels, np.stack(expected))
        flips += flip
    assert 15 < flips < 45
