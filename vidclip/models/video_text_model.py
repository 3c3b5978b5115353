"""``VideoTextModel``: frame encoder + temporal module + text encoder + alignment head, and the training losses."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import nn

from ..constants import CLIP_MEAN, CLIP_STD
from ..heads import create_head
from ..heads.base import Features, VideoEncoderOutput
from ..losses import ContrastiveLoss
from .frame_encoder import build_frame_encoder
from .temporal import build_temporal
from .text_encoder import TextEncoder

Gather = Callable[[Features], Features]


class VideoTextModel(nn.Module):
    """Encode videos and texts into head features and score them; ``forward(batch)`` returns the training losses.

    Video features never depend on the text query (they can be extracted once and cached).
    """

    def __init__(self, clip: nn.Module, cfg, pretrained: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        self.pretrained = pretrained
        self.frame_encoder = build_frame_encoder(clip.visual, cfg)
        self.text_encoder = TextEncoder(clip, cfg.context_length)
        self.text_encoder.set_grad_checkpointing(cfg.grad_checkpointing)
        self.temporal = build_temporal(clip, cfg.temporal)
        self.embed_dim = int(clip.visual.output_dim)
        self.head = create_head(cfg.head.name, **_head_kwargs(cfg, self.embed_dim))
        init_scale = clip.logit_scale.detach().clone() if hasattr(clip, "logit_scale") else torch.tensor(
            math.log(1 / 0.07))
        self.logit_scale = nn.Parameter(init_scale.reshape(()))
        self.loss = ContrastiveLoss()
        self.aux_weight = 1.0
        self.image_size = int(_as_int(getattr(clip.visual, "image_size", 224)))

    def set_loss_config(self, loss_cfg) -> None:
        """Use the training config's loss options (Norton rectified targets, auxiliary-loss weight)."""
        self.loss = ContrastiveLoss(loss_cfg)
        self.aux_weight = float(loss_cfg.aux_weight)

    # ------------------------------------------------------------------------------------------ encoders
    def encode_video_outputs(self, frames: torch.Tensor, mask: torch.Tensor) -> VideoEncoderOutput:
        out = self.frame_encoder(frames, mask)
        mask = mask.to(torch.bool).to(out.frames.device)
        return VideoEncoderOutput(frames=out.frames, temporal=self.temporal(out.frames, mask), mask=mask,
                                  patches=out.patches)

    def encode_video(self, frames: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Features:
        """Head video features of ``frames`` (B, T, 3, H, W), preprocessed; ``mask`` (B, T) bool, True = real."""
        if mask is None:
            mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        return self.head.encode_video(self.encode_video_outputs(frames, mask))

    def encode_text(self, texts: Union[List[str], torch.Tensor]) -> Features:
        """Head text features of captions (list of strings) or token ids (B, L)."""
        return self.head.encode_text(self.text_encoder(texts))

    def similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        """(N_t, N_v) scores in cosine units."""
        return self.head.similarity(text_feats, video_feats)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(self.cfg.logit_scale_max)).exp()

    # ------------------------------------------------------------------------------------------ training
    def forward(self, batch: Dict[str, Any], gather: Optional[Gather] = None) -> Dict[str, torch.Tensor]:
        """Losses of a batch: contrastive over the (gathered) global batch plus the head's auxiliary losses."""
        gather = gather or (lambda feats: feats)
        video = self.encode_video(batch["video"], batch["video_mask"])
        text = self.encode_text(batch["text_tokens"])
        video_all, text_all = gather(video), gather(text)
        logits = self.scale() * self.head.similarity(text_all, video_all)
        losses = {"contrastive": self.loss(logits)}
        for name, value in self.head.aux_losses(text_all, video_all).items():
            losses[name] = self.aux_weight * value
        losses["loss"] = sum(losses.values())
        return losses

    # ------------------------------------------------------------------------------------------ reports
    @property
    def preprocess_cfg(self) -> Dict[str, Any]:
        return {"image_size": self.image_size, "mean": CLIP_MEAN, "std": CLIP_STD}

    def model_info(self) -> Dict[str, Any]:
        return {"arch": self.cfg.arch, "head": self.cfg.head.name, "temporal": self.cfg.temporal.type,
                "prompt_cube": bool(self.cfg.prompt.enabled), "pretrained": self.pretrained,
                "parameters": sum(p.numel() for p in self.parameters())}


def _as_int(size) -> int:
    return size[0] if isinstance(size, (tuple, list)) else size


def _head_kwargs(cfg, embed_dim: int) -> Dict[str, Any]:
    """The YAML head kwargs, plus the model facts a head may ask for (embed_dim, max_words) when it accepts them."""
    import inspect

    from omegaconf import OmegaConf

    from ..registry import HEADS

    kwargs = dict(OmegaConf.to_container(cfg.head.kwargs, resolve=True)) if not isinstance(cfg.head.kwargs, dict) \
        else dict(cfg.head.kwargs)
    params = inspect.signature(HEADS.get(cfg.head.name)).parameters
    facts = {"embed_dim": embed_dim, "max_words": cfg.context_length}
    for key, value in facts.items():
        if key in params and key not in kwargs:
            kwargs[key] = value
    return kwargs
