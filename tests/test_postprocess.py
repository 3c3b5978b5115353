"""Post-processors against naive per-element loops written here from the formulas (landscape.md §2.6,
methods.md §1.5, §4.1.6): DSL variants, QB-Norm, SK-norm, the bank guard and the registry."""
import math

import numpy as np
import pytest
import torch

from vidclip.config import choices_for, load_config
from vidclip.errors import ConfigError
from vidclip.metrics import retrieval_metrics
from vidclip.postprocess import apply_postprocess, sk_bias, sk_norm_levels
from vidclip.registry import POSTPROCESSORS

COS = np.array([[0.30, 0.10, 0.25], [0.20, 0.40, 0.05]])  # 2 texts x 3 videos, cosine


def naive_dsl(sim, scale, dim, multiplier=1.0):
    """out[i][j] = s_ij * exp(scale*s_ij) / sum over ``dim`` of exp(scale*s) * multiplier."""
    rows, cols = len(sim), len(sim[0])
    out = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            if dim == 0:
                z = sum(math.exp(scale * sim[k][j]) for k in range(rows))
            else:
                z = sum(math.exp(scale * sim[i][k]) for k in range(cols))
            out[i][j] = sim[i][j] * math.exp(scale * sim[i][j]) / z * multiplier
    return out


def naive_sk_bias(bank, n_iters=4):
    rows, cols = len(bank), len(bank[0])
    m = max(max(r) for r in bank)
    kernel = [[math.exp(bank[i][j] - m) for j in range(cols)] for i in range(rows)]
    b = [1.0 / sum(kernel[i][j] for i in range(rows)) for j in range(cols)]
    for _ in range(n_iters):
        a = [1.0 / sum(kernel[i][j] * b[j] for j in range(cols)) for i in range(rows)]
        b = [1.0 / sum(a[i] * kernel[i][j] for i in range(rows)) for j in range(cols)]
    log_b = [math.log(x) for x in b]
    lse = math.log(sum(math.exp(x) for x in log_b))
    return np.array([x - lse for x in log_b])


def naive_qb_row(query_row, bank, beta):
    return np.array([math.exp(beta * query_row[j]) / sum(math.exp(beta * bank[b][j]) for b in range(len(bank)))
                     for j in range(len(query_row))])


# ------------------------------------------------------------------------------------------ registry
def test_registry_names_match_the_config_choices():
    documented = {"none", "dsl_camoe", "dsl_ts2net", "dsl_clipvip", "dsl_emcl", "qbnorm", "sknorm"}  # module table
    assert set(choices_for("eval.postprocess")) == documented
    assert set(POSTPROCESSORS.names(needs_query_bank=True)) == {"qbnorm", "sknorm"}
    with pytest.raises(ConfigError, match="post-processor"):
        apply_postprocess("dsl_unknown", COS)


def test_a_post_processor_that_needs_a_bank_says_so_and_config_asks_for_one():
    @POSTPROCESSORS.register("test_banked", needs_query_bank=True)
    def banked(sim, bank_sim=None, **unused):
        return sim, "test_banked"

    try:
        with pytest.raises(ConfigError, match="query bank"):
            load_config(None, ["eval.postprocess=test_banked"])
        assert load_config(None, ["eval.postprocess=test_banked", "eval.query_bank_list=x.jsonl"])
    finally:
        POSTPROCESSORS.unregister("test_banked")


def test_none_is_the_identity():
    out, label = apply_postprocess("none", COS)
    assert out is COS and label == "none"


# ------------------------------------------------------------------------------------------ DSL
@pytest.mark.parametrize("name, expected", [
    ("dsl_clipvip", lambda: naive_dsl(COS, 100.0, 0)),
    ("dsl_ts2net", lambda: naive_dsl(100 * COS, 1.0, 0)),
    ("dsl_camoe", lambda: naive_dsl(100 * COS, 1.0, 0, multiplier=2)),
])
def test_dsl_variants_match_their_formulas(name, expected):
    out, label = apply_postprocess(name, COS, logit_scale=100.0)
    assert isinstance(out, np.ndarray) and label.startswith(name)
    np.testing.assert_allclose(out, expected(), rtol=1e-12)
    # the same numbers from logit-scaled input declared as such, and torch in -> torch out
    out_logits, _ = apply_postprocess(name, torch.tensor(100 * COS), units="logits", logit_scale=100.0)
    assert isinstance(out_logits, torch.Tensor)
    np.testing.assert_allclose(out_logits.numpy(), expected(), rtol=1e-12)


def test_dsl_emcl_reweights_each_direction_over_its_own_axis():
    out, label = apply_postprocess("dsl_emcl", torch.tensor(COS))
    np.testing.assert_allclose(out["t2v"].numpy(), naive_dsl(COS, 100.0, 0, multiplier=2), rtol=1e-12)
    np.testing.assert_allclose(out["v2t"].numpy(), naive_dsl(COS, 100.0, 1, multiplier=2), rtol=1e-12)
    assert "dim=1" in label


@pytest.mark.parametrize("name", ["dsl_camoe", "dsl_ts2net", "dsl_clipvip", "dsl_emcl"])
def test_dsl_failed_video_column_stays_nan_and_does_not_leak(name):
    rng = np.random.default_rng(0)
    sim = rng.uniform(-0.2, 0.5, size=(6, 5))
    with_nan = sim.copy()
    with_nan[:, 2] = np.nan
    out, _ = apply_postprocess(name, with_nan)
    ref, _ = apply_postprocess(name, np.delete(sim, 2, axis=1))
    for key in (("t2v", "v2t") if isinstance(out, dict) else (None,)):
        o = out if key is None else out[key]
        r = ref if key is None else ref[key]
        assert np.isnan(o[:, 2]).all()
        np.testing.assert_allclose(np.delete(o, 2, axis=1), r, rtol=1e-12)


# ------------------------------------------------------------------------------------------ QB-Norm
BANK = np.array([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1], [0.7, 0.2, 0.6], [0.1, 0.5, 0.4]])  # top-1: v0 x3, v1 x1
TEST = np.array([[0.6, 0.2, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.3]])  # top-1: v0 (hub), v2, v0 (hub)


def test_qbnorm_replaces_only_rows_whose_top1_is_a_hub():
    out, label = apply_postprocess("qbnorm", TEST, bank_sim=BANK)
    t2v = out["t2v"]
    np.testing.assert_allclose(t2v[0], naive_qb_row(TEST[0], BANK, 70.0), rtol=1e-10)
    np.testing.assert_array_equal(t2v[1], TEST[1])  # top-1 is video 2, not a hub: untouched
    np.testing.assert_allclose(t2v[2], naive_qb_row(TEST[2], BANK, 70.0), rtol=1e-10)
    assert t2v[2].argmax() == 1  # the hub lost the query
    np.testing.assert_array_equal(out["v2t"], TEST)  # no video bank: v2t untouched, and the label says so
    assert "theta=3" in label and "v2t untouched" in label
    # theta above the hub count: nothing changes
    same, _ = apply_postprocess("qbnorm", TEST, bank_sim=BANK, theta_t2v=4)
    np.testing.assert_array_equal(same["t2v"], TEST)
    # beta multiplies cosine: logit-scaled inputs give the same matrix
    scaled, _ = apply_postprocess("qbnorm", 50 * TEST, bank_sim=50 * BANK, units="logits", logit_scale=50.0)
    np.testing.assert_allclose(scaled["t2v"], t2v, rtol=1e-10)


def test_qbnorm_v2t_uses_the_video_bank_and_theta5():
    bank_videos = np.array([[0.9, 0.1, 0.3]] * 5 + [[0.1, 0.9, 0.2]])  # 6 train videos x 3 texts; text 0 is a hub
    out, label = apply_postprocess("qbnorm", TEST, bank_sim=BANK, bank_sim_v2t=bank_videos)
    v2t = out["v2t"].T  # (videos, texts)
    queries = TEST.T  # video queries over the 3 texts; top-1 texts: 0, 2, 1
    np.testing.assert_allclose(v2t[0], naive_qb_row(queries[0], bank_videos, 70.0), rtol=1e-10)
    np.testing.assert_array_equal(v2t[1:], queries[1:])
    assert "theta=5" in label
    fewer, _ = apply_postprocess("qbnorm", TEST, bank_sim=BANK, bank_sim_v2t=bank_videos[1:])  # 4 < theta=5
    np.testing.assert_array_equal(fewer["v2t"], TEST)
    for mode in ("clip4clip", "strict"):  # the per-direction output feeds the metrics, each on its own matrix
        res = retrieval_metrics(out, mode=mode)
        assert res["t2v"] == retrieval_metrics(out["t2v"], mode=mode)["t2v"]
        assert res["v2t"] == retrieval_metrics(out["v2t"], mode=mode)["v2t"]
        assert res["t2v"] != retrieval_metrics(out["v2t"], mode=mode)["t2v"]


@pytest.mark.parametrize("name", ["qbnorm", "sknorm"])
def test_query_bank_must_not_be_the_test_matrix(name):
    with pytest.raises(ValueError, match="identical to the test similarity matrix"):
        apply_postprocess(name, TEST, bank_sim=TEST.copy())
    with pytest.raises(ValueError, match="needs a query bank"):
        apply_postprocess(name, TEST)
    with pytest.raises(ValueError, match="must be"):
        apply_postprocess(name, TEST, bank_sim=BANK[:, :2])


# ------------------------------------------------------------------------------------------ SK-norm
def test_sk_bias_matches_the_naive_iterations_and_penalises_hubs():
    rng = np.random.default_rng(1)
    bank = rng.normal(0, 3, size=(7, 4))
    bank[:, 0] += 4.0  # video 0 is close to every bank query: a hub
    bias = sk_bias(torch.tensor(bank)).numpy()
    np.testing.assert_allclose(bias, naive_sk_bias(bank.tolist()), rtol=1e-10)
    assert bias.argmin() == 0
    np.testing.assert_allclose(sk_bias(torch.tensor(bank + 5.0)).numpy(), bias, rtol=1e-10)  # shift cancels
    with_nan = np.insert(bank, 2, np.nan, axis=1)  # a failed video column
    b_nan = sk_bias(torch.tensor(with_nan)).numpy()
    assert np.isnan(b_nan[2])
    np.testing.assert_allclose(np.delete(b_nan, 2), bias, rtol=1e-10)


def test_sk_norm_levels_average_the_biased_levels():
    rng = np.random.default_rng(2)
    tests = {lvl: rng.normal(size=(3, 4)) for lvl in ("vs", "sf", "pw")}
    banks = {lvl: rng.normal(0, 2, size=(6, 4)) for lvl in ("vs", "sf", "pw")}
    out = sk_norm_levels(tests, banks).numpy()
    expected = sum(tests[lvl] + naive_sk_bias(banks[lvl].tolist())[None, :] for lvl in tests) / 3
    np.testing.assert_allclose(out, expected, rtol=1e-10)
    with pytest.raises(ValueError, match="same"):
        sk_norm_levels(tests, {"vs": banks["vs"]})
    with pytest.raises(ValueError, match="identical"):
        sk_norm_levels({"vs": tests["vs"]}, {"vs": tests["vs"]})


def test_sknorm_postprocess_works_on_logits():
    rng = np.random.default_rng(3)
    sim = rng.uniform(-0.1, 0.4, size=(5, 4))
    bank = rng.uniform(-0.1, 0.4, size=(9, 4))
    bank_videos = rng.uniform(-0.1, 0.4, size=(8, 5))  # train videos x test texts
    out, label = apply_postprocess("sknorm", sim, bank_sim=bank, bank_sim_v2t=bank_videos, logit_scale=100.0)
    np.testing.assert_allclose(out["t2v"], 100 * sim + naive_sk_bias((100 * bank).tolist())[None, :], rtol=1e-10)
    np.testing.assert_allclose(out["v2t"], 100 * sim + naive_sk_bias((100 * bank_videos).tolist())[:, None],
                               rtol=1e-10)  # per-text bias for the v2t direction
    assert label.startswith("sknorm") and "both directions" in label
