"""UCoFiA fidelity: the ``reference`` preset equals UCoFiA's code (Ziyang412/UCoFiA @ 6098be2), end to end.

The re-statement below is written from the reference code's behaviour (``train/modules/modeling_ucofia.py``
``_loose_similarity``, ``differential_topk.py``, ``eval_t2v``/``eval_v2t`` ``main_ucofia.eval_epoch``), in float64,
with the reference's own tensor layout: every one of the 32 word slots (padding included) and every frame slot
(padded frames included) takes part in the ISA, the patch-word level stays unscaled while the other two are multiplied
by ``exp(logit_scale)``, the scorer is PredictorLG without biases, the perturbed top-k backward keeps the diagonal of
the estimator. It starts from the encoder outputs of the vidclip model (frames, patch tokens, seqTransf output, text
tokens: equal to the reference's to 1e-15, checked by the oracle run recorded in the note of the change) and runs
autograd through the whole model, so gradients reach the CLIP towers through both computations.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vidclip
from vidclip.config import load_config
from vidclip.heads import HEADS
from vidclip.objective import build_objective
from vidclip.postprocess import apply_postprocess

T, B, K, SAMPLES, SIGMA = 4, 3, 3, 64, 0.05
LENGTHS = (4, 2, 3)  # real frames per video
WORDS = (5, 9, 3)  # real tokens (SOT..EOT) per caption, padded to 32


def build(preset="reference", **kwargs):
    torch.manual_seed(0)
    head = {"name": "ucofia", "preset": preset, "kwargs": dict(max_frames=T, num_samples=SAMPLES, **kwargs)}
    model = vidclip.create_model("tiny-ucofia", head=head, temporal={"type": "seq_transformer", "num_layers": 2,
                                 "layer_norm_eps": 1e-12}, padded_frames="encode_zero_image").double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("head.w_"):
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))  # ISA matrices away from I
            elif name.startswith("head.scorer.") and p.ndim == 2:  # at N(0, 0.02) the tiny scorer's gradients
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))  # underflow (~1e-39)
        model.logit_scale.fill_(math.log(70.0))  # not 100: pw must stay unscaled for any scale
    return model


def inputs(seed=0, b=B, lengths=LENGTHS, words=WORDS):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, T, 3, 32, 32, generator=g, dtype=torch.float64)
    mask = torch.arange(T)[None] < torch.tensor(lengths[:b])[:, None]  # (B, T)
    video[~mask] = 0.0  # padded frames: the zero (normalised) image, as the reference loader writes them
    ids = torch.zeros(b, 32, dtype=torch.long)
    for i, n in enumerate(words[:b]):
        ids[i, 0], ids[i, n - 1] = 49406, 49407
        ids[i, 1:n - 1] = torch.randint(1, 49000, (n - 2,), generator=g)
    return video, mask, ids


class NoiseTape:
    """Record the perturbation noise vidclip draws, so the re-statement uses the same numbers."""

    def __init__(self, monkeypatch):
        self.noise = []
        randn = torch.randn

        def recording(*size, **kw):
            out = randn(*size, **kw)
            if len(size) == 3 and size[1] == SAMPLES:
                self.noise.append(out)
            return out

        monkeypatch.setattr(torch, "randn", recording)


# ------------------------------------------------------------------------------------------ the re-statement
class DiagonalPerturbedTopK(torch.autograd.Function):
    """differential_topk.py: forward = mean one-hot of the sorted top-k of x + σZ; backward keeps
    E[one_hot_{k,d} Z_d] / σ only (``einsum("bnkd,bnd->bkd")`` then ``einsum("bkd,bkd->bd")``)."""

    @staticmethod
    def forward(ctx, x, noise):
        idx = torch.topk(x[:, None, :] + SIGMA * noise, K, dim=-1).indices.sort(-1).values  # (b, n, k)
        one_hot = F.one_hot(idx, x.shape[1]).to(x.dtype)  # (b, n, k, d)
        ctx.save_for_backward(one_hot, noise)
        return one_hot.mean(1)

    @staticmethod
    def backward(ctx, grad):
        one_hot, noise = ctx.saved_tensors
        expected = torch.einsum("bnkd,bnd->bkd", one_hot, noise) / noise.shape[1] / SIGMA
        return torch.einsum("bkd,bkd->bd", grad, expected), None


def predictor_lg(scorer, tokens):
    """PredictorLG on (b, 1+N, D) tokens of one frame each (CLS first) -> (b, 1+N) scores in (-1, 1)."""
    ln, lin1 = scorer.inp[0], scorer.inp[1]
    x = F.gelu(F.layer_norm(tokens, (tokens.shape[-1],), ln.weight, ln.bias, 1e-5) @ lin1.weight.t())
    x = torch.cat([x, x[:, :1].expand_as(x)], -1)
    hidden = F.gelu(x @ scorer.out[0].weight.t())
    return torch.tanh(hidden @ scorer.out[2].weight.t()).squeeze(-1)


def ref_pixels(head, frames, patches, noise, project):
    """VisualTokenSelection: per frame slot (padding included) the CLS and the K perturbed-top-k patches."""
    b, t, n, d = patches.shape
    tokens = torch.cat([frames[:, :, None], patches], 2).reshape(b * t, n + 1, d)  # (b*t, 1+N, D)
    score = predictor_lg(head.scorer, tokens)[:, 1:]  # (b*t, N)
    chosen = torch.einsum("bkl,bld->bkd", DiagonalPerturbedTopK.apply(score, noise), tokens[:, 1:])
    pixels = torch.cat([tokens[:, :1], chosen], 1).reshape(b, t * (1 + K), d)  # (b, t*(1+K), D)
    return pixels @ head.w_pixel_proj if project else pixels


def ref_levels(head, enc_v, enc_t, noise, ls, project):
    """_loose_similarity of the training code (eval trees: W_l2 dropped) -> the three level logits (τ: head.tau,
    0.01 in the reference)."""
    tau = head.tau
    v = F.normalize(enc_v.temporal, dim=-1) * enc_v.mask[..., None]
    v = F.normalize(v.sum(1) / enc_v.mask.sum(1, keepdim=True), dim=-1)  # (Nv, D)
    frames = F.normalize(enc_v.frames, dim=-1)  # every slot
    s = F.normalize(enc_t.pooled, dim=-1)
    words = F.normalize(enc_t.tokens, dim=-1)  # all 32 slots
    pixels = ref_pixels(head, enc_v.frames, enc_v.patches, noise, project)
    vs = ls * (s @ head.w_sentence) @ (v @ head.w_video).t()
    fs = torch.matmul(s, frames.permute(0, 2, 1))  # (Nv, Nt, T)
    sf = ls * torch.sum(fs * torch.softmax(torch.softmax(fs / tau, -1) @ head.w_frame[:T, :T] / tau, -1), -1).t()
    nt, nw, d = words.shape
    nv, npx, _ = pixels.shape
    fine = ((words.reshape(-1, d) @ head.w_word_proj) @ pixels.reshape(-1, d).t()).view(nt, nw, nv, npx)
    word_level = torch.sum(torch.softmax(torch.matmul(torch.softmax(fine / tau, 1).permute(0, 2, 3, 1),
                                                      head.w_word) / tau, -1).permute(0, 3, 1, 2) * fine, 1)
    frame_level = torch.sum(torch.softmax(torch.matmul(torch.softmax(fine / tau, -1), head.w_pixel) / tau, -1)
                            * fine, -1)
    s2f = torch.sum(torch.softmax(torch.matmul(torch.softmax(word_level / tau, -1), head.w_pixel2) / tau, -1)
                    * word_level, -1)
    v2w = torch.sum(torch.softmax(torch.matmul(torch.softmax(frame_level / tau, 1).permute(0, 2, 1),
                                               head.w_word2) / tau, -1).permute(0, 2, 1) * frame_level, 1)
    return vs, sf, (s2f + v2w) / 2


def cross_entropy_both(logits):
    """CrossEn on the matrix and its transpose, averaged (the reference's training loss)."""
    diag = torch.arange(len(logits))
    rows, cols = torch.log_softmax(logits, -1)[diag, diag], torch.log_softmax(logits.t(), -1)[diag, diag]
    return -(rows.mean() + cols.mean()) / 2


def sinkhorn_bias(bank, iters=4):
    """eval_*/main_ucofia.sinkhorn_knopp: the column-side log_softmax(log b) of 4 scaling steps on exp(bank)."""
    m = bank.max()
    kernel = torch.exp(bank - m)
    b = 1 / kernel.sum(0)
    for _ in range(iters):
        a = 1 / (kernel @ b)
        b = 1 / (a @ kernel)
    return torch.log_softmax(b.log() - m, 0)


# ------------------------------------------------------------------------------------------------- tests
def encoder_outputs(model, video, mask, ids):
    return model.encode_video_outputs(video, mask), model.text_encoder(ids)


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("train, tau", [(True, 0.01), (False, 0.01), (True, 0.2)])
def test_reference_preset_scores_loss_and_gradients(monkeypatch, train, tau):
    """tau=0.2 (not the reference's 0.01, same formula) keeps the ISA from saturating, so the scorer's gradients
    (through the perturbed top-k estimator) are large enough to tell the diagonal estimator from the full one."""
    model = build(tau=tau).train(train)
    tape = NoiseTape(monkeypatch)
    video, mask, ids = inputs()
    outputs = model({"video": video, "video_mask": mask, "text_tokens": ids})  # the training forward
    ours, loss_ours = outputs["logits"], build_objective(model).losses(outputs)["loss"]
    enc_v, enc_t = encoder_outputs(model, video, mask, ids)  # a second pass: the re-statement's own graph
    ls = model.logit_scale.exp()
    vs, sf, pw = ref_levels(model.head, enc_v, enc_t, tape.noise[-1], ls, project=train)
    theirs = (vs + sf + pw) / 3
    assert rel(ours, theirs) < 1e-6
    loss_theirs = cross_entropy_both(theirs)
    assert abs(float(loss_ours - loss_theirs)) < 1e-6 * abs(float(loss_theirs))
    if not train:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad(loss_ours, params, retain_graph=True, allow_unused=True)
    g_theirs = torch.autograd.grad(loss_theirs, params, allow_unused=True)
    largest = max(float(g.norm()) for g in g_theirs if g is not None)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if tau > 0.1:  # the estimator comparison below is not vacuous
        assert float(g_theirs[names.index("head.scorer.inp.1.weight")].norm()) > 1e-5 * largest
    for name, a, b in zip(names, g_ours, g_theirs):
        if b is None or float(b.norm()) < 1e-9 * largest:  # saturated softmax: fp noise only
            continue
        assert a is not None and rel(a, b) < 1e-4, name
    assert sum(1 for n in names if "scorer" in n) == 5  # no biases in the reference scorer


def test_released_checkpoint_scorer_is_the_video_global_predictor(monkeypatch):
    """eval_t2v's PredictorLG: LN(2D) on [token, frame CLS] -> D; video context = sum over every frame slot."""
    model = build("released_checkpoint").eval()
    tape = NoiseTape(monkeypatch)
    video, mask, _ = inputs()
    enc_v = model.encode_video_outputs(video, mask)
    pixels = model.head.encode_video(enc_v)["pixels"]
    sc = model.head.scorer
    b, t, n, d = enc_v.patches.shape
    tokens = torch.cat([enc_v.frames[:, :, None], enc_v.patches], 2).reshape(b * t, n + 1, d)
    x = torch.cat([tokens, tokens[:, :1].expand_as(tokens)], -1)
    x = F.gelu(F.layer_norm(x, (2 * d,), sc.inp[0].weight, sc.inp[0].bias, 1e-5) @ sc.inp[1].weight.t())
    video_ctx = x[:, 0].reshape(b, t, d).sum(1).repeat_interleave(t, 0)[:, None].expand_as(x)
    x = torch.cat([x, video_ctx], -1)
    score = torch.tanh(F.gelu(x @ sc.out[0].weight.t()) @ sc.out[2].weight.t()).squeeze(-1)[:, 1:]
    chosen = torch.einsum("bkl,bld->bkd", DiagonalPerturbedTopK.apply(score, tape.noise[-1]), tokens[:, 1:])
    expected = torch.cat([tokens[:, :1], chosen], 1).reshape(b, -1, d)  # W_l2 dropped at test
    assert rel(pixels, expected) < 1e-6


def test_sknorm_per_level_with_training_banks(monkeypatch):
    """eval_t2v / eval_v2t: SK-norm on each level's logits, then the average of the three levels; t2v with a bank of
    training captions (one bias per test video), v2t with a bank of training videos (one bias per test text)."""
    model = build().eval()
    NoiseTape(monkeypatch)
    video, mask, ids = inputs(0, b=3)
    bank_video, bank_mask, bank_ids = inputs(5, b=3, lengths=(1, 4, 3), words=(7, 4, 12))
    bank_ids = torch.cat([bank_ids, ids[:1].flip(1).roll(1, 1)])  # 4 bank captions, 3 bank videos
    head, ls = model.head, model.scale()
    with torch.no_grad():
        tv, vv = model.encode_text(ids), model.encode_video(video, mask)
        test = {k: ls * v for k, v in head.similarity_levels(tv, vv).items()}  # (N_t, N_v) logits
        bank_t = {k: ls * v for k, v in head.similarity_levels(model.encode_text(bank_ids), vv).items()}
        bank_v = {k: (ls * v).t() for k, v in
                  head.similarity_levels(tv, model.encode_video(bank_video, bank_mask)).items()}  # (N_bv, N_t)
    t2v = sum(test[k] + sinkhorn_bias(bank_t[k])[None, :] for k in test) / 3
    v2t = sum(test[k] + sinkhorn_bias(bank_v[k])[:, None] for k in test) / 3
    out, label = apply_postprocess("sknorm", sum(test.values()) / 3, levels=test, bank_levels=bank_t,
                                   bank_levels_v2t=bank_v, units="logits", logit_scale=float(ls))
    assert rel(torch.as_tensor(out["t2v"]), t2v) < 1e-12 and rel(torch.as_tensor(out["v2t"]), v2t) < 1e-12
    assert "per level" in label
    single, _ = apply_postprocess("sknorm", sum(test.values()) / 3, bank_sim=sum(bank_t.values()) / 3,
                                  units="logits", logit_scale=float(ls))
    assert rel(torch.as_tensor(single["t2v"]), t2v) > 1e-3  # one bias on the averaged levels is not UCoFiA's


RECIPES = [f"configs/{ds}/ucofia_{arch}.yaml" for ds in ("msrvtt", "msvd", "didemo") for arch in ("b16", "b32")]


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipes_use_the_reference_setting(recipe):
    from vidclip.heads.base import resolve_head_kwargs

    cfg = load_config(recipe)
    head_cls = HEADS.get("ucofia")
    assert cfg.model.head.preset == "reference"
    resolved = resolve_head_kwargs(head_cls, cfg.model.head)
    for key, value in head_cls.PRESETS["reference"].items():
        assert resolved[key] == value, key
    # model- and training-level behaviour of the reference (CLIP4Clip-style seqTransf, zero image for padded frames,
    # causal-only text tower, logit scale trained with CLIP at 1e-7 so it stays at 100)
    assert cfg.model.temporal.layer_norm_eps == 1e-12 and cfg.model.padded_frames == "encode_zero_image"
    assert cfg.model.text_key_padding_mask is False
    assert cfg.train.param_groups == "clip4clip_reference" and cfg.train.clip_lr == 1e-7
    assert resolved.get("max_frames", 12) == max(cfg.data.num_frames, cfg.data.test_num_frames or 0)


@pytest.mark.slow
def test_eval_sknorm_on_ucofia_is_per_level_with_both_banks(tmp_path):
    """evaluate(): eval.postprocess=sknorm on a UCoFiA model builds the caption bank and the training-video bank
    from the training list and normalises per level in both directions (a broken test video stays a NaN column)."""
    from vidclip.data.lists import read_list, write_list
    from vidclip.data.synthetic import make_synthetic_dataset
    from vidclip.engine.evaluate import evaluate

    make_synthetic_dataset(tmp_path, num_train=4, num_val=2, num_test=4, seed=3, size=32, frames=8,
                           captions_per_video=2, show_progress=False)
    records = read_list(tmp_path / "synthetic_test.jsonl")
    (tmp_path / "videos" / "broken.mp4").write_text("not a video")
    records[1].path = "broken.mp4"
    write_list(records, tmp_path / "test.jsonl")
    cfg = load_config(None, ["model.arch=tiny-ucofia", "model.head.preset=reference",
                             "model.head.kwargs.eval_topk=hard", f"data.videos_root={tmp_path / 'videos'}",
                             f"data.train_list={tmp_path / 'synthetic_train.jsonl'}",
                             f"data.test_list={tmp_path / 'test.jsonl'}", "data.num_frames=4", "data.image_size=32",
                             "data.num_workers=0", "eval.postprocess=sknorm", "eval.video_bank_size=3"])
    torch.manual_seed(0)
    model = vidclip.create_model(cfg.model)
    report = evaluate(cfg, model, torch.device("cpu"), show_progress=False)
    assert report["postprocess"].startswith("sknorm per level (pw, sf, vs")
    assert "both directions" in report["postprocess"] and report["num_failed_videos"] == 1
    assert report["raw"]["t2v"]["n_queries"] == report["t2v"]["n_queries"] == 3  # the broken video's query dropped
