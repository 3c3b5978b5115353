"""GLSCL head (zchoi/GLSCL, methods.md §3 and Appendix C): global text-conditioned pooling + shared learnable queries.

Score ``s = s_global + local_weight * s_local``:
- global (parameter-free): ``α = softmax_i(eot_t · f_{v,i} / temperature)`` over the (temporal) frames of video v,
  ``v̄ = Σ_i α_i f_{v,i}``, ``s_global = cos(eot_t, v̄)``. The norm of ``v̄`` is computed from the per-video frame Gram
  matrix (``|v̄|² = αᵀ F Fᵀ α``), so a (texts x videos x D) tensor is never built.
- local: ``num_queries`` learnable queries (init U[0, 1)) go through ONE shared ``nn.TransformerDecoder`` with the
  frames as memory (video side, ``S_v``) and with the word tokens as memory (text side, ``T_t``); both L2-normalised
  per query; ``s_local = mean_k <T_{t,k}, S_{v,k}>``.
Auxiliary losses on the aligned batch: IDL (hinge on the video-query Gram matrix, weight ``alpha``) and ICL (MSE of
batch-mean queries + ``beta * Σ_k (C_kk - 0.75)²``).

Video features (cacheable, text independent): ``pooled``, ``frames`` (temporal frames, raw), ``mask``, ``queries``
(``S_v``), so re-ranking needs no recomputation. Text features: ``pooled``, ``eot`` (raw EOT), ``queries`` (``T_t``).

Reference setting (zchoi/GLSCL @06979f8, measured as an oracle: scores, losses and gradients equal to 1e-14 in
float64): ``model.head.preset: reference`` (``PRESETS["reference"]``: 8 heads / FF 2048 as its hard-coded
``nn.TransformerDecoderLayer(d_model, nhead=8)``, decoder memory NOT masked) plus three model keys, all set by
``configs/methods/glscl.yaml``: ``model.text_key_padding_mask: true`` (its text tower hides padding keys, so the
padding-token rows its decoder reads differ), ``model.padded_frames: encode_zero_image`` (padded frame slots are the
zero image through CLIP) and the seqTransf TF-style LayerNorm eps 1e-12. β is per dataset as its scripts: 0.02
MSR-VTT, 0.005 MSVD / DiDeMo (set by the recipes).

The global pooling masks padded frames before the softmax; the reference multiplies the softmax over all frames by
the mask without renormalising, which the cosine makes identical (the scale of ``v̄`` cancels).
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import HEADS
from .base import Features, Head, TextEncoderOutput, VideoEncoderOutput, l2_normalize, masked_mean

ICL_NORMALIZATIONS = ("reference", "batch_mean")
# model keys the reference preset needs besides the head kwargs (configs/methods/glscl.yaml sets them)
REFERENCE_MODEL_KEYS = {"text_key_padding_mask": True, "padded_frames": "encode_zero_image"}
_logger = logging.getLogger(__name__)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """fp16 / bf16 -> fp32 for the score maths; fp32 and fp64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@HEADS.register("glscl")
class GLSCLHead(Head):
    """Global-local semantic consistent learning head.

    Args:
        embed_dim: joint embedding size E (filled in from the model).
        temperature: global pooling temperature (reference scripts: 3; argparse default 5).
        num_queries: Nq shared learnable queries (reference scripts: 8).
        decoder_layers: layers of the shared decoder (reference: 3).
        num_heads: decoder attention heads; None = max(1, E // 64) (8 for E = 512, as the reference).
        decoder_ff: decoder feed-forward width; None = 4 * E (2048 for E = 512, PyTorch's default the reference uses).
        dropout: decoder dropout (reference: PyTorch default 0.1).
        local_weight: λ of ``s_global + λ * s_local`` (reference ``loss2_weight`` 0.5, at train and test).
        mask_memory: key-padding masks on the decoder memory (padding frames / padding words are not attended).
            Default True (vidclip: scores do not depend on padding); False reproduces the reference (preset).
        alpha: IDL weight (reference 1e-4). margin: IDL hinge margin (0.1).
        beta: ICL diagonal weight (reference: 0.02 in the MSR-VTT script, 0.005 for MSVD / DiDeMo / README).
        icl_target: target of the ICL diagonal (0.75).
        icl_normalization: "reference" (``C = Σ_batch S Tᵀ / Nq``: grows with the batch size, as the reference code)
            or "batch_mean" (``C = mean_batch S Tᵀ``).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "reference": {"temperature": 3.0, "num_queries": 8, "decoder_layers": 3, "num_heads": 8, "decoder_ff": 2048,
                      "dropout": 0.1, "local_weight": 0.5, "mask_memory": False, "alpha": 1e-4, "margin": 0.1,
                      "beta": 0.005, "icl_target": 0.75, "icl_normalization": "reference"},
    }
    video_feature_keys = ("pooled", "frames", "mask", "queries")

    def __init__(self, embed_dim: int = 512, temperature: float = 3.0, num_queries: int = 8, decoder_layers: int = 3,
                 num_heads: int | None = None, decoder_ff: int | None = None, dropout: float = 0.1,
                 local_weight: float = 0.5, mask_memory: bool = True,
                 alpha: float = 1e-4, margin: float = 0.1, beta: float = 0.02, icl_target: float = 0.75,
                 icl_normalization: str = "reference"):
        super().__init__()
        if icl_normalization not in ICL_NORMALIZATIONS:
            raise ValueError(f"glscl: icl_normalization={icl_normalization!r}, choose one of {ICL_NORMALIZATIONS}")
        heads = num_heads or max(1, embed_dim // 64)
        if embed_dim % heads:
            raise ValueError(f"glscl: embed_dim {embed_dim} is not divisible by num_heads {heads}; set num_heads")
        self.temperature, self.local_weight = float(temperature), float(local_weight)
        self.mask_memory = bool(mask_memory)
        self.alpha, self.margin = float(alpha), float(margin)
        self.beta, self.icl_target = float(beta), float(icl_target)
        self.icl_normalization = icl_normalization
        self.queries = nn.Parameter(torch.rand(num_queries, embed_dim))  # (Nq, E), U[0, 1) as the reference
        layer = nn.TransformerDecoderLayer(embed_dim, heads, dim_feedforward=decoder_ff or 4 * embed_dim,
                                           dropout=dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=decoder_layers)

    @classmethod
    def check_config(cls, model_cfg: Any) -> None:
        """Base checks, and a warning when the reference preset runs without the model keys it needs."""
        super().check_config(model_cfg)
        if getattr(model_cfg.head, "preset", None) != "reference":
            return
        off = {k: getattr(model_cfg, k, None) for k, v in REFERENCE_MODEL_KEYS.items() if getattr(model_cfg, k, v) != v}
        if off:
            _logger.warning("glscl: preset 'reference' with model keys %s: scores differ from the reference code "
                            "(it needs %s; configs/methods/glscl.yaml sets them)", off, REFERENCE_MODEL_KEYS)

    # ------------------------------------------------------------------------------------------------ encoding
    def _decode(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Shared queries attending to ``memory`` (B, L, E) -> L2-normalised (B, Nq, E)."""
        queries = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1).to(memory.dtype)  # (B, Nq, E)
        padding = None
        if self.mask_memory:
            keep = mask.bool() | ~mask.bool().any(1, keepdim=True)  # an all-padding row attends to everything
            padding = ~keep  # (B, L) True = ignore
        return l2_normalize(self.decoder(queries, memory, memory_key_padding_mask=padding))

    def encode_video(self, video: VideoEncoderOutput) -> Features:
        frames, mask = video.temporal, video.mask.bool()  # (B, T, E), (B, T)
        pooled = l2_normalize(masked_mean(l2_normalize(frames), mask))
        return {"pooled": pooled, "frames": frames, "mask": mask, "queries": self._decode(frames, mask)}

    def encode_text(self, text: TextEncoderOutput) -> Features:
        return {"pooled": l2_normalize(text.pooled), "eot": text.pooled,
                "queries": self._decode(text.tokens, text.mask)}

    # ---------------------------------------------------------------------------------------------- similarity
    def global_similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        """(N_t, N_v) cosine between each text and its text-conditioned pooling of each video's frames."""
        eot = _wide(text_feats["eot"])  # (Nt, E)
        frames = _wide(video_feats["frames"])  # (Nv, T, E)
        mask = video_feats["mask"].bool()  # (Nv, T)
        dots = torch.einsum("td,vfd->tvf", eot, frames)  # (Nt, Nv, T) raw dot products
        keep = mask | ~mask.any(1, keepdim=True)  # a video with no real frame pools all of them
        logits = (dots / self.temperature).masked_fill(~keep[None], torch.finfo(dots.dtype).min)
        weights = torch.softmax(logits, -1)  # (Nt, Nv, T)
        gram = frames @ frames.transpose(1, 2)  # (Nv, T, T)
        pooled_sq = torch.einsum("tvi,vij,tvj->tv", weights, gram, weights).clamp_min(0)  # |v̄|², (Nt, Nv)
        text_dot_pooled = (weights * dots).sum(-1)  # eot · v̄, (Nt, Nv)
        norms = eot.norm(dim=-1, keepdim=True).clamp_min(1e-6) * pooled_sq.clamp_min(1e-12).sqrt()
        return text_dot_pooled / norms

    @staticmethod
    def local_similarity(text_feats: Features, video_feats: Features) -> torch.Tensor:
        """(N_t, N_v) mean over queries of the cosine between text query k and video query k."""
        text_q, video_q = _wide(text_feats["queries"]), _wide(video_feats["queries"])  # (Nt, Nq, E), (Nv, Nq, E)
        return text_q.flatten(1) @ video_q.flatten(1).t() / text_q.shape[1]

    def similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        return self.global_similarity(text_feats, video_feats) + \
            self.local_weight * self.local_similarity(text_feats, video_feats)

    # ---------------------------------------------------------------------------------------------- aux losses
    def aux_losses(self, text_feats: Features, video_feats: Features) -> dict[str, torch.Tensor]:
        """``{"idl": alpha * IDL, "icl": ICL}`` on aligned rows (text i <-> video i)."""
        video_q, text_q = _wide(video_feats["queries"]), _wide(text_feats["queries"])  # (B, Nq, E)
        return {"idl": self.alpha * self.intra_diversity(video_q),
                "icl": self.inter_consistency(video_q, text_q)}

    def intra_diversity(self, video_q: torch.Tensor) -> torch.Tensor:
        """IDL (``Inter_Diversity`` in the reference code): two-way margin ranking on the batch-mean query Gram."""
        gram = torch.einsum("bkd,bjd->kj", video_q, video_q) / video_q.shape[0]  # (Nq, Nq)
        off = ~torch.eye(gram.shape[0], dtype=torch.bool, device=gram.device)
        rows = (self.margin + gram - gram.diagonal()[:, None]).clamp_min(0)[off].mean()
        cols = (self.margin + gram - gram.diagonal()[None, :]).clamp_min(0)[off].mean()
        return rows + cols

    def inter_consistency(self, video_q: torch.Tensor, text_q: torch.Tensor) -> torch.Tensor:
        """ICL (``Intra_Consistency`` in the reference code), β applied inside."""
        cross = torch.einsum("bkd,bjd->kj", video_q, text_q)  # (Nq, Nq) summed over the batch
        cross = cross / (video_q.shape[1] if self.icl_normalization == "reference" else video_q.shape[0])
        mse = F.mse_loss(video_q.mean(0), text_q.mean(0))
        return mse + self.beta * ((cross.diagonal() - self.icl_target) ** 2).sum()

