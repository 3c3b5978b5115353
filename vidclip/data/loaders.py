"""DataLoaders and their batch samplers: the one module that builds a ``DataLoader`` (training and evaluation).

Training: an epoch shuffle that depends only on (seed, epoch), or with ``data.group_by_meta`` a grouped shuffle
that keeps each group (e.g. reversed twins) in one global batch; ``drop_last``. Evaluation: every video once, in
order, decoded once.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Sampler

from ..errors import ConfigError
from .builders import worker_context
from .collate import make_collate
from .dataset import VideoTextDataset

_logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ batch samplers
class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on ``seed`` and the epoch (set with :meth:`set_epoch`)."""

    def __init__(self, num_items: int, seed: int):
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100003 + self.epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.num_items, generator=self._generator()).tolist())

    def __len__(self) -> int:
        return self.num_items


class GroupedEpochShuffleSampler(EpochShuffleSampler):
    """A shuffle where the items of one group fall into the same batch of ``batch_size`` (``data.group_by_meta``).

    Per (seed, epoch): groups are shuffled, the items of each group shuffled, and groups packed first-fit into
    batches of ``batch_size`` consecutive positions (a group larger than a batch is cut into batch-sized pieces).
    Full batches come in the order they fill up; the partly filled ones follow at the end, where ``drop_last`` drops
    the incomplete last batch. Every item appears exactly once per epoch. Under several processes pass the global
    batch (see :func:`build_train_sampler`): a group may then straddle two processes' slices, which the gathered
    contrastive loss sees as one batch.
    """

    def __init__(self, groups: Sequence[Sequence[int]], batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.groups = [list(g) for g in groups if len(g)]
        self.batch_size = int(batch_size)
        super().__init__(sum(len(g) for g in self.groups), seed)

    def __iter__(self) -> Iterator[int]:
        generator = self._generator()
        order: list[int] = []
        open_batches: list[list[int]] = []
        for g in torch.randperm(len(self.groups), generator=generator).tolist():
            items = [self.groups[g][i] for i in torch.randperm(len(self.groups[g]), generator=generator).tolist()]
            for start in range(0, len(items), self.batch_size):
                piece = items[start:start + self.batch_size]
                batch = next((b for b in open_batches if len(b) + len(piece) <= self.batch_size), None)
                if batch is None:
                    batch = []
                    open_batches.append(batch)
                batch.extend(piece)
                if len(batch) == self.batch_size:
                    order.extend(batch)
                    open_batches.remove(batch)
        for batch in open_batches:
            order.extend(batch)
        return iter(order)


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


# ------------------------------------------------------------------------------------------------------ loaders
def build_train_sampler(cfg: DictConfig, dataset, num_processes: int = 1) -> Sampler[int]:
    """Epoch shuffle; with ``data.group_by_meta`` one that keeps each group (e.g. reversed twins) in one batch.

    Groups are packed into *global* batches (``train.batch_size x num_processes`` consecutive items, which
    accelerate deals out one ``batch_size`` slice per process and the loss gathers again), so the order, and the
    training, is the same for any number of processes at the same global batch.
    """
    if cfg.data.group_by_meta:
        groups = batch_groups(dataset, cfg.data.group_by_meta)
        return GroupedEpochShuffleSampler(groups, cfg.train.batch_size * num_processes, cfg.train.seed)
    return EpochShuffleSampler(len(dataset), cfg.train.seed)


def build_train_loader(cfg: DictConfig, dataset, num_processes: int = 1) -> DataLoader:
    """Shuffled, ``drop_last`` loader whose order depends only on seed + epoch (and the global batch when grouped)."""
    workers = cfg.data.num_workers
    generator = torch.Generator().manual_seed(cfg.train.seed)  # worker base seeds; re-seeded every epoch
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=build_train_sampler(cfg, dataset, num_processes),
        drop_last=True,
        num_workers=workers,
        collate_fn=make_collate(cfg.model.context_length),
        pin_memory=torch.cuda.is_available(),
        # Workers start afresh every epoch: persistent ones keep the dataset copy of the epoch they started in, so
        # captions and random frames of later epochs would repeat epoch 0's (dataset.set_epoch never reaches them).
        persistent_workers=False,
        generator=generator,
        multiprocessing_context=worker_context(cfg),
    )


def build_eval_loader(cfg: DictConfig, dataset: VideoTextDataset, batch_size: int | None = None) -> DataLoader:
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
        multiprocessing_context=worker_context(cfg),
    )
