"""Prompt Switch reference setting vs a float64 re-statement of PromptSwitch (bladewaltz1/PromptSwitch @6420d3f).

The re-statement below is written from the reference's behaviour (``model/prompt_clip.py``, ``modules/loss.py``,
``train.py``), not its code: prompts appended after ``ln_pre``, the prompt slots of each chunk of P frames switched
(slot (f, p) <- (p, f)) in every block's normalised attention input only, every token of a frame attending to all
of that frame's tokens (ungated), the CLS tokens of ``aggregation_frames`` consecutive frames (the reference's
construction-time ``num_frames``) attending to all their prompts through a zero-initialised attention, ``ln_post``,
projection; average of L2-normalised frames; symmetric InfoNCE at ``exp(logit_scale)`` plus 0.5 x the class-weighted
captioning loss of a post-norm decoder over the raw frame embeddings. Padded frames (vidclip's extension; the
reference never pads) still pass through the cube and are left out of the mean and the captioner memory.
Validated against the reference code itself run as an oracle (/tmp/oracle/promptswitch/ps_oracle.py, FINDINGS.md).
"""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import vidclip
from vidclip.config import ModelCfg, load_config
from vidclip.engine.optim import param_groups
from vidclip.tokenizer import tokenize

REPO = Path(__file__).resolve().parents[1]
P = 2  # prompts per frame = frames per chunk
CLIP = {"embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
CAPTIONS = ["a red circle moves left", "dog", "a person slices a tomato on a wooden board", "blue square grows"]
FREQUENT = "in on of to about this that a an the and there here is are . ,"


def _model(aggregation="model_frames", aggregation_frames=4, gated=False):
    prompt = {"enabled": True, "num_prompts": P, "gated": gated, "caption_loss_weight": 0.5, "caption_layers": 2,
              "frequent_word_weight": 0.25, "aggregation": aggregation, "aggregation_frames": aggregation_frames}
    cfg = OmegaConf.merge(OmegaConf.structured(ModelCfg), {
        "arch": "test-prompt-switch", "clip": CLIP, "context_length": 16, "prompt": prompt,
        "head": {"name": "vifi", "kwargs": {"normalize_frames": True}}})
    torch.manual_seed(0)
    model = vidclip.create_model(cfg).double()
    with torch.no_grad():  # every path non-trivial: prompts of CLIP scale, a non-zero aggregation projection
        cube = model.frame_encoder.prompt_cube
        cube.prompts.normal_(0, 0.5)
        cube.prompt_aggregation.out_proj.weight.normal_(0, 0.1)
        cube.prompt_aggregation.out_proj.bias.normal_(0, 0.1)
    return model


# ------------------------------------------------------------------------------------ float64 re-statement
def _ln(x, p, name, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * p[f"{name}.weight"] + p[f"{name}.bias"]


def _attention(xq, xkv, p, name, heads, bias=None):
    """Multi-head attention with packed in_proj (q, k, v) and out_proj; ``bias`` is added to the logits."""
    d = xq.shape[-1]
    w, b = p[f"{name}.in_proj_weight"], p[f"{name}.in_proj_bias"]
    q, k, v = (t.unflatten(-1, (heads, d // heads)).transpose(-3, -2)  # (..., H, S, d/H)
               for t in (xq @ w[:d].t() + b[:d], xkv @ w[d:2 * d].t() + b[d:2 * d], xkv @ w[2 * d:].t() + b[2 * d:]))
    logits = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if bias is not None:
        logits = logits + bias
    out = (logits.softmax(-1) @ v).transpose(-3, -2).flatten(-2)  # (..., S, D)
    return out @ p[f"{name}.out_proj.weight"].t() + p[f"{name}.out_proj.bias"]


def _block(x, p, name, heads, switch=None, bias=None):
    h = _ln(x, p, f"{name}.ln_1")
    if switch is not None:
        h = switch(h)
    x = x + _attention(h, h, p, f"{name}.attn", heads, bias)
    h = _ln(x, p, f"{name}.ln_2") @ p[f"{name}.mlp.c_fc.weight"].t() + p[f"{name}.mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ p[f"{name}.mlp.c_proj.weight"].t() + p[f"{name}.mlp.c_proj.bias"]


def reference_frames(p, pixels, span):
    """(B, T, 3, S, S) -> (B, T, E) frame embeddings of the ungated Prompt Switch tower (``span`` = nf)."""
    v = "frame_encoder.visual"
    batch, frames = pixels.shape[:2]
    conv = p[f"{v}.conv1.weight"]
    x = F.conv2d(pixels.flatten(0, 1), conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)  # (BT, N, D)
    cls = p[f"{v}.class_embedding"].expand(x.shape[0], 1, -1)
    x = _ln(torch.cat([cls, x], 1) + p[f"{v}.positional_embedding"], p, f"{v}.ln_pre")  # (BT, L, D)
    length, width = x.shape[1], x.shape[2]
    cube = p["frame_encoder.prompt_cube.prompts"]  # (P, P, D): frame slot f of a chunk gets cube[f]
    slots = torch.arange(frames) % P
    x = torch.cat([x, cube[slots].repeat(batch, 1, 1)], 1)  # (BT, L+P, D)

    def switch(h):  # within each chunk: prompt p of frame f <- prompt f of frame p
        prompts = h[:, length:].reshape(-1, P, P, width).transpose(1, 2).reshape(-1, P, width)
        return torch.cat([h[:, :length], prompts], 1)

    heads = width // CLIP["vision_cfg"]["head_width"]
    for i in range(CLIP["vision_cfg"]["layers"]):
        x = _block(x, p, f"{v}.transformer.resblocks.{i}", heads, switch)
    q = x[:, 0].reshape(-1, span, width)  # (B*T/span, span, D): CLS of one aggregation group
    kv = x[:, length:].reshape(q.shape[0], span * P, width)  # all prompts of the group
    cls = q + _attention(q, kv, p, "frame_encoder.prompt_cube.prompt_aggregation", heads)
    return (_ln(cls.reshape(batch * frames, width), p, f"{v}.ln_post") @ p[f"{v}.proj"]).reshape(batch, frames, -1)


def reference_text(p, tokens):
    t = "text_encoder"
    length = tokens.shape[1]
    x = p[f"{t}.token_embedding.weight"][tokens] + p[f"{t}.positional_embedding"][:length]
    causal = torch.full((length, length), float("-inf"), dtype=x.dtype).triu(1)
    for i in range(CLIP["text_cfg"]["layers"]):
        x = _block(x, p, f"{t}.transformer.resblocks.{i}", CLIP["text_cfg"]["heads"], bias=causal)
    x = _ln(x, p, f"{t}.ln_final")
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ p[f"{t}.text_projection"]


def _decoder_layer(x, memory, p, name, causal, memory_bias):
    """Post-norm ``nn.TransformerDecoderLayer`` (ReLU, no dropout), one head at E = 32."""
    x = _ln(x + _attention(x, x, p, f"{name}.self_attn", 1, causal), p, f"{name}.norm1")
    x = _ln(x + _attention(x, memory, p, f"{name}.multihead_attn", 1, memory_bias), p, f"{name}.norm2")
    h = torch.relu(x @ p[f"{name}.linear1.weight"].t() + p[f"{name}.linear1.bias"])
    return _ln(x + h @ p[f"{name}.linear2.weight"].t() + p[f"{name}.linear2.bias"], p, f"{name}.norm3")


def reference_caption_loss(p, frames, mask, tokens):
    from open_clip.tokenizer import _tokenizer

    t = "text_encoder"
    inputs = tokens[:, :-1]
    x = (p[f"{t}.token_embedding.weight"][inputs] + p[f"{t}.positional_embedding"][:inputs.shape[1]]).detach()
    x = _ln(x, p, "captioner.caption_prenorm")
    causal = torch.full((inputs.shape[1],) * 2, float("-inf"), dtype=x.dtype).triu(1)
    memory_bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(~mask, float("-inf"))[:, None, None, :]
    for i in range(2):
        x = _decoder_layer(x, frames, p, f"captioner.decoder.layers.{i}", causal, memory_bias)
    hidden = _ln(x, p, "captioner.decoder.norm")
    logits = hidden @ p["captioner.caption_head.weight"].t() + p["captioner.caption_head.bias"]
    weights = torch.ones(logits.shape[-1], dtype=logits.dtype)
    frequent = set(_tokenizer.encode(FREQUENT)) | {_tokenizer.sot_token_id, _tokenizer.eot_token_id}
    weights[sorted(frequent)] = 0.25
    scored = inputs != _tokenizer.eot_token_id  # the reference drops positions whose input is EOT or padding
    scored &= torch.arange(inputs.shape[1]) < tokens.argmax(-1, keepdim=True)  # (padding is 0 here, EOT in HF)
    targets = tokens[:, 1:][scored]
    nll = -logits[scored].log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    return (weights[targets] * nll).sum() / weights[targets].sum()


def reference_scores_and_loss(p, pixels, mask, tokens, span):
    frames = reference_frames(p, pixels, span)  # (B, T, E)
    unit = F.normalize(frames, dim=-1) * mask[..., None]
    video = F.normalize(unit.sum(1) / mask.sum(1, keepdim=True), dim=-1)
    text = F.normalize(reference_text(p, tokens), dim=-1)
    scores = text @ video.t()
    logits = p["logit_scale"].exp() * scores
    labels = torch.arange(len(logits))
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    return scores, loss + 0.5 * reference_caption_loss(p, frames, mask, tokens)


# --------------------------------------------------------------------------------------------------- vidclip
def vidclip_scores_and_loss(model, pixels, mask, tokens):
    outputs = model.encode_video_outputs(pixels, mask)
    video = model.head.encode_video(outputs)
    text = model.encode_text(tokens)
    scores = model.similarity(text, video)
    logits = model.scale() * scores
    labels = torch.arange(len(logits))
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    caption_logits, targets = model.captioner.scored_logits(outputs.frames, tokens, outputs.mask)
    caption = F.cross_entropy(caption_logits, targets, weight=model.captioner.class_weights.to(caption_logits.dtype))
    return scores, loss + 0.5 * caption


def _rel(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("mode,frames,span", [("train", 4, 4), ("eval", 8, 4), ("train", 4, 2), ("eval", 4, 4)])
def test_reference_setting_matches_restatement(mode, frames, span):
    """Scores, loss and every gradient; ragged captions and padded frames; aggregation over ``span`` frames."""
    model = _model(aggregation="model_frames", aggregation_frames=span)
    model.train(mode == "train")
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(4, frames, 3, 16, 16, generator=g, dtype=torch.float64)
    mask = torch.ones(4, frames, dtype=torch.bool)
    mask[1, frames - 1:] = False  # padded frames
    mask[3, frames // 2:] = False
    tokens = tokenize(CAPTIONS, 16)  # ragged lengths, zero padded
    params = dict(model.named_parameters())
    s_v, l_v = vidclip_scores_and_loss(model, pixels, mask, tokens)
    s_r, l_r = reference_scores_and_loss(params, pixels, mask, tokens, span)
    assert _rel(s_v, s_r) <= 1e-6 and _rel(l_v, l_r) <= 1e-6
    names = list(params)
    g_v = torch.autograd.grad(l_v, [params[n] for n in names], allow_unused=True)
    g_r = torch.autograd.grad(l_r, [params[n] for n in names], allow_unused=True)
    for name, a, b in zip(names, g_v, g_r):
        a = torch.zeros_like(params[name]) if a is None else a
        b = torch.zeros_like(params[name]) if b is None else b
        scale = max(float(b.abs().max()), 1e-10)  # a key bias has an analytically zero gradient
        assert float((a - b).abs().max()) <= 1e-4 * scale, name


def test_chunk_aggregation_is_a_different_named_option():
    """``aggregation=chunk`` (vidclip) spans one chunk of P frames: equal to the reference only when span = P."""
    pixels = torch.randn(2, 4, 3, 16, 16, dtype=torch.float64)
    mask = torch.ones(2, 4, dtype=torch.bool)
    tokens = tokenize(CAPTIONS[:2], 16)
    chunk = _model(aggregation="chunk")
    params = dict(chunk.named_parameters())
    s_chunk, _ = vidclip_scores_and_loss(chunk.eval(), pixels, mask, tokens)
    assert _rel(s_chunk, reference_scores_and_loss(params, pixels, mask, tokens, span=P)[0]) <= 1e-6
    assert _rel(s_chunk, reference_scores_and_loss(params, pixels, mask, tokens, span=4)[0]) > 1e-4


def test_gated_variant_differs_from_the_reference():
    model = _model(gated=True)
    with torch.no_grad():
        model.frame_encoder.prompt_cube.prompt_gates.fill_(0.5)
    pixels = torch.randn(2, 4, 3, 16, 16, dtype=torch.float64)
    mask = torch.ones(2, 4, dtype=torch.bool)
    tokens = tokenize(CAPTIONS[:2], 16)
    s_v, _ = vidclip_scores_and_loss(model.eval(), pixels, mask, tokens)
    s_r, _ = reference_scores_and_loss(dict(model.named_parameters()), pixels, mask, tokens, span=4)
    assert _rel(s_v, s_r) > 1e-4


def test_reference_param_groups():
    """PromptSwitch's train.py: its ``noclip`` group is every name with 'prompt', 'caption' or 'pool' (the cube's
    prompts and the captioner), trained at the new-module lr; everything else, including the aggregation attention
    (``clip.vision_model.attn``) and ``clip.logit_scale``, at the CLIP lr; AdamW weight decay 0.2 on every tensor."""
    model = _model()
    groups = param_groups(model, lr=1e-5, clip_lr=1e-6, weight_decay=0.2, scheme="prompt_switch_reference")
    got = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}
    assert set(got) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name in got:
        new = name == "frame_encoder.prompt_cube.prompts" or name.startswith("captioner.")
        assert got[name] == ((1e-5 if new else 1e-6), 0.2), name
    default = {n: (g["lr"], g["weight_decay"]) for g in param_groups(model, 1e-5, 1e-6, 0.2) for n in g["param_names"]}
    assert default["frame_encoder.prompt_cube.prompt_aggregation.in_proj_weight"] == (1e-5, 0.0)  # vidclip's own


RECIPES = sorted(REPO.glob("configs/*/prompt_switch_b*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_recipes_use_the_reference_setting(recipe):
    cfg = load_config(recipe)
    prompt = cfg.model.prompt
    assert prompt.enabled and not prompt.gated and prompt.num_prompts == 6
    assert prompt.aggregation == "model_frames" and prompt.aggregation_frames == cfg.data.num_frames
    if recipe.parent.name in ("msrvtt", "msvd", "didemo"):  # the paper's 6 train / 12 test frames
        assert (cfg.data.num_frames, cfg.data.test_num_frames) == (6, 12)
    assert (cfg.data.test_num_frames or cfg.data.num_frames) % prompt.aggregation_frames == 0
    assert prompt.caption_loss_weight == 0.5 and prompt.frequent_word_weight == 0.25 and prompt.caption_layers == 2
    assert cfg.train.param_groups == "prompt_switch_reference" and cfg.train.weight_decay == 0.2
    assert (cfg.train.lr, cfg.train.clip_lr) == (1e-5, 1e-6)
    assert cfg.model.head.name == "vifi" and cfg.model.head.kwargs.normalize_frames is True
    assert cfg.model.temporal.type == "mean"
    assert len(RECIPES) >= 6  # msrvtt, msvd, didemo x B/16, B/32 at least
