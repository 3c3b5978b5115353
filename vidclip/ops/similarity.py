"""Chunked similarity: the (N_t, N_v) matrix built block by block, so memory is bounded by one block."""
from __future__ import annotations

from typing import Optional

import torch

from ..heads.base import Features, num_rows, slice_features


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
    """
    n_t, n_v = num_rows(text_feats), num_rows(video_feats)
    out = torch.empty((n_t, n_v), dtype=out_dtype)
    for v0 in range(0, n_v, video_chunk):
        v_block = slice_features(video_feats, v0, v0 + video_chunk)
        if device is not None:
            v_block = {k: t.to(device, non_blocking=True) for k, t in v_block.items()}
        for t0 in range(0, n_t, text_chunk):
            t_block = slice_features(text_feats, t0, t0 + text_chunk)
            if device is not None:
                t_block = {k: t.to(device, non_blocking=True) for k, t in t_block.items()}
            out[t0:t0 + text_chunk, v0:v0 + video_chunk] = head.similarity(t_block, v_block).to("cpu", out_dtype)
    return out
