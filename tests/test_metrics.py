"""Retrieval metrics: ``clip4clip`` against a literal re-implementation of the published procedure (landscape.md
§3.2-3.4) on random, tied (real MSR-VTT duplicate captions), NaN and real-MSVD-layout matrices; ``strict`` against
hand-worked examples and a naive per-query loop."""
import csv
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from vidclip.metrics import format_metrics_table, motion_direction_accuracy, retrieval_metrics

KEYS = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "n")


# ------------------------------------------------------------------------------------------ published procedures
def ref_compute_metrics(x):
    """CLIP4Clip compute_metrics as landscape.md §3.2 describes it: numpy sort + np.where, tie expansion."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    with np.errstate(invalid="ignore"):
        ind = np.where(sx - d == 0)[1]
    out = {f"R@{k}": float(np.sum(ind < k)) * 100 / len(ind) for k in (1, 5, 10, 50)}
    out.update(MdR=float(np.median(ind)) + 1, MnR=float(np.mean(ind)) + 1, n=len(ind))
    return out


def ref_s3(sim, text_to_video):
    """The published (V, C_max, V) tensor: each video's caption rows in order of appearance, -inf padding rows."""
    n_videos = sim.shape[1]
    blocks = [sim[text_to_video == v] for v in range(n_videos)]
    c_max = max(len(b) for b in blocks)
    padded = [np.concatenate([b, np.full((c_max - len(b), n_videos), -np.inf)], axis=0) for b in blocks]
    return np.stack(padded, axis=0)


def ref_tensor_t2v(s3):
    """Deferf tensor_text_to_video_metrics (§3.3): double argsort per caption slot, lower torch median."""
    s3 = torch.tensor(s3)
    first = torch.argsort(s3.permute(1, 0, 2), dim=-1, descending=True)
    second = torch.argsort(first, dim=-1)
    ranks = torch.flatten(torch.diagonal(second, dim1=1, dim2=2))
    valid = torch.flatten(torch.diagonal(s3, dim1=0, dim2=2))
    r = ranks[~(torch.isinf(valid) | torch.isnan(valid))]
    out = {f"R@{k}": float(torch.sum(r < k)) * 100 / len(r) for k in (1, 5, 10, 50)}
    out.update(MdR=float(torch.median(r + 1)), MnR=float(np.mean(r.numpy() + 1)), n=len(r))
    return out


def ref_v2t_sim(s3):
    """tensor_video_to_text_sim (§3.4): NaN -> -inf, best caption per group, transposed to (video, group)."""
    s3 = torch.tensor(s3)
    s3[s3 != s3] = float("-inf")
    values, _ = torch.max(s3, dim=1)
    return values.T.numpy()


def assert_same(ours, ref):
    for k in KEYS:
        assert ours[k] == ref[k], (k, ours[k], ref[k])


def naive_strict(sim, gt, failed_cols=()):
    """Per-query loop: pessimistic rank among non-failed items; failure (rank N) on NaN/inf GT or a NaN elsewhere."""
    n_q, n_g = sim.shape
    ranks, failed = [], []
    for i in range(n_q):
        g = sim[i, gt[i]]
        others = [sim[i, j] for j in range(n_g) if j != gt[i] and j not in failed_cols]
        bad = gt[i] in failed_cols or not math.isfinite(g) or any(math.isnan(v) for v in others)
        ranks.append(n_g if bad else sum(v >= g for v in others))
        failed.append(bad)
    return np.array(ranks), np.array(failed)


def summary(ranks, failed):
    out = {f"R@{k}": 100.0 * np.sum((ranks < k) & ~failed) / len(ranks) for k in (1, 5, 10, 50)}
    out.update(MdR=float(np.median(ranks)) + 1, MnR=float(np.mean(ranks)) + 1, n=len(ranks))
    return out


# ------------------------------------------------------------------------------------------ clip4clip, 1:1
@pytest.mark.parametrize("n", [200, 201])  # even and odd query counts (numpy median averages for even)
def test_clip4clip_square_matches_published_on_random_and_tied(n):
    rng = np.random.default_rng(n)
    for sim in (rng.standard_normal((n, n)).astype(np.float32),
                np.round(rng.standard_normal((n, n)), 1)):  # coarse values: many exact ties with the GT
        res = retrieval_metrics(sim)
        assert_same(res["t2v"], ref_compute_metrics(sim.astype(np.float64)))
        assert_same(res["v2t"], ref_compute_metrics(sim.T.astype(np.float64)))
    assert res["t2v"]["n"] > n  # the tied matrix really expanded


def test_clip4clip_even_count_uses_the_numpy_average_median():
    sim = np.array([[1.0, 0.0], [1.0, 0.5]])  # t2v ranks: [0, 1] -> numpy median 0.5 -> MdR 1.5
    assert retrieval_metrics(sim)["t2v"]["MdR"] == 1.5
    # the same four entries through the multi-caption t2v take torch's LOWER median
    multi = np.array([[1.0, 0.0], [0.9, 0.0], [1.0, 0.5], [1.0, 0.4]])
    res = retrieval_metrics(multi, np.array([0, 0, 1, 1]))
    assert res["t2v"]["n"] == 4 and res["t2v"]["MdR"] == 1.0
    assert retrieval_metrics(multi, np.array([0, 0, 1, 1]), mode="strict")["t2v"]["MdR"] == 1.5


def test_clip4clip_hand_example_with_ties():
    sim = np.array([[0.9, 0.9, 0.1], [0.2, 0.5, 0.7], [0.3, 0.3, 0.8]])
    res = retrieval_metrics(sim)
    # row 0 ties with column 1 -> two entries (ranks 0 and 1); rows 1, 2 -> ranks 1, 0
    assert res["t2v"]["n"] == 4 and res["t2v"]["R@1"] == 50.0 and res["t2v"]["MdR"] == 1.5
    assert res["t2v"]["MnR"] == pytest.approx(1.5) and res["t2v"]["n_queries"] == 3
    assert res["v2t"]["n"] == 3 and res["v2t"]["R@1"] == pytest.approx(200 / 3)


def test_clip4clip_real_msrvtt_duplicate_captions_expand_v2t(shared_data):
    path = shared_data / "annotations" / "msrvtt" / "MSRVTT_JSFUSION_test.csv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with open(path, newline="") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f)]
    assert len(sentences) == 1000
    counts = Counter(sentences)
    extra = sum(k * (k - 1) for k in counts.values() if k > 1)
    assert extra == 12  # landscape.md §3.2: 4 groups, 9 captions
    rng = np.random.default_rng(0)
    unique = {s: rng.standard_normal(32).astype(np.float32) for s in counts}
    text = np.stack([unique[s] for s in sentences])  # identical captions -> identical features -> identical rows
    video = rng.standard_normal((1000, 32)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    sim = 100.0 * text @ video.T  # float32, like CLIP4Clip's logit-scaled matrix
    res = retrieval_metrics(torch.from_numpy(sim))
    assert res["v2t"]["n"] == 1000 + extra and res["t2v"]["n"] == 1000
    assert_same(res["t2v"], ref_compute_metrics(sim.astype(np.float64)))
    assert_same(res["v2t"], ref_compute_metrics(sim.T.astype(np.float64)))
    strict = retrieval_metrics(sim, mode="strict")["v2t"]
    assert strict["n"] == 1000 and strict["R@1"] <= res["v2t"]["R@1"] + 100 * extra / 1000


def test_clip4clip_nan_rows_are_dropped_like_the_published_code():
    rng = np.random.default_rng(1)
    sim = rng.standard_normal((50, 50))
    sim[7, :] = np.nan  # a text whose features are NaN
    res = retrieval_metrics(sim, failed_videos=[3, 11])  # two videos that could not be decoded
    ref_sim = sim.copy()
    ref_sim[:, [3, 11]] = np.nan
    assert_same(res["t2v"], ref_compute_metrics(ref_sim))
    assert_same(res["v2t"], ref_compute_metrics(ref_sim.T))
    assert res["t2v"]["n_dropped"] == 3 and res["t2v"]["n"] == 47 and res["t2v"]["failed_videos"] == 2


def test_clip4clip_one_caption_per_video_in_another_order_is_the_square_protocol():
    rng = np.random.default_rng(2)
    sim = np.round(rng.standard_normal((30, 30)), 1)
    perm = rng.permutation(30)
    res = retrieval_metrics(sim[perm], text_to_video=perm)
    assert_same(res["t2v"], ref_compute_metrics(sim))
    assert_same(res["v2t"], ref_compute_metrics(sim.T))


# ------------------------------------------------------------------------------------------ clip4clip, multi-caption
def _check_multi(sim, text_to_video):
    res = retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(text_to_video))
    s3 = ref_s3(sim.astype(np.float64), text_to_video)
    # documented deviation: NaN sorts last (numpy's compute_metrics behaviour) instead of first (torch's argsort)
    assert_same(res["t2v"], ref_tensor_t2v(np.where(np.isnan(s3), -np.inf, s3)))
    assert_same(res["v2t"], ref_compute_metrics(ref_v2t_sim(s3)))
    return res


def test_clip4clip_multi_caption_small_non_contiguous_with_ties_and_nan():
    rng = np.random.default_rng(3)
    text_to_video = rng.integers(0, 12, size=70)  # captions of a video scattered through the list
    text_to_video[:12] = np.arange(12)
    sim = np.round(rng.standard_normal((70, 12)), 1).astype(np.float32)  # many exact ties
    sim[5, 5] = np.nan  # a NaN ground truth (text 5 belongs to video 5) and a NaN elsewhere
    sim[9, 2] = np.nan
    res = _check_multi(sim, text_to_video)
    assert res["t2v"]["n"] == 69 and res["t2v"]["n_dropped"] == 1


def test_clip4clip_multi_caption_failed_video_only_drops_its_own_captions():
    rng = np.random.default_rng(9)
    text_to_video = np.repeat(np.arange(8), 3)
    sim = rng.standard_normal((24, 8))
    res = retrieval_metrics(sim, text_to_video, failed_videos=[5], return_ranks=True)
    keep = text_to_video != 5
    without = retrieval_metrics(np.delete(sim[keep], 5, axis=1), np.where(text_to_video[keep] > 5,
                                text_to_video[keep] - 1, text_to_video[keep]), return_ranks=True)
    assert res["t2v"]["ranks"] == without["t2v"]["ranks"] and res["t2v"]["n_dropped"] == 3
    assert res["v2t"]["n"] == 7 and res["v2t"]["n_dropped"] == 1


def test_clip4clip_multi_caption_hand_example():
    text_to_video = np.array([0, 1, 0, 1, 0])
    sim = np.array([[0.9, 0.1], [0.4, 0.3], [0.2, 0.8], [0.3, 0.6], [0.7, 0.5]])
    res = _check_multi(sim, text_to_video)
    assert res["t2v"]["R@1"] == 60.0 and res["t2v"]["n"] == 5  # one rank per caption: [0, 1, 1, 0, 0]
    assert res["t2v"]["MdR"] == 1.0 and res["t2v"]["MnR"] == pytest.approx(1.4)
    # v2t: (video, group) best-caption matrix [[.9, .4], [.8, .6]] -> ranks [0, 1]
    assert res["v2t"]["n"] == 2 and res["v2t"]["R@1"] == 50.0 and res["v2t"]["MdR"] == 1.5


def test_clip4clip_multi_caption_real_msvd_layout(shared_data):
    root = shared_data / "annotations" / "msvd"
    if not (root / "captions_msvd.json").exists() or not (root / "test_list.txt").exists():
        pytest.skip(f"MSVD annotations not found under {root}")
    captions = json.loads((root / "captions_msvd.json").read_text())
    ids = [line.strip() for line in (root / "test_list.txt").read_text().splitlines() if line.strip()]
    text_to_video = np.repeat(np.arange(len(ids)), [len(captions[v]) for v in ids])
    assert len(ids) == 670 and len(text_to_video) == 27763
    rng = np.random.default_rng(4)
    sim = np.round(rng.standard_normal((27763, 670)), 1).astype(np.float32)  # exact ties everywhere
    sim[np.arange(27763), text_to_video] += 1.0
    res = retrieval_metrics(sim, text_to_video)  # its time is measured in benchmarks/bench_metrics.py
    s3 = ref_s3(sim.astype(np.float64), text_to_video)
    assert s3.shape == (670, 81, 670)
    assert_same(res["t2v"], ref_tensor_t2v(s3))
    assert_same(res["v2t"], ref_compute_metrics(ref_v2t_sim(s3)))
    assert res["t2v"]["n"] == 27763


# ------------------------------------------------------------------------------------------ strict
def test_strict_hand_example_with_ties():
    sim = np.array([[0.9, 0.9, 0.1], [0.2, 0.5, 0.7], [0.3, 0.3, 0.8]])
    res = retrieval_metrics(sim, mode="strict")
    t2v, v2t = res["t2v"], res["v2t"]  # t2v ranks [1, 1, 0]; v2t ranks [0, 1, 0]
    assert t2v["n"] == 3 and t2v["R@1"] == pytest.approx(100 / 3) and t2v["MdR"] == 2.0
    assert t2v["MnR"] == pytest.approx(2 / 3 + 1) and t2v["n_failed"] == 0
    assert v2t["R@1"] == pytest.approx(200 / 3) and v2t["MdR"] == 1.0 and v2t["MnR"] == pytest.approx(4 / 3)


def test_strict_failed_video_is_a_miss_and_leaves_the_other_galleries():
    sim = np.array([[0.5, 0.1, 0.9, 0.2], [0.1, 0.6, 0.9, 0.7], [0.1, 0.2, 0.3, 0.4], [0.3, 0.2, 0.9, 0.8]])
    res = retrieval_metrics(sim, mode="strict", failed_videos=[2])
    t2v, v2t = res["t2v"], res["v2t"]  # t2v ranks [0, 1, fail=4, 0]; v2t ranks [0, 0, fail=4, 0]
    assert (t2v["R@1"], t2v["R@5"], t2v["R@10"], t2v["MdR"], t2v["MnR"]) == (50.0, 75.0, 75.0, 1.5, 2.25)
    assert t2v["n"] == 4 and t2v["n_failed"] == 1 and t2v["failed_videos"] == 1
    assert (v2t["R@1"], v2t["R@10"], v2t["MdR"], v2t["MnR"], v2t["n_failed"]) == (75.0, 75.0, 1.0, 2.0, 1)
    c4c = retrieval_metrics(sim, failed_videos=[2])["t2v"]  # published: row dropped, entries [0, 1, 0]
    assert c4c["n"] == 3 and c4c["n_dropped"] == 1 and c4c["R@1"] == pytest.approx(200 / 3)


def test_strict_nan_inside_a_row_fails_that_query_only():
    sim = np.eye(3)
    sim[0, 1] = np.nan
    res = retrieval_metrics(sim, mode="strict")
    assert res["t2v"]["n_failed"] == 1 and res["t2v"]["R@1"] == pytest.approx(200 / 3)
    assert res["v2t"]["n_failed"] == 1  # video 1's column holds the NaN


def test_strict_multi_caption_hand_example():
    text_to_video = np.array([0, 1, 0, 1, 0])
    sim = np.array([[0.9, 0.1], [0.4, 0.4], [0.2, 0.8], [0.3, 0.6], [0.5, 0.5]])
    res = retrieval_metrics(sim, text_to_video, mode="strict")
    # t2v pessimistic ranks [0, 1, 1, 0, 1]
    assert res["t2v"]["R@1"] == 40.0 and res["t2v"]["MdR"] == 2.0 and res["t2v"]["MnR"] == pytest.approx(1.6)
    # v2t: video 0's best caption 0.9 beats everything; video 1's best correct 0.6 is beaten by caption 2 (0.8)
    assert res["v2t"]["R@1"] == 50.0 and res["v2t"]["MnR"] == 1.5 and res["v2t"]["MdR"] == 1.5
    tied = sim.copy()
    tied[[0, 2], 0] = 0.9  # two correct captions tied at the best: they never count against each other
    assert retrieval_metrics(tied, text_to_video, mode="strict", return_ranks=True)["v2t"]["ranks"][0] == 0


def test_strict_matches_naive_loop_on_random_ties_and_nan():
    rng = np.random.default_rng(5)
    sim = np.round(rng.standard_normal((40, 40)), 1)
    sim[3, 8] = np.nan
    failed = [6]
    res = retrieval_metrics(sim, mode="strict", failed_videos=failed, return_ranks=True)
    masked = sim.copy()
    masked[:, failed] = np.nan
    for side, matrix in (("t2v", masked), ("v2t", masked.T)):
        excluded = failed if side == "t2v" else []
        ranks, bad = naive_strict(matrix, np.arange(40), excluded)
        assert res[side]["ranks"] == ranks.tolist()
        expected = summary(ranks, bad)
        for k in KEYS:
            assert res[side][k] == pytest.approx(expected[k])
    # the multi-caption code path with one caption per video gives the same answer
    multi = retrieval_metrics(sim, np.arange(40), mode="strict", failed_videos=failed, return_ranks=True)
    assert multi["v2t"]["ranks"] == res["v2t"]["ranks"] and multi["t2v"]["ranks"] == res["t2v"]["ranks"]


# ------------------------------------------------------------------------------------------ API details
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_any_float_dtype_gives_the_same_numbers(dtype):
    rng = np.random.default_rng(6)
    sim = np.round(rng.standard_normal((64, 64)) * 4) / 4  # exactly representable in every dtype
    ref = retrieval_metrics(sim)
    for mode in ("clip4clip", "strict"):
        assert retrieval_metrics(torch.tensor(sim, dtype=dtype), mode=mode) == retrieval_metrics(sim, mode=mode)
    assert ref["t2v"]["n"] > 64


def test_direction_specific_matrices():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((20, 20)), rng.standard_normal((20, 20))
    res = retrieval_metrics({"t2v": a, "v2t": torch.from_numpy(b)})
    assert_same(res["t2v"], ref_compute_metrics(a))
    assert_same(res["v2t"], ref_compute_metrics(b.T))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="text_to_video"):
        retrieval_metrics(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="mode"):
        retrieval_metrics(np.zeros((3, 3)), mode="loose")
    with pytest.raises(ValueError, match="video index"):
        retrieval_metrics(np.zeros((3, 2)), text_to_video=[0, 1, 2])
    with pytest.raises(ValueError, match="failed_videos"):
        retrieval_metrics(np.zeros((3, 3)), failed_videos=[5])


def test_format_metrics_table_one_decimal():
    res = retrieval_metrics(np.array([[0.9, 0.9, 0.1], [0.2, 0.5, 0.7], [0.3, 0.3, 0.8]]))
    table = format_metrics_table(res)
    lines = table.splitlines()
    assert lines[0].split() == ["R@1", "R@5", "R@10", "MdR", "MnR", "n"]
    assert lines[1].split() == ["t2v", "50.0", "100.0", "100.0", "1.5", "1.5", "4"]
    assert lines[2].split()[0] == "v2t" and lines[2].split()[1] == "66.7"



# ------------------------------------------------------------------------------------------ motion direction
def naive_motion_accuracy(sim, twins, text_to_video):
    scores = []
    for row, video in enumerate(text_to_video):
        if twins[video] < 0:
            continue
        own, other = sim[row][video], sim[row][twins[video]]
        scores.append(0.5 if abs(own - other) <= 1e-6 * max(1.0, abs(own)) else float(own > other))
    return sum(scores) / len(scores) if scores else float("nan")


def test_motion_direction_accuracy_on_plain_arrays():
    twins = np.array([1, 0, 3, 2, -1])  # videos 0/1 and 2/3 are reversed twins, 4 has none
    sim = np.array([[0.9, 0.2, 0, 0, 5.0], [0.7, 0.3, 0, 0, 0], [0, 0, 0.4, 0.4, 0], [0, 0, 0.1, 0.6, 0],
                    [0, 0, 0, 0, 0]])
    assert motion_direction_accuracy(sim, twins) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert motion_direction_accuracy(torch.tensor(sim), torch.tensor(twins)) == pytest.approx(2.5 / 4)
    rng = np.random.default_rng(3)
    text_to_video = rng.integers(0, 5, size=40)
    big = np.round(rng.standard_normal((40, 5)), 1)  # ties happen
    assert motion_direction_accuracy(big, twins, text_to_video) == pytest.approx(
        naive_motion_accuracy(big, twins, text_to_video))
    with pytest.raises(ValueError, match="expected"):
        motion_direction_accuracy(sim[:4], twins)
    assert np.isnan(motion_direction_accuracy(np.zeros((1, 1)), np.array([-1])))
