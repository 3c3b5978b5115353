"""UCoFiA head (Ziyang412/UCoFiA, methods.md §4 and Appendix D): three similarity levels aggregated with ISA.

Levels (``similarity`` is their mean, in cosine units; ``similarity_levels`` returns them for SK-norm):
- ``vs`` video-sentence: ``(ŝ W_g1) · (v̂ W_g2)``, v̂ = normalised mean of the normalised temporal frames (real
  frames only, as the reference);
- ``sf`` sentence-frame: ``ISA_{W_f}([ŝ · f̂_i]_i)`` over the raw (pre-temporal) frame embeddings;
- ``pw`` patch-word: ``A = (ŵ W_l1)(p W_l2)ᵀ`` between the normalised word tokens and the (not normalised) "pixel"
  tokens (per frame: the CLS plus the ``top_k`` patches chosen by a scorer through a perturbed top-k), aggregated
  word-wise and pixel-wise: ``½[ISA_{W_p2}(ISA_{W_w}(A over words)) + ISA_{W_w2}(ISA_{W_p}(A over pixels))]``.
ISA: ``a = softmax((softmax(s/τ) W)/τ)``, ``ISA_W(s) = Σ_k a_k s_k`` with W initialised to the identity.

Units. The reference adds ``exp(logit_scale)·vs``, ``exp(logit_scale)·sf`` and the *unscaled* ``pw``. With
``pw_scale=None`` (default) the head returns ``pw / exp(logit_scale)`` so that the model's multiplication by
``exp(logit_scale)`` gives exactly the reference's logits, for any value of the scale (the model binds its scale with
:meth:`UCoFiAHead.bind_logit_scale`; a head used on its own divides by 100, the reference's frozen value). A float
``pw_scale`` multiplies ``pw`` instead (``1.0``: all levels in the same units, the pre-fidelity default).

Reference setting (``PRESETS["reference"]``, the training code ``train/modules`` evaluated as ``eval_t2v``/``eval_v2t``
evaluate): top-k gradient with the reference's diagonal estimator, scorer without biases initialised N(0, 0.02),
padded frames and padding words included in every ISA, perturbed (stochastic) top-k at test time, W_l2 dropped at
test time, ``pw`` unscaled in logits. ``PRESETS["released_checkpoint"]`` swaps in the older "video-global" scorer of
the ``eval_t2v`` tree, the one the released MSR-VTT checkpoint was trained with. vidclip's defaults differ where
vidclip does better: the exact (full-Jacobian) perturbed top-k estimator, padding frames and words masked out
(scores do not depend on padding), deterministic top-k at test time (cached features are reproducible), W_l2 used in
train and test alike.

Position-specific ISA matrices are sized by ``max_frames`` / ``max_words`` (pixels: ``max_frames * (1 + top_k)``). A
video with fewer frames, or a caption with fewer words, uses the leading block of each matrix; masked items get -inf
before both softmaxes, so they take no weight; more frames or words than the matrices hold is an error.

The patch shift of the frame encoder (TS2-Net) is not part of the head: set ``model.patch_shift_blocks``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ..ops.numerics import flush_denormals
from ..registry import HEADS
from .base import Features, Head, TextEncoderOutput, VideoEncoderOutput, l2_normalize, masked_mean

LEVELS = ("vs", "sf", "pw")
EVAL_TOPK_MODES = ("hard", "perturbed")
TOPK_GRADS = ("full", "diagonal")
SCORERS = ("lg", "video_global")
REFERENCE_LOGIT_SCALE = 100.0  # exp(logit_scale) of OpenAI CLIP, which the reference keeps (clip lr 1e-7, clamp 100)
PW_TILE_TEXT_ROWS = 256  # word rows (texts x word slots) of one patch-word tile at inference
PW_TILE_PIXEL_COLS = 768  # pixel columns (videos x pixel slots) of one tile: 256 x 768 sims = 0.75 MB in fp32

_REFERENCE = dict(top_k=3, num_samples=500, sigma=0.05, tau=0.01, eval_topk="perturbed", topk_grad="diagonal",
                  scorer="lg", scorer_bias=False, scorer_init_std=0.02, mask_padding_frames=False,
                  mask_padding_words=False, pw_scale=None, eval_drop_wl2=True)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax over the True entries of ``mask`` (broadcastable; None = all); masked entries and all-masked slices
    give 0."""
    if mask is None:
        return torch.softmax(logits, dim)
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(filled, dim) * mask.to(logits.dtype)


def isa(sims: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Interactive similarity aggregation over the last dim: ``Σ_k softmax((softmax(s/τ) W)/τ)_k s_k``.

    Args:
        sims: (..., K) similarities; weight: (K_max, K_max) with K <= K_max (the leading K x K block is used);
        mask: (..., K) bool (broadcastable), True = real item; None = every item takes part. Computed in at least
        float32, without autocast.
    """
    k = sims.shape[-1]
    with torch.autocast(device_type=sims.device.type, enabled=False):
        sims = _wide(sims)
        mask = None if mask is None else mask.expand_as(sims)
        first = masked_softmax(sims / tau, mask)  # (..., K)
        weights = masked_softmax(first @ weight[:k, :k].to(sims.dtype) / tau, mask)  # (..., K)
        return (weights * (sims if mask is None else sims.masked_fill(~mask, 0.0))).sum(-1)


class PerturbedTopK(torch.autograd.Function):
    """Differentiable top-k (Berthet et al. 2020, as TS2-Net and UCoFiA use it): mean one-hot over perturbed top-k.

    Forward: (B, N) scores and (B, S, N) standard Gaussian noise -> (B, k, N) soft indicators (selected indices
    sorted by position). Backward: the perturbation estimator ``E[one_hot(x + σZ) Zᵀ] / σ``, either in full
    (``diagonal=False``: the (k, N) x N Jacobian) or only its diagonal ``E[one_hot_{k,n}(x + σZ) Z_n] / σ``, as the
    reference's ``differential_topk.py`` computes it.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, noise: torch.Tensor, sigma: float, diagonal: bool) -> torch.Tensor:
        perturbed = scores.unsqueeze(1) + sigma * noise.to(scores.dtype)  # (B, S, N)
        indices = torch.topk(perturbed, k, dim=-1).indices.sort(-1).values  # (B, S, k)
        one_hot = nn.functional.one_hot(indices, scores.shape[1]).to(scores.dtype)  # (B, S, k, N)
        ctx.save_for_backward(one_hot, noise.to(scores.dtype))
        ctx.sigma, ctx.diagonal = sigma, diagonal
        return one_hot.mean(1)  # (B, k, N)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        one_hot, noise = ctx.saved_tensors
        scale = noise.shape[1] * ctx.sigma
        if ctx.diagonal:
            expected = torch.einsum("bskn,bsn->bkn", one_hot, noise) / scale  # (B, k, N)
            grad = torch.einsum("bkn,bkn->bn", grad_output, expected)  # (B, N)
        else:
            expected = torch.einsum("bskn,bse->bkne", one_hot, noise) / scale  # (B, k, N, N)
            grad = torch.einsum("bkn,bkne->be", grad_output, expected)  # (B, N)
        return grad, None, None, None, None


def perturbed_topk(scores: torch.Tensor, k: int, num_samples: int, sigma: float, diagonal: bool = False,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N) -> (B, k, N) perturbed top-k indicators; ``noise`` (B, S, N) defaults to fresh ``torch.randn``."""
    if noise is None:
        noise = torch.randn(scores.shape[0], num_samples, scores.shape[1], device=scores.device, dtype=scores.dtype)
    return PerturbedTopK.apply(scores, k, noise, sigma, diagonal)


def hard_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) -> (B, k, N) one-hot indicators of the top-k scores, sorted by position (deterministic)."""
    indices = torch.topk(scores, k, dim=-1).indices.sort(-1).values  # (B, k)
    return nn.functional.one_hot(indices, scores.shape[1]).to(scores.dtype)


class PatchScorer(nn.Module):
    """PredictorLG of the training code: a patch's score in (-1, 1) from its and its frame CLS's projected features.

    ``inp``: LayerNorm(D), Linear(D, D/2, no bias), GELU on every token; ``out`` on [patch, CLS]: Linear(D, D/2),
    GELU, Linear(D/2, 1), Tanh (``bias``: the two ``out`` linears carry biases).
    """

    def __init__(self, dim: int, bias: bool = True):
        super().__init__()
        half = dim // 2
        self.inp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, half, bias=False), nn.GELU())
        self.out = nn.Sequential(nn.Linear(2 * half, half, bias=bias), nn.GELU(), nn.Linear(half, 1, bias=bias),
                                 nn.Tanh())

    def forward(self, cls: torch.Tensor, patches: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """cls (B, T, D), patches (B, T, N, D), frame_mask (B, T) (unused: per-frame scores) -> scores (B, T, N)."""
        local = self.inp(patches)  # (B, T, N, D/2)
        glob = self.inp(cls).unsqueeze(2).expand_as(local)  # (B, T, N, D/2)
        return self.out(torch.cat([local, glob], -1)).squeeze(-1)


class VideoGlobalScorer(nn.Module):
    """The older PredictorLG of the ``eval_t2v`` tree (the released checkpoint's): per-patch and video-level context.

    ``inp``: LayerNorm(2D), Linear(2D, D), GELU on [token, frame CLS]; the video context is the sum over frames of
    the projected [CLS, CLS]; ``out`` on [patch, video context]: Linear(2D, D), GELU, Linear(D, 1), Tanh. The sum runs
    over the frames ``frame_mask`` marks (the reference: every frame slot, padding included).
    """

    def __init__(self, dim: int, bias: bool = True):
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, dim, bias=bias), nn.GELU())
        self.out = nn.Sequential(nn.Linear(2 * dim, dim, bias=bias), nn.GELU(), nn.Linear(dim, 1, bias=bias),
                                 nn.Tanh())

    def forward(self, cls: torch.Tensor, patches: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """cls (B, T, D), patches (B, T, N, D), frame_mask (B, T) bool -> scores (B, T, N)."""
        local = self.inp(torch.cat([patches, cls.unsqueeze(2).expand_as(patches)], -1))  # (B, T, N, D)
        glob = self.inp(torch.cat([cls, cls], -1))  # (B, T, D)
        video = (glob * frame_mask.unsqueeze(-1).to(glob.dtype)).sum(1)  # (B, D)
        video = video[:, None, None, :].expand_as(local)  # (B, T, N, D)
        return self.out(torch.cat([local, video], -1)).squeeze(-1)


SCORER_CLASSES = {"lg": PatchScorer, "video_global": VideoGlobalScorer}


@HEADS.register("ucofia")
class UCoFiAHead(Head):
    """Unified coarse-to-fine alignment head.

    Args:
        embed_dim: joint embedding size D (filled in from the model).
        max_words: words the ISA word matrices hold (filled in from ``model.context_length``; reference 32).
        max_frames: frames the ISA frame matrices hold (reference 12); videos may have fewer, not more.
        top_k: patches selected per frame (reference 3); pixels per frame = 1 + top_k (CLS + selected).
        num_samples / sigma: perturbed top-k samples and noise (reference 500 / 0.05).
        eval_topk: "hard" (default: deterministic top-k of the scores in eval mode, so cached video features are
            reproducible) or "perturbed" (the reference: perturbed top-k also at test).
        topk_grad: perturbed top-k backward: "full" (default, the exact Berthet estimator) or "diagonal" (the
            reference keeps only the diagonal of the Jacobian estimate).
        tau: ISA temperature (reference 0.01).
        scorer: patch scorer: "lg" (the training code's PredictorLG) or "video_global" (the older scorer of the
            evaluation code, the one of the released checkpoint).
        scorer_bias: biases in the scorer's output layers (default True; the reference has none).
        scorer_init_std: None (PyTorch's default init) or the std of a N(0, std) init of the scorer's linears (0.02
            in the reference, biases zero).
        mask_padding_frames: exclude padded frames from the sentence-frame and patch-word ISA and from the
            video-global scorer's context (default True); False = the reference, where padded frames (the zero image
            run through CLIP) take part. The video-sentence mean always uses real frames only, as the reference.
        mask_padding_words: exclude padding tokens from the word ISA (default True); False = the reference.
        pw_scale: None (default) = the reference's units: ``pw`` is left unscaled in logits (see the module doc); a
            float multiplies ``pw`` in cosine units instead.
        eval_drop_wl2: True = the reference evaluation code, which drops W_l2 (pixel projection) at test (features
            encoded in eval mode skip it); default False (same function in train and eval).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "reference": dict(_REFERENCE),
        "released_checkpoint": dict(_REFERENCE, scorer="video_global"),
    }
    LEVELS: ClassVar[tuple] = LEVELS  # names of ``similarity_levels``
    needs_patch_tokens = True
    video_feature_keys = ("pooled", "video", "frames", "mask", "pixels", "pixel_mask")

    def __init__(self, embed_dim: int = 512, max_words: int = 32, max_frames: int = 12, top_k: int = 3,
                 num_samples: int = 500, sigma: float = 0.05, eval_topk: str = "hard", topk_grad: str = "full",
                 tau: float = 0.01, scorer: str = "lg", scorer_bias: bool = True,
                 scorer_init_std: float | None = None, mask_padding_frames: bool = True,
                 mask_padding_words: bool = True, pw_scale: float | None = None, eval_drop_wl2: bool = False):
        super().__init__()
        for name, value, valid in (("eval_topk", eval_topk, EVAL_TOPK_MODES), ("topk_grad", topk_grad, TOPK_GRADS),
                                   ("scorer", scorer, SCORERS)):
            if value not in valid:
                raise ValueError(f"ucofia: {name}={value!r}, choose one of {valid}")
        self.max_words, self.max_frames, self.top_k = int(max_words), int(max_frames), int(top_k)
        self.num_samples, self.sigma, self.eval_topk, self.tau = int(num_samples), float(sigma), eval_topk, float(tau)
        self.topk_grad, self.mask_padding_frames, self.mask_padding_words = topk_grad, mask_padding_frames, \
            mask_padding_words
        self.pw_scale = None if pw_scale is None else float(pw_scale)
        self.eval_drop_wl2 = eval_drop_wl2
        self._logit_scale: Callable[[], torch.Tensor] | None = None
        num_pixels = self.max_frames * (1 + self.top_k)
        eye = torch.eye
        self.w_sentence, self.w_video = nn.Parameter(eye(embed_dim)), nn.Parameter(eye(embed_dim))  # W_g1, W_g2
        self.w_word_proj, self.w_pixel_proj = nn.Parameter(eye(embed_dim)), nn.Parameter(eye(embed_dim))  # W_l1, W_l2
        self.w_frame = nn.Parameter(eye(self.max_frames))  # W_f
        self.w_word, self.w_word2 = nn.Parameter(eye(self.max_words)), nn.Parameter(eye(self.max_words))  # W_w, W_w2
        self.w_pixel, self.w_pixel2 = nn.Parameter(eye(num_pixels)), nn.Parameter(eye(num_pixels))  # W_p, W_p2
        self.scorer = SCORER_CLASSES[scorer](embed_dim, bias=scorer_bias)
        if scorer_init_std is not None:
            for module in self.scorer.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0.0, float(scorer_init_std))
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def bind_logit_scale(self, scale: Callable[[], torch.Tensor]) -> None:
        """Use ``scale()`` (the model's clamped ``exp(logit_scale)``) for the reference units of ``pw_scale=None``."""
        self._logit_scale = scale

    def pw_factor(self) -> torch.Tensor | float:
        """The multiplier of the patch-word level in cosine units (see ``pw_scale``)."""
        if self.pw_scale is not None:
            return self.pw_scale
        return 1.0 / (self._logit_scale() if self._logit_scale is not None else REFERENCE_LOGIT_SCALE)

    # ------------------------------------------------------------------------------------------------ encoding
    def select_pixels(self, frames: torch.Tensor, patches: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Per frame: [CLS, top_k selected patches] -> (B, T * (1 + top_k), D), frame-major."""
        b, t, n, d = patches.shape
        scores = self.scorer(frames, patches, frame_mask).reshape(b * t, n)  # (B*T, N)
        if self.training or self.eval_topk == "perturbed":
            noise = torch.randn(b * t, self.num_samples, n, device=scores.device, dtype=_wide(scores).dtype)
            indicators = perturbed_topk(_wide(scores), self.top_k, self.num_samples, self.sigma,
                                        self.topk_grad == "diagonal", noise)  # (B*T, k, N)
        else:
            indicators = hard_topk(_wide(scores), self.top_k)  # (B*T, k, N)
        flat = patches.reshape(b * t, n, d)  # (B*T, N, D)
        selected = torch.einsum("bkn,bnd->bkd", indicators.to(flat.dtype), flat)  # (B*T, k, D)
        pixels = torch.cat([frames.reshape(b * t, 1, d), selected], 1)  # (B*T, 1+k, D)
        return pixels.reshape(b, t * (1 + self.top_k), d)  # (B, T*(1+k), D)

    def encode_video(self, video: VideoEncoderOutput) -> Features:
        if video.patches is None:
            raise ValueError("ucofia head needs patch tokens: set model.patch_tokens=true")
        t = video.frames.shape[1]
        if t > self.max_frames:
            raise ValueError(f"ucofia: {t} frames per video but the ISA matrices hold max_frames={self.max_frames}; "
                             "set model.head.kwargs.max_frames to at least the number of frames (and retrain)")
        real = video.mask.bool()  # (B, T)
        frame_mask = real if self.mask_padding_frames else torch.ones_like(real)  # (B, T) frames the ISA sees
        pooled = l2_normalize(masked_mean(l2_normalize(video.temporal), real))  # (B, D)
        pixels = self.select_pixels(video.frames, video.patches, frame_mask)  # (B, P, D), P = T*(1+k)
        if self.training or not self.eval_drop_wl2:
            pixels = pixels @ self.w_pixel_proj
        return {"pooled": pooled, "video": pooled @ self.w_video, "frames": l2_normalize(video.frames),
                "mask": frame_mask, "pixels": pixels, "pixel_mask": frame_mask.repeat_interleave(1 + self.top_k, 1)}

    def encode_text(self, text: TextEncoderOutput) -> Features:
        if text.tokens.shape[1] > self.max_words:
            raise ValueError(f"ucofia: {text.tokens.shape[1]} tokens per caption but the ISA matrices hold "
                             f"max_words={self.max_words}; set model.head.kwargs.max_words >= model.context_length")
        pooled = l2_normalize(text.pooled)
        word_mask = text.mask.bool() if self.mask_padding_words else torch.ones_like(text.mask, dtype=torch.bool)
        return {"pooled": pooled, "sentence": pooled @ self.w_sentence,
                "words": l2_normalize(text.tokens) @ self.w_word_proj, "word_mask": word_mask}

    # ---------------------------------------------------------------------------------------------- similarity
    def similarity_levels(self, text_feats: Features, video_feats: Features) -> dict[str, torch.Tensor]:
        """``{"vs", "sf", "pw"}``: the three (N_t, N_v) levels in cosine units (``pw`` times :meth:`pw_factor`)."""
        vs = _wide(text_feats["sentence"]) @ _wide(video_feats["video"]).t()  # (Nt, Nv)
        frame_sims = torch.einsum("td,vfd->tvf", _wide(text_feats["pooled"]), _wide(video_feats["frames"]))
        frame_mask = _mask_or_none(video_feats["mask"])  # (Nv, T) or None
        sf = isa(frame_sims, self.w_frame, None if frame_mask is None else frame_mask[None], self.tau)  # (Nt, Nv)
        return {"vs": vs, "sf": sf, "pw": self.pw_factor() * self.patch_word(text_feats, video_feats)}

    def patch_word(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        """(N_t, N_v) patch-word level (two-way ISA over the word x pixel similarity matrix of every pair).

        Word / pixel slots that are padding in every row of the block are dropped first (exact: masked slots take no
        weight, and the ISA of K slots uses the leading K x K block of each matrix). Without autograd the block runs
        in cache-sized tiles of about ``PW_TILE_TEXT_ROWS`` word rows x ``PW_TILE_PIXEL_COLS`` pixel columns (a
        256 x 256 block's intermediates run out of cache and are 2-3x slower per pair), so memory is bounded by a
        tile rather than the block. Subnormal exponentials are flushed to zero on the CPU (:func:`flush_denormals`).
        """
        words, word_mask = _trim_padding(_wide(text_feats["words"]), _mask_or_none(text_feats["word_mask"]))
        pixels, pixel_mask = _trim_padding(_wide(video_feats["pixels"]), _mask_or_none(video_feats["pixel_mask"]))
        with flush_denormals(words.device):
            if torch.is_grad_enabled():
                return self._patch_word_block(words, word_mask, pixels, pixel_mask)
            return self._patch_word_tiles(words, word_mask, pixels, pixel_mask)

    def _patch_word_tiles(self, words: torch.Tensor, word_mask: torch.Tensor | None, pixels: torch.Tensor,
                          pixel_mask: torch.Tensor | None) -> torch.Tensor:
        """:meth:`_patch_word_block` tile by tile into one (N_t, N_v) matrix (inference)."""
        text_step = max(1, PW_TILE_TEXT_ROWS // words.shape[1])
        video_step = max(1, PW_TILE_PIXEL_COLS // pixels.shape[1])
        out = words.new_empty(len(words), len(pixels))  # (Nt, Nv)
        for i in range(0, len(words), text_step):
            wm = None if word_mask is None else word_mask[i:i + text_step]
            for j in range(0, len(pixels), video_step):
                pm = None if pixel_mask is None else pixel_mask[j:j + video_step]
                out[i:i + text_step, j:j + video_step] = self._patch_word_block(
                    words[i:i + text_step], wm, pixels[j:j + video_step], pm)
        return out

    def _patch_word_block(self, words: torch.Tensor, word_mask: torch.Tensor | None, pixels: torch.Tensor,
                          pixel_mask: torch.Tensor | None) -> torch.Tensor:
        """:meth:`patch_word` of words (Nt, L, D) x pixels (Nv, P, D) with their masks (None = all real).

        One layout for both directions, the GEMM's own ``(Nt, L, Nv, P)``: the pixel-wise ISA runs over the last dim,
        the word-wise ISA over dim 1 (its matrix applied from the left), so nothing is transposed or copied; ``1/τ``
        is folded into the words and the ISA matrices (``s/τ`` is what every softmax reads).
        """
        tau = self.tau
        nt, nl, d = words.shape
        nv, npx, _ = pixels.shape
        with torch.autocast(device_type=words.device.type, enabled=False):
            scaled = ((words / tau).reshape(nt * nl, d) @ pixels.reshape(nv * npx, d).t()).view(nt, nl, nv, npx)
            wm = None if word_mask is None else word_mask[:, :, None, None]  # (Nt, L, 1, 1)
            pm = None if pixel_mask is None else pixel_mask[None, None]  # (1, 1, Nv, P)
            w_pixel = self.w_pixel[:npx, :npx].to(scaled.dtype) / tau
            w_word_t = self.w_word[:nl, :nl].to(scaled.dtype).t() / tau
            first = masked_softmax(scaled, pm, -1)  # (Nt, L, Nv, P) over pixels
            second = masked_softmax(first @ w_pixel, pm, -1)  # (Nt, L, Nv, P)
            over_pixels = tau * (second * scaled).sum(-1)  # (Nt, L, Nv)
            first = masked_softmax(scaled, wm, 1)  # (Nt, L, Nv, P) over words
            mixed = torch.matmul(w_word_t, first.view(nt, nl, nv * npx)).view(nt, nl, nv, npx)  # (Nt, L, Nv, P)
            second = masked_softmax(mixed, wm, 1)  # (Nt, L, Nv, P)
            over_words = tau * (second * scaled).sum(1)  # (Nt, Nv, P)
        pixel_level = isa(over_words, self.w_pixel2, None if pm is None else pm[0], tau)  # (Nt, Nv)
        word_level = isa(over_pixels.transpose(1, 2), self.w_word2,
                         None if wm is None else wm[:, None, :, 0, 0], tau)  # (Nt, Nv)
        return 0.5 * (pixel_level + word_level)

    def pair_bytes(self, text_feats: Features, video_feats: Features) -> int:
        """Estimated inference bytes per (text, video) pair of a block (the memory budget of ``chunked_similarity``):
        the sentence-frame intermediates and the levels. The patch-word intermediates do not grow with the block:
        tiles bound them to a few tile-sized tensors (``PW_TILE_TEXT_ROWS * PW_TILE_PIXEL_COLS * 4`` bytes each)."""
        return 4 * (4 * video_feats["frames"].shape[1] + 8)

    def similarity(self, text_feats: Features, video_feats: Features) -> torch.Tensor:
        levels = self.similarity_levels(text_feats, video_feats)
        return sum(levels[name] for name in LEVELS) / len(LEVELS)

    @classmethod
    def check_config(cls, model_cfg: Any) -> None:
        from ..errors import ConfigError
        from .base import resolve_head_kwargs

        super().check_config(model_cfg)
        kwargs = resolve_head_kwargs(cls, model_cfg.head)
        max_words = kwargs.get("max_words", model_cfg.context_length)
        if max_words < model_cfg.context_length:
            raise ConfigError(f"model.head.kwargs.max_words={max_words} is smaller than model.context_length="
                              f"{model_cfg.context_length}: the word ISA matrices must hold every token")


def _trim_padding(x: torch.Tensor, mask: torch.Tensor | None) -> tuple:
    """Drop the trailing slots of ``x`` (B, K, D) that ``mask`` (B, K) marks as padding in every row (at least one
    slot stays); returns ``(x, mask)``, the mask None when every kept slot is real."""
    if mask is None:
        return x, None
    real = mask.any(0).nonzero()
    keep = int(real.max()) + 1 if len(real) else 1
    x, mask = x[:, :keep], mask[:, :keep]
    return x, _mask_or_none(mask)


def _mask_or_none(mask: torch.Tensor) -> torch.Tensor | None:
    """The bool mask, or None when every entry is True (the ISA then skips masking: same result, less work)."""
    mask = mask.bool()
    return None if bool(mask.all()) else mask
