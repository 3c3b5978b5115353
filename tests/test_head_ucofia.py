"""UCoFiA head: ISA and the three levels vs naive formulas, SK-norm levels, chunk/padding invariance, training,
the reference options (diagonal top-k estimator, scorers, padding, patch-word units) and presets."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vidclip.errors import ConfigError
from vidclip.features import TextEncoderOutput, VideoEncoderOutput
from vidclip.heads import create_head
from vidclip.heads.ucofia import UCoFiAHead, hard_topk, isa, perturbed_topk
from vidclip.ops.similarity import chunked_similarity, chunked_similarity_levels

D, N = 32, 9  # embedding size, patches per frame


def video_batch(b=5, t=4, seed=0, lengths=(4, 3, 4, 1, 2)):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(b, t, D, generator=g)
    mask = torch.arange(t)[None] < torch.tensor(lengths[:b])[:, None]  # (B, T)
    return VideoEncoderOutput(frames=frames, temporal=frames + 0.3 * torch.randn(b, t, D, generator=g), mask=mask,
                              patches=torch.randn(b, t, N, D, generator=g))


def text_batch(b=6, length=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(length)[None] < (2 + torch.arange(b) % 6)[:, None]  # (B, L)
    return TextEncoderOutput(pooled=torch.randn(b, D, generator=g), tokens=torch.randn(b, length, D, generator=g),
                             mask=mask)


def make_head(**kw):
    torch.manual_seed(0)
    args = dict(embed_dim=D, max_words=12, max_frames=6, top_k=2, num_samples=50, pw_scale=1.0)  # cosine units
    args.update(kw)
    return create_head("ucofia", **args)


def perturb_weights(head, scale=0.05):
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.startswith("w_"):
                p.add_(scale * torch.randn_like(p))


def naive_isa(s, w, tau=0.01):
    """ISA on a 1-D vector of real items only."""
    first = torch.softmax(s / tau, 0)
    weights = torch.softmax(first @ w / tau, 0)
    return (weights * s).sum()


def test_isa_identity_and_random_weight_vs_naive():
    g = torch.Generator().manual_seed(0)
    s = 0.05 * torch.randn(3, 7, generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    for w in (torch.eye(10), torch.eye(10) + 0.3 * torch.rand(10, 10, generator=g)):
        got = isa(s, w, mask, 0.01)
        for i in range(3):
            k = int(mask[i].sum())
            assert torch.allclose(got[i], naive_isa(s[i, :k], w[:k, :k]), atol=1e-6)
    # W = I: a = softmax(softmax(s/τ)/τ), a sharpened soft maximum between mean and max
    one = isa(s[:1], torch.eye(7), mask[:1], 0.01)
    assert s[0].mean() <= one <= s[0].max()
    assert torch.equal(isa(s, torch.eye(7), torch.zeros_like(mask), 0.01), torch.zeros(3))


def naive_levels(head, text, video):
    """Every level pair by pair, straight from methods.md §4.1.3 (eval mode, hard top-k)."""
    nt, nv = len(text.pooled), len(video.frames)
    out = {k: torch.zeros(nt, nv) for k in ("vs", "sf", "pw")}
    tau = head.tau
    for j in range(nv):
        m = video.mask[j]
        fr = video.frames[j][m]  # real frames (T', D)
        pix = []
        for i in range(len(fr)):
            score = head.scorer(fr[i:i + 1][None], video.patches[j, m][i:i + 1][None],
                                torch.ones(1, 1, dtype=torch.bool))[0, 0]
            idx = torch.sort(torch.topk(score, head.top_k).indices).values
            pix.append(torch.cat([fr[i:i + 1], video.patches[j, m][i][idx]]))
        pix = torch.cat(pix) @ head.w_pixel_proj  # (P', D)
        vhat = F.normalize(F.normalize(video.temporal[j][m], dim=-1).mean(0), dim=0)
        for t in range(nt):
            s = F.normalize(text.pooled[t], dim=0)
            words = (F.normalize(text.tokens[t][text.mask[t]], dim=-1)) @ head.w_word_proj  # (L', D)
            out["vs"][t, j] = (s @ head.w_sentence) @ (vhat @ head.w_video)
            out["sf"][t, j] = naive_isa(F.normalize(fr, dim=-1) @ s, head.w_frame[:len(fr), :len(fr)], tau)
            a = words @ pix.t()  # (L', P')
            lw, lp = a.shape
            u = torch.stack([naive_isa(a[:, q], head.w_word[:lw, :lw], tau) for q in range(lp)])
            r = torch.stack([naive_isa(a[w], head.w_pixel[:lp, :lp], tau) for w in range(lw)])
            out["pw"][t, j] = 0.5 * (naive_isa(u, head.w_pixel2[:lp, :lp], tau)
                                     + naive_isa(r, head.w_word2[:lw, :lw], tau))
    return out


def test_levels_match_naive_formulas():
    head = make_head().eval()
    perturb_weights(head)
    text, video = text_batch(b=3), video_batch(b=3)
    with torch.no_grad():
        levels = head.similarity_levels(head.encode_text(text), head.encode_video(video))
        ref = naive_levels(head, text, video)
    for name in ("vs", "sf", "pw"):
        assert torch.allclose(levels[name], ref[name], atol=1e-5), name


def test_similarity_is_mean_of_levels_and_chunked_levels_for_sknorm():
    head = make_head().eval()
    perturb_weights(head)
    with torch.no_grad():
        video, text = head.encode_video(video_batch()), head.encode_text(text_batch())
        levels = head.similarity_levels(text, video)
        full = head.similarity(text, video)
    assert set(levels) == {"vs", "sf", "pw"} and all(v.shape == (6, 5) for v in levels.values())
    assert torch.allclose(full, (levels["vs"] + levels["sf"] + levels["pw"]) / 3, atol=1e-6)
    assert torch.allclose(chunked_similarity(head, text, video, 4, 2), full, atol=1e-6)
    cached = {k: v.float() for k, v in video.items()}  # evaluation reloads every cached tensor as float
    assert torch.allclose(chunked_similarity(head, text, cached, 4, 2), full, atol=1e-6)
    chunked = chunked_similarity_levels(head, text, video, 4, 2)
    for name in levels:
        assert torch.allclose(chunked[name], levels[name], atol=1e-6)
    scaled = make_head(pw_scale=0.01).eval()
    scaled.load_state_dict(head.state_dict())
    with torch.no_grad():
        assert torch.allclose(scaled.similarity_levels(text, video)["pw"], 0.01 * levels["pw"], atol=1e-7)


def test_padding_frames_and_words_do_not_change_scores():
    head = make_head().eval()
    perturb_weights(head)
    v, t = video_batch(), text_batch()
    g = torch.Generator().manual_seed(5)
    vp = VideoEncoderOutput(torch.cat([v.frames, 9 * torch.randn(5, 2, D, generator=g)], 1),
                            torch.cat([v.temporal, 9 * torch.randn(5, 2, D, generator=g)], 1),
                            torch.cat([v.mask, torch.zeros(5, 2, dtype=torch.bool)], 1),
                            torch.cat([v.patches, 9 * torch.randn(5, 2, N, D, generator=g)], 1))
    tp = TextEncoderOutput(t.pooled, torch.cat([t.tokens, 9 * torch.randn(6, 3, D, generator=g)], 1),
                           torch.cat([t.mask, torch.zeros(6, 3, dtype=torch.bool)], 1))
    with torch.no_grad():
        base = head.similarity(head.encode_text(t), head.encode_video(v))
        padded = head.similarity(head.encode_text(tp), head.encode_video(vp))
        assert torch.allclose(base, padded, atol=1e-5)
        faithful = make_head(mask_padding_words=False).eval()  # the reference treats padding tokens as words
        faithful.load_state_dict(head.state_dict())
        assert not torch.allclose(faithful.similarity(faithful.encode_text(tp), faithful.encode_video(v)),
                                  faithful.similarity(faithful.encode_text(t), faithful.encode_video(v)), atol=1e-4)


def test_video_features_do_not_depend_on_other_rows():
    head = make_head().eval()
    video = video_batch()
    full = head.encode_video(video)
    alone = head.encode_video(VideoEncoderOutput(video.frames[2:3], video.temporal[2:3], video.mask[2:3],
                                                 video.patches[2:3]))
    assert set(full) == set(head.video_feature_keys)
    for key in head.video_feature_keys:
        assert torch.allclose(full[key][2:3].float(), alone[key].float(), atol=1e-6), key


def test_too_many_frames_or_words_is_a_clear_error():
    head = make_head(max_frames=3, max_words=6).eval()
    with pytest.raises(ValueError, match="max_frames"):
        head.encode_video(video_batch())
    with pytest.raises(ValueError, match="max_words"):
        head.encode_text(text_batch())


def test_topk_selection_modes():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 9, generator=g)
    hard = hard_topk(scores, 3)
    assert hard.shape == (4, 3, 9) and torch.equal(hard.sum((1, 2)), torch.full((4,), 3.0))
    soft = perturbed_topk(scores, 3, 500, 1e-4)
    assert torch.allclose(soft, hard)  # tiny noise: the perturbed top-k is the hard one
    scores.requires_grad_(True)
    soft = perturbed_topk(scores, 3, 500, 0.5)
    assert torch.allclose(soft.sum((1, 2)), torch.full((4,), 3.0))
    (soft * torch.randn(4, 3, 9, generator=g)).sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0
    head = make_head().eval()
    with torch.no_grad():
        assert torch.equal(head.encode_video(video_batch())["pixels"], head.encode_video(video_batch())["pixels"])
        reference = make_head(eval_topk="perturbed", sigma=5.0).eval()
        a, b = (reference.encode_video(video_batch())["pixels"] for _ in range(2))
        assert not torch.equal(a, b)  # the reference's test-time selection is stochastic


def test_eval_drop_wl2_option():
    head = make_head(eval_drop_wl2=True, sigma=1e-6)  # training-mode selection = the hard top-k
    perturb_weights(head)
    with torch.no_grad():
        train_pixels = head.train().encode_video(video_batch())["pixels"]
        eval_pixels = head.eval().encode_video(video_batch())["pixels"]
    assert torch.allclose(train_pixels, eval_pixels @ head.w_pixel_proj, atol=1e-5)


def test_gradients_reach_every_parameter_and_loss_decreases():
    head = make_head().train()
    video, text = video_batch(b=6, lengths=(4, 3, 4, 2, 4, 1)), text_batch(b=6)
    leaves = [video.frames.requires_grad_(True), video.patches.requires_grad_(True), text.tokens.requires_grad_(True),
              text.pooled.requires_grad_(True)]
    opt = torch.optim.Adam(list(head.parameters()) + leaves, lr=1e-2)
    losses = []
    for step in range(12):
        v, t = head.encode_video(video), head.encode_text(text)
        logits = 20.0 * head.similarity(t, v)
        labels = torch.arange(6)
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
        opt.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not missing, f"no gradient reached {missing}"
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_autocast_and_adversarial_inputs_stay_finite():
    head = make_head().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sim = head.similarity(head.encode_text(text_batch()), head.encode_video(video_batch()))
    assert torch.isfinite(sim).all()
    frames = torch.zeros(3, 4, D)
    frames[1] = torch.randn(D)  # identical frames
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2] = False
    video = VideoEncoderOutput(frames.requires_grad_(True), frames, mask, torch.zeros(3, 4, N, D))
    text = TextEncoderOutput(torch.zeros(2, D), torch.zeros(2, 5, D, requires_grad=True), torch.zeros(2, 5).bool())
    sim = head.similarity(head.encode_text(text), head.encode_video(video))
    assert torch.isfinite(sim).all()
    sim.sum().backward()
    assert torch.isfinite(video.frames.grad).all() and torch.isfinite(text.tokens.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_config_checks():
    cls = type(make_head())
    cfg = SimpleNamespace(head=SimpleNamespace(name="ucofia", kwargs={"topk": 3}, preset=None), patch_tokens=True,
                          context_length=32)
    with pytest.raises(ConfigError, match="topk.*Valid keys:.*top_k"):
        cls.check_config(cfg)
    cfg.head.kwargs = {"max_words": 16}
    with pytest.raises(ConfigError, match="max_words"):
        cls.check_config(cfg)
    cfg.head.kwargs, cfg.patch_tokens = {"top_k": 3}, False
    with pytest.raises(ConfigError, match="patch_tokens"):
        cls.check_config(cfg)
    cfg.patch_tokens = True
    cls.check_config(cfg)


# ------------------------------------------------------------------------------------------ reference options
def test_topk_estimators_full_and_diagonal_vs_naive():
    """Same forward; backward = E[1(x+σZ) Zᵀ]/σ in full, or only its diagonal (the reference's estimator)."""
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 7, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 40, 7, generator=g, dtype=torch.float64)
    upstream = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    idx = torch.topk(scores[:, None] + 0.3 * noise, 3, dim=-1).indices.sort(-1).values  # (2, 40, 3)
    one_hot = F.one_hot(idx, 7).double()  # (2, 40, 3, 7)
    full = torch.einsum("bskn,bse,bkn->be", one_hot, noise, upstream) / (40 * 0.3)
    diagonal = torch.einsum("bskn,bsn,bkn->bn", one_hot, noise, upstream) / (40 * 0.3)
    for diag, expected in ((False, full), (True, diagonal)):
        x = scores.clone().requires_grad_(True)
        out = perturbed_topk(x, 3, 40, 0.3, diagonal=diag, noise=noise)
        assert torch.allclose(out, one_hot.mean(1))
        (out * upstream).sum().backward()
        assert torch.allclose(x.grad, expected, atol=1e-12)
    assert not torch.allclose(full, diagonal)


def test_scorer_layout_and_init_options():
    head = make_head(scorer_bias=False, scorer_init_std=0.02)
    linears = [m for m in head.scorer.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.bias is None for m in linears) and len(linears) == 3
    assert all(abs(float(m.weight.detach().std()) - 0.02) < 0.01 for m in linears)
    assert sum(p.numel() for p in make_head().scorer.parameters()) - sum(p.numel() for p in head.scorer.parameters()) \
        == D // 2 + 1  # the two output biases of the default layout
    old = make_head(scorer="video_global")
    assert old.scorer.inp[0].normalized_shape == (2 * D,) and old.scorer.out[0].in_features == 2 * D


def test_video_global_scorer_vs_naive_and_padding():
    """Older PredictorLG: LN(2D)+Linear(2D, D)+GELU on [token, frame CLS]; context = sum over frames of [CLS, CLS]."""
    head = make_head(scorer="video_global", scorer_init_std=0.2).eval()
    v = video_batch()
    sc = head.scorer
    with torch.no_grad():
        got = sc(v.frames, v.patches, v.mask)  # (B, T, N)
        for j in range(len(v.frames)):
            inp = lambda x: sc.inp(x)  # noqa: E731
            ctx = sum(inp(torch.cat([v.frames[j, f], v.frames[j, f]])) for f in range(4) if v.mask[j, f])
            for f in range(4):
                for n in range(N):
                    local = inp(torch.cat([v.patches[j, f, n], v.frames[j, f]]))
                    assert torch.allclose(got[j, f, n], sc.out(torch.cat([local, ctx]))[0], atol=1e-5)
        everything = sc(v.frames, v.patches, torch.ones_like(v.mask))  # the reference sums every frame slot
        assert not torch.allclose(got[3], everything[3], atol=1e-4)  # video 3 has padded frames


def test_padded_frames_take_part_when_not_masked():
    """mask_padding_frames=False: every frame slot enters the sentence-frame and patch-word ISA (the reference)."""
    head = make_head(mask_padding_frames=False).eval()
    perturb_weights(head)
    text, video = text_batch(b=3), video_batch(b=3)
    full = VideoEncoderOutput(video.frames, video.temporal, torch.ones_like(video.mask), video.patches)
    with torch.no_grad():
        levels = head.similarity_levels(head.encode_text(text), head.encode_video(video))
        masked_head = make_head().eval()
        masked_head.load_state_dict(head.state_dict())
        as_real = masked_head.similarity_levels(masked_head.encode_text(text), masked_head.encode_video(full))
        vhat = F.normalize(F.normalize(video.temporal[1, :3], dim=-1).mean(0), dim=0)  # video 1: 3 real frames
    assert torch.allclose(levels["sf"], as_real["sf"], atol=1e-6)  # padded slots counted as frames
    assert torch.allclose(levels["pw"], as_real["pw"], atol=1e-6)
    assert torch.allclose(head.encode_video(video)["pooled"][1], vhat, atol=1e-6)  # pooling: real frames only


def test_patch_word_units_follow_the_bound_logit_scale():
    head = make_head(pw_scale=None).eval()
    perturb_weights(head)
    text, video = text_batch(b=2), video_batch(b=2)
    with torch.no_grad():
        t, v = head.encode_text(text), head.encode_video(video)
        raw = head.patch_word(t, v)
        assert torch.allclose(head.similarity_levels(t, v)["pw"], raw / 100.0)  # unbound: the reference's 100
        scale = torch.tensor(37.0)
        head.bind_logit_scale(lambda: scale)
        levels = head.similarity_levels(t, v)
        logits = scale * head.similarity(t, v)  # what the model computes
        assert torch.allclose(logits, (scale * levels["vs"] + scale * levels["sf"] + raw) / 3, atol=1e-5)


def test_presets_resolve_to_constructor_kwargs():
    from vidclip.heads.base import resolve_head_kwargs

    cfg = SimpleNamespace(name="ucofia", preset="reference", kwargs={"max_frames": 6})
    kwargs = resolve_head_kwargs(UCoFiAHead, cfg)
    assert kwargs["topk_grad"] == "diagonal" and kwargs["mask_padding_frames"] is False and kwargs["max_frames"] == 6
    assert UCoFiAHead.PRESETS["released_checkpoint"]["scorer"] == "video_global"
    for preset in UCoFiAHead.PRESETS.values():
        create_head("ucofia", embed_dim=D, max_words=12, max_frames=6, **preset)


# ------------------------------------------------------------------------------------------ inference fast path
def naive_patch_word(head, text_feats, video_feats):
    """The patch-word level pair by pair over each pair's real word and pixel slots (methods.md §4.1.3)."""
    tau, words, pixels = head.tau, text_feats["words"], video_feats["pixels"]
    out = torch.zeros(len(words), len(pixels), dtype=words.dtype)
    for t in range(len(words)):
        w = words[t][text_feats["word_mask"][t].bool()]  # (L', D)
        for j in range(len(pixels)):
            a = w @ pixels[j][video_feats["pixel_mask"][j].bool()].t()  # (L', P')
            lw, lp = a.shape
            u = torch.stack([naive_isa(a[:, q], head.w_word[:lw, :lw], tau) for q in range(lp)])
            r = torch.stack([naive_isa(a[i], head.w_pixel[:lp, :lp], tau) for i in range(lw)])
            out[t, j] = 0.5 * (naive_isa(u, head.w_pixel2[:lp, :lp], tau) + naive_isa(r, head.w_word2[:lw, :lw], tau))
    return out


@pytest.mark.parametrize("preset", [None, "reference"])
def test_inference_patch_word_equals_the_straightforward_computation(monkeypatch, preset):
    """Trailing padding slots dropped, one (texts, words, videos, pixels) layout, cache-sized tiles without autograd:
    equal (float64) to the pair-by-pair ISA over each pair's real slots, for ragged words, padded frames, an
    all-padding tail and tile boundaries that do not divide the block, with and without autograd."""
    import vidclip.heads.ucofia as ucofia

    kwargs = dict(UCoFiAHead.PRESETS[preset]) if preset else {}
    kwargs.update(eval_topk="hard")
    head = make_head(**kwargs).double().eval()
    perturb_weights(head)
    video = video_batch(b=5, lengths=(3, 1, 2, 3, 1))  # frame slot 4 is padding in every video
    text = text_batch(b=7, length=11)  # at most 7 real words: slots 7..10 are padding in every caption
    video = VideoEncoderOutput(*(x.double() if x.is_floating_point() else x for x in
                                 (video.frames, video.temporal, video.mask, video.patches)))
    text = TextEncoderOutput(text.pooled.double(), text.tokens.double(), text.mask)
    with torch.no_grad():
        t, v = head.encode_text(text), head.encode_video(video)
    straight = naive_patch_word(head, t, v)
    with torch.enable_grad():  # the autograd path: one block, no tiles
        assert torch.allclose(head.patch_word(t, v).detach(), straight, rtol=1e-12, atol=1e-12)
    words, pixels = 11, v["pixels"].shape[1]
    for rows, cols in ((1, 1), (2 * words + 1, 3 * pixels - 1), (1 << 12, 1 << 12)):  # 1 x 1 pairs, ragged, 1 tile
        monkeypatch.setattr(ucofia, "PW_TILE_TEXT_ROWS", rows)
        monkeypatch.setattr(ucofia, "PW_TILE_PIXEL_COLS", cols)
        with torch.no_grad():
            fast = head.patch_word(t, v)
        assert torch.allclose(fast, straight, rtol=1e-12, atol=1e-12), (rows, cols)
    with torch.no_grad():
        full = head.similarity(t, v)
        assert torch.allclose(chunked_similarity(head, t, v, 3, 2, out_dtype=torch.float64), full, rtol=1e-12,
                              atol=1e-12)


def test_pair_bytes_bound_the_planned_blocks():
    from vidclip.ops.similarity import plan_chunks

    head = make_head().eval()
    with torch.no_grad():
        t, v = head.encode_text(text_batch(length=12)), head.encode_video(video_batch())
    per_pair = head.pair_bytes(t, v)
    assert per_pair >= 4 * 4 * v["frames"].shape[1]  # the sentence-frame ISA buffers of a pair
    text_chunk, video_chunk = plan_chunks(head, t, v, max_block_mb=per_pair * 6 / 2**20)
    assert text_chunk * video_chunk <= 6
