"""``VideoTextModel``: frame encoder + temporal module + text encoder + alignment head. No loss lives here.

Data flow: frames (B, T, 3, H, W) -> frame encoder (B, T, E) [+ patches] -> temporal (B, T, E) -> head video features;
captions -> text encoder (EOT (B, E), tokens (B, L, E)) -> head text features; ``head.similarity`` -> (N_t, N_v) in
cosine units; ``forward`` returns features and scores (scaled by ``exp(logit_scale)``, clamped) and
:mod:`vidclip.objective` turns them into losses, as open_clip keeps its losses outside the model.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Union

import torch
from torch import nn

from ..constants import CLIP_MEAN, CLIP_STD
from ..features import Features, VideoEncoderOutput
from ..heads import create_head
from ..heads.base import resolve_head_kwargs
from ..registry import HEADS
from .frame_encoder import build_frame_encoder
from .temporal import build_temporal
from .text_encoder import TextEncoder

_logger = logging.getLogger(__name__)

Gather = Callable[[Features], Features]

class VideoTextModel(nn.Module):
    """Encode videos and texts into head features and score them; ``forward(batch)`` returns the training outputs.

    Video features never depend on the text query (they can be extracted once and cached).

    Args:
        clip: an open_clip ``CLIP`` (weights already loaded); its towers are reused, not copied.
        cfg: the ``ModelCfg`` (structured DictConfig).
        pretrained: where the weights came from (recorded in :meth:`model_info`).
    """

    def __init__(self, clip: nn.Module, cfg, pretrained: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.pretrained = pretrained
        HEADS.get(cfg.head.name).check_config(cfg)
        self.frame_encoder = build_frame_encoder(clip.visual, cfg)
        self.text_encoder = TextEncoder(clip, cfg.context_length, key_padding_mask=bool(cfg.text_key_padding_mask))
        self.text_encoder.set_grad_checkpointing(cfg.grad_checkpointing)
        self.temporal = build_temporal(clip, cfg.temporal)
        self.embed_dim = int(clip.visual.output_dim)
        self.head = create_head(cfg.head.name, **_head_kwargs(cfg, self.embed_dim))
        init_scale = getattr(clip, "logit_scale", None)
        init_scale = torch.tensor(math.log(1 / 0.07)) if init_scale is None else init_scale.detach().clone()
        self.logit_scale = nn.Parameter(init_scale.reshape(()).float())
        if hasattr(self.head, "bind_logit_scale"):  # UCoFiA: its patch-word level stays in logit units
            self.head.bind_logit_scale(self.scale)
        self.captioner = _build_captioner(cfg, self.text_encoder, self.embed_dim)
        self.image_size = int(_first(getattr(clip.visual, "image_size", 224)))

    # ------------------------------------------------------------------------------------------ encoders
    @property
    def dtype(self) -> torch.dtype:
        return self.logit_scale.dtype

    def encode_video_outputs(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> VideoEncoderOutput:
        """Encoder outputs before the head: raw frame features, temporal features, mask, patches."""
        if mask is None:
            mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        out = self.frame_encoder(frames.to(self.dtype), mask)
        mask = mask.to(device=out.frames.device, dtype=torch.bool)  # (B, T)
        return VideoEncoderOutput(frames=out.frames, temporal=self.temporal(out.frames, mask), mask=mask,
                                  patches=out.patches)

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> Features:
        """Head video features of ``frames`` (B, T, 3, H, W), preprocessed; ``mask`` (B, T) bool, True = real."""
        return self.head.encode_video(self.encode_video_outputs(frames, mask))

    def encode_text(self, texts: Union[list[str], torch.Tensor]) -> Features:
        """Head text features of captions (list of strings) or token ids (B, L)."""
        return self.head.encode_text(self.text_encoder(texts))

    def similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        """(N_t, N_v) scores in cosine units (delegates to the head; any chunk of texts x videos)."""
        return self.head.similarity(text_feats, video_feats)

    def scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` with ``logit_scale`` clamped to ``ln(cfg.logit_scale_max)``."""
        scale = self.logit_scale.to(torch.promote_types(self.logit_scale.dtype, torch.float32))  # float64 stays
        return scale.clamp(max=math.log(self.cfg.logit_scale_max)).exp()

    # ------------------------------------------------------------------------------------------ training
    def forward(self, batch: dict[str, Any], gather: Gather | None = None) -> dict[str, Any]:
        """Features and scores of a training batch over the (gathered) global batch; losses are computed outside.

        Args:
            batch: collated batch with ``video`` (B, T, 3, H, W), ``video_mask`` (B, T), ``text_tokens`` (B, L).
            gather: maps local ``Features`` to the features of every process (with gradients); identity if None.

        Returns:
            ``{"text": Features (N, ...), "video": Features (N, ...), "sims": (N, N) cosine scores,
            "logit_scale": exp(logit_scale) clamped, "logits": (N, N) scaled scores, "encoder": local
            VideoEncoderOutput}`` plus ``"caption_logits"`` (M, V), ``"caption_targets"`` (M,) and
            ``"caption_class_weights"`` (V,) when the captioner is enabled.
        """
        gather = gather or (lambda feats: feats)
        outputs = self.encode_video_outputs(batch["video"], batch["video_mask"])
        video_all = gather(self.head.encode_video(outputs))
        text_all = gather(self.encode_text(batch["text_tokens"]))
        sims = self.head.similarity(text_all, video_all)  # (N, N)
        sims = sims.to(torch.promote_types(sims.dtype, torch.float32))  # at least float32 (float64 models stay)
        scale = self.scale()
        out: dict[str, Any] = {"text": text_all, "video": video_all, "sims": sims, "logit_scale": scale,
                               "logits": scale * sims, "encoder": outputs}
        if self.captioner is not None:
            tokens = batch["text_tokens"].to(outputs.frames.device)
            logits, targets = self.captioner.scored_logits(outputs.frames, tokens, outputs.mask)  # raw (B, T, E)
            out.update(caption_logits=logits, caption_targets=targets,
                       caption_class_weights=self.captioner.class_weights)
        return out

    # ------------------------------------------------------------------------------------------ reports
    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """What the video transform must produce: square crops of ``image_size``, CLIP mean / std."""
        return {"image_size": self.image_size, "mean": tuple(CLIP_MEAN), "std": tuple(CLIP_STD)}

    def model_info(self) -> dict[str, Any]:
        """Identity of the model for reports and extraction manifests."""
        return {"arch": self.cfg.arch, "clip": self.cfg.clip.model_name if self.cfg.clip.vision_cfg is None
                else "inline", "head": self.cfg.head.name, "temporal": self.cfg.temporal.type,
                "activation": _activation_name(self.cfg.clip.quick_gelu),
                "embed_dim": self.embed_dim, "context_length": int(self.cfg.context_length),
                "prompt_cube": bool(self.cfg.prompt.enabled), "pretrained": self.pretrained,
                "parameters": sum(p.numel() for p in self.parameters())}


def _activation_name(quick_gelu: bool | None) -> str:
    """``quick_gelu`` | ``gelu`` (the factory resolves ``model.clip.quick_gelu`` before building the towers)."""
    return "unresolved" if quick_gelu is None else "quick_gelu" if quick_gelu else "gelu"


def _first(size) -> int:
    return size[0] if isinstance(size, (tuple, list)) else size


def _head_kwargs(cfg, embed_dim: int) -> dict[str, Any]:
    """Preset + YAML head kwargs, plus the model facts a head may ask for (embed_dim, max_words)."""
    facts = {"embed_dim": embed_dim, "max_words": int(cfg.context_length)}
    return resolve_head_kwargs(HEADS.get(cfg.head.name), cfg.head, facts)


def _build_captioner(cfg, text_encoder: TextEncoder, embed_dim: int) -> nn.Module | None:
    """Prompt Switch's auxiliary captioner when ``cfg.prompt.caption_loss_weight > 0`` (else None)."""
    if not cfg.prompt.caption_loss_weight or cfg.prompt.caption_loss_weight <= 0:
        return None
    from .prompt_cube import PromptCaptioner, frequent_word_ids

    projection = text_encoder.text_projection
    return PromptCaptioner(embed_dim=embed_dim, vocab_size=text_encoder.token_embedding.num_embeddings,
                           num_layers=int(cfg.prompt.caption_layers), token_embedding=text_encoder.token_embedding,
                           positional_embedding=text_encoder.positional_embedding,
                           frequent_word_ids=frequent_word_ids(),
                           frequent_word_weight=float(cfg.prompt.frequent_word_weight),
                           input_projection=projection if isinstance(projection, torch.Tensor) else None)
