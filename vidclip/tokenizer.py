"""CLIP BPE tokenisation with a configurable context length (SOT + tokens[:L-2] + EOT, zero padded)."""
from __future__ import annotations

from typing import Sequence, Union

import torch


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 32) -> torch.Tensor:
    """Token ids ``(B, context_length)``; captions longer than the context are truncated (EOT kept), never an error.

    Args:
        texts: one caption or a list of captions (any Unicode; empty captions give SOT + EOT).
        context_length: tokens per caption including SOT and EOT (32 for MSR-VTT/MSVD, 64 for DiDeMo).
    """
    import open_clip

    if isinstance(texts, str):
        texts = [texts]
    return open_clip.tokenize([str(t) for t in texts], context_length=context_length)


def text_mask(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool mask of real tokens (SOT..EOT inclusive); padding id is 0."""
    return tokens != 0
