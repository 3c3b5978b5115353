"""Norton head: soft-maximum vs a naive loop, token OT vs per-problem POT, paragraph OT, invariances, training."""
import math
from types import SimpleNamespace

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from vidclip.errors import ConfigError
from vidclip.features import TextEncoderOutput, VideoEncoderOutput
from vidclip.heads import create_head
from vidclip.heads.norton import paragraph_similarity
from vidclip.ops.ot import add_bucket, bucket_marginals
from vidclip.ops.similarity import chunked_similarity

D = 16


def video_batch(b=4, t=5, seed=0, lengths=(5, 3, 5, 1)):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(b, t, D, generator=g)
    mask = torch.arange(t)[None] < torch.tensor(lengths[:b])[:, None]  # (B, T)
    return VideoEncoderOutput(frames=frames, temporal=frames + 0.3 * torch.randn(b, t, D, generator=g), mask=mask)


def text_batch(b=5, length=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(length)[None] < (3 + torch.arange(b) % 5)[:, None]  # (B, L), SOT at 0
    return TextEncoderOutput(pooled=torch.randn(b, D, generator=g), tokens=torch.randn(b, length, D, generator=g),
                             mask=mask)


def pair_matrix(text, video, t, v):
    """Word x frame cosines of one pair over the real words (after SOT) and real frames."""
    words = F.normalize(text.tokens[t][text.mask[t]][1:], dim=-1)
    frames = F.normalize(video.temporal[v][video.mask[v]], dim=-1)
    return words @ frames.t()


def naive_soft_maximum(r, alpha=1.0, mean=True):
    t2v = torch.stack([alpha * torch.log(torch.exp(row / alpha).sum() / (len(row) if mean else 1)) for row in r]).mean()
    v2t = torch.stack([alpha * torch.log(torch.exp(col / alpha).sum() / (len(col) if mean else 1)) for col in r.t()])
    return 0.5 * (t2v + v2t.mean())


def naive_ot_score(r, bucket, eps=0.1, iters=50):
    m, n = r.shape
    a, b = bucket_marginals(torch.ones(1, m, dtype=torch.bool), torch.ones(1, n, dtype=torch.bool))
    cost = -add_bucket(r[None], bucket)[0]
    plan = ot.sinkhorn(a[0].double().numpy(), b[0].double().numpy(), cost.double().numpy(), eps,
                       method="sinkhorn_log", numItermax=iters, stopThr=0.0, warn=False)[:m, :n]
    plan = torch.from_numpy(plan / plan.sum()).float()
    return (plan * r).sum()


@pytest.mark.parametrize("mean", [True, False])
def test_fine_terms_match_naive_loops_and_pot(mean):
    text, video = text_batch(), video_batch()
    lse_head = create_head("norton", fine="lse", lse_mean=mean).eval()
    ot_head = create_head("norton", fine="ot", bucket=0.1).eval()
    t_lse, v_lse = lse_head.encode_text(text), lse_head.encode_video(video)
    got_lse = lse_head.fine_similarity(t_lse, v_lse)
    got_ot = ot_head.fine_similarity(ot_head.encode_text(text), ot_head.encode_video(video))
    quant_head = create_head("norton", fine="ot", bucket_quantile=0.3).eval()
    got_q = quant_head.fine_similarity(quant_head.encode_text(text), quant_head.encode_video(video))
    for t in range(5):
        for v in range(4):
            r = pair_matrix(text, video, t, v)
            assert torch.allclose(got_lse[t, v], naive_soft_maximum(r, 1.0, mean), atol=1e-5)
            assert torch.allclose(got_ot[t, v], naive_ot_score(r, 0.1), atol=1e-5)
            assert torch.allclose(got_q[t, v], naive_ot_score(r, torch.quantile(r.flatten(), 0.3)), atol=1e-5)
    head = create_head("norton").eval()  # defaults: fine = mean of (lse with lse_mean, ot with quantile bucket)
    tf, vf = head.encode_text(text), head.encode_video(video)
    lse_default = create_head("norton", fine="lse").fine_similarity(tf, vf)
    assert torch.allclose(head.fine_similarity(tf, vf), 0.5 * (lse_default + got_q), atol=1e-6)
    fused = (0.5 * tf["pooled"] @ vf["pooled"].t() + head.fine_similarity(tf, vf)) / 1.5
    assert torch.allclose(head.similarity(tf, vf), fused, atol=1e-6)


def test_lse_padding_quirk_reproduces_norton_masking():
    text, video = text_batch(), video_batch()
    head = create_head("norton", fine="lse", lse_mean=False, lse_padding_quirk=True, exclude_sot=False).eval()
    got = head.fine_similarity(head.encode_text(text), head.encode_video(video))
    for t in range(5):
        for v in range(4):  # Norton: R zeroed at padding, padding frames removed from the frame sums only
            words = F.normalize(text.tokens[t], dim=-1) * text.mask[t, :, None]
            frames = F.normalize(video.temporal[v], dim=-1) * video.mask[v, :, None]
            r = words @ frames.t()  # (L, T)
            nw, nf = int(text.mask[t].sum()), int(video.mask[v].sum())
            t2v = sum(torch.log(torch.exp(r[i])[video.mask[v]].sum()) for i in range(len(r))) / nw
            v2t = sum(torch.log(torch.exp(r[:, j])[text.mask[t]].sum()) for j in range(r.shape[1])) / nf
            assert torch.allclose(got[t, v], 0.5 * (t2v + v2t), atol=1e-5)


def test_chunks_equal_full_matrix_and_padding_is_ignored():
    head = create_head("norton").eval()
    text, video = text_batch(), video_batch()
    tf, vf = head.encode_text(text), head.encode_video(video)
    full = head.similarity(tf, vf)
    assert torch.allclose(chunked_similarity(head, tf, vf, text_chunk=2, video_chunk=3), full, atol=1e-6)
    cached = {k: v.float() for k, v in vf.items()}  # evaluation reloads every cached tensor as float
    assert torch.allclose(chunked_similarity(head, tf, cached, text_chunk=2, video_chunk=3), full, atol=1e-6)
    g = torch.Generator().manual_seed(7)
    vp = VideoEncoderOutput(video.frames, torch.cat([video.temporal, 5 * torch.randn(4, 2, D, generator=g)], 1),
                            torch.cat([video.mask, torch.zeros(4, 2, dtype=torch.bool)], 1))
    tp = TextEncoderOutput(text.pooled, torch.cat([text.tokens, 5 * torch.randn(5, 3, D, generator=g)], 1),
                           torch.cat([text.mask, torch.zeros(5, 3, dtype=torch.bool)], 1))
    assert torch.allclose(head.similarity(head.encode_text(tp), head.encode_video(vp)), full, atol=1e-5)


def test_video_features_do_not_depend_on_other_rows():
    head = create_head("norton").eval()
    video = video_batch()
    full = head.encode_video(video)
    alone = head.encode_video(VideoEncoderOutput(video.frames[1:2], video.temporal[1:2], video.mask[1:2]))
    assert set(full) == set(head.video_feature_keys)
    for key in head.video_feature_keys:
        assert torch.allclose(full[key][1:2].float(), alone[key].float(), atol=1e-6), key


def test_learnable_bucket_gets_gradients_and_loss_decreases():
    head = create_head("norton", bucket="learnable", bucket_init=0.1, ot_iters=20).train()
    video, text = video_batch(lengths=(5, 4, 3, 5)), text_batch(b=4)
    leaves = [video.temporal.requires_grad_(True), text.tokens.requires_grad_(True), text.pooled.requires_grad_(True)]
    opt = torch.optim.Adam(list(head.parameters()) + leaves, lr=2e-2)
    losses = []
    for step in range(15):
        logits = 20.0 * head.similarity(head.encode_text(text), head.encode_video(video))
        labels = torch.arange(4)
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert head.bucket.grad is not None and head.bucket.grad.abs() > 0
            assert all(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in leaves)
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_autocast_and_adversarial_inputs_stay_finite():
    head = create_head("norton", bucket="learnable")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sim = head.similarity(head.encode_text(text_batch()), head.encode_video(video_batch()))
    assert torch.isfinite(sim).all()
    frames = torch.zeros(3, 4, D)
    frames[1] = torch.randn(D)  # identical frames
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2] = False  # no real frame
    video = VideoEncoderOutput(frames, frames.clone().requires_grad_(True), mask)
    tmask = torch.zeros(2, 5, dtype=torch.bool)
    tmask[0, :2] = True  # SOT + one word; caption 1 has no real token at all
    text = TextEncoderOutput(torch.zeros(2, D, requires_grad=True), torch.zeros(2, 5, D, requires_grad=True), tmask)
    sim = head.similarity(head.encode_text(text), head.encode_video(video))
    assert torch.isfinite(sim).all()
    sim.sum().backward()
    assert torch.isfinite(video.temporal.grad).all() and torch.isfinite(text.tokens.grad).all()
    assert torch.isfinite(head.bucket.grad)


def naive_paragraph(sent, clips, bucket, eps=0.1, iters=50, scale=1 / 0.07):
    """Per (paragraph, video) pair with POT, min-max over all pairs, plan rescaled to the group size."""
    sims = torch.einsum("aid,bjd->abij", F.normalize(sent, dim=-1), F.normalize(clips, dim=-1))
    sims = (sims - sims.min()) / (sims.max() - sims.min())
    a_n, b_n, m, n = sims.shape
    out = torch.zeros(a_n, b_n)
    for a in range(a_n):
        for b in range(b_n):
            plan_score = naive_ot_score(sims[a, b], bucket, eps, iters) * m  # plan normalised to 1, then x m
            out[a, b] = scale * plan_score
    return out, sims


def test_paragraph_similarity_matches_per_pair_pot_and_percentile_bucket():
    g = torch.Generator().manual_seed(3)
    clips = torch.randn(4, 3, D, generator=g)
    sent = clips + 0.5 * torch.randn(4, 3, D, generator=g)  # paragraph a describes video a
    ref, sims = naive_paragraph(sent, clips, 0.4)
    got = paragraph_similarity(sent, clips, bucket=0.4)
    assert torch.allclose(got, ref, atol=1e-3 * ref.abs().max())
    diag = torch.stack([sims[a, a].diagonal() for a in range(4)]).flatten()
    p = diag.kthvalue(int(0.3 * 12)).values
    assert torch.allclose(paragraph_similarity(sent, clips), naive_paragraph(sent, clips, float(p))[0], rtol=1e-4)
    assert (got.argmax(1) == torch.arange(4)).all()
    # a padded clip slot changes nothing when masked
    padded_clips = torch.cat([clips, 9 * torch.randn(4, 1, D, generator=g)], 1)
    masked = paragraph_similarity(sent, padded_clips, clip_mask=torch.arange(4)[None].expand(4, 4) < 3, bucket=0.4,
                                  minmax=False, mass=3.0)
    assert torch.allclose(masked, paragraph_similarity(sent, clips, bucket=0.4, minmax=False), atol=1e-5)
    with pytest.raises(ValueError, match="bucket"):
        paragraph_similarity(sent[:3], clips)


def test_config_check_and_bad_options():
    cls = type(create_head("norton"))
    cfg = SimpleNamespace(head=SimpleNamespace(name="norton", preset=None, kwargs={"alpha": 1}), patch_tokens=False,
                          context_length=32)
    with pytest.raises(ConfigError, match="alpha.*Valid keys:.*alpha_lse"):
        cls.check_config(cfg)
    cfg.head.kwargs = {"fusion_weight": 0.5, "bucket": "learnable"}
    cls.check_config(cfg)
    with pytest.raises(ValueError):
        create_head("norton", fine="dtw")
    with pytest.raises(ValueError):
        create_head("norton", bucket="median")
    assert math.isclose(create_head("norton", bucket=0.25).bucket_value, 0.25)
    assert np.isclose(create_head("norton", bucket="learnable", bucket_init=0.3).bucket.item(), 0.3)


def test_sentence_group_blocks_and_reference_preset_scores():
    from vidclip.losses import sentence_group_blocks

    cost = torch.arange(25, dtype=torch.float64).reshape(5, 5)
    blocks, mask = sentence_group_blocks(cost, torch.tensor([7, 3, 7, 3, 7]))  # groups in row order: 3 -> 0, 7 -> 1
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    assert blocks[1, 0, :, :2].tolist() == [[1.0, 3.0], [11.0, 13.0], [21.0, 23.0]]  # rows 0,2,4 x columns 1,3
    assert blocks[0, 1].tolist() == [[5.0, 7.0, 9.0], [15.0, 17.0, 19.0], [0.0, 0.0, 0.0]]
    text, video = text_batch(), video_batch()
    head = create_head("norton", **create_head("norton").PRESETS["reference"]).eval()
    tf, vf = head.encode_text(text), head.encode_video(video)
    assert torch.allclose(head.similarity(tf, vf), tf["pooled"] @ vf["pooled"].t())  # reference: pooled cosine
    cost = head.paragraph_cost(tf, vf)
    assert cost.min() >= 0 and cost.max() <= 1 and cost.shape == (5, 4)
    head64 = create_head("norton").double()
    tf64 = {k: v.double() if v.is_floating_point() else v for k, v in tf.items()}
    vf64 = {k: v.double() if v.is_floating_point() else v for k, v in vf.items()}
    assert head64.similarity(tf64, vf64).dtype == torch.float64  # float64 stays float64 (fidelity tests)


def _double(feats):
    return {k: v.double() if v.is_floating_point() else v for k, v in feats.items()}


def test_fast_paths_equal_pot_and_untrimmed_float64():
    """Scaling-form Sinkhorn == POT's log domain; dropping all-padding slots changes nothing (ragged masks, a caption
    without words, chunk boundaries)."""
    text, video = text_batch(b=6, length=10), video_batch(b=4, t=6, lengths=(6, 2, 4, 1))
    text.mask[:, 8:] = False  # slots 8, 9 are padding in every caption: dropped
    text.mask[5, 1:] = False  # a caption with no word after SOT
    for fine in ("ot", "lse", "ot+lse"):
        fast = create_head("norton", fine=fine).double().eval()
        slow = create_head("norton", fine=fine, ot_solver="pot").double().eval()
        tf, vf = _double(fast.encode_text(text)), _double(fast.encode_video(video))
        full = fast.similarity(tf, vf)
        assert full.dtype == torch.float64
        assert torch.allclose(full, slow.similarity(tf, vf), rtol=1e-10, atol=1e-12), fine
        assert torch.allclose(chunked_similarity(fast, tf, vf, text_chunk=2, video_chunk=3, out_dtype=torch.float64),
                              full, rtol=1e-10, atol=1e-12), fine
    quirk = create_head("norton", fine="lse", lse_mean=False, lse_padding_quirk=True).double()
    tf, vf = _double(quirk.encode_text(text)), _double(quirk.encode_video(video))
    sims = torch.einsum("tld,vfd->tvlf", tf["words"], vf["frames"])  # untrimmed (Nt, Nv, L, T)
    untrimmed = quirk.soft_maximum_terms(sims, tf["word_mask"][:, None, :, None], vf["mask"][None, :, None, :])
    trimmed = quirk.soft_maximum_terms(*quirk.word_frame(tf, vf))
    for a, b in zip(trimmed, untrimmed):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_scaling_sinkhorn_equals_pot_with_zero_marginals():
    from vidclip.ops.ot import sinkhorn_batch

    gen = torch.Generator().manual_seed(5)
    cost = torch.rand(7, 5, 4, generator=gen, dtype=torch.float64) * 2 - 1  # (G, m, n)
    rows = torch.rand(7, 5, generator=gen) > 0.3
    cols = torch.rand(7, 4, generator=gen) > 0.3
    rows[:, 0], cols[:, 0] = True, True
    a, b = bucket_marginals(rows, cols, torch.float64)
    cost = torch.cat([cost, torch.zeros(7, 1, 4, dtype=torch.float64)], 1)
    cost = torch.cat([cost, torch.zeros(7, 6, 1, dtype=torch.float64)], 2)  # (G, m+1, n+1) with the bucket
    pot = sinkhorn_batch(cost, a, b, reg=0.1, iters=50, solver="pot")
    fast = sinkhorn_batch(cost, a, b, reg=0.1, iters=50, solver="scaling")
    assert torch.allclose(fast, pot, rtol=1e-10, atol=1e-14)
    assert fast[:, :5][~rows].abs().max() == 0  # zero-mass rows stay exactly zero
    wide = sinkhorn_batch(cost * 100, a, b, reg=0.1, iters=5)  # range 2000 / 0.1: auto falls back to POT
    assert torch.isfinite(wide).all()
