"""Parameter groups, warm-up + cosine schedule, CLIP4Clip freezing and the logit-scale clamp, checked by hand."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vidclip.engine.optim import (
    clamp_logit_scale,
    create_optimizer,
    create_scheduler,
    freeze_backbone_layers,
    param_groups,
    warmup_cosine,
)


def _block():
    block = nn.Module()
    block.ln_1 = nn.LayerNorm(4)
    block.mlp = nn.Linear(4, 4)
    return block


class TinyTower(nn.Module):
    """Parameter names as open_clip's towers have them."""

    def __init__(self, vision: bool):
        super().__init__()
        if vision:
            self.conv1 = nn.Conv2d(3, 4, 2, bias=False)
            self.class_embedding = nn.Parameter(torch.zeros(4))
            self.ln_pre = nn.LayerNorm(4)
            self.ln_post = nn.LayerNorm(4)
            self.proj = nn.Parameter(torch.zeros(4, 4))
            self.prompt_cube = nn.Parameter(torch.zeros(2, 4))
        else:
            self.token_embedding = nn.Embedding(10, 4)
            self.ln_final = nn.LayerNorm(4)
            self.text_projection = nn.Parameter(torch.zeros(4, 4))
        self.positional_embedding = nn.Parameter(torch.zeros(5, 4))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([_block(), _block()])


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.frame_encoder = nn.Module()
        self.frame_encoder.visual = TinyTower(vision=True)
        self.text_encoder = TinyTower(vision=False)
        self.temporal = nn.Module()
        self.temporal.frame_position_embeddings = nn.Embedding(8, 4)
        self.temporal.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


BLOCK = ["ln_1.weight", "ln_1.bias", "mlp.weight", "mlp.bias"]
V, T = "frame_encoder.visual.", "text_encoder."
EXPECTED = {
    "clip_decay": {V + "conv1.weight", V + "proj", T + "text_projection",
                   *(f"{tower}transformer.resblocks.{i}.mlp.weight" for tower in (V, T) for i in (0, 1))},
    "clip_no_decay": {V + "class_embedding", V + "positional_embedding", V + "ln_pre.weight", V + "ln_pre.bias",
                      V + "ln_post.weight", V + "ln_post.bias", T + "token_embedding.weight",
                      T + "positional_embedding", T + "ln_final.weight", T + "ln_final.bias",
                      *(f"{tower}transformer.resblocks.{i}.{p}" for tower in (V, T) for i in (0, 1)
                        for p in ("ln_1.weight", "ln_1.bias", "mlp.bias"))},
    "new_decay": {"temporal.fc.weight", "head.weight"},
    "new_no_decay": {V + "prompt_cube", "temporal.frame_position_embeddings.weight", "temporal.fc.bias",
                     "head.bias", "logit_scale"},
}


def _train_cfg(**kw):
    base = dict(lr=1e-4, clip_lr=1e-7, weight_decay=0.2, betas=[0.9, 0.98], eps=1e-6)
    return SimpleNamespace(**{**base, **kw})


def test_param_groups_split_backbone_and_decay():
    model = TinyModel()
    groups = {g["name"]: g for g in param_groups(model, lr=1e-4, clip_lr=1e-7, weight_decay=0.2)}
    assert {k: set(g["param_names"]) for k, g in groups.items()} == EXPECTED
    assert groups["clip_decay"]["lr"] == groups["clip_no_decay"]["lr"] == 1e-7
    assert groups["new_decay"]["lr"] == groups["new_no_decay"]["lr"] == 1e-4
    assert groups["clip_decay"]["weight_decay"] == groups["new_decay"]["weight_decay"] == 0.2
    assert groups["clip_no_decay"]["weight_decay"] == groups["new_no_decay"]["weight_decay"] == 0.0
    every = {n for n, _ in model.named_parameters()}
    assert set().union(*EXPECTED.values()) == every, "every parameter lands in exactly one group"


def test_optimizer_is_adamw_with_config_values():
    opt = create_optimizer(TinyModel(), _train_cfg())
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(TinyModel().parameters()))
    assert opt.defaults["fused"] is True  # every parameter is a float tensor on the CPU


def test_fused_adamw_steps_like_the_textbook_update():
    """The fused kernel gives the AdamW update written out (decoupled decay, bias correction), float64."""
    torch.manual_seed(0)
    model = TinyModel().double()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = create_optimizer(model, _train_cfg())
    grads = [{n: torch.randn_like(p) for n, p in model.named_parameters()} for _ in range(3)]
    for g in grads:
        for n, p in model.named_parameters():
            p.grad = g[n].clone()
        opt.step()
    lr_of = {n: (grp["lr"], grp["weight_decay"]) for grp in opt.param_groups for n in grp["param_names"]}
    (b1, b2), eps = opt.defaults["betas"], opt.defaults["eps"]
    for n, p in model.named_parameters():
        lr, wd = lr_of[n]
        x, m, v = start[n].clone(), torch.zeros_like(p), torch.zeros_like(p)
        for t, g in enumerate(grads, 1):
            x = x * (1 - lr * wd)
            m, v = b1 * m + (1 - b1) * g[n], b2 * v + (1 - b2) * g[n] ** 2
            x = x - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        assert torch.allclose(p.detach(), x, rtol=1e-10, atol=1e-12), n


@pytest.mark.parametrize("step, expected", [
    (0, 0.5), (1, 1.0),  # warm-up over 2 steps: (step + 1) / 2
    (2, 1.0),  # cosine starts at the peak
    (6, 0.1 + 0.9 * 0.5),  # half-way through 8 decay steps: cos(pi / 2) -> 0.5 of the range
    (4, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 8))),
    (10, 0.1), (15, 0.1),  # floor at min_lr_ratio, also past the end
])
def test_warmup_cosine_values(step, expected):
    assert warmup_cosine(step, total_steps=10, warmup_steps=2, min_lr_ratio=0.1) == pytest.approx(expected)


def test_scheduler_drives_every_group():
    model = TinyModel()
    opt = create_optimizer(model, _train_cfg())
    sched = create_scheduler(opt, total_steps=10, warmup_ratio=0.2, min_lr_ratio=0.1)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    peaks = {g["name"]: (1e-7 if g["name"].startswith("clip") else 1e-4) for g in opt.param_groups}
    for step, lrs in enumerate(seen):
        factor = warmup_cosine(step, 10, 2, 0.1)
        for group, lr in zip(opt.param_groups, lrs):
            assert lr == pytest.approx(peaks[group["name"]] * factor)
    assert seen[0][0] > 0, "the first optimiser step already learns"


def test_no_warmup_starts_at_peak():
    assert warmup_cosine(0, total_steps=4, warmup_steps=0) == pytest.approx(1.0)
    assert warmup_cosine(4, total_steps=4, warmup_steps=0) == pytest.approx(0.0)


@pytest.mark.parametrize("num_layers", [-1, 0, 1])
def test_freeze_clip4clip_semantics(num_layers):
    model = TinyModel()
    frozen = set(freeze_backbone_layers(model, num_layers))
    stem = {V + "conv1.weight", V + "class_embedding", V + "positional_embedding", V + "ln_pre.weight",
            V + "ln_pre.bias", T + "token_embedding.weight", T + "positional_embedding"}
    blocks = {f"{tower}transformer.resblocks.{i}.{p}" for tower in (V, T) for i in range(max(num_layers, 0))
              for p in BLOCK}
    expected = set() if num_layers < 0 else stem | blocks
    assert frozen == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()} - expected
    groups = param_groups(model, 1e-4, 1e-7, 0.2)
    assert not set().union(*(g["param_names"] for g in groups)) & frozen, "frozen tensors are not optimised"


def test_clamp_logit_scale():
    model = TinyModel()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    clamp_logit_scale(model, 100.0)
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    clamp_logit_scale(model, 100.0)
    assert model.logit_scale.item() == 0.0


@pytest.mark.parametrize("towers", [["text"], ["visual"], ["text", "visual"]])
def test_freeze_towers_freezes_exactly_open_clip_towers(towers):
    """``train.freeze_towers`` freezes every parameter of the named open_clip towers and nothing else: the prompt
    cube inside the visual tower, the temporal module, the head and the logit scale keep training."""
    import vidclip
    from vidclip.engine.optim import freeze_towers
    from vidclip.models.factory import build_clip

    model = vidclip.create_model("tiny-prompt-switch")
    clip_names = [name for name, _ in build_clip(model.cfg.clip).named_parameters()]  # open_clip's own names
    expected = set()
    if "visual" in towers:
        expected |= {"frame_encoder." + n for n in clip_names if n.startswith("visual.")}
    if "text" in towers:
        expected |= {"text_encoder." + n for n in clip_names if not n.startswith("visual.") and n != "logit_scale"}
    frozen = set(freeze_towers(model, towers))
    assert frozen == expected and frozen
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable.isdisjoint(frozen) and "logit_scale" in trainable
    assert any("prompt" in name for name in trainable)  # the prompt cube is a new module, never frozen

    optimizer = create_optimizer(model, _train_cfg(lr=1e-2, clip_lr=1e-2))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    from vidclip.tokenizer import tokenize

    batch = {"video": torch.randn(2, 4, 3, 32, 32), "video_mask": torch.ones(2, 4, dtype=torch.bool),
             "text_tokens": tokenize(["a red circle moves left", "a blue square grows"], model.cfg.context_length)}
    model(batch)["logits"].logsumexp(dim=1).sum().backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed.isdisjoint(frozen) and changed  # frozen towers untouched, the rest trains


def test_freeze_towers_refuses_an_unknown_tower():
    from vidclip.config import load_config
    from vidclip.engine.optim import freeze_towers
    from vidclip.errors import ConfigError

    with pytest.raises(ConfigError, match="train.freeze_towers.*text"):
        load_config("configs/synthetic_tiny_vifi.yaml", ["train.freeze_towers=[txt]"])
    with pytest.raises(ValueError, match="unknown tower"):
        freeze_towers(TinyModel(), ["audio"])
