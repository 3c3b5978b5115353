"""ViFi-CLIP / CLIP4Clip meanP head: cosine of the mean-pooled video embedding and the sentence embedding.

With the prompt-cube encoder this is Prompt Switch's scoring; with the sequence transformer it is CLIP4Clip seqTransf.
``normalize_frames`` picks the pooling order: True averages L2-normalised frames (CLIP4Clip, Prompt Switch), False
averages raw frame embeddings (ViFi-CLIP); the pooled vector is normalised either way.
"""
from __future__ import annotations

import torch

from ..registry import HEADS
from .base import Features, Head, TextEncoderOutput, VideoEncoderOutput, l2_normalize, masked_mean


@HEADS.register("vifi")
class ViFiHead(Head):
    """Mean pooling + cosine. Presets: ``reference`` = ViFi-CLIP (raw frames averaged); ``clip4clip_meanp`` =
    CLIP4Clip meanP and Prompt Switch (normalised frames averaged)."""

    PRESETS = {"reference": {"normalize_frames": False}, "clip4clip_meanp": {"normalize_frames": True}}
    video_feature_keys = ("pooled",)

    def __init__(self, normalize_frames: bool = True):
        super().__init__()
        self.normalize_frames = normalize_frames

    def encode_video(self, video: VideoEncoderOutput) -> Features:
        frames = l2_normalize(video.temporal) if self.normalize_frames else video.temporal
        return {"pooled": l2_normalize(masked_mean(frames, video.mask))}

    def encode_text(self, text: TextEncoderOutput) -> Features:
        return {"pooled": l2_normalize(text.pooled)}

    def similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        return text_feats["pooled"] @ video_feats["pooled"].t()
