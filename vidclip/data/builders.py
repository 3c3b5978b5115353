"""Config -> data pipeline objects (sampler, transform, dataset); loaders live in ``vidclip.data.loaders``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig

from ..errors import ConfigError
from .dataset import VideoTextDataset
from .lists import read_list
from .samplers import sampler_from_config
from .transforms import create_video_transform

_logger = logging.getLogger(__name__)

SPLIT_KEYS = {"train": "train_list", "val": "val_list", "test": "test_list"}


def build_sampler(cfg: DictConfig, train: bool):
    """The frame sampler for training or evaluation; the registered sampler reads the config keys it needs."""
    data = cfg.data
    name = data.train_sampler if train else data.test_sampler
    num_frames = data.num_frames if train else (data.test_num_frames or data.num_frames)
    return sampler_from_config(cfg, name, num_frames, train)


def build_transform(cfg: DictConfig, train: bool, generator: Optional[torch.Generator] = None):
    """CLIP preprocessing (evaluation) or the configured augmentation (training)."""
    augment = cfg.data.train_augment if train else "none"
    return create_video_transform(cfg.data.image_size, train=train, augment=augment, generator=generator)


def list_path_for(cfg: DictConfig, split: str) -> Path:
    """Path of the data list of ``split`` (train | val | test), with an error naming the key when unset."""
    key = SPLIT_KEYS.get(split)
    if key is None:
        raise ConfigError(f"unknown split '{split}'. Valid: {', '.join(SPLIT_KEYS)}")
    value = cfg.data[key]
    if not value:
        raise ConfigError(f"data.{key} is not set: point it at a JSONL list (tools/prepare_data.py writes them)")
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"data.{key}={value}: file not found. Run tools/prepare_data.py or fix the path")
    return path


def build_dataset(cfg: DictConfig, split: str, train: bool, seed: Optional[int] = None) -> VideoTextDataset:
    """A ``VideoTextDataset`` over the list of ``split``; train mode draws captions, eval mode groups them."""
    records = read_list(list_path_for(cfg, split))
    if cfg.data.max_videos:
        records = records[: cfg.data.max_videos]
    return VideoTextDataset(
        records,
        videos_root=cfg.data.videos_root,
        sampler=build_sampler(cfg, train),
        transform=build_transform(cfg, train),
        mode="train" if train else "eval",
        caption_sampling=cfg.data.caption_sampling,
        backend=cfg.data.reader_backend,
        seed=cfg.train.seed if seed is None else seed,
    )
