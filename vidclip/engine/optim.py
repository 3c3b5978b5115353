"""Optimiser, learning-rate schedule, layer freezing and logit-scale clamp for fine-tuning CLIP.

* Parameter groups (``train.param_groups``):

  - ``vidclip`` (default): the CLIP backbone (``frame_encoder.visual...`` and ``text_encoder...``, prompts excluded)
    trains at ``train.clip_lr``; new modules (temporal, head, prompt cube, captioner, logit scale) at ``train.lr``.
    Weight decay is never applied to biases, normalisation weights, embeddings (token / positional / class), the
    logit scale or prompts.
  - ``prompt_switch_reference`` (PromptSwitch's ``train.py``): ``train.lr`` only for the parameters its new-module
    name patterns ('prompt', 'caption', 'pool') catch: the prompt cube's prompts (and vidclip's gates) and the
    captioner; everything else (backbone, prompt aggregation attention, logit scale, heads, temporal) at
    ``train.clip_lr``; ``train.weight_decay`` on every tensor.
  - ``clip4clip_reference`` (CLIP4Clip's ``prep_optimizer``, also UCoFiA's): the backbone and the logit scale (its
    ``clip.logit_scale``) at ``train.clip_lr``, everything else at ``train.lr``; ``train.weight_decay`` on every
    tensor whose name does not contain ``bias`` (CLIP4Clip's no-decay names 'LayerNorm.weight/bias' match none of
    CLIP's ``ln_*`` norms).
* Schedule: linear warm-up over ``round(warmup_ratio * total)`` optimiser steps (``(step + 1) / warmup``, so the first
  step already learns), then cosine from the peak down to ``min_lr_ratio * peak`` at ``total``.
* Freezing (``train.freeze_layers = N >= 0``, CLIP4Clip's ``freeze_layer_num``): the patch/token embeddings, conv1,
  class and positional embeddings, ``ln_pre`` and residual blocks ``0..N-1`` of both towers are frozen.
  ``train.freeze_conv1`` freezes only the visual patch embedding (GLSCL's ``requires_grad = False`` on conv1).
  ``train.freeze_towers`` freezes whole CLIP towers by name (``text``, ``visual``; prompts stay trainable), e.g. a
  locked text tower while new video modules learn to match it.
* Optimiser (``train.optimizer``): ``adamw`` (default, ``torch.optim.AdamW``) or ``bertadam``, the BERT Adam of
  CLIP4Clip / GLSCL / UCoFiA (:class:`BertAdam`): no bias correction, each gradient tensor clipped to norm
  ``train.per_tensor_clip`` inside the step (after the global ``train.grad_clip``), decay ``lr * wd * w`` added to
  the step.
* ``train.schedule: bertadam_warmup_cosine`` (:func:`bertadam_warmup_cosine`): BertAdam's ``warmup_cosine`` with
  ``x = step / t_total``: ``x / warmup_ratio`` while ``x < warmup_ratio`` (the first step has lr 0), then
  ``0.5 * (1 + cos(pi * x))`` over the whole horizon (not renormalised after warm-up, so it jumps from 1 to
  ``0.5 * (1 + cos(pi * warmup_ratio))`` and never reaches 0 before ``t_total``; past ``t_total`` it rises again).
  ``t_total`` is the run's steps, or ``train.schedule_epochs`` epochs of steps (GLSCL hard-codes 5).
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..constants import CLIP_TOWERS

_logger = logging.getLogger(__name__)

BACKBONE_PREFIXES = tuple(CLIP_TOWERS.values())
NO_DECAY_KEYWORDS = ("embedding", "logit_scale", "prompt", "bias", "ln_", "norm")
FROZEN_STEM_KEYWORDS = ("token_embedding", "positional_embedding", "class_embedding", "conv1", "ln_pre")
_BLOCK_RE = re.compile(r"resblocks\.(\d+)\.")
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def is_backbone(name: str) -> bool:
    """True for pretrained CLIP tower parameters (prompt-cube parameters inside the tower are new modules)."""
    return name.startswith(BACKBONE_PREFIXES) and "prompt" not in name


def _no_decay_by_module(model: nn.Module) -> set:
    """Names of parameters owned by embedding and normalisation layers."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Embedding, *_NORM_TYPES)):
            names.update(f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters(recurse=False))
    return names


def wants_weight_decay(name: str, param: torch.Tensor, by_module: set = frozenset()) -> bool:
    """Matrices only: never biases, norms, embeddings, logit scale or prompts."""
    if param.ndim < 2 or name in by_module:
        return False
    return not any(key in name for key in NO_DECAY_KEYWORDS)


PARAM_GROUP_SCHEMES = ("vidclip", "prompt_switch_reference", "clip4clip_reference")
# PromptSwitch's new-module parameters (its names contain 'prompt' / 'caption' / 'pool') as named in vidclip
_PROMPT_SWITCH_NEW = ("frame_encoder.prompt_cube.prompts", "frame_encoder.prompt_cube.prompt_gates", "captioner.")


def _tower_and_decay(name: str, param: torch.Tensor, by_module: set, scheme: str) -> tuple[str, bool]:
    """("clip" | "new", decayed?) of one parameter under a grouping scheme."""
    if scheme == "prompt_switch_reference":
        return ("new" if name.startswith(_PROMPT_SWITCH_NEW) else "clip"), True
    if scheme == "clip4clip_reference":
        return ("clip" if is_backbone(name) or name == "logit_scale" else "new"), "bias" not in name
    return ("clip" if is_backbone(name) else "new"), wants_weight_decay(name, param, by_module)


def param_groups(model: nn.Module, lr: float, clip_lr: float, weight_decay: float,
                 scheme: str = "vidclip") -> list[dict]:
    """AdamW parameter groups ``{clip,new} x {decay,no_decay}`` over trainable parameters (empty groups dropped).

    ``scheme``: ``vidclip`` or ``prompt_switch_reference`` (see the module doc; ``train.param_groups``).
    """
    if scheme not in PARAM_GROUP_SCHEMES:
        raise ValueError(f"train.param_groups='{scheme}' is not one of {', '.join(PARAM_GROUP_SCHEMES)}")
    by_module = _no_decay_by_module(model)
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        tower, decay = _tower_and_decay(name, param, by_module, scheme)
        key = f"{tower}_{'decay' if decay else 'no_decay'}"
        group = groups.setdefault(key, {
            "name": key, "params": [], "param_names": [],
            "lr": clip_lr if tower == "clip" else lr, "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(param)
        group["param_names"].append(name)
    for key, group in groups.items():
        _logger.info("param group %s: %d tensors, %d values, lr %g, weight decay %g", key, len(group["params"]),
                     sum(p.numel() for p in group["params"]), group["lr"], group["weight_decay"])
    return list(groups.values())


class BertAdam(torch.optim.Optimizer):
    """Adam as BERT / CLIP4Clip train it: no bias correction, per-tensor gradient clipping, decoupled decay.

    For each parameter ``w`` with gradient ``g`` in a group (``lr`` already scheduled by the LR scheduler):
    ``g <- g * min(1, max_grad_norm / (||g|| + 1e-6))`` (when ``max_grad_norm > 0``; the norm of that one tensor),
    ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``, ``w <- w - lr (m / (sqrt(v) + eps) + wd w)``.
    Parameters without a gradient are skipped (their moments do not decay). ``p.grad`` is left unclipped.
    State per parameter: ``exp_avg``, ``exp_avg_sq`` and ``step`` (an int), saved and restored with
    ``state_dict`` like AdamW's.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"BertAdam: lr={lr}, eps={eps} and weight_decay={weight_decay} must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"BertAdam: betas={betas} must lie in [0, 1)")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "max_grad_norm": max_grad_norm}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` when given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict) -> None:
        grad = param.grad
        if grad.is_sparse:
            raise RuntimeError("BertAdam does not support sparse gradients")
        if group["max_grad_norm"] > 0:
            scale = group["max_grad_norm"] / (torch.linalg.vector_norm(grad) + 1e-6)
            grad = grad * scale.clamp(max=1.0)
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        direction = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
        if group["weight_decay"] > 0.0:
            direction += group["weight_decay"] * param  # two roundings, as the reference (not a fused alpha add)
        param.sub_(group["lr"] * direction)
        state["step"] += 1


OPTIMIZERS = ("adamw", "bertadam")


def create_optimizer(model: nn.Module, train_cfg) -> torch.optim.Optimizer:
    """``train.optimizer`` (AdamW or :class:`BertAdam`) over :func:`param_groups`, ``train.betas`` / ``train.eps``."""
    groups = param_groups(model, train_cfg.lr, train_cfg.clip_lr, train_cfg.weight_decay,
                          scheme=getattr(train_cfg, "param_groups", "vidclip"))
    if not groups:
        raise ValueError("no trainable parameters: check train.freeze_layers / train.freeze_conv1 / "
                         "train.freeze_towers and the model")
    betas = tuple(float(b) for b in train_cfg.betas)
    kind = getattr(train_cfg, "optimizer", "adamw")
    if kind == "bertadam":
        return BertAdam(groups, betas=betas, eps=train_cfg.eps,
                        max_grad_norm=float(getattr(train_cfg, "per_tensor_clip", 1.0)))
    if kind != "adamw":
        raise ValueError(f"train.optimizer='{kind}' is not one of {', '.join(OPTIMIZERS)}")
    return torch.optim.AdamW(groups, betas=betas, eps=train_cfg.eps, fused=_can_fuse(groups))


FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel runs


def _can_fuse(groups: Sequence[dict]) -> bool:
    """True when every parameter is a floating tensor on a device with torch's fused AdamW kernel: one kernel per
    step instead of a Python loop of ~10 ops per tensor (the same update up to float rounding; 10x less optimiser
    time on the demo's tiny models, where the loop was a quarter of the step)."""
    params = [p for group in groups for p in group["params"]]
    return all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate after ``step`` optimiser steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def bertadam_warmup_cosine(step: int, t_total: float, warmup_ratio: float) -> float:
    """BertAdam's ``warmup_cosine`` multiplier before optimiser step ``step`` (0-based) of a ``t_total`` horizon."""
    progress = step / t_total
    if progress < warmup_ratio:
        return progress / warmup_ratio
    return 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES = ("warmup_cosine", "bertadam_warmup_cosine")


def create_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float,
                     min_lr_ratio: float = 0.0, schedule: str = "warmup_cosine",
                     schedule_steps: int | None = None) -> LambdaLR:
    """``LambdaLR`` of ``schedule`` (:func:`warmup_cosine` or :func:`bertadam_warmup_cosine`) over
    ``schedule_steps`` (default ``total_steps``); call ``scheduler.step()`` once per optimiser step."""
    horizon = schedule_steps or total_steps
    if schedule == "bertadam_warmup_cosine":
        if min_lr_ratio:
            raise ValueError(f"train.min_lr_ratio={min_lr_ratio}: bertadam_warmup_cosine has no floor; set it to 0")
        return LambdaLR(optimizer, lambda step: bertadam_warmup_cosine(step, horizon, warmup_ratio))
    if schedule != "warmup_cosine":
        raise ValueError(f"train.schedule='{schedule}' is not one of {', '.join(SCHEDULES)}")
    warmup_steps = int(round(warmup_ratio * horizon))
    return LambdaLR(optimizer, lambda step: warmup_cosine(step, horizon, warmup_steps, min_lr_ratio))


def _freeze_backbone_where(model: nn.Module, selected) -> list[str]:
    """Set ``requires_grad=False`` on the backbone parameters whose name ``selected`` accepts; returns their names."""
    frozen = []
    for name, param in model.named_parameters():
        if is_backbone(name) and selected(name):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def freeze_backbone_layers(model: nn.Module, num_layers: int) -> list[str]:
    """Freeze the CLIP stem and the first ``num_layers`` blocks of both towers; returns the frozen names.

    ``num_layers < 0`` freezes nothing (CLIP4Clip's ``freeze_layer_num = -1``).
    """
    if num_layers < 0:
        return []

    def in_frozen_part(name: str) -> bool:
        block = _BLOCK_RE.search(name)
        if block is not None:
            return int(block.group(1)) < num_layers
        return any(key in name for key in FROZEN_STEM_KEYWORDS)

    frozen = _freeze_backbone_where(model, in_frozen_part)
    _logger.info("froze %d CLIP tensors (stem + blocks < %d)", len(frozen), num_layers)
    return frozen


def freeze_conv1(model: nn.Module) -> list[str]:
    """Freeze the visual patch embedding (``...visual.conv1.*``); returns the frozen names."""
    frozen = _freeze_backbone_where(model, lambda name: ".visual.conv1." in f".{name}")
    if not frozen:
        raise ValueError("train.freeze_conv1: the model has no visual conv1 parameter to freeze")
    _logger.info("froze the visual patch embedding: %s", ", ".join(frozen))
    return frozen


def freeze_towers(model: nn.Module, towers: Sequence[str]) -> list[str]:
    """Freeze whole CLIP towers (``constants.CLIP_TOWERS`` names: ``text``, ``visual``); returns the frozen names.

    Prompt-cube parameters inside the visual tower and every new module (temporal, head, logit scale) stay trainable.
    """
    unknown = [tower for tower in towers if tower not in CLIP_TOWERS]
    if unknown:
        raise ValueError(f"train.freeze_towers: unknown tower(s) {unknown}; valid: {', '.join(CLIP_TOWERS)}")
    prefixes = tuple(CLIP_TOWERS[tower] for tower in towers)
    frozen = _freeze_backbone_where(model, lambda name: name.startswith(prefixes))
    if towers:
        _logger.info("froze the CLIP %s tower(s): %d tensors", " and ".join(towers), len(frozen))
    return frozen


@torch.no_grad()
def clamp_logit_scale(model: nn.Module, max_scale: float) -> None:
    """Clamp ``model.logit_scale`` (log space) to ``[0, log(max_scale)]`` after an optimiser step."""
    logit_scale = getattr(model, "logit_scale", None)
    if isinstance(logit_scale, torch.Tensor):
        logit_scale.clamp_(0.0, math.log(max_scale))


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Learning rate of each named group (for logging)."""
    return {group.get("name", str(i)): group["lr"] for i, group in enumerate(optimizer.param_groups)}


def group_names(groups: Sequence[dict]) -> list[str]:
    return [g["name"] for g in groups]
