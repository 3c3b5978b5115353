"""Chunked similarity: the (N_t, N_v) matrix built block by block, so memory is bounded by one block.

Each finished block is copied into a preallocated CPU matrix right away, so the device holds only the current
(text block, video block) and the head's intermediates for it; the video block is moved to the device once per
video block and reused for every text block.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from ..features import Features, num_rows, slice_features
from .numerics import flush_denormals


_logger = logging.getLogger(__name__)


def tokens_per_row(feats: Features) -> int:
    """Largest number of token/frame slots one row carries (1 for pooled-only features)."""
    counts = [math.prod(t.shape[1:-1]) for t in feats.values() if t.dim() >= 3]
    return max(counts, default=1)


def default_pair_bytes(text_feats: Features, video_feats: Features, intermediates: int = 4) -> int:
    """Estimate of a head's intermediate bytes per (text, video) pair: ``intermediates`` tensors of
    (text slots x video slots) in the features' dtype. Heads with other layouts override ``pair_bytes``."""
    itemsize = max(t.element_size() for t in list(text_feats.values()) + list(video_feats.values()))
    return intermediates * itemsize * tokens_per_row(text_feats) * tokens_per_row(video_feats)


def plan_chunks(head, text_feats: Features, video_feats: Features, max_block_mb: Optional[float],
                text_chunk: int = 256, video_chunk: int = 256) -> Tuple[int, int]:
    """Block sizes whose estimated intermediates stay under ``max_block_mb`` (None: the given sizes).

    The estimate comes from ``head.pair_bytes(text_feats, video_feats)`` when the head defines it, else
    :func:`default_pair_bytes`. The video chunk is kept as large as the budget allows (video blocks are moved to the
    device once), then the text chunk fills the rest; both are at least 1.
    """
    if max_block_mb is None:
        return text_chunk, video_chunk
    estimate = getattr(head, "pair_bytes", None)
    pair = max(1, int(estimate(text_feats, video_feats) if estimate else default_pair_bytes(text_feats, video_feats)))
    budget_pairs = max(1, int(max_block_mb * 2**20) // pair)
    video_chunk = max(1, min(video_chunk, num_rows(video_feats) or 1, budget_pairs))
    text_chunk = max(1, min(text_chunk, budget_pairs // video_chunk))
    _logger.debug("similarity blocks %d x %d (about %d bytes per pair, budget %.0f MB)", text_chunk, video_chunk,
                  pair, max_block_mb)
    return text_chunk, video_chunk


def _to_device(feats: Features, device: Optional[torch.device]) -> Features:
    if device is None:
        return feats
    return {k: t.to(device, non_blocking=True) for k, t in feats.items()}


def iter_blocks(text_feats: Features, video_feats: Features, text_chunk: int, video_chunk: int,
                device: Optional[torch.device] = None) -> Iterator[Tuple[slice, slice, Features, Features]]:
    """Yield ``(rows, cols, text_block, video_block)`` over every (text chunk, video chunk), blocks on ``device``."""
    if text_chunk < 1 or video_chunk < 1:
        raise ValueError(f"chunk sizes must be >= 1, got text_chunk={text_chunk}, video_chunk={video_chunk}")
    n_t, n_v = num_rows(text_feats), num_rows(video_feats)
    for v0 in range(0, n_v, video_chunk):
        v_block = _to_device(slice_features(video_feats, v0, v0 + video_chunk), device)
        for t0 in range(0, n_t, text_chunk):
            t_block = _to_device(slice_features(text_feats, t0, t0 + text_chunk), device)
            yield slice(t0, t0 + text_chunk), slice(v0, v0 + video_chunk), t_block, v_block


@torch.no_grad()
def chunked_similarity(head, text_feats: Features, video_feats: Features, text_chunk: int = 256,
                       video_chunk: int = 256, device: Optional[torch.device] = None,
                       out_dtype: torch.dtype = torch.float32, max_block_mb: Optional[float] = None) -> torch.Tensor:
    """``head.similarity`` over every (text block, video block); each finished block moves to CPU.

    Args:
        head: any vidclip head (or an object with ``similarity(text_feats, video_feats)``).
        text_feats / video_feats: feature dicts (batch-first tensors), e.g. cached on CPU.
        text_chunk / video_chunk: block sizes; peak memory is about one block of the head's intermediates.
        device: where blocks are computed (default: where the features are).
        out_dtype: dtype of the returned CPU matrix.
        max_block_mb: memory budget of one block's intermediates; shrinks the chunk sizes (:func:`plan_chunks`).

    Returns:
        (N_t, N_v) CPU tensor.
    """
    text_chunk, video_chunk = plan_chunks(head, text_feats, video_feats, max_block_mb, text_chunk, video_chunk)
    return _assemble(head.similarity, text_feats, video_feats, text_chunk, video_chunk, device, out_dtype, None)


@torch.no_grad()
def chunked_similarity_levels(head, text_feats: Features, video_feats: Features, text_chunk: int = 256,
                              video_chunk: int = 256, device: Optional[torch.device] = None,
                              out_dtype: torch.dtype = torch.float32,
                              max_block_mb: Optional[float] = None) -> Dict[str, torch.Tensor]:
    """Like :func:`chunked_similarity` for heads with ``similarity_levels`` (UCoFiA): ``{level: (N_t, N_v)}``."""
    if not hasattr(head, "similarity_levels"):
        raise TypeError(f"{type(head).__name__} has no similarity_levels(); only multi-level heads (ucofia) do")
    text_chunk, video_chunk = plan_chunks(head, text_feats, video_feats, max_block_mb, text_chunk, video_chunk)
    return _assemble(head.similarity_levels, text_feats, video_feats, text_chunk, video_chunk, device, out_dtype, {})


def _assemble(score: Callable, text_feats: Features, video_feats: Features, text_chunk: int, video_chunk: int,
              device: Optional[torch.device], out_dtype: torch.dtype, levels: Optional[dict]):
    """Fill one CPU matrix (``levels is None``) or one per level name from ``score(text_block, video_block)``."""
    shape = (num_rows(text_feats), num_rows(video_feats))
    out = torch.empty(shape, dtype=out_dtype) if levels is None else levels
    for rows, cols, t_block, v_block in iter_blocks(text_feats, video_feats, text_chunk, video_chunk, device):
        with flush_denormals(next(iter(t_block.values())).device):
            block = score(t_block, v_block)
        if levels is None:
            out[rows, cols] = block.to("cpu", out_dtype)
            continue
        for name, value in block.items():
            if name not in out:
                out[name] = torch.empty(shape, dtype=out_dtype)
            out[name][rows, cols] = value.to("cpu", out_dtype)
    return out
