"""BertAdam, BertAdam's warm-up cosine and the conv1 freeze (CLIP4Clip / GLSCL / UCoFiA training).

The update rule and the schedule are re-stated below in float64 from the reference's behaviour (CLIP4Clip's
``modules/optimization.py``, identical in GLSCL @06979f8 and UCoFiA @6098be2): no bias correction, each gradient
tensor clipped to ``max_grad_norm`` (``coef = max / (||g|| + 1e-6)``, applied when below 1) before the moments,
``w <- w - lr_t (m / (sqrt(v) + eps) + wd w)``, ``lr_t = lr * f(t / t_total)`` with ``f(x) = x / warmup`` while
``x < warmup``, else ``0.5 (1 + cos(pi x))``. vidclip's optimiser and LambdaLR were checked against the reference
optimiser itself (outside this repository, 20 float64 training steps of a tiny GLSCL model with the global clip
before each step): every parameter bit-identical.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vidclip.config import load_config
from vidclip.engine.checkpoint import load_optimizer_state, save_optimizer_state
from vidclip.engine.optim import BertAdam, bertadam_warmup_cosine, create_optimizer, create_scheduler, freeze_conv1
from vidclip.engine.train import schedule_steps_for
from vidclip.errors import ConfigError
from vidclip.models.factory import create_model

REPO = Path(__file__).resolve().parents[1]
BETAS, EPS = (0.9, 0.98), 1e-6


# ----------------------------------------------------------------------------------------- the re-statement
def reference_factor(step: int, t_total: float, warmup: float) -> float:
    x = step / t_total
    return x / warmup if x < warmup else 0.5 * (1.0 + math.cos(math.pi * x))


def reference_run(init: dict, grads: list[dict], groups: list[dict], t_total: float, warmup: float,
                  max_grad_norm: float = 1.0) -> dict:
    """Weights after ``len(grads)`` steps; ``groups``: [{names, lr, wd}]; a missing gradient skips that tensor."""
    w = {n: t.clone() for n, t in init.items()}
    m = {n: torch.zeros_like(t) for n, t in init.items()}
    v = {n: torch.zeros_like(t) for n, t in init.items()}
    for step, grad in enumerate(grads):
        for group in groups:
            lr = group["lr"] * reference_factor(step, t_total, warmup)
            for n in group["names"]:
                if n not in grad:
                    continue
                g = grad[n]
                norm = math.sqrt(float((g * g).sum()))
                if max_grad_norm > 0 and max_grad_norm / (norm + 1e-6) < 1:
                    g = g * (max_grad_norm / (norm + 1e-6))
                m[n] = BETAS[0] * m[n] + (1 - BETAS[0]) * g
                v[n] = BETAS[1] * v[n] + (1 - BETAS[1]) * g * g
                w[n] = w[n] - lr * (m[n] / (torch.sqrt(v[n]) + EPS) + group["wd"] * w[n])
    return w


# ------------------------------------------------------------------------------------------------- helpers
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(4, 3)
        self.c = nn.Parameter(torch.randn(6, dtype=torch.float64))


def make_net() -> Net:
    torch.manual_seed(0)
    return Net().double()


def gradient_sequence(net: Net, steps: int) -> list[dict]:
    """Random gradients; tensor ``a.weight`` large (the per-tensor clip acts), ``c`` missing every third step."""
    g = torch.Generator().manual_seed(3)
    out = []
    for step in range(steps):
        grads = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) * (0.05 + step % 4) for n, p in
                 net.named_parameters()}
        grads["a.weight"] = grads["a.weight"] * 40.0
        if step % 3 == 2:
            del grads["c"]
        out.append(grads)
    return out


def group_spec(net: Net) -> list[dict]:
    return [{"names": ["a.weight", "b.weight"], "lr": 1e-2, "wd": 0.2}, {"names": ["a.bias", "b.bias"],
            "lr": 3e-2, "wd": 0.0}, {"names": ["c"], "lr": 1e-3, "wd": 0.2}]


def vidclip_optimizer(net: Net, spec: list[dict]) -> BertAdam:
    params = dict(net.named_parameters())
    return BertAdam([{"params": [params[n] for n in s["names"]], "lr": s["lr"], "weight_decay": s["wd"]}
                     for s in spec], betas=BETAS, eps=EPS, max_grad_norm=1.0)


def apply(net: Net, opt, sched, grads: list[dict]) -> None:
    for grad in grads:
        for n, p in net.named_parameters():
            p.grad = grad[n].clone() if n in grad else None
        opt.step()
        sched.step()


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("t_total,warmup", [(20, 0.1), (8, 0.1), (13, 0.3)])  # t_total 8 < 20 steps: past horizon
def test_bertadam_with_its_schedule_equals_the_restatement(t_total, warmup):
    net = make_net()
    init = {n: p.detach().clone() for n, p in net.named_parameters()}
    grads = gradient_sequence(net, 20)
    spec = group_spec(net)
    opt = vidclip_optimizer(net, spec)
    sched = create_scheduler(opt, total_steps=20, warmup_ratio=warmup, schedule="bertadam_warmup_cosine",
                             schedule_steps=t_total)
    apply(net, opt, sched, grads)
    want = reference_run(init, grads, spec, t_total, warmup)
    for n, p in net.named_parameters():
        assert rel(p.detach(), want[n]) <= 1e-12, n
        assert rel(p.detach(), init[n]) > 1e-3, f"{n} did not move: the test would not see a wrong update"


def test_per_tensor_clip_and_no_bias_correction_matter():
    """Dropping the per-tensor clip or adding Adam's bias correction moves the weights far from the reference."""
    net = make_net()
    init = {n: p.detach().clone() for n, p in net.named_parameters()}
    grads = gradient_sequence(net, 6)
    spec = group_spec(net)
    want = reference_run(init, grads, spec, 6, 0.0)
    unclipped = reference_run(init, grads, spec, 6, 0.0, max_grad_norm=0.0)
    assert rel(unclipped["a.weight"], want["a.weight"]) > 1e-3
    params = dict(net.named_parameters())
    adamw = torch.optim.AdamW([{"params": [params[n] for n in s["names"]], "lr": s["lr"], "weight_decay": s["wd"]}
                               for s in spec], betas=BETAS, eps=EPS)
    sched = create_scheduler(adamw, total_steps=6, warmup_ratio=0.0, schedule="bertadam_warmup_cosine")
    apply(net, adamw, sched, grads)
    assert rel(net.b.weight.detach(), want["b.weight"]) > 1e-3


def test_schedule_values():
    """Warm-up from 0 (the first step does not learn), a jump at the end of warm-up, cosine over the whole horizon,
    rising again past it (GLSCL on ActivityNet: 10 epochs over a 5-epoch horizon)."""
    f = lambda s: bertadam_warmup_cosine(s, 20, 0.1)  # noqa: E731
    assert f(0) == 0.0 and f(1) == pytest.approx(0.5)
    assert f(2) == pytest.approx(0.5 * (1 + math.cos(0.1 * math.pi)))
    assert f(10) == pytest.approx(0.5) and f(20) == pytest.approx(0.0) and f(30) == pytest.approx(0.5)
    assert bertadam_warmup_cosine(0, 20, 0.0) == 1.0  # no warm-up: the cosine from step 0


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    """Saved mid-run (vidclip's checkpoint format) and restored: bit-identical to the uninterrupted run."""
    grads = gradient_sequence(make_net(), 10)
    full = make_net()
    opt = vidclip_optimizer(full, group_spec(full))
    sched = create_scheduler(opt, 10, 0.2, schedule="bertadam_warmup_cosine")
    apply(full, opt, sched, grads)

    first = make_net()
    opt = vidclip_optimizer(first, group_spec(first))
    sched = create_scheduler(opt, 10, 0.2, schedule="bertadam_warmup_cosine")
    apply(first, opt, sched, grads[:4])
    save_optimizer_state(opt.state_dict(), tmp_path)
    sched_state = sched.state_dict()
    resumed = make_net()
    resumed.load_state_dict(first.state_dict())
    opt = vidclip_optimizer(resumed, group_spec(resumed))
    sched = create_scheduler(opt, 10, 0.2, schedule="bertadam_warmup_cosine")  # built before loading, as the Trainer
    opt.load_state_dict(load_optimizer_state(tmp_path))
    sched.load_state_dict(sched_state)
    apply(resumed, opt, sched, grads[4:])
    for (n, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), n


def test_create_optimizer_and_conv1_freeze_on_a_tiny_model():
    """GLSCL's CLIP sets requires_grad=False on conv1 only (its token_embedding line sets a module attribute)."""
    model = create_model("tiny-glscl")
    assert freeze_conv1(model) == ["frame_encoder.visual.conv1.weight"]
    cfg = SimpleNamespace(lr=1e-4, clip_lr=1e-7, weight_decay=0.2, param_groups="clip4clip_reference",
                          betas=[0.9, 0.98], eps=1e-6, optimizer="bertadam", per_tensor_clip=1.0)
    opt = create_optimizer(model, cfg)
    assert isinstance(opt, BertAdam)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.frame_encoder.visual.conv1.weight) not in in_opt
    assert {g["max_grad_norm"] for g in opt.param_groups} == {1.0}
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_schedule_horizon_in_epochs():
    cfg = SimpleNamespace(train=SimpleNamespace(schedule_epochs=5, grad_accum_steps=2))
    assert schedule_steps_for(cfg, batches_per_epoch=7) == 20  # 5 epochs x ceil(7 / 2) optimiser steps
    cfg.train.schedule_epochs = None
    assert schedule_steps_for(cfg, batches_per_epoch=7) is None


def test_bertadam_schedule_refuses_a_floor():
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        load_config(REPO / "configs" / "msrvtt" / "glscl_b32.yaml", ["train.min_lr_ratio=0.1"])
    with pytest.raises(ValueError, match="min_lr_ratio"):
        create_scheduler(vidclip_optimizer(make_net(), group_spec(None)), 10, 0.1, min_lr_ratio=0.1,
                         schedule="bertadam_warmup_cosine")


@pytest.mark.parametrize("dataset", ["msrvtt", "msvd", "didemo", "activitynet"])
@pytest.mark.parametrize("arch", ["b16", "b32"])
def test_glscl_recipes_train_as_the_reference(dataset, arch):
    train = load_config(REPO / "configs" / dataset / f"glscl_{arch}.yaml").train
    assert (train.optimizer, train.schedule, train.schedule_epochs) == ("bertadam", "bertadam_warmup_cosine", 5)
    assert train.freeze_conv1 is True and train.freeze_layers == -1
    assert (train.per_tensor_clip, train.grad_clip, train.min_lr_ratio, train.warmup_ratio) == (1.0, 1.0, 0.0, 0.1)
    assert list(train.betas) == [0.9, 0.98] and train.eps == 1e-6 and train.weight_decay == 0.2
    assert train.param_groups == "clip4clip_reference"


@pytest.mark.parametrize("dataset", ["msrvtt", "msvd", "didemo", "activitynet"])
@pytest.mark.parametrize("arch", ["b16", "b32"])
def test_ucofia_recipes_train_as_the_reference(dataset, arch):
    train = load_config(REPO / "configs" / dataset / f"ucofia_{arch}.yaml").train
    assert (train.optimizer, train.schedule, train.schedule_epochs) == ("bertadam", "bertadam_warmup_cosine", 15)
    assert train.freeze_layers == 0 and train.freeze_conv1 is False  # CLIP4Clip's freeze_layer_num 0 covers conv1
    assert (train.per_tensor_clip, train.grad_clip, train.min_lr_ratio) == (1.0, 1.0, 0.0)
