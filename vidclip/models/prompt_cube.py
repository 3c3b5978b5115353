"""Prompt Switch's prompt cube (methods.md §2.1): P x P x width prompts shared by all videos, switched across frames.

Frames come in chunk-major order: T = C * P, chunk c holds frames c*P .. c*P+P-1 (the ``prompt_switch`` sampler
produces that order), and each chunk is processed independently (explicit test-time chunking: 12 test frames with
P = 6 are two chunks). Frame slot f of a chunk carries prompts cube[f, :]. In every block the normalised attention
input of prompt slot (f, p) is replaced by that of slot (p, f) (the "switch": frame and prompt axes transposed), so
the update of a prompt living in frame f is computed from a token of frame p. After the blocks, the CLS tokens of a
chunk attend to all its prompt tokens through an aggregation attention whose output projection is zero-initialised.

``gated=True`` (vidclip's default): CLS and patch tokens attend to the prompts through a separate attention scaled by
``tanh(gate)``, gates zero-initialised, so at initialisation frame embeddings equal plain CLIP's exactly.
``gated=False`` reproduces the reference code, where prompts simply join every frame's attention sequence.
The reference trains the aggregation attention at the CLIP learning rate by accident (its name matches no
new-module pattern); here it lives under ``prompt.aggregation`` and is grouped with the new modules.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn


class PromptCube(nn.Module):
    def __init__(self, width: int, heads: int, num_prompts: int = 6, init_std: Optional[float] = None,
                 gated: bool = True, num_layers: int = 12):
        super().__init__()
        self.num_prompts = num_prompts
        std = init_std if init_std is not None else width ** -0.5 * 0.02
        self.cube = nn.Parameter(torch.randn(num_prompts, num_prompts, width) * std)  # (frame slot, prompt, D)
        self.aggregation = nn.MultiheadAttention(width, heads, batch_first=True)
        nn.init.zeros_(self.aggregation.out_proj.weight)
        nn.init.zeros_(self.aggregation.out_proj.bias)
        self.gates = nn.Parameter(torch.zeros(num_layers)) if gated else None

    def _num_chunks(self, batch: int, frames: int) -> int:
        if frames % self.num_prompts:
            raise ValueError(f"{frames} frames per video is not a multiple of the prompt cube size "
                             f"{self.num_prompts}: set data.num_frames / data.test_num_frames to a multiple of "
                             f"model.prompt.num_prompts")
        return batch * frames // self.num_prompts

    def append(self, x: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """Append each frame slot's P prompts after its CLS/patch tokens: (B*T, L, D) -> (B*T, L+P, D)."""
        chunks, p = self._num_chunks(batch, frames), self.num_prompts
        prompts = self.cube.unsqueeze(0).expand(chunks, p, p, -1)  # (B*C, F, P, D)
        return torch.cat([x, prompts.reshape(batch * frames, p, -1).to(x.dtype)], dim=1)

    def switch(self, prompts: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """Slot (f, p) <- slot (p, f) within each chunk, on (B*T, P, D)."""
        chunks, p = self._num_chunks(batch, frames), self.num_prompts
        cube = prompts.reshape(chunks, p, p, -1).transpose(1, 2)  # (B*C, F, P, D) with axes swapped
        return cube.reshape(batch * frames, p, -1)  # (B*T, P, D)

    def attention(self, index: int, h: torch.Tensor, batch: int, frames: int, attend: Callable) -> torch.Tensor:
        """Attention output of one block for the normalised input ``h`` (B*T, L+P, D) with switched prompts.

        ``attend(q, mask=None, kv=None)`` runs the block's own attention (keys/values default to the queries).
        """
        p = self.num_prompts
        length = h.shape[1] - p
        h = torch.cat([h[:, :length], self.switch(h[:, length:], batch, frames)], dim=1)  # (B*T, L+P, D)
        if self.gates is None:
            return attend(h)
        tokens = attend(h[:, :length])  # exactly CLIP's attention among CLS/patches
        cross = attend(h[:, :length], None, h[:, length:])  # CLS/patches -> prompts
        prompts = attend(h[:, length:], None, h)  # prompts -> everything in their frame
        return torch.cat([tokens + torch.tanh(self.gates[index]).to(h.dtype) * cross, prompts], dim=1)

    def aggregate(self, cls: torch.Tensor, prompts: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """CLS (B*T, D) of each chunk's frames attend to the chunk's F*P prompts (B*T, P, D); residual."""
        chunks, p = self._num_chunks(batch, frames), self.num_prompts
        q = cls.reshape(chunks, p, -1)  # (B*C, F, D)
        kv = prompts.reshape(chunks, p * p, -1)  # (B*C, F*P, D)
        out = q + self.aggregation(q, kv, kv, need_weights=False)[0]
        return out.reshape(batch * frames, -1)  # (B*T, D)
