"""UCoFiA head (Ziyang412/UCoFiA, methods.md §4 and Appendix D): three similarity levels aggregated with ISA.

Levels (cosine units; ``similarity`` is their mean, ``similarity_levels`` returns them for SK-norm):
- ``vs`` video-sentence: ``(ŝ W_g1) · (v̂ W_g2)``, v̂ = normalised mean of the normalised temporal frames;
- ``sf`` sentence-frame: ``ISA_{W_f}([ŝ · f̂_i]_i)`` over the raw (pre-temporal) frame embeddings;
- ``pw`` patch-word: ``A = (ŵ W_l1)(p W_l2)ᵀ`` between word tokens and "pixel" tokens (per frame: the CLS plus the
  ``top_k`` patches chosen by a PredictorLG scorer through a perturbed top-k), aggregated word-wise and pixel-wise:
  ``½[ISA_{W_p2}(ISA_{W_w}(A over words)) + ISA_{W_w2}(ISA_{W_p}(A over pixels))]``.
ISA: ``a = softmax((softmax(s/τ) W)/τ)``, ``ISA_W(s) = Σ_k a_k s_k`` with W initialised to the identity.

Position-specific ISA matrices are sized by ``max_frames`` / ``max_words`` (pixels: ``max_frames * (1 + top_k)``). A
video with fewer frames (or padding frames), or a caption with fewer words, uses the leading block of each matrix and
masks the missing / padding items with -inf before both softmaxes, so they take no weight; more frames or words than
the matrices hold is an error.

The patch shift of the frame encoder (TS2-Net) is not part of the head: set ``model.patch_shift_blocks``.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from ..registry import HEADS
from .base import Features, Head, TextEncoderOutput, VideoEncoderOutput, l2_normalize, masked_mean

LEVELS = ("vs", "sf", "pw")
EVAL_TOPK_MODES = ("hard", "perturbed")


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the True entries of ``mask`` (broadcastable); excluded entries and all-masked slices give 0."""
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(filled, dim) * mask.to(logits.dtype)


def isa(sims: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Interactive similarity aggregation over the last dim: ``Σ_k softmax((softmax(s/τ) W)/τ)_k s_k``.

    Args:
        sims: (..., K) similarities; weight: (K_max, K_max) with K <= K_max (the leading K x K block is used);
        mask: (..., K) bool (broadcastable), True = real item. Computed in float32 without autocast.
    """
    k = sims.shape[-1]
    with torch.autocast(device_type=sims.device.type, enabled=False):
        sims = sims.float()
        mask = mask.expand_as(sims)
        first = masked_softmax(sims / tau, mask)  # (..., K)
        weights = masked_softmax(first @ weight[:k, :k].float() / tau, mask)  # (..., K)
        return (weights * sims.masked_fill(~mask, 0.0)).sum(-1)


class PerturbedTopK(torch.autograd.Function):
    """Differentiable top-k (Berthet et al. 2020, as TS2-Net uses it): mean one-hot over Gaussian-perturbed top-k.

    Forward: (B, N) scores -> (B, k, N) soft indicators (selected indices sorted by position). Backward: the
    perturbation estimator ``E[one_hot(x + σZ) Zᵀ] / σ``.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, num_samples: int, sigma: float) -> torch.Tensor:
        noise = torch.randn(scores.shape[0], num_samples, scores.shape[1], device=scores.device,
                            dtype=scores.dtype)  # (B, S, N)
        indices = torch.topk(scores.unsqueeze(1) + sigma * noise, k, dim=-1).indices.sort(-1).values  # (B, S, k)
        one_hot = nn.functional.one_hot(indices, scores.shape[1]).to(scores.dtype)  # (B, S, k, N)
        ctx.save_for_backward(one_hot, noise)
        ctx.sigma, ctx.num_samples = sigma, num_samples
        return one_hot.mean(1)  # (B, k, N)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        one_hot, noise = ctx.saved_tensors
        expected = torch.einsum("bskn,bse->bkne", one_hot, noise) / (ctx.num_samples * ctx.sigma)  # (B, k, N, N)
        return torch.einsum("bkn,bkne->be", grad_output, expected), None, None, None


def hard_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) -> (B, k, N) one-hot indicators of the top-k scores, sorted by position (deterministic)."""
    indices = torch.topk(scores, k, dim=-1).indices.sort(-1).values  # (B, k)
    return nn.functional.one_hot(indices, scores.shape[1]).to(scores.dtype)


class PatchScorer(nn.Module):
    """PredictorLG: per-patch score in (-1, 1) from the patch's and its frame CLS's projected features."""

    def __init__(self, dim: int):
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim // 2, bias=False), nn.GELU())
        self.out = nn.Sequential(nn.Linear(2 * (dim // 2), dim // 2), nn.GELU(), nn.Linear(dim // 2, 1), nn.Tanh())

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """cls (B, D), patches (B, N, D) -> scores (B, N)."""
        local = self.inp(patches)  # (B, N, D/2)
        glob = self.inp(cls).unsqueeze(1).expand_as(local)  # (B, N, D/2)
        return self.out(torch.cat([local, glob], -1)).squeeze(-1)


@HEADS.register("ucofia")
class UCoFiAHead(Head):
    """Unified coarse-to-fine alignment head.

    Args:
        embed_dim: joint embedding size D (filled in from the model).
        max_words: words the ISA word matrices hold (filled in from ``model.context_length``; reference 32).
        max_frames: frames the ISA frame matrices hold (reference 12); videos may have fewer (masked), not more.
        top_k: patches selected per frame (reference 3); pixels per frame = 1 + top_k (CLS + selected).
        num_samples / sigma: perturbed top-k samples and noise (reference 500 / 0.05).
        eval_topk: "hard" (default, deviation: deterministic top-k of the scores in eval mode, so cached video
            features are reproducible) or "perturbed" (the reference: perturbed top-k also at test).
        tau: ISA temperature (reference 0.01).
        mask_padding_words: exclude padding tokens from the word ISA (default True, deviation); False reproduces the
            reference, which treats padding positions as words.
        pw_scale: multiplier of the patch-word level. The reference leaves S_pw unscaled while the other two levels
            are multiplied by ``exp(logit_scale)`` (≈100), i.e. S_pw has ~1/100 of their weight: ``pw_scale=0.01``
            reproduces that; default 1.0 (all levels in the same units).
        eval_drop_wl2: True reproduces the reference evaluation code, which drops W_l2 (pixel projection) at test
            (features encoded in eval mode skip it); default False (same function in train and eval).
    """

    needs_patch_tokens = True
    video_feature_keys = ("pooled", "video", "frames", "mask", "pixels", "pixel_mask")

    def __init__(self, embed_dim: int = 512, max_words: int = 32, max_frames: int = 12, top_k: int = 3,
                 num_samples: int = 500, sigma: float = 0.05, eval_topk: str = "hard", tau: float = 0.01,
                 mask_padding_words: bool = True, pw_scale: float = 1.0, eval_drop_wl2: bool = False):
        super().__init__()
        if eval_topk not in EVAL_TOPK_MODES:
            raise ValueError(f"ucofia: eval_topk={eval_topk!r}, choose one of {EVAL_TOPK_MODES}")
        self.max_words, self.max_frames, self.top_k = int(max_words), int(max_frames), int(top_k)
        self.num_samples, self.sigma, self.eval_topk, self.tau = int(num_samples), float(sigma), eval_topk, float(tau)
        self.mask_padding_words, self.pw_scale, self.eval_drop_wl2 = mask_padding_words, float(pw_scale), eval_drop_wl2
        num_pixels = self.max_frames * (1 + self.top_k)
        eye = torch.eye
        self.w_sentence, self.w_video = nn.Parameter(eye(embed_dim)), nn.Parameter(eye(embed_dim))  # W_g1, W_g2
        self.w_word_proj, self.w_pixel_proj = nn.Parameter(eye(embed_dim)), nn.Parameter(eye(embed_dim))  # W_l1, W_l2
        self.w_frame = nn.Parameter(eye(self.max_frames))  # W_f
        self.w_word, self.w_word2 = nn.Parameter(eye(self.max_words)), nn.Parameter(eye(self.max_words))  # W_w, W_w2
        self.w_pixel, self.w_pixel2 = nn.Parameter(eye(num_pixels)), nn.Parameter(eye(num_pixels))  # W_p, W_p2
        self.scorer = PatchScorer(embed_dim)

    # ------------------------------------------------------------------------------------------------ encoding
    def select_pixels(self, frames: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Per frame: [CLS, top_k selected patches] -> (B, T * (1 + top_k), D), frame-major."""
        b, t, n, d = patches.shape
        cls, flat = frames.reshape(b * t, d), patches.reshape(b * t, n, d)  # (B*T, D), (B*T, N, D)
        scores = self.scorer(cls, flat)  # (B*T, N)
        if self.training or self.eval_topk == "perturbed":
            indicators = PerturbedTopK.apply(scores.float(), self.top_k, self.num_samples, self.sigma)
        else:
            indicators = hard_topk(scores.float(), self.top_k)  # (B*T, k, N)
        selected = torch.einsum("bkn,bnd->bkd", indicators.to(flat.dtype), flat)  # (B*T, k, D)
        pixels = torch.cat([cls.unsqueeze(1), selected], 1)  # (B*T, 1+k, D)
        return pixels.reshape(b, t * (1 + self.top_k), d)  # (B, T*(1+k), D)

    def encode_video(self, video: VideoEncoderOutput) -> Features:
        if video.patches is None:
            raise ValueError("ucofia head needs patch tokens: set model.patch_tokens=true")
        t = video.frames.shape[1]
        if t > self.max_frames:
            raise ValueError(f"ucofia: {t} frames per video but the ISA matrices hold max_frames={self.max_frames}; "
                             "set model.head.kwargs.max_frames to at least the number of frames (and retrain)")
        mask = video.mask.bool()  # (B, T)
        pooled = l2_normalize(masked_mean(l2_normalize(video.temporal), mask))  # (B, D)
        pixels = self.select_pixels(video.frames, video.patches)  # (B, P, D), P = T*(1+k)
        if self.training or not self.eval_drop_wl2:
            pixels = pixels @ self.w_pixel_proj
        return {"pooled": pooled, "video": pooled @ self.w_video, "frames": l2_normalize(video.frames), "mask": mask,
                "pixels": pixels, "pixel_mask": mask.repeat_interleave(1 + self.top_k, dim=1)}

    def encode_text(self, text: TextEncoderOutput) -> Features:
        if text.tokens.shape[1] > self.max_words:
            raise ValueError(f"ucofia: {text.tokens.shape[1]} tokens per caption but the ISA matrices hold "
                             f"max_words={self.max_words}; set model.head.kwargs.max_words >= model.context_length")
        pooled = l2_normalize(text.pooled)
        word_mask = text.mask.bool() if self.mask_padding_words else torch.ones_like(text.mask, dtype=torch.bool)
        return {"pooled": pooled, "sentence": pooled @ self.w_sentence,
                "words": l2_normalize(text.tokens) @ self.w_word_proj, "word_mask": word_mask}

    # ---------------------------------------------------------------------------------------------- similarity
    def similarity_levels(self, text_feats: Features, video_feats: Features) -> Dict[str, torch.Tensor]:
        """``{"vs", "sf", "pw"}``: the three (N_t, N_v) levels, each before SK-norm biases."""
        vs = text_feats["sentence"].float() @ video_feats["video"].float().t()  # (Nt, Nv)
        frame_sims = torch.einsum("td,vfd->tvf", text_feats["pooled"].float(), video_feats["frames"].float())
        sf = isa(frame_sims, self.w_frame, video_feats["mask"].bool()[None], self.tau)  # (Nt, Nv)
        return {"vs": vs, "sf": sf, "pw": self.pw_scale * self.patch_word(text_feats, video_feats)}

    def patch_word(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        """(N_t, N_v) patch-word level (two-way ISA over the word x pixel similarity matrix of every pair)."""
        words, pixels = text_feats["words"], video_feats["pixels"]  # (Nt, L, D), (Nv, P, D)
        word_mask = text_feats["word_mask"].bool()[:, None, :, None]  # (Nt, 1, L, 1)
        pixel_mask = video_feats["pixel_mask"].bool()[None, :, None, :]  # (1, Nv, 1, P)
        sims = torch.einsum("tjd,vmd->tvjm", words, pixels)  # (Nt, Nv, L, P)
        over_words = isa(sims.transpose(-1, -2), self.w_word, word_mask.transpose(-1, -2), self.tau)  # (Nt, Nv, P)
        over_pixels = isa(sims, self.w_pixel, pixel_mask, self.tau)  # (Nt, Nv, L)
        pixel_level = isa(over_words, self.w_pixel2, pixel_mask[:, :, 0, :], self.tau)  # (Nt, Nv)
        word_level = isa(over_pixels, self.w_word2, word_mask[:, :, :, 0], self.tau)  # (Nt, Nv)
        return 0.5 * (pixel_level + word_level)

    def similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        levels = self.similarity_levels(text_feats, video_feats)
        return sum(levels[name] for name in LEVELS) / len(LEVELS)

    @classmethod
    def check_config(cls, model_cfg: Any) -> None:
        from ..errors import ConfigError

        super().check_config(model_cfg)
        kwargs = model_cfg.head.kwargs or {}
        max_words = kwargs.get("max_words", model_cfg.context_length)
        if max_words < model_cfg.context_length:
            raise ConfigError(f"model.head.kwargs.max_words={max_words} is smaller than model.context_length="
                              f"{model_cfg.context_length}: the word ISA matrices must hold every token")
