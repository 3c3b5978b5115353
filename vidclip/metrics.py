"""Retrieval metrics over similarity matrices: CLIP4Clip's published protocol bit for bit, and a strict mode.

``mode="clip4clip"`` (landscape.md §3, methods.md §1.1-1.2):
- 1:1 data (MSR-VTT 1k-A, DiDeMo): CLIP4Clip ``compute_metrics`` for t2v on ``S`` and v2t on ``S.T``. Each row is
  sorted descending; every position whose value exactly equals the ground-truth score (``sorted - gt == 0``) is a hit,
  so k tied values give k entries with ranks r .. r+k-1; a NaN (or +-inf) ground truth gives no entry and the query is
  silently dropped. R@K = 100 * #(rank < K) / #entries, MdR = numpy median + 1 (average of the two middle values),
  MnR = mean + 1. ``n`` is the number of entries (can exceed the number of queries), ``n_dropped`` the dropped queries.
- multi-caption data (MSVD; ``text_to_video`` given): the published code regroups ``S`` into a (V, C_max, V) tensor
  padded with -inf. t2v (Deferf ``tensor_text_to_video_metrics``): every caption is a query with exactly ONE rank,
  taken from a descending ``torch.argsort`` of its row (float64, CPU, ``stable=False`` as published: ties are ordered
  by torch's sort, no tie expansion); padding / NaN / inf ground truths are dropped; MdR = ``torch.median`` (the LOWER
  middle value for an even count). Padding rows are whole rows, so sorting only the real rows gives the same ranks
  (one row's sort never depends on the other rows). One deliberate deviation: NaN entries (failed videos) are sorted
  last, as numpy does in ``compute_metrics``; torch would sort them first and cost every caption one rank per
  failed video. v2t (``tensor_video_to_text_sim``): NaN -> -inf, then the best
  caption of every group against every video, transposed to (video, group), through ``compute_metrics`` (with ties).
  Captions of a video need not be contiguous: they are grouped per video in their order of appearance.
- failed videos: their columns are NaN, so their own queries drop out (published behaviour).

``mode="strict"``: exactly one rank per query, ``rank = #{wrong items j in the gallery: s_j >= s_gt}`` (ties are
counted against the query), never dropped. A query fails (rank = gallery size, i.e. a miss; counted in ``n_failed``)
when its ground truth is NaN/inf, belongs to a failed item, or when its row holds a NaN elsewhere; it is a miss at
every K, even when the gallery has fewer than K items. Failed items (the ``failed_videos`` columns, and any column /
row that is entirely NaN) are removed from every other query's gallery.
Multi-caption: t2v = every caption is a query against all videos; v2t = LAVIS-style rank of the best-ranked correct
caption among ALL captions (wrong captions tied with it count ahead, other correct captions never count against it).
Medians are numpy's (average of the two middle values).

``sim`` may also be a mapping ``{"t2v": S1, "v2t": S2}`` of two (N_texts, N_videos) matrices, e.g. a post-processor
that re-weights each direction differently (EMCL DSL, QB-Norm); each direction is scored on its own matrix.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
KS = (1, 5, 10, 50)
MODES = ("clip4clip", "strict")


def _as_numpy(x: ArrayLike) -> np.ndarray:
    """float64 copy of a numpy array or torch tensor of any float dtype (float32 -> float64 is exact)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.numpy().astype(np.float64) if x.dtype == torch.float64 else x.double().numpy()
    return np.array(x, dtype=np.float64)


def _summary(ranks: np.ndarray, median: str = "numpy", return_ranks: bool = False,
             failed: np.ndarray | None = None, **extra: Any) -> dict[str, Any]:
    """R@K, MdR, MnR from 0-based ranks (``median``: numpy = average of the middle values, lower = torch).

    ``failed`` queries are misses at every K (even when the gallery is smaller than K); their rank still enters
    MdR / MnR.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    n = len(ranks)
    hit_ok = np.ones(n, dtype=bool) if failed is None else ~failed
    out: dict[str, Any] = {}
    for k in KS:
        out[f"R@{k}"] = float(100.0 * np.count_nonzero((ranks < k) & hit_ok) / n) if n else float("nan")
    if n == 0:
        out["MdR"] = out["MnR"] = float("nan")
    else:
        out["MdR"] = float(np.sort(ranks)[(n - 1) // 2] + 1) if median == "lower" else float(np.median(ranks) + 1)
        out["MnR"] = float(np.mean(ranks) + 1)
    out["n"] = int(n)
    out.update(extra)
    if return_ranks:
        out["ranks"] = ranks.tolist()
    return out


# ------------------------------------------------------------------------------------------------ CLIP4Clip mode
def compute_metrics_clip4clip(x: np.ndarray, return_ranks: bool = False) -> dict[str, Any]:
    """CLIP4Clip ``compute_metrics`` on a (queries, gallery) matrix with the ground truth on the diagonal."""
    sx = np.sort(-x, axis=1)  # (Q, G) descending similarities (NaN last)
    d = np.diag(-x)[:, None]  # (Q, 1)
    with np.errstate(invalid="ignore"):  # inf - inf = NaN: such rows are dropped, as published
        _, cols = np.where(sx - d == 0)
        has_entry = np.any(sx - d == 0, axis=1)
    queries = int(np.count_nonzero(has_entry))
    return _summary(cols, "numpy", return_ranks, n_queries=queries, n_dropped=int(x.shape[0] - queries))


def _caption_slots(text_to_video: np.ndarray, n_videos: int) -> np.ndarray:
    """Slot of every caption inside its video's group, in order of appearance."""
    order = np.argsort(text_to_video, kind="stable")  # captions grouped per video, original order kept
    counts = np.bincount(text_to_video, minlength=n_videos)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slots = np.empty(len(text_to_video), dtype=np.int64)
    slots[order] = np.arange(len(text_to_video)) - np.repeat(starts, counts)
    return slots


def group_tensor(sim: np.ndarray, text_to_video: np.ndarray) -> np.ndarray:
    """The published (V, C_max, V) tensor: block k holds video k's caption rows, padded with -inf rows."""
    n_videos = sim.shape[1]
    c_max = int(np.bincount(text_to_video, minlength=n_videos).max())
    s3 = np.full((n_videos, c_max, n_videos), -np.inf)  # (V, C_max, V)
    s3[text_to_video, _caption_slots(text_to_video, n_videos)] = sim
    return s3


def group_best_similarity(sim: np.ndarray, text_to_video: np.ndarray) -> np.ndarray:
    """``tensor_video_to_text_sim``: (V_video, V_group) best caption of each group against each video, NaN -> -inf."""
    n_videos = sim.shape[1]
    order = np.argsort(text_to_video, kind="stable")
    clean = np.where(np.isnan(sim[order]), -np.inf, sim[order])  # (N_t, V) captions grouped per video
    counts = np.bincount(text_to_video, minlength=n_videos)
    best = np.full((n_videos, n_videos), -np.inf)  # (V_group, V_video); groups without captions stay -inf
    present = counts > 0
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    best[present] = np.maximum.reduceat(clean, starts[present], axis=0)
    return best.T  # (V_video, V_group)


def _clip4clip_multi_t2v(sim: np.ndarray, text_to_video: np.ndarray, return_ranks: bool) -> dict[str, Any]:
    """Deferf ``tensor_text_to_video_metrics`` on the real caption rows (padding rows are dropped anyway)."""
    # (N_t, V) float64, as the published np.concatenate with -inf padding produces. NaN -> -inf: a failed video
    # sorts last, as NaN does in compute_metrics (the literal torch code would sort NaN FIRST and push every caption
    # down one rank per failed video); without NaN this is bit for bit the published procedure.
    s = torch.from_numpy(np.where(np.isnan(sim), -np.inf, sim))
    gt = torch.from_numpy(text_to_video)
    order = torch.argsort(s, dim=-1, descending=True)  # (N_t, V); second argsort == position of each video
    ranks = (order == gt[:, None]).to(torch.int8).argmax(dim=1)  # (N_t,) position of the GT video
    gt_score = sim[np.arange(len(sim)), text_to_video]
    valid = np.isfinite(gt_score)
    slots = _caption_slots(text_to_video, sim.shape[1])
    slot_major = np.lexsort((text_to_video, slots))  # published order c * V + i (matters only for "ranks")
    keep = slot_major[valid[slot_major]]
    return _summary(ranks.numpy()[keep], "lower", return_ranks, n_queries=int(valid.sum()),
                    n_dropped=int((~valid).sum()))


def _clip4clip(t2v_sim: np.ndarray, v2t_sim: np.ndarray, text_to_video: np.ndarray | None,
               return_ranks: bool) -> dict[str, dict[str, Any]]:
    if text_to_video is None:
        return {"t2v": compute_metrics_clip4clip(t2v_sim, return_ranks),
                "v2t": compute_metrics_clip4clip(v2t_sim.T, return_ranks)}
    if np.all(np.bincount(text_to_video, minlength=t2v_sim.shape[1]) == 1):  # 1:1 in another order
        order = np.argsort(text_to_video)  # row k = the caption of video k
        return {"t2v": compute_metrics_clip4clip(t2v_sim[order], return_ranks),
                "v2t": compute_metrics_clip4clip(v2t_sim[order].T, return_ranks)}
    return {"t2v": _clip4clip_multi_t2v(t2v_sim, text_to_video, return_ranks),
            "v2t": compute_metrics_clip4clip(group_best_similarity(v2t_sim, text_to_video), return_ranks)}


# ------------------------------------------------------------------------------------------------ strict mode
def _strict_t2v_ranks(sim: np.ndarray, gt: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """One pessimistic rank per text row; ``excluded`` (V,) columns are out of the gallery; failures get rank V."""
    n_rows, n_cols = sim.shape
    g = sim[np.arange(n_rows), gt]  # (N_t,)
    gallery = np.where(excluded[None, :], -np.inf, sim)  # (N_t, V) failed videos never outrank anything
    with np.errstate(invalid="ignore"):
        ranks = np.count_nonzero(gallery >= g[:, None], axis=1) - 1  # the GT itself is >= itself
    failed = ~np.isfinite(g) | excluded[gt] | np.isnan(gallery).any(axis=1)
    return np.where(failed, n_cols, ranks)


def _strict_v2t_ranks(sim: np.ndarray, gt: np.ndarray, excluded_videos: np.ndarray,
                      excluded_texts: np.ndarray) -> np.ndarray:
    """Per video: pessimistic rank of its best correct caption among all captions; failures get rank N_t."""
    n_texts, n_videos = sim.shape
    gallery = np.where(excluded_texts[:, None], -np.inf, sim)  # (N_t, V) failed texts never outrank anything
    own = np.where(excluded_texts, -np.inf, gallery[np.arange(n_texts), gt])  # (N_t,) each caption vs its video
    best = np.full(n_videos, -np.inf)
    np.maximum.at(best, gt, np.where(np.isnan(own), -np.inf, own))  # (V,) best correct caption score
    with np.errstate(invalid="ignore"):
        at_least = np.count_nonzero(gallery >= best[None, :], axis=0)  # (V,) all captions scoring >= best
        correct_at_least = np.bincount(gt, weights=own >= best[gt], minlength=n_videos).astype(np.int64)
    ranks = at_least - correct_at_least  # wrong captions scoring >= the best correct one
    failed = excluded_videos | ~np.isfinite(best) | np.isnan(gallery).any(axis=0)
    return np.where(failed, n_texts, ranks)


def _strict(t2v_sim: np.ndarray, v2t_sim: np.ndarray, text_to_video: np.ndarray, failed_cols: np.ndarray,
            return_ranks: bool) -> dict[str, dict[str, Any]]:
    excluded_t2v = failed_cols | np.isnan(t2v_sim).all(axis=0)
    t2v = _strict_t2v_ranks(t2v_sim, text_to_video, excluded_t2v)
    excluded_v2t = failed_cols | np.isnan(v2t_sim).all(axis=0)
    v2t = _strict_v2t_ranks(v2t_sim, text_to_video, excluded_v2t, np.isnan(v2t_sim).all(axis=1))
    n_texts, n_videos = t2v_sim.shape
    t2v_failed, v2t_failed = t2v >= n_videos, v2t >= n_texts  # a real rank is at most gallery size - 1
    return {"t2v": _summary(t2v, "numpy", return_ranks, t2v_failed, n_failed=int(t2v_failed.sum())),
            "v2t": _summary(v2t, "numpy", return_ranks, v2t_failed, n_failed=int(v2t_failed.sum()))}


# ------------------------------------------------------------------------------------------------ public API
def _check_inputs(t2v_sim: np.ndarray, v2t_sim: np.ndarray, text_to_video: ArrayLike | None) -> np.ndarray | None:
    for name, s in (("sim", t2v_sim), ("sim['v2t']", v2t_sim)):
        if s.ndim != 2:
            raise ValueError(f"retrieval_metrics expects a 2-D (texts, videos) matrix for {name}, got {s.shape}")
    if t2v_sim.shape != v2t_sim.shape:
        raise ValueError(f"sim['t2v'] {t2v_sim.shape} and sim['v2t'] {v2t_sim.shape} must have the same shape")
    n_texts, n_videos = t2v_sim.shape
    if text_to_video is None:
        if n_texts != n_videos:
            raise ValueError(f"a {t2v_sim.shape} matrix needs text_to_video (the ground truth is only implied for "
                             "square matrices)")
        return None
    idx = np.asarray(text_to_video.cpu() if isinstance(text_to_video, torch.Tensor) else text_to_video)
    if idx.ndim != 1 or len(idx) != n_texts or (len(idx) and (idx.min() < 0 or idx.max() >= n_videos)):
        raise ValueError(f"text_to_video must give a video index in [0, {n_videos}) for each of the {n_texts} texts")
    return idx.astype(np.int64)


def retrieval_metrics(sim: Union[ArrayLike, Mapping[str, ArrayLike]], text_to_video: ArrayLike | None = None,
                      mode: str = "clip4clip", failed_videos: Iterable[int] | None = None,
                      return_ranks: bool = False) -> dict[str, dict[str, Any]]:
    """Text-to-video and video-to-text retrieval metrics.

    Args:
        sim: (N_texts, N_videos) similarities, any float dtype (numpy or torch), or ``{"t2v": S1, "v2t": S2}``.
        text_to_video: video index of each text; None means one text per video with the ground truth on the diagonal.
        mode: ``clip4clip`` (the published protocol, bit for bit) or ``strict`` (one pessimistic rank per query).
        failed_videos: indices of videos that could not be decoded; their columns are set to NaN (clip4clip drops
            their queries as the published code does, strict counts them as misses and reports ``n_failed``).
        return_ranks: add the 0-based ``ranks`` list to each direction.

    Returns:
        ``{"t2v": {...}, "v2t": {...}}``, each with R@1, R@5, R@10, R@50, MdR, MnR, n, failed_videos and
        n_queries / n_dropped (clip4clip) or n_failed (strict).
    """
    if mode not in MODES:
        raise ValueError(f"unknown metrics mode '{mode}'. Valid: {', '.join(MODES)}")
    if isinstance(sim, Mapping):
        t2v_sim, v2t_sim = _as_numpy(sim["t2v"]), _as_numpy(sim["v2t"])
    else:
        t2v_sim = _as_numpy(sim)
        v2t_sim = t2v_sim
    idx = _check_inputs(t2v_sim, v2t_sim, text_to_video)
    failed = sorted({int(i) for i in (failed_videos if failed_videos is not None else ())})
    if failed and (failed[0] < 0 or failed[-1] >= t2v_sim.shape[1]):
        raise ValueError(f"failed_videos {failed} must index the {t2v_sim.shape[1]} videos")
    for s in {id(t2v_sim): t2v_sim, id(v2t_sim): v2t_sim}.values():
        s[:, failed] = np.nan  # our own float64 copies
    if mode == "clip4clip":
        out = _clip4clip(t2v_sim, v2t_sim, idx, return_ranks)
    else:
        failed_cols = np.zeros(t2v_sim.shape[1], dtype=bool)
        failed_cols[failed] = True
        gt = np.arange(t2v_sim.shape[0]) if idx is None else idx
        out = _strict(t2v_sim, v2t_sim, gt, failed_cols, return_ranks)
    for side in out.values():
        side["failed_videos"] = len(failed)
    return out


def format_metrics_table(results: Mapping[str, Mapping[str, Any]],
                         keys: Sequence[str] = ("R@1", "R@5", "R@10", "MdR", "MnR")) -> str:
    """A one-decimal table like the papers' (rows t2v / v2t, plus the number of entries ``n``)."""
    lines = ["       " + "".join(f"{k:>8}" for k in keys) + f"{'n':>8}"]
    for side in ("t2v", "v2t"):
        if side not in results:
            continue
        m = results[side]
        lines.append(f"{side:<7}" + "".join(f"{m[k]:>8.1f}" for k in keys) + f"{int(m['n']):>8d}")
    return "\n".join(lines)


def motion_direction_accuracy(sim: ArrayLike, twins: ArrayLike, text_to_video: ArrayLike | None = None,
                              tie_tolerance: float = 1e-6) -> float:
    """Share of queries whose own video outscores its time-reversed twin (the synthetic set's frame-order test).

    Args:
        sim: (N_texts, N_videos) similarity. Without ``text_to_video``, N_texts == N_videos and text i describes
            video i.
        twins: (N_videos,) index of each video's twin (same content, reversed order), -1 when it has none
            (``vidclip.data.synthetic.twin_indices`` reads them from a data list).
        text_to_video: optional video index of each text row (several captions per video).
        tie_tolerance: |own - twin| <= tie_tolerance * max(1, |own|) counts as a tie, worth one half.

    Returns:
        mean over texts of twinned videos of 1 (own > twin), 0.5 (tie) or 0 (own < twin); ``nan`` when no video has
        a twin. Chance, and the exact score of any frame-order-invariant model, is 0.5.
    """
    s = _as_numpy(sim).astype(np.float64)
    twins = _as_numpy(twins).astype(np.int64).reshape(-1)
    rows = np.arange(len(twins)) if text_to_video is None else _as_numpy(text_to_video).astype(np.int64).reshape(-1)
    if s.ndim != 2 or s.shape != (len(rows), len(twins)):
        raise ValueError(f"motion_direction_accuracy: sim has shape {s.shape}, expected ({len(rows)}, {len(twins)}) "
                         "(texts x videos); pass text_to_video for several captions per video")
    keep = twins[rows] >= 0  # (N_texts,) texts whose video has a twin
    if not keep.any():
        return float("nan")
    text_idx = np.flatnonzero(keep)
    own, other = s[text_idx, rows[keep]], s[text_idx, twins[rows[keep]]]  # (K,) each
    tie = np.abs(own - other) <= tie_tolerance * np.maximum(1.0, np.abs(own))
    return float(np.mean(np.where(tie, 0.5, (own > other).astype(np.float64))))

