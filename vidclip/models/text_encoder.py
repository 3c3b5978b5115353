"""Text features from open_clip's text tower: EOT sentence embedding, every token embedding, and a padding mask.

The context length comes from the model config (32 for MSR-VTT/MSVD, 64 for DiDeMo): positional embeddings and the
causal mask are sliced to it. Since the mask is causal, tokens before EOT never see padding, so for a caption that
fits the EOT feature equals open_clip's ``encode_text`` on the 77-token version of the same caption.

``key_padding_mask`` (``model.text_key_padding_mask``, GLSCL's reference text tower) also hides padding tokens as
attention keys. Real tokens and EOT are unchanged (the causal mask already hides padding from them); only the rows
of padding tokens change, which matters to heads that read every token row (GLSCL's decoder without memory mask).
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..features import TextEncoderOutput
from ..tokenizer import text_mask, tokenize


class TextEncoder(nn.Module):
    """open_clip's text tower (shared modules, not copies) with a shorter context.

    ``forward(texts)`` takes captions (tokenised to ``context_length`` with :func:`vidclip.tokenizer.tokenize`) or
    token ids ``(B, L)`` with ``L <= 77`` and returns a :class:`TextEncoderOutput`. ``key_padding_mask``: see the
    module doc.
    """

    def __init__(self, clip: nn.Module, context_length: int, key_padding_mask: bool = False):
        super().__init__()
        pool_type = getattr(clip, "text_pool_type", "argmax")
        if pool_type != "argmax":
            raise ValueError(f"text tower pools with '{pool_type}'; vidclip's text encoder expects CLIP's 'argmax' "
                             "(EOT token) pooling")
        if context_length > clip.positional_embedding.shape[0]:
            raise ValueError(f"context_length {context_length} exceeds the text tower's "
                             f"{clip.positional_embedding.shape[0]} positions")
        self.context_length = context_length
        self.key_padding_mask = bool(key_padding_mask)
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask[:context_length, :context_length].clone(), persistent=False)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the residual blocks in backward (training only) to save activation memory."""
        self.grad_checkpointing = enable

    def tokenize(self, texts: Union[str, list[str], torch.Tensor]) -> torch.Tensor:
        """Token ids (B, L): tensors pass through (checked), strings are tokenised to ``context_length``."""
        if isinstance(texts, torch.Tensor):
            if texts.dim() != 2 or texts.shape[1] > self.positional_embedding.shape[0]:
                raise ValueError(f"token ids must be (B, L) with L <= {self.positional_embedding.shape[0]}, got "
                                 f"{tuple(texts.shape)}")
            return texts.long()
        return tokenize([texts] if isinstance(texts, str) else list(texts), self.context_length)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def _attention_mask(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask: causal (L, L), or with ``key_padding_mask`` causal + padding keys (B * heads, L, L)."""
        length = tokens.shape[1]
        causal = self.attn_mask[:length, :length].to(dtype)  # (L, L), -inf above the diagonal
        if not self.key_padding_mask:
            return causal
        keys = text_mask(tokens)  # (B, L) True = real token
        keys = keys | ~keys.any(1, keepdim=True)  # a row of padding only keeps the causal mask (never all -inf)
        mask = causal.unsqueeze(0).masked_fill(~keys[:, None, :], float("-inf"))  # (B, L, L)
        heads = self.transformer.resblocks[0].attn.num_heads
        return mask.repeat_interleave(heads, dim=0)  # (B * heads, L, L), the layout nn.MultiheadAttention expects

    def forward(self, texts: Union[str, list[str], torch.Tensor]) -> TextEncoderOutput:
        """EOT feature (B, E), every token's feature (B, L, E) after ln_final @ text_projection, and the token mask."""
        tokens = self.tokenize(texts).to(self.token_embedding.weight.device)  # (B, L)
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length].to(self.token_embedding.weight.dtype)
        # x: (B, L, W)
        mask = self._attention_mask(tokens, x.dtype)
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
