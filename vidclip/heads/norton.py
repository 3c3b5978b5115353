"""Norton head, a CLIP port of XLearning-SCU/2024-ICLR-Norton (methods.md §5, Appendix E).

Score ``s = (w * s_global + s_fine) / (w + 1)`` with ``w = fusion_weight`` (Norton: 0.5):
- ``s_global``: cosine of the pooled text (EOT) and pooled video (mean of normalised temporal frames);
- ``s_fine`` from the word x frame cosine matrix R of each pair (words = tokens after SOT up to EOT, frames = temporal
  frames), the mean of the enabled terms:
  * "lse" Norton's soft-maximum: ``½[mean_words α·LSE_frames(R/α) + mean_frames α·LSE_words(R/α)]``;
  * "ot" token-level optimal transport with an alignable prompt bucket (SuperGlue dustbin): the plan between words
    and frames (bucket value p; words/frames less similar than p to everything go to the bucket), mass-normalised to
    1 on the word x frame block, and ``s_ot = Σ T ⊙ R``.
Masked (padding) words and frames are excluded everywhere (zero OT mass, -inf before every log-sum-exp), so scores do
not depend on padding. The batch-level min-max normalisation of Norton's coarse and fine matrices is NOT applied: it
couples every pair of the batch and would make a chunk's scores depend on the other chunks.

Also :func:`paragraph_similarity`: Norton's video-paragraph score (methods.md §5.1(b) steps 4-7) between the sentences
of paragraphs and the clips of videos (DiDeMo moments), on vidclip.ops.ot.bucket_plan. Norton's faulty-negative
rectified targets live in vidclip.ops.ot.rectified_targets (enabled by ``train.loss.rectify_targets``, any head).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from ..ops.ot import bucket_plan
from ..registry import HEADS
from .base import Features, Head, TextEncoderOutput, VideoEncoderOutput, l2_normalize, masked_mean

FINE_MODES = ("ot+lse", "ot", "lse")


def soft_maximum(sims: torch.Tensor, mask: torch.Tensor, alpha: float = 1.0, mean: bool = True) -> torch.Tensor:
    """``α·log Σ_{valid} exp(s/α)`` over the last dim (``- α·log(#valid)`` when ``mean``); all-masked rows give 0."""
    mask = mask.expand_as(sims)
    # a finite fill (not -inf) keeps all-masked rows finite in backward; exp(min - max) is exactly 0 otherwise
    lse = torch.logsumexp((sims / alpha).masked_fill(~mask, torch.finfo(sims.dtype).min), -1)
    count = mask.sum(-1)
    if mean:
        lse = lse - count.clamp_min(1).to(lse.dtype).log()
    return torch.where(count > 0, alpha * lse, torch.zeros_like(lse))


def masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim of ``values`` counting only True entries of ``mask`` (0 when none)."""
    mask = mask.expand_as(values).to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


@HEADS.register("norton")
class NortonHead(Head):
    """Global cosine fused with token-level soft-maximum and bucket-OT similarities.

    Args:
        fusion_weight: w in ``(w * global + fine) / (w + 1)`` (Norton ``fusion_weight`` 0.5).
        fine: which fine terms are averaged: "ot+lse" (default), "ot" or "lse" (Norton's clip-caption fine score).
        alpha_lse: soft-maximum temperature α (Norton ``alpha_lse`` 1).
        lse_mean: subtract α·log(#valid items) (log-MEAN-exp; default True): the score stays in [-1, 1] and does not
            grow with the number of frames / words. False is Norton's plain log-sum-exp (which Norton then min-max
            normalises over the whole batch matrix).
        lse_padding_quirk: True reproduces Norton's masking: padding words (frames) still count in the mean over
            words (frames), each contributing α·log(#valid frames (words)). Default False.
        bucket: "quantile" (default: per pair, the ``bucket_quantile`` quantile of that pair's valid word-frame
            similarities, the per-pair analogue of Norton's 30th percentile of positive-pair similarities; no
            parameter, chunk independent), "learnable" (an ``nn.Parameter`` initialised to ``bucket_init``; the plan is
            then differentiated through every Sinkhorn iteration) or a number (a fixed value).
        bucket_quantile: quantile for ``bucket="quantile"`` (Norton ``prompt_ratio`` 0.3).
        bucket_init: initial value for ``bucket="learnable"``.
        ot_epsilon / ot_iters: entropic regularisation and log-Sinkhorn iterations (Norton ``scale`` 0.1, 50).
        plan_grad: differentiate the transport plan (default False: Norton computes its plans under no_grad; the
            gradient reaches R through ``Σ T ⊙ R``). Forced on by ``bucket="learnable"``.
        exclude_sot: drop the SOT token from the words (default True: in CLIP's causal text encoder its output is the
            same for every caption; Norton's BERT likewise drops [CLS]).
    """

    video_feature_keys = ("pooled", "frames", "mask")

    def __init__(self, fusion_weight: float = 0.5, fine: str = "ot+lse", alpha_lse: float = 1.0, lse_mean: bool = True,
                 lse_padding_quirk: bool = False, bucket: Union[str, float] = "quantile", bucket_quantile: float = 0.3,
                 bucket_init: float = 0.2, ot_epsilon: float = 0.1, ot_iters: int = 50, plan_grad: bool = False,
                 exclude_sot: bool = True):
        super().__init__()
        if fine not in FINE_MODES:
            raise ValueError(f"norton: fine={fine!r}, choose one of {FINE_MODES}")
        if isinstance(bucket, str) and bucket not in ("quantile", "learnable"):
            raise ValueError(f"norton: bucket={bucket!r}, use 'quantile', 'learnable' or a number")
        self.fusion_weight, self.fine, self.alpha_lse = float(fusion_weight), fine, float(alpha_lse)
        self.lse_mean, self.lse_padding_quirk = bool(lse_mean), bool(lse_padding_quirk)
        self.bucket_mode = bucket if isinstance(bucket, str) else "fixed"
        self.bucket_value = None if isinstance(bucket, str) else float(bucket)
        self.bucket_quantile, self.ot_epsilon, self.ot_iters = float(bucket_quantile), float(ot_epsilon), int(ot_iters)
        self.bucket = nn.Parameter(torch.tensor(float(bucket_init))) if bucket == "learnable" else None
        self.plan_grad = bool(plan_grad) or bucket == "learnable"
        self.exclude_sot = bool(exclude_sot)

    # ------------------------------------------------------------------------------------------------ encoding
    def encode_video(self, video: VideoEncoderOutput) -> Features:
        mask = video.mask.bool()  # (B, T)
        frames = l2_normalize(video.temporal)  # (B, T, D)
        return {"pooled": l2_normalize(masked_mean(frames, mask)), "frames": frames, "mask": mask}

    def encode_text(self, text: TextEncoderOutput) -> Features:
        mask = text.mask.bool().clone()  # (B, L)
        if self.exclude_sot:
            mask[:, 0] = False
        return {"pooled": l2_normalize(text.pooled), "words": l2_normalize(text.tokens), "word_mask": mask}

    # ---------------------------------------------------------------------------------------------- similarity
    def similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        coarse = text_feats["pooled"].float() @ video_feats["pooled"].float().t()  # (Nt, Nv)
        fine = self.fine_similarity(text_feats, video_feats)
        return (self.fusion_weight * coarse + fine) / (self.fusion_weight + 1.0)

    def fine_similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        """(N_t, N_v) mean of the enabled fine terms ("lse", "ot")."""
        with torch.autocast(device_type=text_feats["words"].device.type, enabled=False):
            words, frames = text_feats["words"].float(), video_feats["frames"].float()  # (Nt, L, D), (Nv, T, D)
            word_mask = text_feats["word_mask"].bool()[:, None, :, None]  # (Nt, 1, L, 1)
            frame_mask = video_feats["mask"].bool()[None, :, None, :]  # (1, Nv, 1, T)
            sims = torch.einsum("tld,vfd->tvlf", words, frames)  # (Nt, Nv, L, T)
            terms = []
            if "lse" in self.fine:
                terms.append(self.soft_maximum_similarity(sims, word_mask, frame_mask))
            if "ot" in self.fine:
                terms.append(self.transport_similarity(sims, word_mask, frame_mask))
            return sum(terms) / len(terms)

    def soft_maximum_similarity(self, sims: torch.Tensor, word_mask: torch.Tensor, frame_mask: torch.Tensor
                                ) -> torch.Tensor:
        """Norton's symmetric soft-maximum on (Nt, Nv, L, T) word-frame similarities."""
        per_word = soft_maximum(sims, frame_mask, self.alpha_lse, self.lse_mean)  # (Nt, Nv, L)
        per_frame = soft_maximum(sims.transpose(-1, -2), word_mask.transpose(-1, -2), self.alpha_lse,
                                 self.lse_mean)  # (Nt, Nv, T)
        word_valid, frame_valid = word_mask[..., 0], frame_mask[..., 0, :]  # (Nt, 1, L), (1, Nv, T)
        if not self.lse_padding_quirk:
            return 0.5 * (masked_row_mean(per_word, word_valid) + masked_row_mean(per_frame, frame_valid))
        # Norton: masked words (frames) are zero rows whose soft-maximum over the valid frames (words) is still added
        n_frames = frame_valid.sum(-1).to(sims.dtype)  # (1, Nv)
        n_words = word_valid.sum(-1).to(sims.dtype)  # (Nt, 1)
        pad_words, pad_frames = (~word_valid).sum(-1).to(sims.dtype), (~frame_valid).sum(-1).to(sims.dtype)
        pad_word_value = 0.0 if self.lse_mean else self.alpha_lse * n_frames.clamp_min(1).log()
        pad_frame_value = 0.0 if self.lse_mean else self.alpha_lse * n_words.clamp_min(1).log()
        t2v = ((per_word * word_valid).sum(-1) + pad_words * pad_word_value) / n_words.clamp_min(1)
        v2t = ((per_frame * frame_valid).sum(-1) + pad_frames * pad_frame_value) / n_frames.clamp_min(1)
        return 0.5 * (t2v + v2t)

    def bucket_values(self, sims: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(G,) bucket value per problem for (G, L, T) similarities with (G, L, T) validity."""
        if self.bucket_mode == "learnable":
            return self.bucket.float().expand(sims.shape[0])
        if self.bucket_mode == "fixed":
            return torch.full((sims.shape[0],), self.bucket_value, device=sims.device)
        flat = sims.detach().masked_fill(~valid, float("nan")).flatten(1)  # (G, L*T)
        values = torch.nanquantile(flat, self.bucket_quantile, dim=1)
        return torch.nan_to_num(values, nan=0.0)

    def transport_similarity(self, sims: torch.Tensor, word_mask: torch.Tensor, frame_mask: torch.Tensor
                             ) -> torch.Tensor:
        """``Σ T ⊙ R`` with T the bucket plan of each pair, mass-normalised on the word x frame block."""
        nt, nv, length, frames = sims.shape
        flat = sims.reshape(nt * nv, length, frames)  # (G, L, T)
        row_mask = word_mask[..., 0].expand(nt, nv, length).reshape(nt * nv, length)  # (G, L)
        col_mask = frame_mask[..., 0, :].expand(nt, nv, frames).reshape(nt * nv, frames)  # (G, T)
        valid = row_mask[:, :, None] & col_mask[:, None, :]  # (G, L, T)
        plan = bucket_plan(flat, self.bucket_values(flat, valid), self.ot_epsilon, self.ot_iters, row_mask, col_mask,
                           mass=1.0, grad="autodiff" if self.plan_grad else "detach")  # (G, L, T)
        return (plan * flat.masked_fill(~valid, 0.0)).sum((1, 2)).reshape(nt, nv)


def paragraph_similarity(sentence_feats: torch.Tensor, clip_feats: torch.Tensor,
                         sentence_mask: Optional[torch.Tensor] = None, clip_mask: Optional[torch.Tensor] = None,
                         bucket: Optional[Union[float, torch.Tensor]] = None, prompt_ratio: float = 0.3,
                         epsilon: float = 0.1, iters: int = 50, minmax: bool = True, mass: Optional[float] = None,
                         scale: float = 1.0 / 0.07) -> torch.Tensor:
    """Norton's video-paragraph scores: prompt-bucket OT between sentences of A paragraphs and clips of B videos.

    Steps (methods.md §5.1(b) 1, 4-7): D = cosine(sentence, clip) for every (paragraph, video) pair, min-max
    normalised to [0, 1] over all valid entries (``minmax``); bucket p = the ``int(prompt_ratio * N)``-th smallest of
    the aligned (sentence i of paragraph a, clip i of video a) similarities when ``bucket`` is None (needs A == B
    and m == n); plan T = bucket plan of each D_ab (epsilon, iters), rescaled to total ``mass`` (default: m, the group
    size; Norton: 8); ``s[a, b] = scale * Σ T ⊙ D_ab`` (Norton: fixed temperature 0.07). No gradient through T.

    Args:
        sentence_feats: (A, m, D) sentence embeddings per paragraph. clip_feats: (B, n, D) clip embeddings per video.
        sentence_mask / clip_mask: (A, m) / (B, n) bool, True = real (default: all real).

    Returns:
        (A, B) paragraph-to-video scores.
    """
    num_a, m, _ = sentence_feats.shape
    num_b, n, _ = clip_feats.shape
    s_mask = torch.ones(num_a, m, dtype=torch.bool, device=sentence_feats.device) if sentence_mask is None \
        else sentence_mask.bool()
    c_mask = torch.ones(num_b, n, dtype=torch.bool, device=clip_feats.device) if clip_mask is None \
        else clip_mask.bool()
    sims = torch.einsum("aid,bjd->abij", l2_normalize(sentence_feats.float()), l2_normalize(clip_feats.float()))
    valid = s_mask[:, None, :, None] & c_mask[None, :, None, :]  # (A, B, m, n)
    if minmax:
        low = sims.masked_fill(~valid, math.inf).amin()
        high = sims.masked_fill(~valid, -math.inf).amax()
        sims = (sims - low) / (high - low).clamp_min(1e-12)
    if bucket is None:
        bucket = aligned_percentile(sims, valid, prompt_ratio)
    flat = sims.reshape(num_a * num_b, m, n)  # (A*B, m, n)
    rows = s_mask[:, None, :].expand(num_a, num_b, m).reshape(-1, m)  # (A*B, m)
    cols = c_mask[None, :, :].expand(num_a, num_b, n).reshape(-1, n)  # (A*B, n)
    plan = bucket_plan(flat, torch.as_tensor(bucket, dtype=torch.float32, device=flat.device).detach(), epsilon, iters,
                       rows, cols, mass=float(m if mass is None else mass))  # (A*B, m, n)
    score = (plan * flat.masked_fill(~valid.reshape(-1, m, n), 0.0)).sum((1, 2))
    return scale * score.reshape(num_a, num_b)


def aligned_percentile(sims: torch.Tensor, valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """Norton's bucket: k-th smallest (k = int(ratio * N), at least 1) of the aligned pairs' similarities.

    ``sims``/``valid``: (A, A, m, m); aligned pairs are (paragraph a, sentence i) <-> (video a, clip i).
    """
    num_a, num_b, m, n = sims.shape
    if num_a != num_b or m != n:
        raise ValueError("paragraph_similarity: the default bucket needs aligned paragraphs and videos "
                         f"(A == B, m == n), got {num_a} x {num_b} groups of {m} x {n}; pass bucket= explicitly")
    idx = torch.arange(num_a, device=sims.device)
    diag = sims[idx, idx].diagonal(dim1=-2, dim2=-1)  # (A, m)
    values = diag[valid[idx, idx].diagonal(dim1=-2, dim2=-1)]  # (N,)
    k = max(1, int(ratio * values.numel()))
    return values.kthvalue(k).values
