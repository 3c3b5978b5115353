"""Text features from open_clip's text tower: EOT sentence embedding, every token embedding, and a padding mask.

The context length comes from the model config (32 for MSR-VTT/MSVD, 64 for DiDeMo): positional embeddings and the
causal mask are sliced to it. Since the mask is causal, tokens before EOT never see padding, so for a caption that
fits the EOT feature equals open_clip's ``encode_text`` on the 77-token version of the same caption.
"""
from __future__ import annotations

from typing import List, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..heads.base import TextEncoderOutput
from ..tokenizer import text_mask, tokenize


class TextEncoder(nn.Module):
    def __init__(self, clip: nn.Module, context_length: int):
        super().__init__()
        if context_length > clip.positional_embedding.shape[0]:
            raise ValueError(f"context_length {context_length} exceeds the text tower's "
                             f"{clip.positional_embedding.shape[0]} positions")
        self.context_length = context_length
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask[:context_length, :context_length].clone(), persistent=False)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def tokenize(self, texts: Union[List[str], torch.Tensor]) -> torch.Tensor:
        if isinstance(texts, torch.Tensor):
            return texts
        return tokenize(list(texts), self.context_length)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def forward(self, texts: Union[List[str], torch.Tensor]) -> TextEncoderOutput:
        tokens = self.tokenize(texts).to(self.token_embedding.weight.device)  # (B, L)
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]  # (B, L, W)
        mask = self.attn_mask[:length, :length].to(x.dtype)
        batch_first = getattr(self.transformer, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1)
        for block in self.transformer.resblocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, None, None, mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=mask)
        x = x if batch_first else x.transpose(0, 1)
        feats = self._project(self.ln_final(x))  # (B, L, E)
        eot = tokens.argmax(dim=-1)  # EOT has the largest id
        pooled = feats[torch.arange(len(tokens), device=feats.device), eot]  # (B, E)
        return TextEncoderOutput(pooled=pooled, tokens=feats, mask=text_mask(tokens))
