"""Symmetric InfoNCE against a naive loop, soft targets, and Norton's rectified-target wrapper."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from vidclip.config import LossCfg
from vidclip.losses import ContrastiveLoss, identity_targets, symmetric_infonce


def _naive_infonce(logits, t2v=None, v2t=None):
    """Per-row loops with explicit log-sum-exp; soft targets as weighted sums."""
    n = logits.shape[0]
    t2v = torch.eye(n) if t2v is None else t2v
    v2t = torch.eye(n) if v2t is None else v2t
    total_t, total_v = 0.0, 0.0
    for i in range(n):
        row = [float(logits[i, j]) for j in range(n)]
        col = [float(logits[j, i]) for j in range(n)]
        lse_r = math.log(sum(math.exp(x) for x in row))
        lse_c = math.log(sum(math.exp(x) for x in col))
        total_t += -sum(float(t2v[i, j]) * (row[j] - lse_r) for j in range(n))
        total_v += -sum(float(v2t[i, j]) * (col[j] - lse_c) for j in range(n))
    return 0.5 * (total_t / n + total_v / n)


def test_symmetric_infonce_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 7, generator=g, dtype=torch.float64) * 5
    assert float(symmetric_infonce(logits)) == pytest.approx(_naive_infonce(logits), rel=1e-6)


def test_soft_targets_match_naive_and_identity_equals_hard():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 5, generator=g) * 3
    t2v = torch.softmax(torch.randn(5, 5, generator=g), dim=1)
    v2t = torch.softmax(torch.randn(5, 5, generator=g), dim=1)
    assert float(symmetric_infonce(logits, (t2v, v2t))) == pytest.approx(_naive_infonce(logits, t2v, v2t), rel=1e-5)
    assert float(symmetric_infonce(logits, identity_targets(5))) == pytest.approx(float(symmetric_infonce(logits)),
                                                                                  rel=1e-6)


def test_asymmetric_logits_use_both_directions():
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    ce_t = torch.nn.functional.cross_entropy(logits, torch.arange(2))
    ce_v = torch.nn.functional.cross_entropy(logits.t(), torch.arange(2))
    assert not torch.isclose(ce_t, ce_v)
    assert torch.isclose(symmetric_infonce(logits), 0.5 * (ce_t + ce_v))


def test_non_square_logits_are_refused():
    with pytest.raises(ValueError, match="square"):
        symmetric_infonce(torch.zeros(3, 4))


def test_contrastive_loss_without_rectification_is_plain_infonce():
    logits = torch.randn(6, 6)
    cfg = OmegaConf.structured(LossCfg)
    assert torch.equal(ContrastiveLoss(cfg)(logits), symmetric_infonce(logits))
    assert torch.equal(ContrastiveLoss()(logits), symmetric_infonce(logits))


def test_rectified_targets_are_used_and_carry_no_gradient():
    ot = pytest.importorskip("vidclip.ops.ot")
    cfg = OmegaConf.structured(LossCfg)
    cfg.rectify_targets, cfg.rectify_beta, cfg.rectify_epsilon, cfg.rectify_iters = True, 0.3, 1.0, 20
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(6, 6, generator=g) * 4).requires_grad_()
    loss = ContrastiveLoss(cfg)(logits)
    targets = ot.rectified_targets(logits.detach(), beta=0.3, epsilon=1.0, iters=20)
    expected = symmetric_infonce(logits.detach(), targets)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss.detach()) != pytest.approx(float(symmetric_infonce(logits.detach())), rel=1e-3)
    loss.backward()
    # gradient of soft CE wrt logits is softmax - targets (targets constant): rows of each direction sum to 0
    assert torch.allclose(logits.grad.sum(), torch.tensor(0.0), atol=1e-5)
    manual = logits.detach().clone().requires_grad_()
    symmetric_infonce(manual, targets).backward()
    assert torch.allclose(logits.grad, manual.grad, atol=1e-6)
