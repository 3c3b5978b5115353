"""Batches that keep groups together (``data.group_by_meta``): grouping by a list's meta key, the packing sampler,
and the training loader built from a config (synthetic twins always share a batch)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vidclip
from vidclip.data.builders import build_dataset
from vidclip.data.lists import VideoRecord
from vidclip.data.loaders import GroupedEpochShuffleSampler, batch_groups, build_train_loader, build_train_sampler
from vidclip.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


class _Records:
    """The two attributes ``batch_groups`` reads from a dataset."""

    def __init__(self, metas, items=None):
        self.records = [VideoRecord(f"v{i}", f"v{i}.mp4", ["c"], meta=m) for i, m in enumerate(metas)]
        self.items = len(self.records) if items is None else items

    def __len__(self):
        return self.items


def test_batch_groups_follow_the_meta_key_and_records_without_it_stand_alone():
    metas = [{"pair_id": "a"}, {"pair_id": "b"}, {"pair_id": None}, {"pair_id": "a"}, None, {"pair_id": "b"}]
    assert batch_groups(_Records(metas), "pair_id")[0] == [0, 3]  # groups in order of first appearance
    assert sorted(batch_groups(_Records(metas), "pair_id")) == [[0, 3], [1, 5], [2], [4]]
    assert sorted(batch_groups(_Records(metas), "colour")) == [[i] for i in range(6)]
    with pytest.raises(ConfigError, match="caption_sampling=random"):
        batch_groups(_Records(metas, items=12), "pair_id")


def _batches(sampler, batch_size):
    order = list(sampler)
    return order, [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


@pytest.mark.parametrize("batch_size", [2, 4, 6, 16])
def test_sampler_keeps_every_group_in_one_batch_and_yields_each_item_once(batch_size):
    rng = torch.Generator().manual_seed(0)
    groups, start = [], 0
    for size in torch.randint(1, 3, (40,), generator=rng).tolist():  # pairs and singles, as the synthetic split
        groups.append(list(range(start, start + size)))
        start += size
    sampler = GroupedEpochShuffleSampler(groups, batch_size, seed=1)
    order, batches = _batches(sampler, batch_size)
    assert sorted(order) == list(range(start)) and len(sampler) == start
    where = {item: b for b, batch in enumerate(batches) for item in batch}
    full = [g for g in groups if all(i in where for i in g)]
    assert len(full) >= len(groups) - batch_size  # only the dropped tail may miss some groups
    for group in full:
        assert len({where[i] for i in group}) == 1, (group, batches)


def test_sampler_is_a_function_of_seed_and_epoch_and_splits_oversized_groups():
    groups = [[0, 1], [2, 3], [4], [5, 6], [7], [8, 9]]
    a, b = GroupedEpochShuffleSampler(groups, 4, seed=3), GroupedEpochShuffleSampler(groups, 4, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    assert list(GroupedEpochShuffleSampler(groups, 4, seed=4)) != first
    big = GroupedEpochShuffleSampler([list(range(7)), [7]], 3, seed=0)  # 7 items cannot share a batch of 3
    assert sorted(big) == list(range(8))
    with pytest.raises(ValueError, match="batch_size"):
        GroupedEpochShuffleSampler(groups, 0, seed=0)


def test_training_loader_on_synthetic_twins_puts_each_twin_in_its_clip_batch(tmp_path):
    from vidclip.data.synthetic import make_synthetic_dataset

    lists = make_synthetic_dataset(tmp_path, num_train=14, num_val=0, num_test=0, size=16, frames=4, seed=2)
    cfg = vidclip.load_config(REPO / "configs" / "synthetic_tiny_vifi.yaml", [
        f"data.videos_root={tmp_path / 'videos'}", f"data.train_list={lists['train']}", "train.batch_size=4",
        "data.num_frames=4"])
    assert cfg.data.group_by_meta == "pair_id"  # the shipped synthetic data config turns it on
    dataset = build_dataset(cfg, "train", train=True)
    assert isinstance(build_train_sampler(cfg, dataset), GroupedEpochShuffleSampler)
    twin_of = {r.video_id: r.meta["twin"] for r in dataset.records}
    loader = build_train_loader(cfg, dataset)
    seen = 0
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            ids = set(batch["video_ids"])
            for vid in ids:
                if twin_of[vid] is not None:  # packing never splits a pair, even in the dropped remainder
                    assert twin_of[vid] in ids, (vid, ids)
            seen += 1
    assert seen == 2 * (14 // 4)
    plain = vidclip.load_config(REPO / "configs" / "synthetic_tiny_vifi.yaml", [
        f"data.videos_root={tmp_path / 'videos'}", f"data.train_list={lists['train']}", "data.group_by_meta=null"])
    assert not isinstance(build_train_sampler(plain, build_dataset(plain, "train", train=True)),
                          GroupedEpochShuffleSampler)


def test_grouped_order_depends_on_the_global_batch_only(tmp_path):
    """2 processes x batch 2 see the same global batches as 1 process x batch 4 (accelerate deals out slices)."""
    groups = [[0, 1], [2], [3, 4], [5, 6], [7], [8, 9], [10, 11]]
    cfg_two = vidclip.load_config(REPO / "configs" / "synthetic_tiny_vifi.yaml", ["train.batch_size=2"])
    cfg_one = vidclip.load_config(REPO / "configs" / "synthetic_tiny_vifi.yaml", ["train.batch_size=4"])
    metas = [{"pair_id": f"g{k}"} for k, g in enumerate(groups) for _ in g]
    dataset = _Records(metas)
    two, one = build_train_sampler(cfg_two, dataset, num_processes=2), build_train_sampler(cfg_one, dataset)
    assert list(two) == list(one)
    assert list(build_train_sampler(cfg_two, dataset)) != list(one)  # packing by 2 differs
