"""Norton head, a CLIP port of XLearning-SCU/2024-ICLR-Norton (methods.md §5, Appendix E).

Norton's method on CLIP (``model.head.preset: reference``, ``configs/methods/norton.yaml``):
- retrieval and the clip-level loss use the pooled embeddings: ``similarity`` = cosine of the pooled text (EOT) and
  the pooled video (mean of normalised temporal frames) (``score="coarse"``);
- the loss rectifies its targets with optimal transport (vidclip.ops.ot.rectified_targets, video rows first) and sums
  the two directions (vidclip.losses.rectified_infonce);
- the video-paragraph loss (vidclip.losses.video_paragraph_loss) runs a prompt-bucket OT over clip-caption blocks whose
  cost is :meth:`NortonHead.paragraph_cost`: Norton's fused fine-grained score, each of its three terms (pooled
  cosine, text->video and video->text soft-maximum) min-max normalised over the whole batch matrix, then
  ``(w * coarse + (t2v + v2t) / 2) / (w + 1)`` with ``w = fusion_weight`` (0.5).
The soft-maximum of a pair with word x frame cosines R (words = tokens after SOT up to EOT, frames = temporal frames) is
``mean_words α·LSE_frames(R/α)`` (t2v) and ``mean_frames α·LSE_words(R/α)`` (v2t); Norton's own arithmetic
(``lse_mean=False, lse_padding_quirk=True``) counts padding slots in the means, see ``lse_padding_quirk``.

vidclip's default (``score="fused"``, no preset) scores retrieval with the fused score itself, chunk-independently
(no batch min-max, which would make a chunk's scores depend on the other chunks), and adds a fine term of its own that
Norton does not have: "ot", an optimal transport between the words of a caption and the frames of a video with an
alignable prompt bucket (SuperGlue dustbin), ``s_ot = Σ T ⊙ R`` with the plan mass-normalised to 1 (``fine="ot+lse"``
averages it with the soft-maximum). Norton's OT works on whole clip-caption pairs (rectified targets, paragraphs),
never on words x frames. Masked (padding) words and frames are excluded everywhere unless the quirk is asked for.

Speed (issue 17, ``benchmarks/bench_norton.py``): word / frame slots that are padding in every row of a chunk are
dropped before the word x frame matrix is built (exact), both soft-maximum directions share one masked ``exp``, and
the word x frame OT runs the same Sinkhorn iterations in scaling form (``ot_solver="auto"``; "pot" = POT's log domain).

Also :func:`paragraph_similarity`: the video-paragraph score between the sentences of paragraphs and the clips of
videos from their pooled embeddings (coarse cost), on vidclip.ops.ot.paragraph_scores.
"""
from __future__ import annotations

import math
from typing import ClassVar, Union

import torch
from torch import nn

from ..ops.ot import bucket_plan, paragraph_scores
from ..registry import HEADS
from .base import Features, Head, TextEncoderOutput, VideoEncoderOutput, l2_normalize, masked_mean

FINE_MODES = ("ot+lse", "ot", "lse")  # "ot" = vidclip's word x frame OT (not in Norton); "lse" = Norton's
SCORES = ("fused", "coarse")


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """float64 stays float64; half / bfloat16 / float32 become float32."""
    return x if x.dtype == torch.float64 else x.float()


def keep_slots(mask: torch.Tensor) -> torch.Tensor:
    """(L,) bool: slots that are real in at least one row of a (N, L) mask (at least the first slot)."""
    keep = mask.any(0)
    if not bool(keep.any()):
        keep = keep.clone()
        keep[0] = True
    return keep


def batch_minmax(x: torch.Tensor) -> torch.Tensor:
    """``(x - min) / (max - min)`` over every entry (Norton's batch normalisation); a constant matrix gives 0."""
    low, high = x.min(), x.max()
    return (x - low) / (high - low).clamp_min(torch.finfo(x.dtype).tiny)


def soft_maximum(sims: torch.Tensor, mask: torch.Tensor, alpha: float = 1.0, mean: bool = True) -> torch.Tensor:
    """``α·log Σ_{valid} exp(s/α)`` over the last dim (``- α·log(#valid)`` when ``mean``); all-masked rows give 0."""
    mask = mask.expand_as(sims)
    # a finite fill (not -inf) keeps all-masked rows finite in backward; exp(min - max) is exactly 0 otherwise
    lse = torch.logsumexp((sims / alpha).masked_fill(~mask, torch.finfo(sims.dtype).min), -1)
    count = mask.sum(-1)
    if mean:
        lse = lse - count.clamp_min(1).to(lse.dtype).log()
    return torch.where(count > 0, alpha * lse, torch.zeros_like(lse))


def soft_maximum_both(sims: torch.Tensor, word_mask: torch.Tensor, frame_mask: torch.Tensor, alpha: float = 1.0,
                      mean: bool = True, bound: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per word over frames (Nt, Nv, L), per frame over words (Nt, Nv, T)) soft-maxima of (Nt, Nv, L, T) sims.

    When ``|sims| / alpha`` is small enough for ``exp`` (always for cosines and ``alpha >= 1/60``), both directions
    share one masked ``exp`` (no max shift is needed; equal to the log-sum-exps up to rounding); otherwise two
    :func:`soft_maximum` calls. ``bound``: a known bound on ``|sims|`` (default: measured).
    """
    limit = 600.0 if sims.dtype == torch.float64 else 60.0
    if sims.numel() == 0 or (bound if bound is not None else float(sims.detach().abs().amax())) / alpha > limit:
        per_word = soft_maximum(sims, frame_mask, alpha, mean)  # (Nt, Nv, L)
        return per_word, soft_maximum(sims.transpose(-1, -2), word_mask.transpose(-1, -2), alpha, mean)
    expo = (sims if alpha == 1.0 else sims / alpha).exp()  # (Nt, Nv, L, T)
    if expo.requires_grad:
        expo = expo * (word_mask & frame_mask).to(sims.dtype)
    else:  # evaluation: mask in place, no (Nt, Nv, L, T) mask tensor
        expo.mul_(word_mask.to(sims.dtype)).mul_(frame_mask.to(sims.dtype))
    tiny = torch.finfo(sims.dtype).tiny
    out = []
    for dim, mask in ((-1, frame_mask), (-2, word_mask)):
        count = mask.sum(dim)  # (.., 1, T) -> (.., 1) counts of the reduced side
        lse = expo.sum(dim).clamp_min(tiny).log()  # (Nt, Nv, L) or (Nt, Nv, T)
        if mean:
            lse = lse - count.clamp_min(1).to(lse.dtype).log()
        out.append(torch.where(count > 0, alpha * lse, torch.zeros_like(lse)))
    return out[0], out[1]


def masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim of ``values`` counting only True entries of ``mask`` (0 when none)."""
    mask = mask.expand_as(values).to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


@HEADS.register("norton")
class NortonHead(Head):
    """Pooled cosine, optionally fused with Norton's soft-maximum and vidclip's word x frame bucket OT.

    Args:
        score: what :meth:`similarity` (retrieval and the clip-level loss) returns: "fused" (default, vidclip:
            ``(w * coarse + fine) / (w + 1)`` per pair) or "coarse" (Norton: the pooled cosine; the fused score then
            only feeds the video-paragraph loss through :meth:`paragraph_cost`).
        fusion_weight: w in ``(w * global + fine) / (w + 1)`` (Norton ``fusion_weight`` 0.5).
        fine: which fine terms are averaged: "ot+lse" (default), "ot" (vidclip's word x frame OT, not in Norton) or
            "lse" (Norton's soft-maximum).
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
        paragraph_minmax: :meth:`paragraph_cost` min-max normalises the pooled cosine and each fine term over the
            whole batch matrix before fusing them, as Norton's ``SequenceContrastLoss`` (default True); False uses
            the per-pair fused score.
        ot_solver: Sinkhorn solver of the word x frame OT (vidclip.ops.ot.sinkhorn_batch): "auto" (default: the
            scaling form when the cost range allows, same iterations as POT's log domain), "pot" or "scaling".
    """

    PRESETS: ClassVar[dict[str, dict]] = {
        "reference": {"score": "coarse", "fusion_weight": 0.5, "fine": "lse", "alpha_lse": 1.0, "lse_mean": False,
                      "lse_padding_quirk": True, "exclude_sot": True, "paragraph_minmax": True},
    }
    video_feature_keys = ("pooled", "frames", "mask")

    def __init__(self, fusion_weight: float = 0.5, fine: str = "ot+lse", alpha_lse: float = 1.0, lse_mean: bool = True,
                 lse_padding_quirk: bool = False, bucket: Union[str, float] = "quantile", bucket_quantile: float = 0.3,
                 bucket_init: float = 0.2, ot_epsilon: float = 0.1, ot_iters: int = 50, plan_grad: bool = False,
                 exclude_sot: bool = True, score: str = "fused", paragraph_minmax: bool = True,
                 ot_solver: str = "auto"):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"norton: score={score!r}, choose one of {SCORES}")
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
        self.score, self.paragraph_minmax, self.ot_solver = score, bool(paragraph_minmax), ot_solver

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
        coarse = self.coarse_similarity(text_feats, video_feats)  # (Nt, Nv)
        if self.score == "coarse":
            return coarse
        fine = self.fine_similarity(text_feats, video_feats)
        return (self.fusion_weight * coarse + fine) / (self.fusion_weight + 1.0)

    @staticmethod
    def coarse_similarity(text_feats: Features, video_feats: Features) -> torch.Tensor:
        """(N_t, N_v) cosine of the pooled embeddings."""
        return full_precision(text_feats["pooled"]) @ full_precision(video_feats["pooled"]).t()

    def word_frame(self, text_feats: Features, video_feats: Features):
        """Word x frame cosines (Nt, Nv, L', T'), word mask (Nt, 1, L', 1), frame mask (1, Nv, 1, T'), (L, T).

        Slots that are padding in every row of the chunk are dropped first (exact: they carry no weight and no mass);
        the full slot numbers (L, T) are returned for the padding counts of ``lse_padding_quirk``.
        """
        word_mask, frame_mask = text_feats["word_mask"].bool(), video_feats["mask"].bool()  # (Nt, L), (Nv, T)
        slots = (word_mask.shape[1], frame_mask.shape[1])
        word_keep, frame_keep = keep_slots(word_mask), keep_slots(frame_mask)  # (L,), (T,)
        words = full_precision(text_feats["words"])[:, word_keep]  # (Nt, L', D)
        frames = full_precision(video_feats["frames"])[:, frame_keep]  # (Nv, T', D)
        word_mask = word_mask[:, word_keep][:, None, :, None]  # (Nt, 1, L', 1)
        frame_mask = frame_mask[:, frame_keep][None, :, None, :]  # (1, Nv, 1, T')
        return torch.einsum("tld,vfd->tvlf", words, frames), word_mask, frame_mask, slots  # (Nt, Nv, L', T')

    def pair_bytes(self, text_feats: Features, video_feats: Features) -> int:
        """Estimated intermediate bytes per (text, video) pair (``vidclip.ops.similarity.plan_chunks``)."""
        if self.score == "coarse":
            return 8
        words = int(keep_slots(text_feats["word_mask"].bool()).sum())
        frames = int(keep_slots(video_feats["mask"].bool()).sum())
        itemsize = 8 if text_feats["words"].dtype == torch.float64 else 4
        return 12 * itemsize * (words + 1) * (frames + 1)  # sims, exps, masks, OT kernel, plan, quantile sort

    def fine_similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        """(N_t, N_v) mean of the enabled fine terms ("lse", "ot")."""
        with torch.autocast(device_type=text_feats["words"].device.type, enabled=False):
            sims, word_mask, frame_mask, slots = self.word_frame(text_feats, video_feats)
            terms = []
            if "lse" in self.fine:
                terms.append(self.soft_maximum_similarity(sims, word_mask, frame_mask, slots))
            if "ot" in self.fine:
                terms.append(self.transport_similarity(sims, word_mask, frame_mask))
            return sum(terms) / len(terms)

    def paragraph_cost(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        """(N_t, N_v) clip-caption cost of the video-paragraph OT over a whole batch (Norton: fused, batch min-max).

        With ``paragraph_minmax`` (Norton) the pooled cosine, the t2v and v2t soft-maximum terms (and vidclip's "ot"
        term when enabled) are each min-max normalised over the matrix, the fine terms averaged, and fused with
        ``fusion_weight``. The result depends on every pair of the batch: use it for losses, not for retrieval.
        """
        if not self.paragraph_minmax:
            fine = self.fine_similarity(text_feats, video_feats)  # (Nt, Nv)
            return (self.fusion_weight * self.coarse_similarity(text_feats, video_feats) + fine) / (
                self.fusion_weight + 1.0)
        with torch.autocast(device_type=text_feats["words"].device.type, enabled=False):
            coarse = batch_minmax(self.coarse_similarity(text_feats, video_feats))
            sims, word_mask, frame_mask, slots = self.word_frame(text_feats, video_feats)
            terms = []
            if "lse" in self.fine:
                t2v, v2t = self.soft_maximum_terms(sims, word_mask, frame_mask, slots)
                terms.append(0.5 * (batch_minmax(t2v) + batch_minmax(v2t)))
            if "ot" in self.fine:
                terms.append(batch_minmax(self.transport_similarity(sims, word_mask, frame_mask)))
            fine = sum(terms) / len(terms)
            return (self.fusion_weight * coarse + fine) / (self.fusion_weight + 1.0)

    def soft_maximum_similarity(self, sims: torch.Tensor, word_mask: torch.Tensor, frame_mask: torch.Tensor,
                                slots: tuple[int, int] | None = None) -> torch.Tensor:
        """Norton's symmetric soft-maximum ``(t2v + v2t) / 2`` on (Nt, Nv, L, T) word-frame similarities."""
        t2v, v2t = self.soft_maximum_terms(sims, word_mask, frame_mask, slots)
        return 0.5 * (t2v + v2t)

    def soft_maximum_terms(self, sims: torch.Tensor, word_mask: torch.Tensor, frame_mask: torch.Tensor,
                           slots: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t2v, v2t)``, each (Nt, Nv): mean over words of the soft-maximum over frames, and vice versa.

        ``slots`` = (word slots, frame slots) before padding slots were dropped (default: the masks' sizes).
        """
        per_word, per_frame = soft_maximum_both(sims, word_mask, frame_mask, self.alpha_lse, self.lse_mean)
        word_valid, frame_valid = word_mask[..., 0], frame_mask[..., 0, :]  # (Nt, 1, L), (1, Nv, T)
        if not self.lse_padding_quirk:
            return masked_row_mean(per_word, word_valid), masked_row_mean(per_frame, frame_valid)
        # Norton: masked words (frames) are zero rows whose soft-maximum over the valid frames (words) is still added
        n_frames = frame_valid.sum(-1).to(sims.dtype)  # (1, Nv)
        n_words = word_valid.sum(-1).to(sims.dtype)  # (Nt, 1)
        word_slots, frame_slots = slots or (word_valid.shape[-1], frame_valid.shape[-1])
        pad_words, pad_frames = word_slots - n_words, frame_slots - n_frames  # padding slots, dropped ones included
        pad_word_value = 0.0 if self.lse_mean else self.alpha_lse * n_frames.clamp_min(1).log()
        pad_frame_value = 0.0 if self.lse_mean else self.alpha_lse * n_words.clamp_min(1).log()
        t2v = ((per_word * word_valid).sum(-1) + pad_words * pad_word_value) / n_words.clamp_min(1)
        v2t = ((per_frame * frame_valid).sum(-1) + pad_frames * pad_frame_value) / n_frames.clamp_min(1)
        return t2v, v2t

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
        grad = "autodiff" if self.plan_grad else "detach"
        plan = bucket_plan(flat, self.bucket_values(flat, valid), self.ot_epsilon, self.ot_iters, row_mask, col_mask,
                           mass=1.0, grad=grad, solver=self.ot_solver)  # (G, L, T)
        return (plan * flat.masked_fill(~valid, 0.0)).sum((1, 2)).reshape(nt, nv)


def paragraph_similarity(sentence_feats: torch.Tensor, clip_feats: torch.Tensor,
                         sentence_mask: torch.Tensor | None = None, clip_mask: torch.Tensor | None = None,
                         bucket: Union[float, torch.Tensor] | None = None, prompt_ratio: float = 0.3,
                         epsilon: float = 0.1, iters: int = 50, minmax: bool = True, mass: float | None = None,
                         scale: float = 1.0 / 0.07) -> torch.Tensor:
    """Video-paragraph scores from pooled embeddings: prompt-bucket OT between sentences of A paragraphs and clips of B
    videos, with the pooled cosine as the clip-caption cost (Norton's loss uses the fused cost of
    :meth:`NortonHead.paragraph_cost`; see vidclip.losses.video_paragraph_loss).

    Steps (methods.md §5.1(b) 1, 4-7): D = cosine(sentence, clip) for every (paragraph, video) pair, min-max
    normalised to [0, 1] over all valid entries (``minmax``); bucket p = the ``int(prompt_ratio * N)``-th smallest of
    the aligned (sentence i of paragraph a, clip i of video a) similarities when ``bucket`` is None (needs A == B
    and m == n); then :func:`vidclip.ops.ot.paragraph_scores` (plan rescaled to ``mass``, default m; Norton: 8;
    ``s[a, b] = scale * Σ T ⊙ D_ab``, Norton: fixed temperature 0.07). No gradient through T.

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
    sims = torch.einsum("aid,bjd->abij", l2_normalize(full_precision(sentence_feats)),
                        l2_normalize(full_precision(clip_feats)))  # (A, B, m, n)
    valid = s_mask[:, None, :, None] & c_mask[None, :, None, :]  # (A, B, m, n)
    if minmax:
        low = sims.masked_fill(~valid, math.inf).amin()
        high = sims.masked_fill(~valid, -math.inf).amax()
        sims = (sims - low) / (high - low).clamp_min(1e-12)
    if bucket is None:
        bucket = aligned_percentile(sims, valid, prompt_ratio)
    return paragraph_scores(sims, s_mask, c_mask, bucket, epsilon, iters, mass, scale)


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
