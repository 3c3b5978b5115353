"""Per-frame encoding on open_clip's ``VisionTransformer``, with optional patch shift and prompt cube.

The tower's own submodules and weights are reused (``_embeds``, each block's ln_1 / attn / ls_1 / ln_2 / mlp / ls_2,
``ln_post``, ``proj``); nothing in open_clip is patched. Without extensions the output equals open_clip's
``encode_image`` on every frame. Extensions act on the normalised attention input of a block only (the residual
stream is never shifted or switched):
- patch shift (TS2-Net, used by UCoFiA) in ``patch_shift_blocks``;
- the Prompt Switch cube (see :mod:`vidclip.models.prompt_cube`) in every block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .prompt_cube import PromptCube


@dataclass
class FrameEncoderOutput:
    frames: torch.Tensor  # (B, T, E) CLS after ln_post @ proj, not normalised
    patches: Optional[torch.Tensor] = None  # (B, T, N, E) patch tokens after ln_post @ proj


def patch_shift(h: torch.Tensor, batch: int, frames: int, n_div: int) -> torch.Tensor:
    """TS2-Net token shift across time on ``h`` (B*T, L, D): tokens 1, 1+n_div, ... take frame t-1's value,
    tokens 4, 4+n_div, ... frame t+1's (``L // n_div`` of each); the first / last frame keep their own."""
    length, width = h.shape[1], h.shape[2]
    fold = length // n_div
    x = h.reshape(batch, frames, length, width)  # (B, T, L, D)
    out = x.clone()
    prev_idx = torch.arange(1, length, n_div, device=h.device)[:fold]
    next_idx = torch.arange(4, length, n_div, device=h.device)[:fold]
    out[:, 1:, prev_idx] = x[:, :-1, prev_idx]
    out[:, :-1, next_idx] = x[:, 1:, next_idx]
    return out.reshape(batch * frames, length, width)  # (B*T, L, D)


class FrameEncoder(nn.Module):
    """open_clip visual tower applied frame by frame: ``(B, T, 3, H, W) -> (B, T, E)`` (+ patches ``(B, T, N, E)``)."""

    def __init__(self, visual: nn.Module, patch_tokens: bool = False, patch_shift_blocks=(), patch_shift_div: int = 7,
                 prompt: Optional[PromptCube] = None):
        super().__init__()
        self.visual = visual
        self.patch_tokens = patch_tokens
        self.patch_shift_blocks = set(int(b) for b in patch_shift_blocks)
        self.patch_shift_div = patch_shift_div
        self.prompt = prompt
        self.grad_checkpointing = False
        self.batch_first = getattr(visual.transformer, "batch_first", True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _attend(self, block: nn.Module, h: torch.Tensor, mask: Optional[torch.Tensor] = None,
                kv: Optional[torch.Tensor] = None) -> torch.Tensor:
        kv = h if kv is None else kv
        if not self.batch_first:
            out = block.attn(h.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), need_weights=False,
                             attn_mask=mask)[0]
            return out.transpose(0, 1)
        return block.attn(h, kv, kv, need_weights=False, attn_mask=mask)[0]

    def _block(self, index: int, block: nn.Module, x: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        h = block.ln_1(x)  # (B*T, L(+P), D)
        if index in self.patch_shift_blocks:
            h = patch_shift(h, batch, frames, self.patch_shift_div)
        if self.prompt is None:
            x = x + block.ls_1(self._attend(block, h))
        else:
            x = x + block.ls_1(self.prompt.attention(index, h, batch, frames, lambda q, m=None, kv=None:
                                                     self._attend(block, q, m, kv)))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def forward(self, frames: torch.Tensor, mask: Optional[torch.Tensor] = None) -> FrameEncoderOutput:
        batch, num_frames = frames.shape[:2]
        visual = self.visual
        x = visual._embeds(frames.flatten(0, 1))  # (B*T, 1+N, D)
        num_tokens = x.shape[1]
        if self.prompt is not None:
            x = self.prompt.append(x, batch, num_frames)  # (B*T, 1+N+P, D)
        for index, block in enumerate(visual.transformer.resblocks):
            if self.grad_checkpointing and self.training:
                x = checkpoint(self._block, index, block, x, batch, num_frames, use_reentrant=False)
            else:
                x = self._block(index, block, x, batch, num_frames)
        cls = x[:, 0]  # (B*T, D)
        if self.prompt is not None:
            cls = self.prompt.aggregate(cls, x[:, num_tokens:], batch, num_frames)
        embeds = self._project(cls).reshape(batch, num_frames, -1)  # (B, T, E)
        patches = None
        if self.patch_tokens:
            tokens = self._project(x[:, 1:num_tokens])  # (B*T, N, E)
            patches = tokens.reshape(batch, num_frames, num_tokens - 1, -1)  # (B, T, N, E)
        return FrameEncoderOutput(embeds, patches)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        x = self.visual.ln_post(x)
        return x @ self.visual.proj if self.visual.proj is not None else x


def build_frame_encoder(visual: nn.Module, model_cfg) -> FrameEncoder:
    """A ``FrameEncoder`` over ``visual`` configured by a ``ModelCfg``."""
    prompt = None
    if model_cfg.prompt.enabled:
        width = visual.conv1.out_channels
        heads = visual.transformer.resblocks[0].attn.num_heads
        prompt = PromptCube(width, heads, model_cfg.prompt.num_prompts, model_cfg.prompt.init_std,
                            gated=model_cfg.prompt.gated, num_layers=len(visual.transformer.resblocks))
    encoder = FrameEncoder(visual, model_cfg.patch_tokens, model_cfg.patch_shift_blocks, model_cfg.patch_shift_div,
                           prompt)
    encoder.set_grad_checkpointing(model_cfg.grad_checkpointing)
    return encoder
