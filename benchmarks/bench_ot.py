"""Optimal transport: the batched Sinkhorn used by the Norton head vs a Python loop of single POT calls on the same
problems (Norton's bucket layout: an (m+1) x (n+1) plan per clip-caption group pair, the extra row / column being
the alignable-prompt bucket with custom marginals, entropic regularisation 0.1, 50 log-domain iterations).

The batched solver is ``vidclip.ops.ot`` when it offers one (see ``batched_solver``), else POT's
``ot.batch.solve_batch`` directly. The loop calls ``ot.sinkhorn(..., method="sinkhorn_log")`` once per problem on a
subset (a loop over all problems would take minutes); its per-problem time gives the speed-up. Plans are compared on
the subset (max abs difference, target <= 1e-5)."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import numpy as np
import torch
from common import fmt_ms, interleaved_wall_cpu, load_average, markdown_table, summarize, write_results

REG, ITERS = 0.1, 50


def bucket_problems(groups: int, m: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Costs (G, m+1, n+1) = -[[D, p], [p, p]] with D in [0, 1], and Norton's bucket marginals (G, m+1), (G, n+1)."""
    g = torch.Generator().manual_seed(seed)
    sims = torch.rand(groups, m, n, generator=g)  # (G, m, n) clip-caption similarities
    bucket = sims.flatten(1).quantile(0.3, dim=1).view(groups, 1, 1)  # (G, 1, 1) per-pair bucket value
    top = torch.cat([sims, bucket.expand(groups, m, 1)], -1)  # (G, m, n+1)
    bottom = bucket.expand(groups, 1, n + 1)  # (G, 1, n+1)
    cost = -torch.cat([top, bottom], 1)  # (G, m+1, n+1)
    a = torch.tensor([1.0 / (m + n)] * m + [n / (m + n)]).expand(groups, -1).contiguous()  # (G, m+1)
    b = torch.tensor([1.0 / (m + n)] * n + [m / (m + n)]).expand(groups, -1).contiguous()  # (G, n+1)
    return cost, a, b


def batched_solver() -> tuple[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
    """(name, solve(cost, a, b) -> plans (G, m+1, n+1)): vidclip's wrapper when present, else POT's batch solver."""
    try:
        from vidclip.ops import ot as vot
    except ImportError:
        vot = None
    if vot is not None and hasattr(vot, "sinkhorn_batch"):
        return "vidclip.ops.ot.sinkhorn_batch", lambda c, a, b: vot.sinkhorn_batch(c, a, b, reg=REG, iters=ITERS)
    import ot

    def solve(cost, a, b):
        return ot.batch.solve_batch(cost, REG, a, b, max_iter=ITERS, tol=0.0, method="log_sinkhorn",
                                    grad="detach").plan

    return "ot.batch.solve_batch(method='log_sinkhorn')", solve


def loop_solve(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, method: str = "sinkhorn_log") -> np.ndarray:
    """One ``ot.sinkhorn`` call per problem (float64 numpy), the straightforward way."""
    import ot

    plans = np.empty(tuple(cost.shape), dtype=np.float64)
    c64, a64, b64 = cost.double().numpy(), a.double().numpy(), b.double().numpy()
    for i in range(len(c64)):
        plans[i] = ot.sinkhorn(a64[i], b64[i], c64[i], REG, method=method, numItermax=ITERS, stopThr=0.0,
                               warn=False)
    return plans


def reference_log_sinkhorn(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The naive batched log-domain loop of methods.md (float64) as an independent cross-check."""
    z = -cost.double() / REG  # (G, m+1, n+1)
    log_a, log_b = a.double().log(), b.double().log()
    u, v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(ITERS):
        u = log_a - torch.logsumexp(z + v.unsqueeze(-2), -1)
        v = log_b - torch.logsumexp(z + u.unsqueeze(-1), -2)
    return (z + u.unsqueeze(-1) + v.unsqueeze(-2)).exp()


def bench_size(solve, groups: int, m: int, loop_subset: int, repeats: int) -> dict[str, object]:
    cost, a, b = bucket_problems(groups, m, m)
    sub = slice(0, min(loop_subset, groups))
    wall, times = interleaved_wall_cpu({"batched": lambda: solve(cost, a, b),
                         "loop": lambda: loop_solve(cost[sub], a[sub], b[sub]),
                         "loop_plain": lambda: loop_solve(cost[sub], a[sub], b[sub], "sinkhorn")}, repeats)
    batched_plans = solve(cost, a, b)
    loop_plans = torch.from_numpy(loop_solve(cost[sub], a[sub], b[sub]))
    naive = reference_log_sinkhorn(cost[sub], a[sub], b[sub])
    n_loop = sub.stop
    per_batched = [t / groups for t in times["batched"]]
    per_loop = [t / n_loop for t in times["loop"]]
    speedups = sorted(lp / bp for lp, bp in zip(per_loop, per_batched))
    plain = sorted(t / n_loop / bp for t, bp in zip(times["loop_plain"], per_batched))
    return {"groups": groups, "shape": f"{m + 1}x{m + 1}", "batched": summarize(times["batched"]),
            "loop_subset": n_loop, "loop": summarize(times["loop"]),
            "loop_extrapolated_s": summarize(per_loop)["median_s"] * groups,
            "us_per_problem_batched": 1e6 * summarize(per_batched)["median_s"],
            "us_per_problem_loop": 1e6 * summarize(per_loop)["median_s"],
            "us_per_problem_loop_plain": 1e6 * summarize(times["loop_plain"])["median_s"] / n_loop,
            "speedup_vs_plain": plain[len(plain) // 2], "batched_wall": summarize(wall["batched"]),
            "speedup": {"median": speedups[len(speedups) // 2], "min": speedups[0], "max": speedups[-1]},
            "max_abs_diff_vs_loop": float((batched_plans[sub].double() - loop_plans).abs().max()),
            "max_abs_diff_vs_naive": float((batched_plans[sub].double() - naive).abs().max()),
            "plan_sum_err": float((batched_plans.sum((1, 2)) - 1).abs().max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable under background load)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    name, solve = batched_solver()
    plan = [(1_000, 8), (20_000, 8), (20_000, 12)] + ([] if args.quick else [(100_000, 8)])
    rows = [bench_size(solve, groups, m, 200 if args.quick else 1000, repeats) for groups, m in plan]
    table = markdown_table(
        ["problems", "plan", "batched", "µs/problem batched", "loop (subset size)", "µs/problem loop",
         "loop over all (extrapolated)", "speed-up",
         "µs/problem loop, method='sinkhorn' (speed-up)", "max abs plan diff vs loop", "vs naive log-Sinkhorn"],
        [[r["groups"], r["shape"], fmt_ms(r["batched"]), f"{r['us_per_problem_batched']:.2f}",
          f"{fmt_ms(r['loop'])} ({r['loop_subset']})", f"{r['us_per_problem_loop']:.0f}",
          f"{r['loop_extrapolated_s']:.1f} s",
          f"x{r['speedup']['median']:.0f} ({r['speedup']['min']:.0f}-{r['speedup']['max']:.0f})",
          f"{r['us_per_problem_loop_plain']:.0f} (x{r['speedup_vs_plain']:.0f})",
          f"{r['max_abs_diff_vs_loop']:.1e}", f"{r['max_abs_diff_vs_naive']:.1e}"] for r in rows])
    print(f"## Optimal transport: {name} vs a loop of ot.sinkhorn(method='sinkhorn_log'), reg {REG}, {ITERS} "
          f"iterations, {torch.get_num_threads()} torch thread(s), process CPU time, medians of {repeats} interleaved "
          f"rounds (speed-up: median (min-max) of per-round ratios); "
          f"load avg {load_average()}\n")
    print(table)
    worst = max(r["max_abs_diff_vs_loop"] for r in rows)
    print(f"\nsame results to 1e-5: {'yes' if worst <= 1e-5 else 'NO'} (worst max |diff| {worst:.1e})")
    write_results("ot", {"solver": name, "rows": rows, "repeats": repeats, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
