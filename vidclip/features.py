"""Shared tensor types of the data flow: encoder outputs and the feature dicts that heads produce and score.

This module sits on the ground floor (it imports only torch), so every layer — ops, heads, models, engine — can use
the same types without importing the layer that happens to produce them.

``Features`` are dicts of batch-first tensors: any row slice is a valid chunk, and the video side can be saved to
safetensors as it is. They always hold ``"pooled"``: an L2-normalised ``(B, D)`` embedding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

Features = dict[str, torch.Tensor]


@dataclass
class VideoEncoderOutput:
    """Video side as the encoders produce it, before any head."""

    frames: torch.Tensor  # (B, T, D) per-frame CLS after ln_post @ proj, not normalised
    temporal: torch.Tensor  # (B, T, D) after the temporal module (equal to ``frames`` for mean pooling)
    mask: torch.Tensor  # (B, T) bool, True = real frame
    patches: torch.Tensor | None = None  # (B, T, N, D) patch tokens after ln_post @ proj, when enabled


@dataclass
class TextEncoderOutput:
    """Text side as the encoder produces it, before any head."""

    pooled: torch.Tensor  # (B, D) EOT token after ln_final @ text_projection, not normalised
    tokens: torch.Tensor  # (B, L, D) every token after ln_final @ text_projection
    mask: torch.Tensor  # (B, L) bool, True = real token (SOT..EOT)


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """``x / max(||x||, eps)``: zero vectors stay zero instead of becoming NaN."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only positions where ``mask`` is True (all-masked rows give zeros)."""
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


def slice_features(feats: Features, start: int, end: int) -> Features:
    """Rows ``start:end`` of every tensor (a chunk of texts or videos)."""
    return {k: v[start:end] for k, v in feats.items()}


def num_rows(feats: Features) -> int:
    """Number of rows (texts or videos) in a feature dict."""
    return int(feats["pooled"].shape[0])
