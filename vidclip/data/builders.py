"""Config -> data pipeline objects (sampler, transform, dataset, loader): the one place that reads ``cfg.data``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from ..errors import ConfigError
from .collate import make_collate
from .dataset import VideoTextDataset
from .lists import read_list
from .samplers import create_sampler
from .transforms import create_video_transform

_logger = logging.getLogger(__name__)

SPLIT_KEYS = {"train": "train_list", "val": "val_list", "test": "test_list"}


def build_sampler(cfg: DictConfig, train: bool):
    """The frame sampler for training or evaluation, with the kwargs its strategy needs."""
    data = cfg.data
    name = data.train_sampler if train else data.test_sampler
    num_frames = data.num_frames if train else (data.test_num_frames or data.num_frames)
    kwargs = {}
    if name == "clip4clip":
        kwargs = {"sample_fps": data.sample_fps, "slice": data.slice}
    elif name == "prompt_switch":
        kwargs = {"num_prompts": cfg.model.prompt.num_prompts, "train": train}
    return create_sampler(name, num_frames, **kwargs)


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


def batch_groups(dataset: VideoTextDataset, key: str) -> list[list[int]]:
    """Item indices of a training ``dataset`` grouped by ``record.meta[key]``, for ``data.group_by_meta``.

    Records whose meta lacks ``key`` (or holds None) are groups of one; groups follow the order of first appearance.
    Needs one item per video (``caption_sampling=random``): with ``all`` a group would put the same video in a batch
    several times, and those copies would be each other's false negatives.
    """
    if len(dataset) != len(dataset.records):
        raise ConfigError(f"data.group_by_meta={key} needs one training item per video (data.caption_sampling=random); "
                          f"the dataset has {len(dataset)} items for {len(dataset.records)} videos")
    groups: dict[object, list[int]] = {}
    singles = 0
    for index, record in enumerate(dataset.records):
        value = (record.meta or {}).get(key)
        if value is None:
            value, singles = ("__single__", index), singles + 1
        groups.setdefault(value, []).append(index)
    if singles == len(dataset.records):
        _logger.warning("data.group_by_meta=%s: no training record has meta.%s; batches are plain shuffles", key, key)
    else:
        _logger.info("data.group_by_meta=%s: %d videos in %d groups (%d without the key)", key,
                     len(dataset.records), len(groups), singles)
    return list(groups.values())


def build_eval_loader(cfg: DictConfig, dataset: VideoTextDataset, batch_size: Optional[int] = None) -> DataLoader:
    """Deterministic loader over the videos of an evaluation dataset (each video decoded once)."""
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size or cfg.eval.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=make_collate(cfg.model.context_length),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
