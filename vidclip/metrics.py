"""Retrieval metrics over similarity matrices: CLIP4Clip's published protocol bit for bit, and a strict mode.

``clip4clip`` (landscape.md §3):
- 1:1 data (MSR-VTT 1k-A, DiDeMo): ``compute_metrics`` — sort each row descending; every position whose value
  exactly equals the ground-truth score is a hit (k ties => k entries), NaN ground truth contributes no entry;
  R@K over the number of entries, MdR = numpy median (average of the two middle values) + 1, MnR = mean + 1.
- multi-caption data (MSVD): t2v = every caption is a query, rank by double argsort (one rank per caption, no tie
  expansion), padding / NaN entries dropped, MdR = torch's LOWER median; v2t = ``compute_metrics`` on the matrix of
  each caption group's best score against every video (caption-group retrieval).
``strict``: exactly one rank per query, ties counted pessimistically, a NaN anywhere in the query's row (a failed
video or text) makes the query a miss (rank = N) and is counted in ``n_failed``, never dropped. For multi-caption
data v2t is the best (pessimistic) rank of any correct caption among all captions.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
KS = (1, 5, 10, 50)


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def _summary(ranks: np.ndarray, median: str = "numpy", **extra) -> Dict[str, float]:
    """R@K, MdR, MnR from 0-based ranks (``median``: numpy = average of middle values, lower = torch)."""
    n = len(ranks)
    out: Dict[str, float] = {}
    for k in KS:
        out[f"R@{k}"] = float(100.0 * np.count_nonzero(ranks < k) / n) if n else float("nan")
    if n == 0:
        out["MdR"] = out["MnR"] = float("nan")
    elif median == "lower":
        out["MdR"] = float(np.sort(ranks)[(n - 1) // 2] + 1)
    else:
        out["MdR"] = float(np.median(ranks) + 1)
    out["MnR"] = float(np.mean(ranks) + 1) if n else float("nan")
    out["n"] = int(n)
    out.update(extra)
    return out


# ------------------------------------------------------------------------------------------------ CLIP4Clip mode
def compute_metrics_clip4clip(x: np.ndarray) -> Dict[str, float]:
    """CLIP4Clip ``compute_metrics``: GT on the diagonal, tie expansion, NaN GT rows dropped."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, None]
    _, cols = np.where(sx - d == 0)
    queries = int(np.sum(~np.isnan(np.diag(x))))
    return _summary(cols, "numpy", n_queries=queries, n_dropped=int(x.shape[0] - queries))


def _group_tensor(sim: np.ndarray, text_to_video: np.ndarray) -> np.ndarray:
    """(V, C_max, V) tensor: block k holds the rows of video k's captions, padded with -inf."""
    n_videos = sim.shape[1]
    counts = np.bincount(text_to_video, minlength=n_videos)
    c_max = int(counts.max())
    s3 = np.full((n_videos, c_max, n_videos), -np.inf)
    slot = np.zeros(len(text_to_video), dtype=np.int64)
    seen = np.zeros(n_videos, dtype=np.int64)
    for i, v in enumerate(text_to_video):  # captions keep their order of appearance inside a group
        slot[i] = seen[v]
        seen[v] += 1
    s3[text_to_video, slot] = sim
    return s3


def _multi_caption_clip4clip(sim: np.ndarray, text_to_video: np.ndarray) -> Dict[str, Dict[str, float]]:
    s3 = _group_tensor(sim, text_to_video)  # (V, C, V)
    p = torch.from_numpy(s3).permute(1, 0, 2)  # (C, V, V): one V x V matrix per caption slot
    first = torch.argsort(p, dim=-1, descending=True)
    second = torch.argsort(first, dim=-1)
    ranks = torch.diagonal(second, dim1=1, dim2=2).flatten()  # slot-major (c * V + i)
    valid = torch.diagonal(torch.from_numpy(s3), dim1=0, dim2=2).T.flatten()  # S3[i, c, i], same order
    keep = torch.isfinite(valid)
    t2v = _summary(ranks[keep].numpy(), "lower", n_dropped=int(np.isnan(sim[np.arange(len(sim)), text_to_video])
                                                               .sum()))
    s3_nan = np.where(np.isnan(s3), -np.inf, s3)
    group_best = s3_nan.max(axis=1).T  # (V_video, V_group)
    v2t = compute_metrics_clip4clip(group_best)
    return {"t2v": t2v, "v2t": v2t}


# ------------------------------------------------------------------------------------------------ strict mode
def _strict_ranks(sim: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """One pessimistic 0-based rank per row; rows with any NaN (or non-finite GT) get rank N (a miss)."""
    n_rows, n_cols = sim.shape
    g = sim[np.arange(n_rows), gt][:, None]
    ranks = (sim > g).sum(1) + (sim == g).sum(1) - 1
    bad = np.isnan(sim).any(1) | ~np.isfinite(g[:, 0])
    ranks[bad] = n_cols
    return ranks


def _multi_caption_strict_v2t(sim: np.ndarray, text_to_video: np.ndarray) -> np.ndarray:
    """Per video: best pessimistic rank among all captions of any of its correct captions."""
    cols = sim.T  # (V, N_texts)
    n_videos, n_texts = cols.shape
    ranks = np.full(n_videos, n_texts, dtype=np.int64)
    bad_video = np.isnan(cols).any(1)
    for v in range(n_videos):
        mine = np.flatnonzero(text_to_video == v)
        if bad_video[v] or not len(mine):
            continue
        row = cols[v]
        better = (row[None, :] > row[mine][:, None]).sum(1) + (row[None, :] == row[mine][:, None]).sum(1) - 1
        # pessimistic among ties, but other correct captions above do not count against the query
        ranks[v] = int(better.min())
    return ranks


def _strict(sim: np.ndarray, text_to_video: Optional[np.ndarray]) -> Dict[str, Dict[str, float]]:
    if text_to_video is None:
        t2v = _strict_ranks(sim, np.arange(sim.shape[0]))
        v2t = _strict_ranks(sim.T, np.arange(sim.shape[1]))
    else:
        t2v = _strict_ranks(sim, text_to_video)
        v2t = _multi_caption_strict_v2t(sim, text_to_video)
    return {"t2v": _summary(t2v, "numpy", n_failed=int((t2v >= sim.shape[1]).sum())),
            "v2t": _summary(v2t, "numpy", n_failed=int((v2t >= sim.shape[0]).sum()))}


# ------------------------------------------------------------------------------------------------ public API
def retrieval_metrics(sim: ArrayLike, text_to_video: Optional[ArrayLike] = None, mode: str = "clip4clip",
                      failed_videos: Optional[Iterable[int]] = None) -> Dict[str, Dict[str, float]]:
    """Text-to-video and video-to-text retrieval metrics.

    Args:
        sim: (N_texts, N_videos) similarities, any float dtype (numpy or torch).
        text_to_video: video index of each text; None means one text per video with the ground truth on the diagonal.
        mode: ``clip4clip`` (the published protocol, bit for bit) or ``strict`` (one pessimistic rank per query).
        failed_videos: indices of videos that could not be decoded; their columns are set to NaN (clip4clip drops
            the affected queries as the published code does, strict counts them as misses).

    Returns:
        ``{"t2v": {...}, "v2t": {...}}`` each with R@1, R@5, R@10, R@50, MdR, MnR, n and counts of dropped/failed queries.
    """
    s = _as_numpy(sim).copy()
    if s.ndim != 2:
        raise ValueError(f"retrieval_metrics expects a 2-D (texts, videos) matrix, got shape {s.shape}")
    failed = sorted(set(int(i) for i in (failed_videos or ())))
    if failed:
        s[:, failed] = np.nan
    t2v_idx = None if text_to_video is None else _as_numpy(text_to_video).astype(np.int64)
    if t2v_idx is not None and (len(t2v_idx) != s.shape[0] or t2v_idx.min() < 0 or t2v_idx.max() >= s.shape[1]):
        raise ValueError(f"text_to_video must give a video index in [0, {s.shape[1]}) for each of the {s.shape[0]}"
                         " texts")
    if t2v_idx is None and s.shape[0] != s.shape[1]:
        raise ValueError(f"a {s.shape} matrix needs text_to_video (ground truth is only implied for square matrices)")
    if mode == "strict":
        out = _strict(s, t2v_idx)
    elif mode == "clip4clip":
        if t2v_idx is None or np.array_equal(t2v_idx, np.arange(s.shape[1])):
            out = {"t2v": compute_metrics_clip4clip(s), "v2t": compute_metrics_clip4clip(s.T)}
        else:
            out = _multi_caption_clip4clip(s, t2v_idx)
    else:
        raise ValueError(f"unknown metrics mode '{mode}'. Valid: clip4clip, strict")
    for side in out.values():
        side["failed_videos"] = len(failed)
    return out


def format_metrics_table(results: Dict[str, Dict[str, float]], keys: Sequence[str] = ("R@1", "R@5", "R@10", "MdR",
                                                                                     "MnR")) -> str:
    """A one-decimal table like the papers' (rows t2v / v2t)."""
    lines = ["       " + "".join(f"{k:>8}" for k in keys) + f"{'n':>8}"]
    for side in ("t2v", "v2t"):
        m = results[side]
        lines.append(f"{side:<7}" + "".join(f"{m[k]:>8.1f}" for k in keys) + f"{m['n']:>8d}")
    return "\n".join(lines)
