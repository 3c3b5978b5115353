"""Retrieval metrics: time of ``vidclip.metrics.retrieval_metrics`` on a 1k x 1k matrix (MSR-VTT 1k-A size, both
modes) and on the MSVD test layout (27,763 captions x 670 videos, multi-caption, exact ties everywhere).

These timings used to be assertions in tests/test_metrics.py; tests check results, benchmarks measure time. The
budget column is the old assertion's bound, for reference (a slow machine under load may exceed it)."""
from __future__ import annotations

import argparse
import logging

import numpy as np
from common import fmt_ms, load_average, markdown_table, summarize, time_calls, write_results

from vidclip.metrics import retrieval_metrics

MSVD_VIDEOS, MSVD_CAPTIONS = 670, 27763


def one_k() -> np.ndarray:
    return np.random.default_rng(8).standard_normal((1000, 1000)).astype(np.float32)


def msvd_like() -> tuple[np.ndarray, np.ndarray]:
    """(27763, 670) rounded scores (exact ties) with the ground truth lifted, and a caption -> video map."""
    rng = np.random.default_rng(4)
    counts = np.full(MSVD_VIDEOS, MSVD_CAPTIONS // MSVD_VIDEOS)
    counts[: MSVD_CAPTIONS - counts.sum()] += 1  # (670,) captions per video, summing to 27763
    text_to_video = np.repeat(np.arange(MSVD_VIDEOS), counts)
    sim = np.round(rng.standard_normal((MSVD_CAPTIONS, MSVD_VIDEOS)), 1).astype(np.float32)
    sim[np.arange(MSVD_CAPTIONS), text_to_video] += 1.0
    return sim, text_to_video


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    repeats = 2 if args.quick else args.repeats
    sim_1k = one_k()
    sim_msvd, t2v = msvd_like()
    cases = [("1k x 1k", "clip4clip", lambda: retrieval_metrics(sim_1k, mode="clip4clip"), 1.0),
             ("1k x 1k", "strict", lambda: retrieval_metrics(sim_1k, mode="strict"), 1.0),
             ("MSVD 27763 x 670", "clip4clip", lambda: retrieval_metrics(sim_msvd, t2v), 20.0)]
    rows = [{"matrix": m, "mode": mode, "time": summarize(time_calls(fn, repeats)), "budget_s": budget}
            for m, mode, fn, budget in cases]
    table = markdown_table(["matrix", "mode", "retrieval_metrics (median, min-max)", "old test budget"],
                           [[r["matrix"], r["mode"], fmt_ms(r["time"]), f"{r['budget_s']:.0f} s"] for r in rows])
    print(f"## Retrieval metrics, medians of {repeats} runs; load avg {load_average()}\n")
    print(table)
    write_results("metrics", {"rows": rows, "repeats": repeats, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
