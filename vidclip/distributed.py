"""Cross-process feature gathering with gradients, for contrastive losses on the global batch.

Every rank gathers the features of all ranks and computes the loss on the whole global batch. The gather is
``torch.distributed.nn.functional.all_gather``, whose backward sums the gradient of every rank's (identical) loss
into the rank that produced each row. Each rank therefore receives ``N x dL/dfeatures`` for its own rows, and the
average that DDP / accelerate applies to parameter gradients divides by ``N`` again: N processes with local batch
``b`` give exactly the gradient of one process with batch ``N * b`` (tests/test_distributed.py proves it).

Local batches may differ in size across ranks (videos that fail to decode are dropped by the collate): rows are
padded to the largest local batch, gathered, and the padding rows are removed again.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

_logger = logging.getLogger(__name__)

FeatureGather = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def is_distributed() -> bool:
    """True when a default process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) along dim 0 across ranks, differentiably.

    Identity when not distributed.
    """
    if not is_distributed():
        return tensor
    return torch.cat(dist_fn.all_gather(tensor), dim=0)  # (world * B, ...)


def gather_row_counts(num_rows: int, device: torch.device) -> list[int]:
    """Number of rows each rank holds (no gradient)."""
    if not is_distributed():
        return [num_rows]
    local = torch.tensor([num_rows], dtype=torch.long, device=device)
    counts = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, local)
    return [int(c.item()) for c in counts]


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Append zero rows so that ``tensor`` has ``rows`` rows (differentiable w.r.t. the real rows)."""
    missing = rows - tensor.shape[0]
    if missing == 0:
        return tensor
    padding = tensor.new_zeros((missing, *tensor.shape[1:]))
    return torch.cat([tensor, padding], dim=0)  # (rows, ...)


def all_gather_variable(tensor: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
    """Differentiable gather of tensors whose first dimension differs across ranks.

    Args:
        tensor: local tensor (b_rank, ...); the trailing shape must match on every rank.
        counts: rows on each rank, if already known (saves one collective).

    Returns:
        (sum(counts), ...) with the rows of rank 0 first, then rank 1, ... ; identity when not distributed.
    """
    if not is_distributed():
        return tensor
    counts = counts if counts is not None else gather_row_counts(tensor.shape[0], tensor.device)
    max_rows = max(counts)
    if tensor.dtype == torch.bool:  # collectives on bool are not supported by every backend
        return all_gather_variable(tensor.to(torch.uint8), counts).bool()
    padded = all_gather_with_grad(_pad_rows(tensor, max_rows))  # (world * max_rows, ...)
    pieces = padded.split(max_rows, dim=0)
    return torch.cat([piece[:n] for piece, n in zip(pieces, counts)], dim=0)  # (sum(counts), ...)


def gather_features(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gather every tensor of a ``Features`` dict across ranks (rows aligned; uneven local batches allowed)."""
    if not is_distributed() or not features:
        return features
    first = next(iter(features.values()))
    counts = gather_row_counts(first.shape[0], first.device)
    return {key: all_gather_variable(value, counts) for key, value in features.items()}


def _identity(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return features


def make_feature_gather(accelerator=None) -> FeatureGather:
    """The ``gather`` callable that ``VideoTextModel.forward(batch, gather)`` takes.

    Args:
        accelerator: an ``accelerate.Accelerator`` or None. With one process (or None outside a process group)
            the callable is the identity.
    """
    num_processes = accelerator.num_processes if accelerator is not None else (
        dist.get_world_size() if is_distributed() else 1)
    if num_processes <= 1:
        return _identity
    return gather_features
