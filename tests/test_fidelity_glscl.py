"""GLSCL reference setting == the reference code (zchoi/GLSCL @06979f8), end to end, float64.

The reference computation is re-stated here from the reference's behaviour (its modeling.py, module_clip.py and
module_cross.py), reading the weights of a tiny random vidclip model; no vidclip forward code is used by the
re-statement. What the reference does, and the re-statement does:

- frames: every frame slot goes through CLIP, padded slots as the zero tensor (zero after normalisation, the
  reference dataloader's ``np.zeros`` video);
- seqTransf (CLIP4Clip): + frame positions, residual-attention blocks with -1e6 on padded keys and TF-style
  LayerNorm (eps 1e-12), + the input frames;
- text tower: causal mask and key-padding mask; EOT feature and every token row (padding rows included);
- global score: softmax(eot . f / temp) over all frames, times the frame mask, pooled, cosine;
- local score: the shared queries through ONE ``nn.TransformerDecoder`` (post-norm, ReLU, 8 heads, FF 2048) reading
  every frame row / every token row (no memory mask); mean over queries of the cosine;
- losses: symmetric cross-entropy of exp(logit_scale) x (global + 0.5 local), alpha x IDL, ICL (beta inside).

The re-statement was validated against the reference modules run as an oracle (outside this repository) with the
same weights and inputs: scores, losses and gradients agree to 1e-14 relative in float64.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vidclip.config import load_config
from vidclip.heads.base import resolve_head_kwargs
from vidclip.heads.glscl import GLSCLHead
from vidclip.models.factory import create_model
from vidclip.objective import build_objective
from vidclip.tokenizer import tokenize

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a man is singing on stage with a guitar", "dogs", "a red car drives along a wet mountain road at night",
            "someone cooks pasta in a kitchen while talking to the camera about the recipe and the ingredients "
            "she uses every day"]
LENGTHS = [6, 4, 3, 6]  # real frames per video; T = 6
SEQ_EPS = 1e-12  # CLIP4Clip's TF-style LayerNorm in seqTransf
BETA = {"msrvtt": 0.02, "msvd": 0.005, "didemo": 0.005, "activitynet": 0.005}  # the reference train_*.sh scripts
REFERENCE_KEYS = {"text_key_padding_mask": True, "padded_frames": "encode_zero_image"}


# ----------------------------------------------------------------------------------------- the re-statement
def _layer_norm(x, ln, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * ln.weight + ln.bias


def _attention(q_in, kv_in, mha, bias=None):
    """Multi-head attention from ``nn.MultiheadAttention`` weights; ``bias`` additive (B, Lq, Lk)."""
    e, h = q_in.shape[-1], mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    heads = lambda t: t.reshape(t.shape[0], t.shape[1], h, e // h).transpose(1, 2)  # (B, h, L, e/h)  # noqa: E731
    q = heads(q_in @ w[:e].t() + b[:e])
    k = heads(kv_in @ w[e:2 * e].t() + b[e:2 * e])
    v = heads(kv_in @ w[2 * e:].t() + b[2 * e:])
    logits = q @ k.transpose(-1, -2) / math.sqrt(e // h)  # (B, h, Lq, Lk)
    if bias is not None:
        logits = logits + bias[:, None]
    out = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], e)
    return out @ mha.out_proj.weight.t() + mha.out_proj.bias


def _clip_block(x, blk, bias=None, eps=1e-5):
    h = _layer_norm(x, blk.ln_1, eps)
    x = x + _attention(h, h, blk.attn, bias)
    h = _layer_norm(x, blk.ln_2, eps) @ blk.mlp.c_fc.weight.t() + blk.mlp.c_fc.bias
    return x + (h * torch.sigmoid(1.702 * h)) @ blk.mlp.c_proj.weight.t() + blk.mlp.c_proj.bias  # QuickGELU


def _images(visual, images):
    x = F.conv2d(images, visual.conv1.weight, stride=visual.conv1.stride).flatten(2).transpose(1, 2)  # (N, g*g, W)
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], 1) + visual.positional_embedding
    x = _layer_norm(x, visual.ln_pre, 1e-5)
    for blk in visual.transformer.resblocks:
        x = _clip_block(x, blk)
    return _layer_norm(x[:, 0], visual.ln_post, 1e-5) @ visual.proj  # (N, E)


def _text(te, tokens):
    b, length = tokens.shape
    x = te.token_embedding.weight[tokens] + te.positional_embedding[:length]
    causal = torch.full((length, length), float("-inf")).triu(1)
    bias = torch.where((tokens != 0)[:, None, :], causal, torch.tensor(float("-inf")))  # (B, L, L)
    for blk in te.transformer.resblocks:
        x = _clip_block(x, blk, bias)
    feats = _layer_norm(x, te.ln_final, 1e-5) @ te.text_projection  # (B, L, E)
    return feats[torch.arange(b), tokens.argmax(-1)], feats


def _seq_transf(temporal, frames, mask):
    b, t, _ = frames.shape
    x = frames + temporal.frame_position_embeddings.weight[:t]
    bias = ((1.0 - mask.to(frames.dtype))[:, None, :] * -1e6).expand(b, t, t)
    for blk in temporal.blocks:
        x = _clip_block(x, blk, bias, SEQ_EPS)
    return x + frames


def _decoder(dec, queries, memory):
    x = queries.expand(memory.shape[0], -1, -1)  # (B, Nq, E)
    for lay in dec.layers:
        x = _layer_norm(x + _attention(x, x, lay.self_attn), lay.norm1, 1e-5)
        x = _layer_norm(x + _attention(x, memory, lay.multihead_attn), lay.norm2, 1e-5)
        ff = torch.relu(x @ lay.linear1.weight.t() + lay.linear1.bias) @ lay.linear2.weight.t() + lay.linear2.bias
        x = _layer_norm(x + ff, lay.norm3, 1e-5)
    return x


def reference(model, video, mask, tokens, temp=3.0, local_weight=0.5, alpha=1e-4, beta=0.005, margin=0.1):
    """(scores (Nt, Nv), contrastive, alpha * IDL, ICL) as the reference computes them."""
    b, t = mask.shape
    frames = _images(model.frame_encoder.visual, (video * mask[:, :, None, None, None]).flatten(0, 1))
    vid = _seq_transf(model.temporal, frames.reshape(b, t, -1), mask)  # (B, T, E)
    eot, words = _text(model.text_encoder, tokens)
    w = torch.softmax(torch.einsum("ad,bvd->abv", eot, vid) / temp, -1) * mask[None]  # (Nt, Nv, T)
    pooled = torch.einsum("abv,bvd->abd", w, vid)
    glob = torch.einsum("ad,abd->ab", F.normalize(eot, dim=-1), F.normalize(pooled, dim=-1))
    sq = F.normalize(_decoder(model.head.decoder, model.head.queries, vid), dim=-1)  # (Nv, Nq, E)
    tq = F.normalize(_decoder(model.head.decoder, model.head.queries, words), dim=-1)  # (Nt, Nq, E)
    nq = sq.shape[1]
    scores = glob + local_weight * torch.einsum("akd,bkd->ab", tq, sq) / nq
    logits = model.logit_scale.exp() * scores
    contrastive = -(torch.log_softmax(logits, 1).diagonal().mean() + torch.log_softmax(logits, 0).diagonal().mean()) / 2
    gram = torch.einsum("bkd,bjd->kj", sq, sq) / len(sq)
    off = ~torch.eye(nq, dtype=torch.bool)
    idl = ((margin + gram - gram.diagonal()[:, None]).clamp_min(0)[off].sum()
           + (margin + gram - gram.diagonal()[None, :]).clamp_min(0)[off].sum()) / (nq * (nq - 1))
    cross = torch.einsum("bkd,bjd->kj", sq, tq) / nq
    icl = ((sq.mean(0) - tq.mean(0)) ** 2).mean() + beta * ((cross.diagonal() - 0.75) ** 2).sum()
    return scores, contrastive, alpha * idl, icl


# ------------------------------------------------------------------------------------------------- vidclip side
def build(dtype=torch.float64, dropout=0.0, **model_keys):
    """Tiny random GLSCL in the reference setting (preset + model keys); ``model_keys`` override them."""
    torch.manual_seed(0)
    keys = {**REFERENCE_KEYS, "temporal": {"layer_norm_eps": SEQ_EPS}, **model_keys}
    head = {"preset": "reference", "kwargs": {"num_queries": 4, "decoder_layers": 2, "beta": 0.02, "dropout": dropout}}
    head["kwargs"].update(keys.pop("head_kwargs", {}))
    return create_model("tiny-glscl", head=head, **keys).to(dtype)


def inputs(model, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    b, t, size = len(LENGTHS), max(LENGTHS), model.image_size
    mask = torch.arange(t)[None] < torch.tensor(LENGTHS)[:, None]  # (B, T)
    video = torch.randn(b, t, 3, size, size, generator=g, dtype=torch.float64)
    video = torch.where(mask[:, :, None, None, None], video, 7.0)  # padded slots hold garbage: the model must zero them
    return {"video": video.to(dtype), "video_mask": mask, "text_tokens": tokenize(CAPTIONS, model.cfg.context_length)}


def rel(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def vidclip_scores(model, batch):
    text = model.encode_text(batch["text_tokens"])
    return model.similarity(text, model.encode_video(batch["video"], batch["video_mask"]))


# ------------------------------------------------------------------------------------------------------- tests
def test_reference_scores_eval_mode():
    model = build().eval()
    batch = inputs(model)
    with torch.no_grad():
        got = vidclip_scores(model, batch)
        want = reference(model, batch["video"], batch["video_mask"], batch["text_tokens"], beta=0.02)[0]
    assert rel(got, want) <= 1e-6


def test_reference_losses_and_gradients_train_mode():
    """Training step through vidclip's objective vs the re-statement (decoder dropout 0: the re-statement has none;
    with dropout 0.1 the oracle check used identical dropout masks and agreed to 1e-15). IDL margin 1 instead of 0.1
    so that its hinge is active at random init."""
    model = build(head_kwargs={"margin": 1.0}).train()
    batch = inputs(model)
    losses = build_objective(model)(model, batch)
    losses["loss"].backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    _, contrastive, idl, icl = reference(model, batch["video"], batch["video_mask"], batch["text_tokens"], beta=0.02,
                                         margin=1.0)
    (contrastive + idl + icl).backward()
    assert idl > 0 and icl > 0
    for name, mine, ref in (("contrastive", losses["contrastive"], contrastive), ("idl", losses["idl"], idl),
                            ("icl", losses["icl"], icl), ("loss", losses["loss"], contrastive + idl + icl)):
        assert rel(mine, ref) <= 1e-6, name
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    worst = {n: rel(got[n], want[n]) for n in want if want[n].norm() > 0}
    assert max(worst.values()) <= 1e-4, max(worst, key=worst.get)


def test_reference_scores_float32_to_fp32_noise():
    model = build(torch.float32).eval()
    batch = inputs(model, torch.float32)
    with torch.no_grad():
        got = vidclip_scores(model, batch)
        model.double()
        want = reference(model, batch["video"].double(), batch["video_mask"], batch["text_tokens"], beta=0.02)[0]
    assert got.dtype == torch.float32 and rel(got, want) <= 1e-5


@pytest.mark.parametrize("change", [{"text_key_padding_mask": False}, {"padded_frames": "zero_features"},
                                    {"head_kwargs": {"mask_memory": True}}],
                         ids=["causal-only text", "zero frame rows", "masked decoder memory"])
def test_each_reference_key_matters(change):
    """Without any one of the reference keys the scores leave the reference (so the tests above can fail)."""
    model = build(**change).eval()
    batch = inputs(model)
    with torch.no_grad():
        got = vidclip_scores(model, batch)
        want = reference(model, batch["video"], batch["video_mask"], batch["text_tokens"], beta=0.02)[0]
    assert rel(got, want) > 1e-3


def test_text_key_padding_mask_keeps_real_tokens():
    """The key-padding mask changes only the rows of padding tokens (EOT and real tokens see no padding anyway)."""
    masked, causal = build().eval(), build(text_key_padding_mask=False).eval()
    tokens = tokenize(CAPTIONS, 32)
    with torch.no_grad():
        a, b = masked.text_encoder(tokens), causal.text_encoder(tokens)
    real = tokens != 0
    assert torch.allclose(a.pooled, b.pooled, rtol=1e-12, atol=1e-12)
    assert torch.allclose(a.tokens[real], b.tokens[real], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(a.tokens[~real], b.tokens[~real], atol=1e-3)


def test_zero_image_is_encoded_once_with_the_same_values_and_gradients():
    """``encode_zero_image`` with independent frames (one zero image, copied) equals encoding every zeroed slot."""
    model = build().eval()
    batch = inputs(model)
    mask = batch["video_mask"]
    zeroed = batch["video"] * mask[:, :, None, None, None]
    fast = model.frame_encoder(batch["video"], mask).frames
    fast.pow(2).sum().backward()
    fast_grad = {n: p.grad.clone() for n, p in model.frame_encoder.named_parameters()}
    model.zero_grad()
    full = model.frame_encoder(zeroed, None).frames  # every slot through CLIP
    full.pow(2).sum().backward()
    assert rel(fast, full) <= 1e-12
    assert max(rel(fast_grad[n], p.grad) for n, p in model.frame_encoder.named_parameters()) <= 1e-10


def test_zero_image_with_interacting_frames():
    """With patch shift (frames interact) padded slots are zeroed, then the whole clip is encoded."""
    torch.manual_seed(0)
    model = create_model("tiny-ucofia", padded_frames="encode_zero_image").double().eval()
    batch = inputs(model)
    mask = batch["video_mask"]
    with torch.no_grad():
        got = model.frame_encoder(batch["video"], mask)
        want = model.frame_encoder(batch["video"] * mask[:, :, None, None, None], None)
    assert torch.equal(got.frames, want.frames) and torch.equal(got.patches, want.patches)


@pytest.mark.parametrize("dataset", sorted(BETA))
@pytest.mark.parametrize("arch", ["b16", "b32"])
def test_shipped_recipes_use_the_reference_setting(dataset, arch):
    path = REPO / "configs" / dataset / f"glscl_{arch}.yaml"
    cfg = load_config(path)
    model = cfg.model
    assert model.head.name == "glscl" and model.head.preset == "reference", path
    assert resolve_head_kwargs(GLSCLHead, model.head) == {**GLSCLHead.PRESETS["reference"], "beta": BETA[dataset]}
    assert model.text_key_padding_mask is True and model.padded_frames == "encode_zero_image"
    assert model.temporal.type == "seq_transformer" and model.temporal.layer_norm_eps == SEQ_EPS
    assert cfg.train.param_groups == "clip4clip_reference"  # the logit scale trains with CLIP at lr 1e-7


def test_reference_preset_is_the_reference_code():
    """Values read from the reference scripts / argparse / modeling.py (train_msvd.sh, DiCoSA.__init__)."""
    assert GLSCLHead.PRESETS["reference"] == {
        "temperature": 3.0, "num_queries": 8, "decoder_layers": 3, "num_heads": 8, "decoder_ff": 2048,
        "dropout": 0.1, "local_weight": 0.5, "mask_memory": False, "alpha": 1e-4, "margin": 0.1, "beta": 0.005,
        "icl_target": 0.75, "icl_normalization": "reference"}
