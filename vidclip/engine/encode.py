"""Encode videos and texts into head features, once, with failures recorded (shared by eval, extraction, validation)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..features import Features
from ..tokenizer import tokenize

_logger = logging.getLogger(__name__)


@dataclass
class EncodedVideos:
    """Video features of the videos that decoded, in dataset order, plus what failed."""

    features: Features  # each tensor (N_ok, ...) on CPU
    indices: List[int]  # dataset index of each feature row
    num_frames: List[int]  # real (unmasked) frames used for each row
    failed: Dict[int, str] = field(default_factory=dict)  # dataset index -> path of videos that failed to decode


def _concat(chunks: List[Features]) -> Features:
    if not chunks:
        return {}
    return {key: torch.cat([c[key] for c in chunks], dim=0) for key in chunks[0]}


def _index_of_failed(batch: dict) -> Dict[int, str]:
    """Dataset index -> path of the videos of a batch that failed (the collate reports both)."""
    return {int(item["index"]): str(item["failed"]) for item in batch.get("failed_items", [])}


@torch.no_grad()
def encode_video_loader(model, loader: Iterable, device: torch.device, desc: str = "encode videos",
                        show_progress: bool = True) -> EncodedVideos:
    """Run ``model.encode_video`` over every batch of an evaluation loader.

    Failed videos (never zero tensors) are collected with their paths; features are moved to CPU batch by batch so
    memory stays bounded by one batch on the device.
    """
    model.eval()
    chunks: List[Features] = []
    indices: List[int] = []
    frames_used: List[int] = []
    failed: Dict[int, str] = {}
    for batch in tqdm(loader, desc=desc, disable=not show_progress, unit="batch"):
        failed.update(_index_of_failed(batch))
        if batch["video"].shape[0] == 0:
            continue
        video = batch["video"].to(device, non_blocking=True)
        mask = batch["video_mask"].to(device, non_blocking=True)
        feats = model.encode_video(video, mask)
        chunks.append({k: v.float().cpu() for k, v in feats.items()})
        indices.extend(int(i) for i in batch["indices"])
        frames_used.extend(int(n) for n in batch["video_mask"].sum(1))
    if failed:
        _logger.warning("%d video(s) failed to decode and were skipped: %s", len(failed),
                        ", ".join(list(failed.values())[:5]) + (" ..." if len(failed) > 5 else ""))
    return EncodedVideos(_concat(chunks), indices, frames_used, failed)


@torch.no_grad()
def encode_texts(model, texts: Sequence[str], device: torch.device, batch_size: int = 256,
                 show_progress: bool = False) -> Features:
    """``model.encode_text`` over a list of captions in batches; features on CPU in input order."""
    model.eval()
    context_length = model.cfg.context_length
    chunks: List[Features] = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="encode texts", disable=not show_progress, unit="batch"):
        tokens = tokenize(list(texts[start:start + batch_size]), context_length).to(device)
        feats = model.encode_text(tokens)
        chunks.append({k: v.float().cpu() for k, v in feats.items()})
    return _concat(chunks)


def scatter_similarity(sim_ok: torch.Tensor, ok_indices: Sequence[int], num_videos: int,
                       failed: Optional[Iterable[int]] = None) -> torch.Tensor:
    """Place the columns of decoded videos into a ``(N_t, num_videos)`` matrix; failed videos' columns are NaN."""
    full = torch.full((sim_ok.shape[0], num_videos), float("nan"), dtype=sim_ok.dtype)
    full[:, torch.as_tensor(list(ok_indices), dtype=torch.long)] = sim_ok
    return full
