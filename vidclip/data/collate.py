"""Batching: stack videos and masks, tokenise captions, drop (and report) videos that failed to decode."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..tokenizer import tokenize


def make_collate(context_length: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """A collate function producing the batch dict of the data contract.

    ``{"video": (B, T, 3, S, S), "video_mask": (B, T) bool, "text_tokens": (B, L) long, "captions", "video_ids",
    "indices": (B,) long, "failed": [paths], "failed_items": [{"index", "failed", "error"}]}``; a batch whose every item
    failed has zero rows (callers skip it). Sentence-group items (``VideoTextDataset(sentence_groups=...)``) are
    flattened: B counts clip-caption rows, ``video_ids`` / ``indices`` repeat per row, and ``"groups"`` (B,) long holds
    each row's video list index (the group id of Norton's video-paragraph loss, unique across processes).
    """

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [it for it in items if "failed" not in it]
        bad = [it for it in items if "failed" in it]
        if any("group_size" in it for it in ok):
            ok = [row for it in ok for row in _group_rows(it)]
        batch: dict[str, Any] = {
            "failed": [it["failed"] for it in bad],
            "failed_items": [{"index": it["index"], "failed": it["failed"], "error": it.get("error", "")}
                             for it in bad],
            "captions": [it["caption"] for it in ok],
            "video_ids": [it["video_id"] for it in ok],
            "indices": torch.tensor([it["index"] for it in ok], dtype=torch.long),
            "text_tokens": tokenize([it["caption"] for it in ok], context_length) if ok
            else torch.zeros((0, context_length), dtype=torch.long),
        }
        if ok:
            batch["video"] = torch.stack([it["video"] for it in ok])  # (B, T, 3, S, S)
            batch["video_mask"] = torch.stack([it["video_mask"] for it in ok])  # (B, T)
        else:
            batch["video"] = torch.zeros((0, 1, 3, 1, 1))
            batch["video_mask"] = torch.zeros((0, 1), dtype=torch.bool)
        if ok and "group" in ok[0]:
            batch["groups"] = torch.tensor([it["group"] for it in ok], dtype=torch.long)  # (B,)
        return batch

    return collate


def _group_rows(item: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sentence of a sentence-group item (video (K, T, 3, S, S) -> K items with ``group`` = its index)."""
    return [{"video": item["video"][k], "video_mask": item["video_mask"][k], "caption": item["caption"][k],
             "video_id": item["video_id"], "index": item["index"], "group": item["index"]}
            for k in range(item["group_size"])]
