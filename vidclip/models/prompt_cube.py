"""Prompt Switch (methods.md §2.1, Appendix B): the prompt cube inside the visual tower and the auxiliary captioner.

Prompt cube. A ``(P, P, width)`` parameter shared by every video: frame slot f of a chunk of P consecutive frames
carries the P prompts ``cube[f]``, appended after its CLS/patch tokens once, after ``ln_pre`` (no positional
embedding). Frames are chunk-major: a video of ``T = C * P`` frames is ``C`` chunks, each processed independently
(explicit test-time chunking: 12 test frames with P = 6 are two chunks). In every block the *normalised attention
input* of prompt slot (f, p) is replaced by that of slot (p, f) (the "switch"), attention stays inside each frame's own
L + P tokens, and the residual stream is never switched. After the blocks the CLS tokens of a group of frames attend
to all the group's prompt tokens (raw residual stream) through ``prompt_aggregation``, an attention whose output
projection is zero-initialised, and ``z = ln_post(cls + aggregation)`` is projected as usual. The group is
``aggregation_frames`` consecutive frames (``model.prompt.aggregation=model_frames``, the reference: the
``num_frames`` its model is built with, i.e. the training frames; longer test videos are split into groups of that
many frames) or one chunk of P frames (``aggregation=chunk``, vidclip's default); the two agree when the training
frames equal P (6 train / 12 test in the paper).

``gated=True`` (vidclip's default): the attention output of a CLS/patch query is
``plain + tanh(g_l) * (full - plain)`` where ``plain`` attends over the frame's CLS/patches only (exactly CLIP) and
``full`` also over the prompts (the reference); one zero-initialised gate ``g_l`` per block, so at initialisation the
frame embeddings equal plain CLIP's and ``tanh(g_l) = 1`` is the reference block. Prompt queries always use ``full``.
With the gates and the aggregation projection both at zero the cube receives no gradient on the very first step; it
does from the second step on. ``gated=False`` with ``aggregation=model_frames`` reproduces the reference code exactly.

Every new parameter has "prompt" in its name (``prompts``, ``prompt_gates``, ``prompt_aggregation.*``) so optimiser
grouping treats them as new modules (``train.param_groups=vidclip``). The reference trains its aggregation attention
at the CLIP learning rate (its name matches none of its new-module patterns) and decays every tensor;
``train.param_groups=prompt_switch_reference`` does the same.

:class:`PromptCaptioner` is the auxiliary captioning loss of §2.1(f).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_logger = logging.getLogger(__name__)

FREQUENT_WORDS = "in on of to about this that a an the and there here is are . ,"


def check_chunking(num_frames: int, num_prompts: int, aggregation_frames: int | None = None) -> int:
    """Chunks per video; ``ValueError`` naming the fix when ``num_frames`` is not a multiple of ``num_prompts`` (or
    of ``aggregation_frames``, the frames of one prompt-aggregation group)."""
    if num_frames % num_prompts:
        suggestion = max(num_prompts, num_frames // num_prompts * num_prompts)
        raise ValueError(
            f"{num_frames} frames per video is not a multiple of model.prompt.num_prompts={num_prompts}: the prompt "
            f"cube works on chunks of {num_prompts} consecutive frames. Set data.num_frames / data.test_num_frames "
            f"to a multiple of {num_prompts} (e.g. {suggestion}) and use the prompt_switch sampler (chunk-major order)")
    if aggregation_frames is not None and num_frames % aggregation_frames:
        raise ValueError(
            f"{num_frames} frames per video is not a multiple of model.prompt.aggregation_frames={aggregation_frames}"
            f": the prompt aggregation works on groups of {aggregation_frames} frames (the frames the reference "
            "model is built for). Set data.num_frames / data.test_num_frames to a multiple of it, or "
            "model.prompt.aggregation=chunk")
    return num_frames // num_prompts


def check_attention_supported(attn: nn.Module, where: str) -> None:
    """Blocks are run with their ``nn.MultiheadAttention`` weights directly; refuse layouts that would not match."""
    ok = (isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.bias_k is None
          and not attn.add_zero_attn)
    if not ok:
        raise ValueError(f"{where}: vidclip's frame encoder needs open_clip's default ResidualAttentionBlock with a "
                         f"plain nn.MultiheadAttention (got {type(attn).__name__}); use a standard CLIP ViT "
                         "architecture (no qk_norm / scaled cosine attention)")


def gated_attention(attn: nn.MultiheadAttention, h: torch.Tensor, num_tokens: int,
                    gate: torch.Tensor | None) -> torch.Tensor:
    """Self-attention of ``h`` (N, L+P, D) with the weights of ``attn``, before its caller's layer scale.

    ``gate=None``: plain self-attention over all L+P tokens. Otherwise the first ``num_tokens`` (CLS/patch) queries
    get ``plain + gate * (full - plain)``, ``plain`` attending over the first ``num_tokens`` keys only.
    """
    n, length, width = h.shape
    heads = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # (N, S, 3D)
    q, k, v = qkv.reshape(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # 3 x (N, H, S, D/H)
    dropout = attn.dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (N, H, S, D/H)
    if gate is not None:
        lt = num_tokens
        plain = F.scaled_dot_product_attention(q[:, :, :lt], k[:, :, :lt], v[:, :, :lt], dropout_p=dropout)
        tokens = plain + gate.to(plain.dtype) * (out[:, :, :lt] - plain)  # (N, H, L, D/H)
        out = torch.cat([tokens, out[:, :, lt:]], dim=2)  # (N, H, L+P, D/H)
    out = out.transpose(1, 2).reshape(n, length, width)  # (N, S, D)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


class PromptCube(nn.Module):
    """Prompt cube, switch and aggregation of Prompt Switch for a ViT of ``width`` / ``heads`` / ``num_layers``."""

    def __init__(self, width: int, heads: int, num_prompts: int = 6, num_layers: int = 12,
                 init_std: float | None = None, gated: bool = True, aggregation_frames: int | None = None):
        super().__init__()
        if num_prompts < 1:
            raise ValueError(f"model.prompt.num_prompts={num_prompts} must be at least 1")
        if aggregation_frames is not None and (aggregation_frames < 1 or aggregation_frames % num_prompts):
            raise ValueError(f"model.prompt.aggregation_frames={aggregation_frames} must be a positive multiple of "
                             f"model.prompt.num_prompts={num_prompts}")
        self.num_prompts = num_prompts
        self.aggregation_frames = int(aggregation_frames or num_prompts)  # frames per aggregation group
        std = init_std if init_std is not None else width ** -0.5 * 0.02
        self.prompts = nn.Parameter(torch.randn(num_prompts, num_prompts, width) * std)  # (frame slot f, prompt p, D)
        # New-module lr with param_groups=vidclip; the CLIP lr with prompt_switch_reference (see module doc).
        self.prompt_aggregation = nn.MultiheadAttention(width, heads, batch_first=True)
        nn.init.zeros_(self.prompt_aggregation.out_proj.weight)
        nn.init.zeros_(self.prompt_aggregation.out_proj.bias)
        self.prompt_gates = nn.Parameter(torch.zeros(num_layers)) if gated else None

    @property
    def gated(self) -> bool:
        return self.prompt_gates is not None

    def append(self, x: torch.Tensor) -> torch.Tensor:
        """Append each frame slot's P prompts after its tokens: (B*T, L, D) -> (B*T, L+P, D), T chunk-major."""
        p = self.num_prompts
        chunks = x.shape[0] // p
        prompts = self.prompts.to(x.dtype).unsqueeze(0).expand(chunks, p, p, -1)  # (B*C, F, P, D)
        return torch.cat([x, prompts.reshape(chunks * p, p, -1)], dim=1)  # (B*T, L+P, D)

    def switch(self, prompts: torch.Tensor) -> torch.Tensor:
        """Slot (f, p) <- slot (p, f) within each chunk, on (B*T, P, D)."""
        p = self.num_prompts
        cube = prompts.reshape(-1, p, p, prompts.shape[-1])  # (B*C, F, P, D)
        return cube.transpose(1, 2).reshape(prompts.shape)  # (B*T, P, D)

    def attention(self, index: int, attn: nn.MultiheadAttention, h: torch.Tensor) -> torch.Tensor:
        """Attention output of block ``index`` for its normalised input ``h`` (B*T, L+P, D), prompts switched."""
        num_tokens = h.shape[1] - self.num_prompts
        h = torch.cat([h[:, :num_tokens], self.switch(h[:, num_tokens:])], dim=1)  # (B*T, L+P, D)
        gate = torch.tanh(self.prompt_gates[index]) if self.gated else None
        return gated_attention(attn, h, num_tokens, gate)

    def aggregate(self, cls: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """``cls + MHA(cls, prompts, prompts)`` per group of G = ``aggregation_frames`` frames.

        cls (B*T, D), prompts (B*T, P, D) -> (B*T, D); T must be a multiple of G (see :func:`check_chunking`).
        """
        group = self.aggregation_frames
        q = cls.reshape(-1, group, cls.shape[-1])  # (B*T/G, G, D)
        kv = prompts.reshape(q.shape[0], group * self.num_prompts, -1)  # (B*T/G, G*P, D), frame-major
        out = q + self.prompt_aggregation(q, kv, kv, need_weights=False)[0]  # (B*T/G, G, D)
        return out.reshape(cls.shape)  # (B*T, D)


# ------------------------------------------------------------------------------------------------------- captioner
def frequent_word_ids() -> list[int]:
    """BPE ids of Prompt Switch's frequent words plus SOT/EOT, from open_clip's tokenizer."""
    from open_clip.tokenizer import _tokenizer

    return sorted(set(_tokenizer.encode(FREQUENT_WORDS)) | {_tokenizer.sot_token_id, _tokenizer.eot_token_id})


def _decoder_heads(embed_dim: int) -> int:
    heads = max(1, embed_dim // 64)
    return heads if embed_dim % heads == 0 else 1


class PromptCaptioner(nn.Module):
    """Auxiliary captioner of Prompt Switch (methods.md §2.1(f)): predicts the caption from the frame embeddings.

    Inputs are CLIP's token + positional embeddings of ``tokens[:, :-1]`` (no gradient into CLIP) -> LayerNorm ->
    a post-norm ``nn.TransformerDecoder`` (``max(1, E // 64)`` heads, i.e. 8 at E = 512, feed-forward 4E, dropout 0,
    causal) over the un-normalised frame embeddings as memory -> final LayerNorm -> ``caption_head`` initialised from
    the token-embedding matrix (bias 0, not tied). When the text width W differs from E (some small or non-OpenAI
    towers; never B/32 or B/16), a learnable ``input_proj`` Linear(W, E) maps the inputs, initialised from
    ``input_projection`` (e.g. CLIP's ``text_projection``, (W, E)) when given, else semi-orthogonally; the head is then
    initialised from ``token_embedding.weight @ input_proj.weight.T``.

    The CLIP embedding modules are referenced, not registered: they stay owned (and named) by the text tower.
    """

    def __init__(self, embed_dim: int, vocab_size: int, num_layers: int, token_embedding: nn.Embedding,
                 positional_embedding: torch.Tensor, frequent_word_ids: Sequence[int], frequent_word_weight: float,
                 input_projection: torch.Tensor | None = None):
        super().__init__()
        self._clip_embeddings = (token_embedding, positional_embedding)  # a tuple: not registered as submodules
        width = token_embedding.embedding_dim
        self.input_proj = nn.Linear(width, embed_dim, bias=False) if width != embed_dim else None
        if self.input_proj is not None:
            with torch.no_grad():
                if input_projection is not None:
                    self.input_proj.weight.copy_(input_projection.detach().t())
                else:
                    nn.init.orthogonal_(self.input_proj.weight)
        self.caption_prenorm = nn.LayerNorm(embed_dim)
        layer = nn.TransformerDecoderLayer(embed_dim, _decoder_heads(embed_dim), 4 * embed_dim, dropout=0.0,
                                           batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(embed_dim))
        self.caption_head = nn.Linear(embed_dim, vocab_size)
        with torch.no_grad():
            head = token_embedding.weight.detach()  # (V, W)
            if self.input_proj is not None:
                head = head @ self.input_proj.weight.t()  # (V, E)
            self.caption_head.weight.copy_(head)
            self.caption_head.bias.zero_()
        weights = torch.ones(vocab_size)
        weights[torch.as_tensor(list(frequent_word_ids), dtype=torch.long)] = frequent_word_weight
        self.register_buffer("class_weights", weights, persistent=False)

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        token_embedding, positional_embedding = self._clip_embeddings
        with torch.no_grad():
            emb = token_embedding(tokens) + positional_embedding[:tokens.shape[1]]  # (B, L-1, W)
        emb = emb.detach()
        if self.input_proj is not None:
            emb = self.input_proj(emb)  # (B, L-1, E)
        return self.caption_prenorm(emb)

    def logits(self, frame_embeds: torch.Tensor, text_tokens: torch.Tensor,
               frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, L-1, V) for inputs ``text_tokens[:, :-1]`` given frames (B, T, E)."""
        return self.caption_head(self._decode(frame_embeds, text_tokens, frame_mask))

    def _decode(self, frame_embeds: torch.Tensor, text_tokens: torch.Tensor,
                frame_mask: torch.Tensor | None) -> torch.Tensor:
        tokens = text_tokens.to(frame_embeds.device)[:, :-1]  # (B, L-1)
        tgt = self._inputs(tokens)  # (B, L-1, E)
        length = tokens.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tgt.device, dtype=tgt.dtype)
        padding = None if frame_mask is None else ~frame_mask.to(device=tgt.device, dtype=torch.bool)
        memory = frame_embeds.to(tgt.dtype)
        return self.decoder(tgt, memory, tgt_mask=causal, tgt_is_causal=True,
                            memory_key_padding_mask=padding)  # (B, L-1, E)

    def scored_logits(self, frame_embeds: torch.Tensor, text_tokens: torch.Tensor,
                      frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits of the scored positions and their targets, for :func:`vidclip.losses.caption_loss`.

        Args:
            frame_embeds: (B, T, E) un-normalised per-frame embeddings (the memory).
            text_tokens: (B, L) open_clip token ids (SOT ... EOT, zero padded).
            frame_mask: optional (B, T) bool, True = real frame; padded frames are hidden from the decoder.

        Returns:
            ``(logits (M, V), targets (M,))``: positions whose input token is EOT or padding are left out (every
            position before the EOT counts), so the (B, L, V) logits are never materialised.
        """
        tokens = text_tokens.to(frame_embeds.device)
        hidden = self._decode(frame_embeds, tokens, frame_mask)  # (B, L-1, E)
        eot = tokens.argmax(dim=-1)  # (B,) EOT has the largest id
        positions = torch.arange(tokens.shape[1] - 1, device=tokens.device)
        valid = positions.unsqueeze(0) < eot.unsqueeze(1)  # (B, L-1) input token before EOT
        return self.caption_head(hidden[valid]), tokens[:, 1:][valid]  # (M, V), (M,)
