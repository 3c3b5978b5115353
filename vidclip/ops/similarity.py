"""Chunked similarity: the (N_t, N_v) matrix built block by block, so memory is bounded by one block.

Each finished block is copied into a preallocated CPU matrix right away, so the device holds only the current
(text block, video block) and the head's intermediates for it; the video block is moved to the device once per
video block and reused for every text block.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from ..features import Features, num_rows, slice_features


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
                       out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``head.similarity`` over every (text block, video block); each finished block moves to CPU.

    Args:
        head: any vidclip head (or an object with ``similarity(text_feats, video_feats)``).
        text_feats / video_feats: feature dicts (batch-first tensors), e.g. cached on CPU.
        text_chunk / video_chunk: block sizes; peak memory is about one block of the head's intermediates.
        device: where blocks are computed (default: where the features are).
        out_dtype: dtype of the returned CPU matrix.

    Returns:
        (N_t, N_v) CPU tensor.
    """
    return _assemble(head.similarity, text_feats, video_feats, text_chunk, video_chunk, device, out_dtype, None)


@torch.no_grad()
def chunked_similarity_levels(head, text_feats: Features, video_feats: Features, text_chunk: int = 256,
                              video_chunk: int = 256, device: Optional[torch.device] = None,
                              out_dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Like :func:`chunked_similarity` for heads with ``similarity_levels`` (UCoFiA): ``{level: (N_t, N_v)}``."""
    if not hasattr(head, "similarity_levels"):
        raise TypeError(f"{type(head).__name__} has no similarity_levels(); only multi-level heads (ucofia) do")
    return _assemble(head.similarity_levels, text_feats, video_feats, text_chunk, video_chunk, device, out_dtype, {})


def _assemble(score: Callable, text_feats: Features, video_feats: Features, text_chunk: int, video_chunk: int,
              device: Optional[torch.device], out_dtype: torch.dtype, levels: Optional[dict]):
    """Fill one CPU matrix (``levels is None``) or one per level name from ``score(text_block, video_block)``."""
    shape = (num_rows(text_feats), num_rows(video_feats))
    out = torch.empty(shape, dtype=out_dtype) if levels is None else levels
    for rows, cols, t_block, v_block in iter_blocks(text_feats, video_feats, text_chunk, video_chunk, device):
        block = score(t_block, v_block)
        if levels is None:
            out[rows, cols] = block.to("cpu", out_dtype)
            continue
        for name, value in block.items():
            if name not in out:
                out[name] = torch.empty(shape, dtype=out_dtype)
            out[name][rows, cols] = value.to("cpu", out_dtype)
    return out
