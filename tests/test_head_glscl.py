"""GLSCL head: naive re-implementations of the global pooling and of IDL/ICL, chunk/padding invariance, training."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vidclip.errors import ConfigError
from vidclip.features import TextEncoderOutput, VideoEncoderOutput
from vidclip.heads import create_head
from vidclip.ops.similarity import chunked_similarity

D = 32


def video_batch(b=5, t=6, seed=0, lengths=(6, 4, 6, 2, 5)):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(b, t, D, generator=g)
    mask = torch.arange(t)[None] < torch.tensor(lengths[:b])[:, None]  # (B, T)
    return VideoEncoderOutput(frames=frames, temporal=frames + 0.3 * torch.randn(b, t, D, generator=g), mask=mask)


def text_batch(b=7, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(length)[None] < (3 + torch.arange(b) % 6)[:, None]  # (B, L)
    return TextEncoderOutput(pooled=torch.randn(b, D, generator=g), tokens=torch.randn(b, length, D, generator=g),
                             mask=mask)


def make_head(**kw):
    torch.manual_seed(0)
    args = dict(embed_dim=D, num_queries=4, decoder_layers=2, num_heads=2, dropout=0.0)
    args.update(kw)
    return create_head("glscl", **args)


def pad(output, extra, seed=9):
    """Append ``extra`` padding positions filled with large garbage (mask False)."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(output, VideoEncoderOutput):
        b, _, d = output.frames.shape
        junk = lambda: 50 * torch.randn(b, extra, d, generator=g)  # noqa: E731
        return VideoEncoderOutput(torch.cat([output.frames, junk()], 1), torch.cat([output.temporal, junk()], 1),
                                  torch.cat([output.mask, torch.zeros(b, extra, dtype=torch.bool)], 1))
    b, _, d = output.tokens.shape
    return TextEncoderOutput(output.pooled, torch.cat([output.tokens, 50 * torch.randn(b, extra, d, generator=g)], 1),
                             torch.cat([output.mask, torch.zeros(b, extra, dtype=torch.bool)], 1))


def naive_global(eot, frames, mask, temp, reference_masking):
    out = torch.zeros(len(eot), len(frames))
    for i, e in enumerate(eot):
        for j, (f, m) in enumerate(zip(frames, mask, strict=True)):
            logits = f @ e / temp
            if reference_masking:
                a = torch.softmax(logits, 0) * m.float()
            else:
                a = torch.softmax(logits[m], 0)
                f = f[m]
            vbar = (a[:, None] * f).sum(0)
            out[i, j] = F.cosine_similarity(e, vbar, dim=0)
    return out


@pytest.mark.parametrize("reference_masking", [False, True])
def test_global_similarity_matches_naive(reference_masking):
    """The reference pooling (softmax over all frames, times the mask, not renormalised) and masking before the
    softmax both give the head's scores: the cosine cancels the scale of the pooled vector."""
    head = make_head().eval()
    video, text = head.encode_video(video_batch()), head.encode_text(text_batch())
    got = head.global_similarity(text, video)
    ref = naive_global(text_batch().pooled, video_batch().temporal, video_batch().mask, 3.0, reference_masking)
    assert torch.allclose(got, ref, atol=1e-5)


def test_local_and_total_similarity_match_naive():
    head = make_head(local_weight=0.5).eval()
    video, text = head.encode_video(video_batch()), head.encode_text(text_batch())
    sq, tq = video["queries"], text["queries"]
    local = torch.stack([torch.stack([(tq[i] * sq[j]).sum(-1).mean() for j in range(len(sq))]) for i in range(len(tq))])
    assert torch.allclose(head.local_similarity(text, video), local, atol=1e-6)
    assert torch.allclose(head.similarity(text, video), head.global_similarity(text, video) + 0.5 * local, atol=1e-6)
    assert torch.allclose(sq.norm(dim=-1), torch.ones(sq.shape[:2]), atol=1e-5)


def test_idl_icl_match_naive_loops():
    head = make_head(alpha=1e-4, beta=0.02).eval()
    g = torch.Generator().manual_seed(3)
    s = F.normalize(torch.randn(6, 4, D, generator=g), dim=-1)
    t = F.normalize(torch.randn(6, 4, D, generator=g), dim=-1)
    nq = 4
    gram = sum(s[b] @ s[b].t() for b in range(6)) / 6
    hinge = 0.0
    for i in range(nq):
        for j in range(nq):
            if i != j:
                hinge += max(0.0, 0.1 + gram[i, j] - gram[i, i]) + max(0.0, 0.1 + gram[i, j] - gram[j, j])
    hinge /= nq * (nq - 1)
    assert torch.allclose(head.intra_diversity(s), torch.tensor(float(hinge)), atol=1e-6)
    for norm, divisor in (("reference", nq), ("batch_mean", 6)):
        head.icl_normalization = norm
        cross = sum(s[b] @ t[b].t() for b in range(6)) / divisor
        mse = ((s.mean(0) - t.mean(0)) ** 2).mean()
        ref = mse + 0.02 * sum((cross[k, k] - 0.75) ** 2 for k in range(nq))
        assert torch.allclose(head.inter_consistency(s, t), ref, atol=1e-6)
    losses = head.aux_losses({"queries": t}, {"queries": s})
    assert set(losses) == {"idl", "icl"}
    assert torch.allclose(losses["idl"], 1e-4 * head.intra_diversity(s))


def test_chunks_equal_full_matrix():
    head = make_head().eval()
    video, text = head.encode_video(video_batch()), head.encode_text(text_batch())
    full = head.similarity(text, video)
    assert torch.allclose(chunked_similarity(head, text, video, text_chunk=3, video_chunk=2), full, atol=1e-6)
    cached = {k: v.detach().float() for k, v in video.items()}  # evaluation reloads every cached tensor as float
    assert torch.allclose(chunked_similarity(head, text, cached, text_chunk=3, video_chunk=2), full, atol=1e-6)


def test_padding_frames_and_words_do_not_change_scores():
    head = make_head().eval()
    with torch.no_grad():
        base = head.similarity(head.encode_text(text_batch()), head.encode_video(video_batch()))
        padded = head.similarity(head.encode_text(pad(text_batch(), 4)), head.encode_video(pad(video_batch(), 3)))
    assert torch.allclose(base, padded, atol=1e-5)
    faithful = make_head(mask_memory=False).eval()  # the reference attends to padding
    with torch.no_grad():
        changed = faithful.similarity(faithful.encode_text(pad(text_batch(), 4)), faithful.encode_video(video_batch()))
        plain = faithful.similarity(faithful.encode_text(text_batch()), faithful.encode_video(video_batch()))
    assert not torch.allclose(changed, plain, atol=1e-3)


def test_video_features_do_not_depend_on_other_rows():
    head = make_head().eval()
    full = head.encode_video(video_batch())
    alone = head.encode_video(VideoEncoderOutput(*(x[2:3] for x in (video_batch().frames, video_batch().temporal,
                                                                    video_batch().mask))))
    assert set(full) == set(head.video_feature_keys)
    for key in head.video_feature_keys:
        assert torch.allclose(full[key][2:3].float(), alone[key].float(), atol=1e-6), key


def train_steps(head, steps=15):
    video, text = video_batch(b=6, lengths=(6, 5, 4, 6, 3, 6)), text_batch(b=6)
    leaves = [video.temporal.requires_grad_(True), text.pooled.requires_grad_(True), text.tokens.requires_grad_(True)]
    opt = torch.optim.Adam(list(head.parameters()) + leaves, lr=1e-2)
    losses = []
    for _ in range(steps):
        v, t = head.encode_video(video), head.encode_text(text)
        logits = 20.0 * head.similarity(t, v)
        labels = torch.arange(6)
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
        loss = loss + sum(head.aux_losses(t, v).values())
        opt.zero_grad()
        loss.backward()
        if not losses:
            missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not missing, f"no gradient reached {missing}"
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_gradients_reach_every_parameter_and_loss_decreases():
    losses = train_steps(make_head().train())
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_autocast_and_adversarial_inputs_stay_finite():
    head = make_head().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v, t = head.encode_video(video_batch()), head.encode_text(text_batch())
        assert torch.isfinite(head.similarity(t, v)).all()
    frames = torch.zeros(3, 4, D)
    frames[1] = torch.randn(D)  # identical frames
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2] = False  # a video with no real frame
    video = VideoEncoderOutput(frames, frames.clone().requires_grad_(True), mask)
    text = TextEncoderOutput(torch.zeros(3, D, requires_grad=True), torch.zeros(3, 5, D), torch.ones(3, 5).bool())
    v, t = head.encode_video(video), head.encode_text(text)
    sim = head.similarity(t, v)
    assert torch.isfinite(sim).all()
    (sim.sum() + sum(head.aux_losses(t, v).values())).backward()
    assert torch.isfinite(video.temporal.grad).all() and torch.isfinite(text.pooled.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_config_check_lists_valid_kwargs():
    cls = type(make_head())
    cfg = SimpleNamespace(head=SimpleNamespace(name="glscl", preset=None, kwargs={"num_querys": 8}),
                          patch_tokens=False, context_length=32)
    with pytest.raises(ConfigError, match="num_querys.*Valid keys:.*num_queries"):
        cls.check_config(cfg)
    cfg.head.kwargs = {"num_queries": 8, "beta": 0.005}
    cls.check_config(cfg)
    with pytest.raises(ValueError):
        make_head(icl_normalization="sum")
