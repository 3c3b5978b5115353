"""Config -> data pipeline objects (sampler, transform, dataset); loaders live in ``vidclip.data.loaders``."""
from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig

from ..errors import ConfigError
from .dataset import VideoTextDataset
from .lists import read_list
from .readers import open_video
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


def build_reader_factory(cfg: DictConfig) -> Callable:
    """``path -> reader`` for ``data.reader_backend`` on ``data.decode_device`` (picklable for DataLoader workers)."""
    return partial(open_video, backend=cfg.data.reader_backend, device=cfg.data.decode_device)


def worker_context(cfg: DictConfig) -> Optional[str]:
    """DataLoader ``multiprocessing_context``: ``spawn`` when workers decode on a GPU (CUDA cannot run in a forked
    child of a process that already uses it), else the platform default (None)."""
    return "spawn" if cfg.data.decode_device != "cpu" and cfg.data.num_workers > 0 else None


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
    sampler = build_sampler(cfg, train)
    return VideoTextDataset(
        records,
        videos_root=cfg.data.videos_root,
        sampler=sampler,
        transform=build_transform(cfg, train),
        mode="train" if train else "eval",
        caption_sampling=cfg.data.caption_sampling,
        backend=cfg.data.reader_backend,
        seed=cfg.train.seed if seed is None else seed,
        reader_factory=build_frame_reader(cfg, records, sampler, train),
        sentence_groups=int(cfg.data.sentence_groups) if train else 0,
    )


def build_frame_reader(cfg: DictConfig, records, sampler, train: bool) -> Callable:
    """``path -> reader``: decoding readers, or with ``data.frame_cache`` the cache's (decoding what it lacks first)."""
    factory = build_reader_factory(cfg)
    data = cfg.data
    if not data.frame_cache:
        return factory
    if train and data.sentence_groups:
        raise ConfigError(f"data.frame_cache={data.frame_cache} caches the frames of whole videos, but "
                          f"data.sentence_groups={data.sentence_groups} samples frames inside each sentence's moment: "
                          "set data.frame_cache=null for this run")
    if train and data.train_augment != "none":
        raise ConfigError(f"data.frame_cache={data.frame_cache} stores frames already resized to data.image_size, but "
                          f"data.train_augment={data.train_augment} crops the full-size frames first: set "
                          "data.train_augment=none or data.frame_cache=null")
    from .frame_cache import build_frame_cache

    backend = data.reader_backend if data.decode_device == "cpu" else f"{data.reader_backend}@{data.decode_device}"
    cache = build_frame_cache(data.frame_cache, records, data.videos_root, sampler, data.image_size, backend=backend,
                              num_workers=data.num_workers, reader_factory=factory,
                              multiprocessing_context=worker_context(cfg))
    return cache.open_reader
