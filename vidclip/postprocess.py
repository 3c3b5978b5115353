"""Opt-in, transductive post-processing of a test similarity matrix (never applied unless asked for).

Every post-processor is a pure function registered in ``POSTPROCESSORS`` and called through
``apply_postprocess(name, sim, bank_sim=None, **kw) -> (sim', label)``; evaluation prints the metrics both without
and with it, under ``label``. ``sim`` is (N_texts, N_videos); ``sim'`` is either one matrix of that shape or
``{"t2v": S1, "v2t": S2}`` when the two directions are re-weighted differently (``retrieval_metrics`` accepts both).
NaN entries (failed videos) stay NaN and never leak into the other entries.

Input units matter: each formula is defined on the units its codebase fed it (landscape.md §2.6, methods.md §1.5,
§4.1.6). ``units`` says what ``sim`` holds: ``"cosine"`` (vidclip heads, the default) or ``"logits"``
(``logit_scale * cosine``, CLIP4Clip-style); ``logit_scale`` converts between the two.

=============  ==============================================================  =================
name           formula (S in the units of the right column)                    expects
=============  ==============================================================  =================
dsl_camoe      S * softmax(S / T, dim=0) * N_texts, T = 1                      logits
dsl_ts2net     S * softmax(S, dim=0)                                           logits
dsl_clipvip    S * softmax(100 * S, dim=0)  (also T-MASS)                      cosine
dsl_emcl       t2v: S * softmax(S / 0.01, dim=0) * N_texts;                    cosine
               v2t: S * softmax(S / 0.01, dim=1) * N_texts
qbnorm         GLSCL QB-Norm: k=1, beta=70, theta=3 (t2v) / 5 (v2t)            cosine (beta * S)
sknorm         UCoFiA SK-norm: S + log_softmax(log b) per gallery column       logits
               (with ``levels``: per level with its own bank, then the mean)
=============  ==============================================================  =================

Query banks (``qbnorm``, ``sknorm``) are similarities of TRAINING queries against the test gallery, passed as a
separate argument: ``bank_sim`` (N_bank_texts, N_videos) for t2v and, optionally, ``bank_sim_v2t`` (N_bank_videos,
N_texts) for v2t (training videos against the test texts). Without ``bank_sim_v2t`` the v2t matrix is left untouched
(the label says so). A bank equal to the test matrix (same shape and values) is refused: that is test-query leakage.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Union

import numpy as np
import torch

from .registry import POSTPROCESSORS

_logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]
Processed = Union[ArrayLike, dict[str, ArrayLike]]
UNITS = ("cosine", "logits")


# ------------------------------------------------------------------------------------------------ helpers
def _to_float64(x: ArrayLike) -> torch.Tensor:
    return x.detach().cpu().double() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, np.float64))


def _like(x: torch.Tensor, reference: ArrayLike) -> ArrayLike:
    """Return ``x`` as the container type of ``reference`` (numpy in -> numpy out), float64."""
    return x.numpy() if isinstance(reference, np.ndarray) else x


def convert_units(sim: torch.Tensor, units: str, target: str, logit_scale: float) -> torch.Tensor:
    """Convert similarities between ``cosine`` and ``logits`` (= logit_scale * cosine)."""
    for value in (units, target):
        if value not in UNITS:
            raise ValueError(f"similarity units '{value}' unknown. Valid: {', '.join(UNITS)}")
    if units == target:
        return sim
    return sim * logit_scale if target == "logits" else sim / logit_scale


def nan_safe_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax along ``dim`` where NaN entries take no part (treated as -inf) and stay NaN in the output."""
    nan = torch.isnan(x)
    out = torch.softmax(x.masked_fill(nan, float("-inf")), dim=dim)
    return out.masked_fill(nan, float("nan"))


def check_bank(bank_sim: ArrayLike | None, sim: torch.Tensor, name: str, what: str) -> torch.Tensor:
    """The bank as float64; refuses a missing bank or one identical to the test matrix (test-query leakage)."""
    if bank_sim is None:
        raise ValueError(f"post-processing '{name}' needs a query bank: {what} (similarities of TRAINING captions "
                         "against the test gallery; set eval.query_bank_list or data.train_list)")
    bank = _to_float64(bank_sim)
    if bank.ndim != 2 or bank.shape[1] != sim.shape[1]:
        raise ValueError(f"post-processing '{name}': bank of shape {tuple(bank.shape)} must be (N_bank, "
                         f"{sim.shape[1]}) to match the test gallery of the {tuple(sim.shape)} matrix")
    if bank.shape == sim.shape and torch.equal(torch.nan_to_num(bank, nan=1e300), torch.nan_to_num(sim, nan=1e300)):
        raise ValueError(f"post-processing '{name}': the query bank is identical to the test similarity matrix. "
                         "Query banks must be built from training captions/videos, never from the test queries.")
    return bank


def _finite_columns(*mats: torch.Tensor) -> torch.Tensor:
    """(N_g,) bool: gallery columns without NaN in any of ``mats`` (failed videos are NaN columns)."""
    ok = torch.ones(mats[0].shape[1], dtype=torch.bool)
    for m in mats:
        ok &= ~torch.isnan(m).any(dim=0)
    return ok


# ------------------------------------------------------------------------------------------------ DSL variants
def dsl(sim: torch.Tensor, scale: float = 1.0, dim: int = 0, multiplier: float = 1.0) -> torch.Tensor:
    """Dual softmax: ``sim * softmax(scale * sim, dim) * multiplier`` (NaN-safe)."""
    return sim * nan_safe_softmax(sim * scale, dim) * multiplier


def _register_dsl(name: str, expects: str, describe: str,
                  body: Callable[[torch.Tensor], Processed]) -> None:
    def postprocessor(sim: ArrayLike, bank_sim: ArrayLike | None = None, *, units: str = "cosine",
                      logit_scale: float = 100.0, **unused: Any) -> tuple[Processed, str]:
        s = convert_units(_to_float64(sim), units, expects, logit_scale)
        out = body(s)
        label = f"{name} ({describe} on {expects}" + (f", logit_scale={logit_scale:g})" if units != expects else ")")
        if isinstance(out, dict):
            return {k: _like(v, sim) for k, v in out.items()}, label
        return _like(out, sim), label

    postprocessor.__name__ = name
    postprocessor.__doc__ = f"{describe}; ``sim`` converted from ``units`` to {expects} first."
    POSTPROCESSORS.register(name)(postprocessor)


_register_dsl("dsl_camoe", "logits", "CAMoE DSL: S*softmax(S/1, dim=0)*N",
              lambda s: dsl(s, 1.0, 0, s.shape[0]))
_register_dsl("dsl_ts2net", "logits", "TS2-Net DSL: S*softmax(S, dim=0)",
              lambda s: dsl(s, 1.0, 0))
_register_dsl("dsl_clipvip", "cosine", "CLIP-ViP/T-MASS DSL: S*softmax(100*S, dim=0)",
              lambda s: dsl(s, 100.0, 0))
_register_dsl("dsl_emcl", "cosine", "EMCL DSL: t2v S*softmax(S/0.01, dim=0)*N, v2t softmax over dim=1",
              lambda s: {"t2v": dsl(s, 100.0, 0, s.shape[0]), "v2t": dsl(s, 100.0, 1, s.shape[0])})


@POSTPROCESSORS.register("none")
def no_postprocess(sim: ArrayLike, bank_sim: ArrayLike | None = None, **unused: Any) -> tuple[ArrayLike, str]:
    """The identity (the default)."""
    return sim, "none"


# ------------------------------------------------------------------------------------------------ QB-Norm
def hub_items(bank_sim: torch.Tensor, k: int = 1, theta: float = 3) -> torch.Tensor:
    """(N_g,) bool: gallery items found in the bank queries' top-k at least ``theta`` times.

    Top-k by a stable descending sort (the lowest index wins a tie); NaN columns never enter a top-k.
    """
    clean = bank_sim.masked_fill(torch.isnan(bank_sim), float("-inf"))  # (N_bank, N_g)
    if k == 1:  # argmax returns the first maximum, like the stable sort below
        top = clean.argmax(dim=1, keepdim=True)  # (N_bank, 1)
    else:
        top = torch.argsort(clean, dim=1, descending=True, stable=True)[:, :k]  # (N_bank, k)
    counts = torch.bincount(top.flatten(), minlength=bank_sim.shape[1])  # (N_g,)
    return counts >= theta


def qb_norm(sim: torch.Tensor, bank_sim: torch.Tensor, k: int = 1, beta: float = 70.0,
            theta: float = 3) -> torch.Tensor:
    """GLSCL QB-Norm (methods.md §1.5) on (N_q, N_g) similarities with a (N_bank, N_g) bank, same units.

    Every query whose top-1 item (first index among ties) is a hub gets its whole row replaced by
    ``exp(beta*s_qg) / sum_b exp(beta*s_bg)`` (inverted softmax over the bank); other rows are untouched.
    Computed with a per-column shift by the bank maximum, which is exact in real arithmetic and does not overflow.
    """
    hubs = hub_items(bank_sim, k, theta)  # (N_g,)
    top1 = sim.masked_fill(torch.isnan(sim), float("-inf")).argmax(dim=1)  # (N_q,) first maximum
    rows = hubs[top1]  # (N_q,) queries to normalise
    shift = torch.nan_to_num(bank_sim * beta, nan=float("-inf")).amax(dim=0)  # (N_g,)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    normaliser = torch.nansum(torch.exp(bank_sim * beta - shift), dim=0)  # (N_g,)
    out = sim.clone()
    out[rows] = torch.exp(sim[rows] * beta - shift) / normaliser
    return out


@POSTPROCESSORS.register("qbnorm", needs_query_bank=True)
def qbnorm_postprocess(sim: ArrayLike, bank_sim: ArrayLike | None = None, *,
                       bank_sim_v2t: ArrayLike | None = None, units: str = "cosine", logit_scale: float = 100.0,
                       k: int = 1, beta: float = 70.0, theta_t2v: float = 3, theta_v2t: float = 5,
                       **unused: Any) -> tuple[dict[str, ArrayLike], str]:
    """QB-Norm per direction; ``beta`` multiplies COSINE similarities (all inputs converted from ``units``).

    ``bank_sim``: (N_bank_texts, N_videos) training texts vs test videos (t2v); ``bank_sim_v2t``: (N_bank_videos,
    N_texts) training videos vs test texts (v2t, optional: without it the v2t matrix is the raw one).
    """
    raw = _to_float64(sim)  # (N_t, N_v) in ``units``; banks are checked in the same units
    s = convert_units(raw, units, "cosine", logit_scale)
    bank = convert_units(check_bank(bank_sim, raw, "qbnorm", "bank_sim"), units, "cosine", logit_scale)
    t2v = qb_norm(s, bank, k, beta, theta_t2v)
    label = f"qbnorm (t2v: k={k}, beta={beta:g} x cosine, theta={theta_t2v:g}"
    if bank_sim_v2t is None:
        v2t, label = s, label + "; v2t untouched: no video bank)"
    else:
        bank_v = convert_units(check_bank(bank_sim_v2t, raw.T, "qbnorm", "bank_sim_v2t"), units, "cosine", logit_scale)
        v2t = qb_norm(s.T, bank_v, k, beta, theta_v2t).T  # (N_t, N_v) back in text-row orientation
        label += f"; v2t: theta={theta_v2t:g})"
    return {"t2v": _like(t2v, sim), "v2t": _like(v2t, sim)}, label


# ------------------------------------------------------------------------------------------------ SK-norm
def sk_bias(bank_sim: torch.Tensor, n_iters: int = 4) -> torch.Tensor:
    """UCoFiA Sinkhorn-Knopp gallery bias from a (N_bank, N_g) bank of logits: ``log_softmax(log b)``, (N_g,).

    K = exp(Q - max Q); b = 1/colsum(K); ``n_iters`` times: a = 1/(K b), b = 1/(a^T K). Columns holding NaN (failed
    videos) are left out of the scaling and get a NaN bias. Written out rather than taken from POT because the
    published recipe is this exact 4-step scaling (its start and update order differ from ``ot.sinkhorn``).
    """
    ok = _finite_columns(bank_sim)
    q = bank_sim[:, ok]  # (N_bank, N_ok)
    kernel = torch.exp(q - q.max())  # (N_bank, N_ok)
    b = 1.0 / kernel.sum(dim=0)  # (N_ok,)
    for _ in range(n_iters):
        a = 1.0 / (kernel @ b)  # (N_bank,)
        b = 1.0 / (a @ kernel)  # (N_ok,)
    bias = torch.full((bank_sim.shape[1],), float("nan"), dtype=bank_sim.dtype)
    bias[ok] = torch.log_softmax(torch.log(b), dim=0)
    return bias


def sk_norm(sim: torch.Tensor, bank_sim: torch.Tensor, n_iters: int = 4) -> torch.Tensor:
    """``sim + sk_bias(bank_sim)[None, :]`` (both in logits): one level of UCoFiA's SK-norm."""
    return sim + sk_bias(bank_sim, n_iters)[None, :]


def sk_norm_levels(levels_test: Mapping[str, ArrayLike], levels_bank: Mapping[str, ArrayLike],
                   n_iters: int = 4) -> torch.Tensor:
    """UCoFiA's multi-level SK-norm: per level ``S_l + bias(bank_l)``, averaged over the levels (float64 tensor).

    Args:
        levels_test: level name -> (N_q, N_g) test logits (e.g. UCoFiA's video-sentence, frame, patch-word levels).
        levels_bank: the same level names -> (N_bank, N_g) training-query logits against the test gallery.
    """
    if set(levels_test) != set(levels_bank) or not levels_test:
        raise ValueError(f"sk_norm_levels: test levels {sorted(levels_test)} and bank levels {sorted(levels_bank)} "
                         "must name the same (non-empty) set of levels")
    normalised = []
    for name in sorted(levels_test):
        test = _to_float64(levels_test[name])
        bank = check_bank(levels_bank[name], test, f"sknorm[{name}]", f"levels_bank['{name}']")
        normalised.append(sk_norm(test, bank, n_iters))
    return torch.stack(normalised).mean(dim=0)  # (N_q, N_g)


@POSTPROCESSORS.register("sknorm", needs_query_bank=True)
def sknorm_postprocess(sim: ArrayLike, bank_sim: ArrayLike | None = None, *,
                       bank_sim_v2t: ArrayLike | None = None, units: str = "cosine", logit_scale: float = 100.0,
                       n_iters: int = 4, levels: Mapping[str, ArrayLike] | None = None,
                       bank_levels: Mapping[str, ArrayLike] | None = None,
                       bank_levels_v2t: Mapping[str, ArrayLike] | None = None,
                       **unused: Any) -> tuple[dict[str, ArrayLike], str]:
    """SK-norm on logits; t2v bias per video column, v2t bias per text row (with ``bank_sim_v2t``).

    With ``levels`` (a multi-level head such as UCoFiA: level name -> (N_t, N_v) in ``units``) it is UCoFiA's
    evaluation: every level gets the bias of its own bank level, then the levels are averaged (``sim`` only gives the
    output type). ``bank_levels``: level -> (N_bank_texts, N_v) training captions vs the test videos (t2v);
    ``bank_levels_v2t``: level -> (N_bank_videos, N_t) training videos vs the test texts (v2t).
    """
    if levels is not None:
        return _sknorm_per_level(sim, levels, bank_levels, bank_levels_v2t, units, logit_scale, n_iters)
    raw = _to_float64(sim)  # (N_t, N_v) in ``units``; banks are checked in the same units
    s = convert_units(raw, units, "logits", logit_scale)
    bank = convert_units(check_bank(bank_sim, raw, "sknorm", "bank_sim"), units, "logits", logit_scale)
    t2v = sk_norm(s, bank, n_iters)
    label = f"sknorm (Sinkhorn-Knopp {n_iters} iterations on logits"
    if bank_sim_v2t is None:
        v2t, label = s, label + "; v2t untouched: no video bank)"
    else:
        bank_v = convert_units(check_bank(bank_sim_v2t, raw.T, "sknorm", "bank_sim_v2t"), units, "logits", logit_scale)
        v2t, label = sk_norm(s.T, bank_v, n_iters).T, label + ", both directions)"
    return {"t2v": _like(t2v, sim), "v2t": _like(v2t, sim)}, label


def _sknorm_per_level(sim: ArrayLike, levels: Mapping[str, ArrayLike], bank_levels: Mapping[str, ArrayLike] | None,
                      bank_levels_v2t: Mapping[str, ArrayLike] | None, units: str, logit_scale: float,
                      n_iters: int) -> tuple[dict[str, ArrayLike], str]:
    """UCoFiA's per-level SK-norm in both directions (see :func:`sknorm_postprocess`)."""
    if bank_levels is None:
        raise ValueError("post-processing 'sknorm' per level needs bank_levels: similarities of TRAINING captions "
                         "against the test gallery, per level (set eval.query_bank_list or data.train_list)")

    def logits(mats: Mapping[str, ArrayLike]) -> dict[str, torch.Tensor]:
        return {k: convert_units(_to_float64(v), units, "logits", logit_scale) for k, v in mats.items()}

    test = logits(levels)  # level -> (N_t, N_v)
    t2v = sk_norm_levels(test, logits(bank_levels), n_iters)
    names = ", ".join(sorted(test))
    label = f"sknorm per level ({names}: Sinkhorn-Knopp {n_iters} iterations on each level's logits, then the mean"
    if bank_levels_v2t is None:
        v2t, label = torch.stack(list(test.values())).mean(0), label + "; v2t untouched: no video bank)"
    else:
        transposed = {k: v.T for k, v in test.items()}  # (N_v, N_t)
        v2t, label = sk_norm_levels(transposed, logits(bank_levels_v2t), n_iters).T, label + ", both directions)"
    return {"t2v": _like(t2v, sim), "v2t": _like(v2t, sim)}, label


# ------------------------------------------------------------------------------------------------ entry point
def apply_postprocess(name: str, sim: ArrayLike, bank_sim: ArrayLike | None = None,
                      **kwargs: Any) -> tuple[Processed, str]:
    """Apply the post-processor ``name`` to the (N_texts, N_videos) test matrix ``sim``.

    Args:
        name: none | dsl_camoe | dsl_ts2net | dsl_clipvip | dsl_emcl | qbnorm | sknorm.
        sim: test similarities, in ``units`` (keyword, default ``"cosine"``; ``logit_scale`` converts).
        bank_sim: training queries vs the test gallery, same units (qbnorm / sknorm only).
        **kwargs: ``units``, ``logit_scale``, ``bank_sim_v2t`` and the method's own parameters.

    Returns:
        ``(sim', label)``: one float64 matrix or ``{"t2v": ..., "v2t": ...}``, and the label to print.
    """
    return POSTPROCESSORS.get(name)(sim, bank_sim, **kwargs)
