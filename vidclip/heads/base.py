"""The head interface: every alignment head turns encoder outputs into cacheable features and scores them.

Data flow: ``VideoEncoderOutput`` / ``TextEncoderOutput`` (from the model's encoders) -> ``head.encode_video`` /
``head.encode_text`` -> ``Features`` (dicts of batch-first tensors, so any row slice is a valid chunk and the video
side can be saved to safetensors) -> ``head.similarity(text_feats, video_feats) -> (N_t, N_v)``.

Rules:
- Video features never depend on the text query (they are extracted once and cached).
- ``Features`` always hold ``"pooled"``: an L2-normalised ``(B, D)`` embedding used by the coarse FAISS index.
- ``similarity`` returns scores in cosine units (the model multiplies by ``exp(logit_scale)`` for the loss) and
  works on any chunk of texts x videos.
- Auxiliary losses are returned by ``aux_losses`` (named, already weighted), never mixed into the similarity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

import torch
from torch import nn

Features = Dict[str, torch.Tensor]


@dataclass
class VideoEncoderOutput:
    """Video side as the encoders produce it, before any head."""

    frames: torch.Tensor  # (B, T, D) per-frame CLS after ln_post @ proj, not normalised
    temporal: torch.Tensor  # (B, T, D) after the temporal module (equal to ``frames`` for mean pooling)
    mask: torch.Tensor  # (B, T) bool, True = real frame
    patches: Optional[torch.Tensor] = None  # (B, T, N, D) patch tokens after ln_post @ proj, when enabled


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


def check_head_kwargs(head_cls: type, model_cfg: Any) -> None:
    """Raise ``ConfigError`` when ``model.head.kwargs`` holds a key the head's constructor does not accept."""
    import inspect

    from ..errors import ConfigError

    params = inspect.signature(head_cls.__init__).parameters
    valid = [name for name in params if name not in ("self", "args", "kwargs")]
    unknown = sorted(str(key) for key in (model_cfg.head.kwargs or {}) if key not in valid)
    if unknown:
        raise ConfigError(f"model.head.kwargs: unknown key(s) {unknown} for head '{model_cfg.head.name}'. "
                          f"Valid keys: {', '.join(valid)}")


def num_rows(feats: Features) -> int:
    return int(feats["pooled"].shape[0])


class Head(nn.Module):
    """Base class of alignment heads. Subclasses register with ``@HEADS.register("name")``."""

    needs_patch_tokens: ClassVar[bool] = False  # the encoder must output patch tokens
    video_feature_keys: ClassVar[tuple] = ("pooled",)  # keys cached by extraction (re-ranking needs them all)

    def encode_video(self, video: VideoEncoderOutput) -> Features:
        raise NotImplementedError

    def encode_text(self, text: TextEncoderOutput) -> Features:
        raise NotImplementedError

    def similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        """``(N_t, N_v)`` scores in cosine units."""
        raise NotImplementedError

    def aux_losses(self, text_feats: Features, video_feats: Features) -> Dict[str, torch.Tensor]:
        """Named auxiliary losses on aligned pairs (text row i <-> video row i); empty by default."""
        return {}

    @classmethod
    def check_config(cls, model_cfg: Any) -> None:
        """Raise ``ConfigError`` when the model config cannot feed this head (called before any work starts)."""
        from ..errors import ConfigError

        if cls.needs_patch_tokens and not model_cfg.patch_tokens:
            raise ConfigError(
                f"head '{model_cfg.head.name}' needs patch tokens but model.patch_tokens is false: "
                "set model.patch_tokens=true")
