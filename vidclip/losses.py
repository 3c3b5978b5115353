"""Training losses: symmetric InfoNCE (optionally with soft targets), Norton's OT-rectified targets, captioning.

Losses are plain functions of model outputs; :mod:`vidclip.objective` composes them for training. Cross-process
gathering is not done here: the model gathers features with the callable it is given
(:func:`vidclip.distributed.make_feature_gather`) and the loss sees the global logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_infonce(logits: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> torch.Tensor:
    """½ [CE(text -> video) + CE(video -> text)] on (N, N) logits with the positives on the diagonal.

    Args:
        logits: (N_t, N_v) scaled similarities; square.
        targets: optional soft targets ``(t2v (N, N), v2t (N, N))`` whose rows sum to 1 (e.g. Norton's).
    """
    if logits.shape[0] != logits.shape[1]:
        raise ValueError(f"symmetric InfoNCE needs a square logit matrix, got {tuple(logits.shape)}")
    logits = logits.float()
    if targets is None:
        labels = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    t2v, v2t = targets
    loss_t = -(t2v * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_v = -(v2t * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (loss_t + loss_v)


def identity_targets(n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity soft targets ``(I, I)``: with them :func:`symmetric_infonce` equals the hard-label loss."""
    eye = torch.eye(n, device=device)
    return eye, eye


class ContrastiveLoss(torch.nn.Module):
    """Symmetric InfoNCE; with ``rectify_targets`` Norton's OT-rectified soft targets (any head).

    Args:
        loss_cfg: ``cfg.train.loss`` (``rectify_targets``, ``rectify_beta``, ``rectify_epsilon``, ``rectify_iters``);
            None = plain symmetric InfoNCE.

    The rectifying Sinkhorn sees the scaled logits ``exp(logit_scale) * cos`` (no gradient), so with
    ``rectify_epsilon = 1`` the plan has the temperature of the loss itself (Norton uses raw dot products, ε = 1).
    """

    def __init__(self, loss_cfg=None):
        super().__init__()
        self.cfg = loss_cfg

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Loss of (N, N) scaled logits with the positives on the diagonal."""
        targets = None
        if self.cfg is not None and self.cfg.rectify_targets:
            from .ops.ot import rectified_targets

            targets = rectified_targets(logits.detach().float(), beta=self.cfg.rectify_beta,
                                        epsilon=self.cfg.rectify_epsilon, iters=self.cfg.rectify_iters)
        return symmetric_infonce(logits, targets)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Class-weighted next-token cross-entropy (Prompt Switch's captioning loss; weighted mean as the reference).

    Args:
        logits: (M, V) logits of the scored positions (``PromptCaptioner.scored_logits``).
        targets: (M,) next-token ids.
        class_weights: optional (V,) weights (frequent words down-weighted).
    """
    return F.cross_entropy(logits.float(), targets, weight=class_weights)
