"""The training objective: turns the model's outputs into named losses, built once from the training config.

As in open_clip (``loss.py`` plus a task in its training app), the model computes features and scores and the
objective owns everything that is only about training: the contrastive loss (with Norton's OT-rectified targets when
``train.loss.rectify_targets``), the heads' auxiliary losses and their weight, and Prompt Switch's captioning loss.

Example:
    >>> objective = build_objective(model, cfg.train.loss)
    >>> losses = objective(model, batch)          # model may be the accelerate/DDP-wrapped module
    >>> losses["loss"].backward()
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .features import Features
from .losses import ContrastiveLoss, caption_loss

Gather = Callable[[Features], Features]


class TrainingObjective:
    """Named losses of one batch: ``contrastive``, each head auxiliary loss, ``caption``, and their sum ``loss``.

    Args:
        head: the model's alignment head (its ``aux_losses`` are read on the gathered features).
        loss_cfg: ``cfg.train.loss`` (rectified targets, ``aux_weight``); None = plain symmetric InfoNCE.
        caption_weight: weight of the captioning loss (``model.prompt.caption_loss_weight``).
    """

    def __init__(self, head: nn.Module, loss_cfg: Any = None, caption_weight: float = 0.0):
        self.head = head
        self.contrastive = ContrastiveLoss(loss_cfg)
        self.aux_weight = 1.0 if loss_cfg is None else float(loss_cfg.aux_weight)
        self.caption_weight = float(caption_weight or 0.0)

    def __call__(self, model: nn.Module, batch: dict[str, Any], gather: Gather | None = None
                 ) -> dict[str, torch.Tensor]:
        """Run ``model(batch, gather=gather)`` and return its losses (see :meth:`losses`)."""
        return self.losses(model(batch, gather=gather))

    def losses(self, outputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Losses of the model outputs of one batch; ``"loss"`` is the weighted total to back-propagate."""
        losses = {"contrastive": self.contrastive(outputs["logits"])}
        for name, value in self.head.aux_losses(outputs["text"], outputs["video"]).items():
            losses[name] = self.aux_weight * value.float()
        if self.caption_weight > 0 and "caption_logits" in outputs:
            caption = caption_loss(outputs["caption_logits"], outputs["caption_targets"],
                                   outputs["caption_class_weights"])
            losses["caption"] = self.caption_weight * caption
        losses["loss"] = sum(losses.values())
        return losses


def build_objective(model: nn.Module, loss_cfg: Any = None) -> TrainingObjective:
    """The objective of a ``VideoTextModel`` (unwrapped) under ``cfg.train.loss`` (None: plain InfoNCE)."""
    return TrainingObjective(model.head, loss_cfg, caption_weight=float(model.cfg.prompt.caption_loss_weight or 0))
