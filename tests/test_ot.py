"""vidclip.ops.ot against POT's single-problem solver and a naive log-domain Sinkhorn written here."""
import math

import numpy as np
import ot
import pytest
import torch

from vidclip.ops.ot import add_bucket, bucket_marginals, bucket_plan, rectified_targets, sinkhorn_batch


def naive_log_sinkhorn(z, log_a, log_b, iters):
    """Appendix E's loop on (G, m, n) scores (already divided by epsilon)."""
    u, v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(iters):
        u = log_a - torch.logsumexp(z + v.unsqueeze(-2), -1)
        v = log_b - torch.logsumexp(z + u.unsqueeze(-1), -2)
    return z + u.unsqueeze(-1) + v.unsqueeze(-2)


def random_marginals(g, k, gen):
    w = torch.rand(g, k, generator=gen) + 0.1
    return w / w.sum(-1, keepdim=True)


def test_sinkhorn_batch_matches_pot_per_problem():
    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(12, 7, 5, generator=gen)
    a, b = random_marginals(12, 7, gen), random_marginals(12, 5, gen)
    plans = sinkhorn_batch(cost, a, b, reg=0.1, iters=50)
    assert plans.shape == (12, 7, 5) and plans.dtype == torch.float32
    for i in range(12):
        ref = ot.sinkhorn(a[i].double().numpy(), b[i].double().numpy(), cost[i].double().numpy(), 0.1,
                          method="sinkhorn_log", numItermax=50, stopThr=0.0, warn=False)
        np.testing.assert_allclose(plans[i].double().numpy(), ref, atol=1e-5)


def test_bucket_plan_matches_pot_and_marginals():
    gen = torch.Generator().manual_seed(1)
    sims = torch.rand(20, 8, 8, generator=gen)  # (G, m, n) in [0, 1] like Norton's fused scores
    p = sims.flatten(1).quantile(0.3, dim=1)  # (G,) per-problem bucket
    a, b = bucket_marginals(torch.ones(20, 8, dtype=torch.bool), torch.ones(20, 8, dtype=torch.bool))
    assert torch.allclose(a[:, :8], torch.full((20, 8), 1 / 16)) and torch.allclose(a[:, 8], torch.full((20,), 0.5))
    assert torch.allclose(a.sum(1), torch.ones(20)) and torch.allclose(b.sum(1), torch.ones(20))
    full = sinkhorn_batch(-add_bucket(sims, p), a, b, reg=0.1, iters=50)  # (G, 9, 9) incl. the bucket
    for i in range(20):
        ref = ot.sinkhorn(a[i].double().numpy(), b[i].double().numpy(), -add_bucket(sims[i:i + 1], p[i:i + 1])[0]
                          .double().numpy(), 0.1, method="sinkhorn_log", numItermax=50, stopThr=0.0, warn=False)
        np.testing.assert_allclose(full[i].double().numpy(), ref, atol=1e-5)
    # the last update is the column one: columns match b exactly; rows (incl. the bucket row) match a closely
    assert torch.allclose(full.sum(1), b, atol=1e-6)
    assert torch.allclose(full.sum(2), a, atol=1e-3)
    block = bucket_plan(sims, p, epsilon=0.1, iters=50)
    assert torch.allclose(block, full[:, :8, :8], atol=1e-7)
    scaled = bucket_plan(sims, p, mass=8.0)
    assert torch.allclose(scaled.sum((1, 2)), torch.full((20,), 8.0), atol=1e-4)


def test_bucket_takes_the_mass_of_unalignable_rows():
    sims = torch.full((1, 4, 4), 0.1)
    sims[0, :3, :3] += 0.8 * torch.eye(3)  # rows 0-2 align with columns 0-2; row 3 / column 3 match nothing
    plan = bucket_plan(sims, torch.tensor(0.5), epsilon=0.05, iters=200)[0]
    row_mass = plan.sum(1)
    assert row_mass[3] < 0.05 * row_mass[:3].min()
    assert plan[:3, :3].diagonal().min() > 0.9 * row_mass[:3].min()


def test_bucket_plan_masked_rows_are_exactly_padding():
    gen = torch.Generator().manual_seed(2)
    sims = torch.rand(6, 5, 4, generator=gen)
    garbage = torch.cat([sims, 10 * torch.rand(6, 3, 4, generator=gen)], 1)  # 3 padded rows, huge similarities
    row_mask = torch.cat([torch.ones(6, 5), torch.zeros(6, 3)], 1).bool()
    padded = bucket_plan(garbage, 0.3, row_mask=row_mask, col_mask=torch.ones(6, 4, dtype=torch.bool))
    plain = bucket_plan(sims, 0.3)
    assert torch.equal(padded[:, 5:], torch.zeros(6, 3, 4))
    assert torch.allclose(padded[:, :5], plain, atol=1e-7)
    empty = bucket_plan(sims, 0.3, row_mask=torch.zeros(6, 5, dtype=torch.bool),
                        col_mask=torch.zeros(6, 4, dtype=torch.bool))
    assert torch.isfinite(empty).all() and empty.abs().sum() == 0


def test_rectified_targets_against_naive_and_row_sums():
    gen = torch.Generator().manual_seed(3)
    logits = 5 * torch.randn(10, 10, generator=gen)
    logits.requires_grad_(True)
    t2v, v2t = rectified_targets(logits, beta=0.3, epsilon=1.0, iters=50)
    assert not t2v.requires_grad and not v2t.requires_grad
    n = 10
    lm = torch.full((1, n), -math.log(2 * n))
    # Norton: log_optimal_transport(logits_per_video), i.e. the video x text matrix, video rows first
    q = torch.exp(naive_log_sinkhorn(logits.detach().t()[None], lm, lm, 50) + math.log(2 * n))[0]  # (video, text)
    eye = torch.eye(n)
    assert torch.allclose(v2t, 0.3 * q + 0.7 * eye, atol=1e-5)
    assert torch.allclose(v2t, t2v.t(), atol=1e-7)
    assert torch.allclose(t2v.sum(1), torch.ones(n), atol=1e-5)  # text columns of Q are exact
    assert torch.allclose(t2v.sum(0), torch.ones(n), atol=1e-2)  # 50 iterations on peaked logits: video rows ~1
    q_text = torch.exp(naive_log_sinkhorn(logits.detach()[None], lm, lm, 50) + math.log(2 * n))[0]  # (text, video)
    t2v_text, _ = rectified_targets(logits, rows="text")
    assert torch.allclose(t2v_text, 0.3 * q_text + 0.7 * eye, atol=1e-5)
    assert (t2v_text - t2v).abs().max() > 1e-3, "on peaked logits the orientation matters (unconverged plan)"
    mild, _ = rectified_targets(torch.randn(10, 10, generator=gen))
    assert torch.allclose(mild.sum(1), torch.ones(n), atol=1e-5)
    assert (t2v >= 0).all() and (t2v.diagonal() >= 0.7).all()
    with pytest.raises(ValueError):
        rectified_targets(torch.zeros(3, 4))


def test_rectified_targets_spread_mass_over_duplicates():
    feats = torch.nn.functional.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(4)), dim=-1)
    feats[1] = feats[0]  # captions 0 and 1 are duplicates: a faulty negative pair
    t2v, _ = rectified_targets(10 * feats @ feats.t(), beta=0.3)
    assert t2v[0, 1] > 0.1 and t2v[0, 1] > 10 * t2v[0, 2:].max()


def test_sinkhorn_batch_autodiff_matches_naive_gradient():
    gen = torch.Generator().manual_seed(5)
    cost = torch.rand(4, 5, 6, generator=gen, dtype=torch.float64).float().requires_grad_(True)
    a, b = random_marginals(4, 5, gen), random_marginals(4, 6, gen)
    weights = torch.rand(4, 5, 6, generator=gen)
    (sinkhorn_batch(cost, a, b, reg=0.2, iters=30, grad="autodiff") * weights).sum().backward()
    ref_cost = cost.detach().clone().requires_grad_(True)
    (naive_log_sinkhorn(-ref_cost / 0.2, a.log(), b.log(), 30).exp() * weights).sum().backward()
    assert torch.allclose(cost.grad, ref_cost.grad, atol=1e-5)
    detached = sinkhorn_batch(cost, a, b, reg=0.2, iters=30)
    assert not detached.requires_grad


def test_sinkhorn_batch_rejects_bad_input():
    with pytest.raises(ValueError):
        sinkhorn_batch(torch.zeros(2, 3, 3), torch.ones(2, 3), torch.ones(2, 3), reg=0.0)
    with pytest.raises(ValueError):
        sinkhorn_batch(torch.zeros(2, 3, 3), torch.ones(2, 4), torch.ones(2, 3), reg=0.1)


def test_sinkhorn_batch_fp32_under_bf16_autocast():
    sims = torch.rand(8, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plan = bucket_plan(sims, 0.3)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    assert torch.allclose(plan, bucket_plan(sims, 0.3), atol=1e-7)
