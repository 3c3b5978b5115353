"""Temporal modules over per-frame embeddings (B, T, D) -> (B, T, D); pooling itself happens in the heads."""
from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from ..registry import TEMPORAL

_logger = logging.getLogger(__name__)


@TEMPORAL.register("mean")
class Identity(nn.Module):
    """Frames pass unchanged; the head averages them (CLIP4Clip meanP, ViFi-CLIP, Prompt Switch)."""

    @classmethod
    def from_config(cls, clip: nn.Module, temporal_cfg: Any) -> Identity:
        """No parameters: ``clip`` and the config are not needed."""
        return cls()

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Identity: ``frames`` (B, T, D) unchanged."""
        return frames


@TEMPORAL.register("seq_transformer")
class SequenceTransformer(nn.Module):
    """CLIP4Clip's seqTransf: frame position embeddings + residual-attention blocks + residual add of the input.

    Initialised from the CLIP text tower (copies of blocks 0..N-1 and of the first ``max_frames`` text positional
    embeddings) when the text width equals the embedding width (true for ViT-B/32 and B/16: 512, and for the tiny
    configs). Otherwise (a custom tower whose text width differs from ``embed_dim``, or fewer text blocks than
    ``num_layers``) the text blocks cannot take the projected frame features, so fresh residual-attention blocks of
    the embedding width (about ``embed_dim / 64`` heads) and randomly initialised frame positions are built instead,
    and a log line says so. Padded frames are masked out as keys (additive -1e6, as the reference) so they never
    change valid outputs. ``layer_norm_eps`` (``model.temporal.layer_norm_eps``) is the blocks' LayerNorm epsilon:
    open_clip's 1e-5 by default; CLIP4Clip's TF-style ``LayerNorm`` (eps inside the square root, as torch's) uses
    1e-12, which the CLIP4Clip-style recipes set. CLIP4Clip's blocks are QuickGELU whatever the backbone; the copied
    text blocks here keep the backbone's activation (the same for OpenAI weights).
    """

    def __init__(self, clip: nn.Module, num_layers: int = 4, init_from_text: bool = True, max_frames: int = 77,
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        embed_dim = int(clip.text_projection.shape[1] if not isinstance(clip.text_projection, nn.Linear)
                        else clip.text_projection.out_features)
        text_width = clip.transformer.width
        blocks = clip.transformer.resblocks
        positions = clip.positional_embedding.shape[0]
        self.frame_position_embeddings = nn.Embedding(min(max_frames, positions), embed_dim)
        if text_width == embed_dim and len(blocks) >= num_layers:
            self.blocks = nn.ModuleList(copy.deepcopy(blocks[i]) for i in range(num_layers))
            if init_from_text:
                with torch.no_grad():
                    n = self.frame_position_embeddings.num_embeddings
                    self.frame_position_embeddings.weight.copy_(clip.positional_embedding[:n])
            else:
                for block in self.blocks:
                    _reset(block)
        else:
            from open_clip.transformer import ResidualAttentionBlock

            _logger.info("text width %d / %d blocks do not fit embed dim %d / %d layers: the sequence transformer "
                         "starts from random weights", text_width, len(blocks), embed_dim, num_layers)
            heads = max(h for h in range(1, max(1, embed_dim // 64) + 1) if embed_dim % h == 0)
            self.blocks = nn.ModuleList(ResidualAttentionBlock(embed_dim, heads, batch_first=True)
                                        for _ in range(num_layers))
        for block in self.blocks:  # CLIP4Clip's TF-style LayerNorm is torch's LayerNorm with eps 1e-12
            block.ln_1.eps = block.ln_2.eps = float(layer_norm_eps)
        self.heads = self.blocks[0].attn.num_heads
        self.batch_first = getattr(clip.transformer, "batch_first", True)

    @classmethod
    def from_config(cls, clip: nn.Module, temporal_cfg: Any) -> SequenceTransformer:
        """Built on ``clip`` with ``model.temporal.num_layers`` / ``init_from_text`` / ``layer_norm_eps``."""
        return cls(clip, num_layers=temporal_cfg.num_layers, init_from_text=temporal_cfg.init_from_text,
                   layer_norm_eps=float(temporal_cfg.layer_norm_eps))

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``frames`` (B, T, D), ``mask`` (B, T) bool True = real -> (B, T, D); padded frames never affect real ones."""
        batch, length, _ = frames.shape
        if length > self.frame_position_embeddings.num_embeddings:
            raise ValueError(f"{length} frames per video but the sequence transformer has "
                             f"{self.frame_position_embeddings.num_embeddings} frame positions")
        pos = self.frame_position_embeddings.weight[:length].to(frames.dtype)  # (T, D)
        x = frames + pos.unsqueeze(0)  # (B, T, D)
        neg = -min(1e6, torch.finfo(frames.dtype).max / 4)  # -1e6 as the reference; finite in fp16
        bias = torch.zeros(mask.shape, dtype=frames.dtype, device=frames.device).masked_fill(~mask, neg)  # (B, T) keys
        attn_mask = bias[:, None, :].expand(batch, length, length).repeat_interleave(self.heads, 0)  # (B*h, T, T)
        x = x if self.batch_first else x.transpose(0, 1)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        x = x if self.batch_first else x.transpose(0, 1)
        return x + frames  # residual add of the input frame features


def _reset(module: nn.Module) -> None:
    for child in module.modules():
        if child is module:
            continue
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
        elif hasattr(child, "_reset_parameters"):  # nn.MultiheadAttention
            child._reset_parameters()


def build_temporal(clip: nn.Module, temporal_cfg: Any) -> nn.Module:
    """The temporal module registered as ``temporal_cfg.type``, built on ``clip``.

    A registered class with a ``from_config(clip, temporal_cfg)`` classmethod is built through it; any other
    registered factory is called with ``clip`` alone.
    """
    factory = TEMPORAL.get(temporal_cfg.type)
    from_config = getattr(factory, "from_config", None)
    return from_config(clip, temporal_cfg) if from_config is not None else factory(clip=clip)
