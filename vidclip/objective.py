"""The training objective: turns the model's outputs into named losses, built once from the training config.

As in open_clip (``loss.py`` plus a task in its training app), the model computes features and scores and the
objective owns everything that is only about training: the contrastive loss (with Norton's OT-rectified targets when
``train.loss.rectify_targets``), Norton's video-paragraph loss (``train.loss.paragraph_weight`` > 0, on batches that
carry sentence groups, ``data.sentence_groups``), the heads' auxiliary losses and their weight, and Prompt Switch's
captioning loss.

Example:
    >>> objective = build_objective(model, cfg.train.loss)
    >>> losses = objective(model, batch)          # model may be the accelerate/DDP-wrapped module
    >>> losses["loss"].backward()
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .features import Features
from .losses import ContrastiveLoss, caption_loss, video_paragraph_loss

Gather = Callable[[Features], Features]
_logger = logging.getLogger(__name__)


class TrainingObjective:
    """Named losses of one batch: ``contrastive``, ``paragraph``, each head auxiliary loss, ``caption``, and their
    sum ``loss``.

    Args:
        head: the model's alignment head (its ``aux_losses`` are read on the gathered features; the paragraph loss
            asks its ``paragraph_cost``).
        loss_cfg: ``cfg.train.loss`` (rectified targets, directions, paragraph loss, ``aux_weight``); None = plain
            symmetric InfoNCE.
        caption_weight: weight of the captioning loss (``model.prompt.caption_loss_weight``).

    Raises:
        ConfigError: ``train.loss.paragraph_weight`` > 0 with a head that has no ``paragraph_cost``.
    """

    def __init__(self, head: nn.Module, loss_cfg: Any = None, caption_weight: float = 0.0):
        self.head = head
        self.cfg = loss_cfg
        self.contrastive = ContrastiveLoss(loss_cfg)
        self.aux_weight = 1.0 if loss_cfg is None else float(loss_cfg.aux_weight)
        self.caption_weight = float(caption_weight or 0.0)
        self.paragraph_weight = 0.0 if loss_cfg is None else float(getattr(loss_cfg, "paragraph_weight", 0.0) or 0.0)
        if self.paragraph_weight > 0 and not hasattr(head, "paragraph_cost"):
            raise ConfigError(f"train.loss.paragraph_weight={self.paragraph_weight} needs a head with a clip-caption "
                              f"paragraph cost (norton); head {type(head).__name__} has none: set it to 0")
        self._warned_no_groups = False

    def __call__(self, model: nn.Module, batch: dict[str, Any], gather: Gather | None = None
                 ) -> dict[str, torch.Tensor]:
        """Run ``model(batch, gather=gather)`` and return its losses (see :meth:`losses`).

        A batch with ``"groups"`` ((B,) group id per clip-caption row, e.g. the video's list index) gets the group ids
        of every process gathered alongside the features for the paragraph loss.
        """
        outputs = model(batch, gather=gather)
        if self.paragraph_weight > 0 and batch.get("groups") is not None:
            groups = batch["groups"].to(outputs["logits"].device)
            outputs["groups"] = (gather or (lambda feats: feats))({"groups": groups})["groups"]
        return self.losses(outputs)

    def losses(self, outputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Losses of the model outputs of one batch; ``"loss"`` is the weighted total to back-propagate."""
        losses = {"contrastive": self.contrastive(outputs["logits"])}
        if self.paragraph_weight > 0:
            paragraph = self.paragraph(outputs)
            if paragraph is not None:
                losses["paragraph"] = self.paragraph_weight * paragraph
        for name, value in self.head.aux_losses(outputs["text"], outputs["video"]).items():
            losses[name] = self.aux_weight * (value if value.dtype == torch.float64 else value.float())
        if self.caption_weight > 0 and "caption_logits" in outputs:
            caption = caption_loss(outputs["caption_logits"], outputs["caption_targets"],
                                   outputs["caption_class_weights"])
            losses["caption"] = self.caption_weight * caption
        losses["loss"] = sum(losses.values())
        return losses

    def paragraph(self, outputs: dict[str, Any]) -> torch.Tensor | None:
        """Norton's video-paragraph loss (unweighted) of the gathered features; None when the batch has no groups."""
        groups = outputs.get("groups")
        if groups is None:
            if not self._warned_no_groups:
                _logger.warning("train.loss.paragraph_weight=%s but the batches carry no sentence groups: the "
                                "video-paragraph loss is skipped (set data.sentence_groups > 0 on data whose videos "
                                "have timed sentences, e.g. DiDeMo)", self.paragraph_weight)
                self._warned_no_groups = True
            return None
        cfg = self.cfg
        cost = self.head.paragraph_cost(outputs["text"], outputs["video"])  # (N, N)
        return video_paragraph_loss(cost, groups, prompt_ratio=cfg.paragraph_prompt_ratio,
                                    epsilon=cfg.paragraph_epsilon, iters=cfg.paragraph_iters,
                                    scale=cfg.paragraph_scale)


def build_objective(model: nn.Module, loss_cfg: Any = None) -> TrainingObjective:
    """The objective of a ``VideoTextModel`` (unwrapped) under ``cfg.train.loss`` (None: plain InfoNCE)."""
    return TrainingObjective(model.head, loss_cfg, caption_weight=float(model.cfg.prompt.caption_loss_weight or 0))
