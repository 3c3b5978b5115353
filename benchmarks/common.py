"""Shared helpers for the benchmarks: repeated timing with median and spread, tables, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch

RESULTS_DIR = Path(os.environ.get("VIDCLIP_BENCH_DIR", "bench_results"))
SHARED_DATA = Path(os.environ.get("VIDCLIP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> List[float]:
    """Wall times (seconds) of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summarize(times: Sequence[float]) -> Dict[str, float]:
    """Median and spread (min, max, relative IQR-like spread) of a list of timings in seconds."""
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "max_s": max(times),
            "spread_pct": 100.0 * (max(times) - min(times)) / med if med else 0.0, "n": len(times)}


def machine_info() -> Dict[str, object]:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(x):
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: Dict[str, object]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = dict(payload, machine=machine_info(), date=time.strftime("%Y-%m-%d %H:%M:%S"))
    path.write_text(json.dumps(payload, indent=2))
    return path
