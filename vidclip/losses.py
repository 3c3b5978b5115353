"""Training losses: symmetric InfoNCE (optionally with soft targets), Norton's OT-rectified targets, captioning.

Losses are plain functions of model outputs; :mod:`vidclip.objective` composes them for training. Cross-process
gathering is not done here: the model gathers features with the callable it is given
(:func:`vidclip.distributed.make_feature_gather`) and the loss sees the global logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DIRECTION_REDUCTIONS = ("mean", "sum")


def symmetric_infonce(logits: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor] | None = None,
                      reduction: str = "mean") -> torch.Tensor:
    """CE(text -> video) and CE(video -> text) on (N, N) logits with the positives on the diagonal, combined.

    Args:
        logits: (N_t, N_v) scaled similarities; square.
        targets: optional soft targets ``(t2v (N, N), v2t (N, N))`` whose rows sum to 1 (e.g. Norton's).
        reduction: "mean" (½ [t2v + v2t], CLIP) or "sum" (t2v + v2t, Norton's ``loss_video + loss_text``).
    """
    if logits.shape[0] != logits.shape[1]:
        raise ValueError(f"symmetric InfoNCE needs a square logit matrix, got {tuple(logits.shape)}")
    if reduction not in DIRECTION_REDUCTIONS:
        raise ValueError(f"symmetric InfoNCE: reduction={reduction!r}, choose one of {DIRECTION_REDUCTIONS}")
    logits = logits if logits.dtype == torch.float64 else logits.float()
    weight = 0.5 if reduction == "mean" else 1.0
    if targets is None:
        labels = torch.arange(len(logits), device=logits.device)
        return weight * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    t2v, v2t = targets
    loss_t = -(t2v * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_v = -(v2t * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return weight * (loss_t + loss_v)


def identity_targets(n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity soft targets ``(I, I)``: with them :func:`symmetric_infonce` equals the hard-label loss."""
    eye = torch.eye(n, device=device)
    return eye, eye


class ContrastiveLoss(torch.nn.Module):
    """Symmetric InfoNCE; with ``rectify_targets`` Norton's OT-rectified soft targets (any head).

    Args:
        loss_cfg: ``cfg.train.loss`` (``rectify_targets``, ``rectify_beta``, ``rectify_epsilon``, ``rectify_iters``,
            ``rectify_rows``, ``directions``); None = plain symmetric InfoNCE (mean of the two directions).

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

            targets = rectified_targets(logits.detach(), beta=self.cfg.rectify_beta, epsilon=self.cfg.rectify_epsilon,
                                        iters=self.cfg.rectify_iters, rows=getattr(self.cfg, "rectify_rows", "video"))
        reduction = "mean" if self.cfg is None else getattr(self.cfg, "directions", "mean")
        return symmetric_infonce(logits, targets, reduction=reduction)


def sentence_group_blocks(cost: torch.Tensor, groups: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Arrange an (N, N) clip-caption matrix into (paragraph, video) blocks by group id.

    Args:
        cost: (N, N) text x video scores of N clip-caption pairs (pair i = caption i, clip i).
        groups: (N,) group id of each pair (pairs of one video / paragraph share an id; their order is kept).

    Returns:
        ``(blocks (A, A, m, m), mask (A, m))``: block [a, b, i, j] = cost of sentence i of group a vs clip j of group
        b (0 where padded), m = the largest group; mask True = a real sentence / clip slot.
    """
    _, inverse = torch.unique(groups, return_inverse=True)  # (N,) group index 0..A-1
    num_groups = int(inverse.max()) + 1
    onehot = F.one_hot(inverse, num_groups)  # (N, A)
    position = (onehot.cumsum(0) - 1).gather(1, inverse[:, None])[:, 0]  # (N,) rank of each pair in its group
    size = int(position.max()) + 1
    mask = torch.zeros(num_groups, size, dtype=torch.bool, device=cost.device)
    mask[inverse, position] = True
    index = (inverse[:, None].expand_as(cost), inverse[None, :].expand_as(cost),
             position[:, None].expand_as(cost), position[None, :].expand_as(cost))  # each (N, N)
    blocks = cost.new_zeros(num_groups, num_groups, size, size).index_put(index, cost)  # (A, A, m, m)
    return blocks, mask


def video_paragraph_loss(cost: torch.Tensor, groups: torch.Tensor, prompt_ratio: float = 0.3, epsilon: float = 0.1,
                         iters: int = 50, scale: float = 1.0 / 0.07, mass: float | None = None) -> torch.Tensor:
    """Norton's video-paragraph contrastive loss (unweighted): ``CE(P) + CE(Pᵀ)`` over the groups of a batch.

    ``P[a, b] = scale * Σ T ⊙ D_ab`` (vidclip.ops.ot.paragraph_scores) with ``D_ab`` the block of ``cost`` between
    the captions of group a and the clips of group b; the bucket value is the k-th smallest aligned score
    ``cost[i, i]`` with ``k = max(1, int(prompt_ratio * N))`` (Norton's ``kthvalue``, which fails for k = 0).

    Args:
        cost: (N, N) clip-caption cost (Norton: ``NortonHead.paragraph_cost``).
        groups: (N,) group id of each pair (ragged groups allowed: padded slots carry no mass).
        prompt_ratio / epsilon / iters / scale: Norton ``prompt_ratio`` 0.3, ``scale`` 0.1, 50, 1/0.07.
        mass: total mass of each plan (default: the largest group; Norton: ``length``).
    """
    from .ops.ot import paragraph_scores

    if cost.dim() != 2 or cost.shape[0] != cost.shape[1] or groups.shape != cost.shape[:1]:
        raise ValueError(f"video_paragraph_loss: cost {tuple(cost.shape)} must be (N, N) and groups "
                         f"{tuple(groups.shape)} (N,)")
    k = max(1, int(prompt_ratio * cost.shape[0]))
    bucket = cost.detach().diagonal().kthvalue(k).values
    blocks, mask = sentence_group_blocks(cost, groups.to(cost.device))  # (A, A, m, m), (A, m)
    logits = paragraph_scores(blocks, mask, mask, bucket, epsilon, iters, mass, scale)  # (A, A)
    labels = torch.arange(len(logits), device=logits.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Class-weighted next-token cross-entropy (Prompt Switch's captioning loss; weighted mean as the reference).

    Args:
        logits: (M, V) logits of the scored positions (``PromptCaptioner.scored_logits``).
        targets: (M,) next-token ids.
        class_weights: optional (V,) weights (frequent words down-weighted).
    """
    return F.cross_entropy(logits.float(), targets, weight=class_weights)
