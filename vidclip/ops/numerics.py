"""Floating-point modes for the scoring kernels."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def flushing_denormals() -> bool:
    """True when this thread's CPU flushes subnormal floats to zero (x86 FTZ/DAZ, ``torch.set_flush_denormal``)."""
    tiny = torch.tensor(torch.finfo(torch.float32).tiny, dtype=torch.float32)
    return bool(tiny / 2 == 0)


@contextmanager
def flush_denormals(device: torch.device | str = "cpu") -> Iterator[None]:
    """Inside the block, treat subnormal floats as zero on the CPU; the previous mode is restored on exit.

    Softmaxes of sharp logits (UCoFiA's ``s / τ`` with τ = 0.01, Sinkhorn's ``-C / ε``) produce many subnormal
    exponentials, which x86 cores handle an order of magnitude slower than normal numbers; flushing them changes
    each affected value by less than 1.2e-38 (float32) absolute. A no-op on other devices, when flushing is already
    on, and on CPUs without the mode. The mode is per thread: intra-op worker threads keep theirs.
    """
    if torch.device(device).type != "cpu" or flushing_denormals() or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
