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
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

_logger = logging.getLogger(__name__)

BACKBONE_PREFIXES = ("frame_encoder.visual.", "text_encoder.")
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


def create_optimizer(model: nn.Module, train_cfg) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with ``train.betas`` / ``train.eps``."""
    groups = param_groups(model, train_cfg.lr, train_cfg.clip_lr, train_cfg.weight_decay,
                          scheme=getattr(train_cfg, "param_groups", "vidclip"))
    if not groups:
        raise ValueError("no trainable parameters: check train.freeze_layers and the model")
    betas = tuple(float(b) for b in train_cfg.betas)
    return torch.optim.AdamW(groups, betas=betas, eps=train_cfg.eps)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate after ``step`` optimiser steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def create_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float,
                     min_lr_ratio: float = 0.0) -> LambdaLR:
    """``LambdaLR`` of :func:`warmup_cosine`; call ``scheduler.step()`` once per optimiser step."""
    warmup_steps = int(round(warmup_ratio * total_steps))
    return LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, min_lr_ratio))


def freeze_backbone_layers(model: nn.Module, num_layers: int) -> list[str]:
    """Freeze the CLIP stem and the first ``num_layers`` blocks of both towers; returns the frozen names.

    ``num_layers < 0`` freezes nothing (CLIP4Clip's ``freeze_layer_num = -1``).
    """
    if num_layers < 0:
        return []
    frozen = []
    for name, param in model.named_parameters():
        if not is_backbone(name):
            continue
        block = _BLOCK_RE.search(name)
        in_frozen_block = block is not None and int(block.group(1)) < num_layers
        in_stem = block is None and any(key in name for key in FROZEN_STEM_KEYWORDS)
        if in_frozen_block or in_stem:
            param.requires_grad_(False)
            frozen.append(name)
    _logger.info("froze %d CLIP tensors (stem + blocks < %d)", len(frozen), num_layers)
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
