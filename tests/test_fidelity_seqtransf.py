"""CLIP4Clip seqTransf (ArrowLuo/CLIP4Clip ``modules/modeling.py`` + ``module_cross.py``) vs a float64 re-statement.

Re-statement of the reference behaviour: learned frame position embeddings added to the frame features; residual
attention blocks with TF-style LayerNorm (eps 1e-12 inside the square root) and QuickGELU; padded frames masked as
keys with an additive -1e6; the output added to the input frame features; each frame L2-normalised, the real frames
averaged, the mean L2-normalised; cosine with the normalised text; CLIP4Clip's loss is the mean of the two
cross-entropies. Validated against the reference code run as an oracle (/tmp/oracle/promptswitch/c4c_oracle.py).
"""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vidclip
from vidclip.config import load_config
from vidclip.features import VideoEncoderOutput

REPO = Path(__file__).resolve().parents[1]


def _tf_layer_norm(x, weight, bias, eps):
    u = x.mean(-1, keepdim=True)
    s = (x - u).pow(2).mean(-1, keepdim=True)
    return weight * (x - u) / torch.sqrt(s + eps) + bias


def reference_seq_transf(p, frames, mask, heads, layers, eps=1e-12):
    """(B, T, D) frames, (B, T) mask -> (B, T, D) as CLIP4Clip's seqTransf branch (before pooling)."""
    batch, length, width = frames.shape
    x = frames + p["frame_position_embeddings.weight"][:length]
    key_bias = ((1.0 - mask.to(frames.dtype)) * -1000000.0)[:, None, None, :]  # (B, 1, 1, T)
    for i in range(layers):
        b = f"blocks.{i}."
        h = _tf_layer_norm(x, p[b + "ln_1.weight"], p[b + "ln_1.bias"], eps)
        qkv = h @ p[b + "attn.in_proj_weight"].t() + p[b + "attn.in_proj_bias"]
        q, k, v = (t.unflatten(-1, (heads, width // heads)).transpose(1, 2) for t in qkv.chunk(3, -1))
        att = (q @ k.transpose(-1, -2) / math.sqrt(width // heads) + key_bias).softmax(-1) @ v  # (B, H, T, d)
        x = x + att.transpose(1, 2).flatten(2) @ p[b + "attn.out_proj.weight"].t() + p[b + "attn.out_proj.bias"]
        h = _tf_layer_norm(x, p[b + "ln_2.weight"], p[b + "ln_2.bias"], eps)
        h = h @ p[b + "mlp.c_fc.weight"].t() + p[b + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + h @ p[b + "mlp.c_proj.weight"].t() + p[b + "mlp.c_proj.bias"]
    return x + frames


def reference_scores_and_loss(p, frames, mask, text, logit_scale, heads, layers, eps=1e-12):
    out = F.normalize(reference_seq_transf(p, frames, mask, heads, layers, eps), dim=-1)
    m = mask.to(out.dtype)[..., None]
    video = F.normalize((out * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)
    scores = F.normalize(text, dim=-1) @ video.t()
    logits = logit_scale.exp() * scores
    diag = torch.arange(len(logits))
    loss = 0.5 * (-logits.log_softmax(1)[diag, diag].mean() - logits.t().log_softmax(1)[diag, diag].mean())
    return scores, loss


def _model(eps):
    torch.manual_seed(0)
    model = vidclip.create_model("tiny-seqtransf", temporal={"layer_norm_eps": eps}).double()
    with torch.no_grad():
        model.temporal.frame_position_embeddings.weight.normal_(0, 0.5)
    return model


def _vidclip(model, frames, mask, text):
    out = VideoEncoderOutput(frames=frames, temporal=model.temporal(frames, mask), mask=mask, patches=None)
    scores = model.similarity({"pooled": F.normalize(text, dim=-1)}, model.head.encode_video(out))
    logits = model.scale() * scores
    labels = torch.arange(len(logits))
    return scores, 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def _inputs(model, scale):
    g = torch.Generator().manual_seed(2)
    frames = scale * torch.randn(5, 8, model.embed_dim, generator=g, dtype=torch.float64)
    mask = torch.ones(5, 8, dtype=torch.bool)
    mask[1, 5:] = False  # padded frames
    mask[3, 2:] = False
    mask[4, 7:] = False
    return frames, mask, torch.randn(5, model.embed_dim, generator=g, dtype=torch.float64)


def _rel(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.05])  # small inputs: where the LayerNorm eps matters most
def test_seq_transformer_matches_clip4clip(train, scale):
    model = _model(1e-12).train(train)
    frames, mask, text = _inputs(model, scale)
    frames.requires_grad_(True)
    params = dict(model.temporal.named_parameters())
    s_v, l_v = _vidclip(model, frames, mask, text)
    heads, layers = model.temporal.heads, len(model.temporal.blocks)
    s_r, l_r = reference_scores_and_loss(params, frames, mask, text, model.logit_scale, heads, layers)
    assert _rel(s_v, s_r) <= 1e-6 and _rel(l_v, l_r) <= 1e-6
    names = list(params)
    leaves = [frames] + [params[n] for n in names]
    for name, a, b in zip(["frames"] + names, torch.autograd.grad(l_v, leaves), torch.autograd.grad(l_r, leaves)):
        assert float((a - b).abs().max()) <= 1e-4 * max(float(b.abs().max()), 1e-10), name
    # padded frames never change the real ones
    changed = frames.detach().clone()
    changed[~mask] = 7.0
    out_a, out_b = model.temporal(frames.detach(), mask), model.temporal(changed, mask)
    assert torch.allclose(out_a[mask], out_b[mask], rtol=0, atol=1e-12)


def test_open_clip_eps_is_measurably_different():
    """vidclip's default (open_clip blocks, eps 1e-5) is not CLIP4Clip's 1e-12: the test above can fail."""
    model = _model(1e-5)
    assert all(b.ln_1.eps == 1e-5 and b.ln_2.eps == 1e-5 for b in model.temporal.blocks)
    frames, mask, text = _inputs(model, 0.05)
    s_v, _ = _vidclip(model, frames, mask, text)
    params = dict(model.temporal.named_parameters())
    s_r, _ = reference_scores_and_loss(params, frames, mask, text, model.logit_scale, model.temporal.heads,
                                       len(model.temporal.blocks))
    assert _rel(s_v, s_r) > 1e-6


RECIPES = sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.parent.name not in ("data", "methods"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_clip4clip_style_recipes_use_tf_layer_norm_eps(recipe):
    cfg = load_config(recipe)
    if cfg.model.temporal.type != "seq_transformer":
        pytest.skip("no sequence transformer in this recipe")
    assert cfg.model.temporal.layer_norm_eps == 1e-12
