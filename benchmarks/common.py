"""Shared helpers for the benchmarks: interleaved repeated timing, medians with spread, ratios, tables, JSON output.

Other processes may share the machine while a benchmark runs, so comparisons are measured *side by side*: the
candidates are timed round-robin in one process (``interleaved``), and a ratio is the median of the per-round ratios
(``ratio_stats``), which cancels most of the slow drift caused by background load.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
RESULTS_DIR = Path(os.environ.get("VIDCLIP_BENCH_DIR", REPO / "bench_results"))
SHARED_DATA = Path(os.environ.get("VIDCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times (seconds) of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    return interleaved({"fn": fn}, repeats, warmup)["fn"]


def interleaved(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of every candidate, timed once per round, round-robin, for ``repeats`` rounds (after ``warmup``
    untimed rounds)."""
    return interleaved_wall_cpu(fns, repeats, warmup)[0]


def interleaved_wall_cpu(fns: Mapping[str, Callable[[], object]], repeats: int,
                         warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Like :func:`interleaved`, returning (wall times, process CPU times). For single-threaded work the CPU time
    is barely affected by other processes competing for the cores (they steal wall time, not CPU time)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return wall, cpu


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median and spread of timings in seconds: min, max, and (max - min) / median in percent."""
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "max_s": max(times),
            "spread_pct": 100.0 * (max(times) - min(times)) / med if med else 0.0, "n": len(times)}


def ratio_stats(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the per-round ratios ``numerator[i] / denominator[i]`` (rounds timed side by side)."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "n": len(ratios)}


def fmt_ms(summary: Mapping[str, float]) -> str:
    """``"12.3 ms ±4%"``: median and relative spread (max - min over median)."""
    return f"{1e3 * summary['median_s']:.1f} ms ±{summary['spread_pct']:.0f}%"


def fmt_ratio(stats: Mapping[str, float]) -> str:
    """``"x2.71 (2.60-2.90)"``: median per-round ratio and its range."""
    return f"x{stats['median']:.2f} ({stats['min']:.2f}-{stats['max']:.2f})"


@contextlib.contextmanager
def pinned_to_one_core(threads: int = 1) -> Iterator[int]:
    """Restrict this process (and threads it starts) to one CPU core and torch to ``threads`` threads."""
    old_affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    old_threads = torch.get_num_threads()
    core = min(old_affinity) if old_affinity else 0
    if old_affinity:
        os.sched_setaffinity(0, {core})
    torch.set_num_threads(threads)
    try:
        yield core
    finally:
        if old_affinity:
            os.sched_setaffinity(0, old_affinity)
        torch.set_num_threads(old_threads)


def load_average() -> str:
    """The 1-minute load average (other processes share the machine), for the report."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def machine_info() -> dict[str, object]:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "load_avg_1min": load_average(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(x):
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, object]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = dict(payload, machine=machine_info(), date=time.strftime("%Y-%m-%d %H:%M:%S"))
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def status_mb(key: str) -> float:
    """A memory line of /proc/self/status (e.g. "VmRSS", "VmHWM") in MB; NaN where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> float:
    """Reset the peak RSS (Linux ``clear_refs``) and return the current RSS in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return status_mb("VmRSS")
