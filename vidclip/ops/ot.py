"""Optimal transport for Norton (methods.md §5.1, Appendix E), on POT's batched log-domain Sinkhorn.

Every solver here calls ``ot.batch.solve_batch(..., method="log_sinkhorn")`` (POT >= 0.9.6) on torch tensors: one
call solves a whole batch of small problems on the tensors' device with autocast disabled, in float64 for float64
inputs and float32 otherwise (half precision overflows in ``exp``). ``tol=0`` runs exactly ``iters`` iterations of
the loop Norton runs (zero-initialised potentials, rows then columns), as its fixed 50-iteration loop does.

- :func:`sinkhorn_batch`: plans of a batch of problems with per-problem marginals (zero mass = row/column excluded).
- :func:`rectified_targets`: Norton's faulty-negative soft targets ``beta * Q + (1 - beta) * I`` from (N, N) logits,
  the plan solved with the video rows first as Norton's ``log_optimal_transport(logits_per_video)``.
- :func:`bucket_marginals` / :func:`bucket_plan`: SuperGlue-style prompt-bucket (dustbin) transport of (m, n)
  similarity blocks, variable numbers of valid rows/columns per problem.
- :func:`paragraph_scores`: Norton's video-paragraph logits, ``scale * sum(T * D)`` over (paragraph, video) blocks.
"""
from __future__ import annotations

from typing import Union

import torch

GradMode = str  # "detach" (no gradient through the plan) | "autodiff" (differentiate every iteration)
RECTIFY_ROWS = ("video", "text")
SOLVERS = ("auto", "pot", "scaling")
# largest per-problem range of cost / reg for the scaling solver: exp(-range) stays far from underflow (float32 ~1e-38)
SCALING_MAX_RANGE = {torch.float32: 50.0, torch.float64: 500.0}


def solver_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other dtype is solved in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def sinkhorn_batch(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, reg: float, iters: int = 50,
                   grad: GradMode = "detach", solver: str = "auto") -> torch.Tensor:
    """Entropic OT plans of a batch of problems: ``argmin <T, cost> + reg * sum T log T`` s.t. ``T 1 = a, Tᵀ 1 = b``.

    Every solver runs the same iterations (zero-initialised log-potentials, rows then columns, exactly ``iters``):
    "pot" is POT's batched log-domain solver; "scaling" the same updates on ``exp(-cost / reg)`` (matrix-vector
    products instead of log-sum-exps, no convergence checks; equal up to rounding) and is only safe while the
    per-problem range of ``cost / reg`` stays small (``SCALING_MAX_RANGE``); "auto" picks "scaling" for detached
    plans within that range, else "pot".

    Args:
        cost: (G, m, n) cost matrices (e.g. negated similarities).
        a: (G, m) row marginals; zeros exclude rows (their plan rows are exactly 0).
        b: (G, n) column marginals, same total mass as ``a`` per problem.
        reg: entropic regularisation epsilon (> 0).
        iters: Sinkhorn iterations (all of them are run).
        grad: "detach" or "autodiff" (gradients through the iterations to ``cost``).
        solver: "auto", "pot" or "scaling".

    Returns:
        (G, m, n) plans on ``cost``'s device (float64 for a float64 ``cost``, else float32).
    """
    import ot

    if solver not in SOLVERS:
        raise ValueError(f"sinkhorn_batch: solver={solver!r}, choose one of {SOLVERS}")
    if reg <= 0:
        raise ValueError(f"sinkhorn_batch: reg must be > 0, got {reg}")
    if cost.dim() != 3 or a.shape != cost.shape[:2] or b.shape != (cost.shape[0], cost.shape[2]):
        raise ValueError(f"sinkhorn_batch: shapes cost {tuple(cost.shape)}, a {tuple(a.shape)}, b {tuple(b.shape)} "
                         "must be (G, m, n), (G, m), (G, n)")
    with torch.autocast(device_type=cost.device.type, enabled=False):
        dtype = solver_dtype(cost)
        cost, a, b = cost.to(dtype), a.to(device=cost.device, dtype=dtype), b.to(device=cost.device, dtype=dtype)
        if grad == "detach":
            cost = cost.detach()
        if solver == "auto":
            solver = "scaling" if grad == "detach" and scaling_is_safe(cost, reg) else "pot"
        if solver == "scaling":
            return sinkhorn_scaling(cost, a, b, reg, iters)
        res = ot.batch.solve_batch(cost, reg, a, b, max_iter=iters, tol=0.0, method="log_sinkhorn",
                                   grad="autodiff" if grad == "autodiff" else "detach")
        return res.plan


def scaling_is_safe(cost: torch.Tensor, reg: float) -> bool:
    """True when every problem's ``cost / reg`` spans at most ``SCALING_MAX_RANGE`` (and is finite)."""
    flat = cost.detach().flatten(1)  # (G, m*n)
    spread = (flat.amax(1) - flat.amin(1)) / reg  # (G,)
    limit = SCALING_MAX_RANGE.get(cost.dtype, SCALING_MAX_RANGE[torch.float32])
    return bool(torch.isfinite(spread).all()) and float(spread.max()) <= limit if spread.numel() else True


@torch.no_grad()
def sinkhorn_scaling(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, reg: float, iters: int) -> torch.Tensor:
    """The log-domain iterations of :func:`sinkhorn_batch` in scaling form (detached; see ``scaling_is_safe``).

    With ``K = exp(-cost / reg - c)`` (c = per-problem max of ``-cost / reg``, which only rescales ``u``):
    ``u = a / (K v)``, ``v = b / (Kᵀ u)`` from ``v = 1``, plan ``diag(u) K diag(v)``. Zero marginals give zero rows /
    columns.
    """
    log_k = -cost / reg  # (G, m, n)
    kernel = (log_k - log_k.amax((1, 2), keepdim=True)).exp()  # (G, m, n), max 1 per problem
    tiny = torch.finfo(kernel.dtype).tiny
    v = torch.ones_like(b)  # (G, n)
    for _ in range(iters):
        u = a / torch.bmm(kernel, v[:, :, None])[:, :, 0].clamp_min(tiny)  # (G, m)
        v = b / torch.bmm(u[:, None, :], kernel)[:, 0, :].clamp_min(tiny)  # (G, n)
    return u[:, :, None] * kernel * v[:, None, :]


@torch.no_grad()
def rectified_targets(logits: torch.Tensor, beta: float = 0.3, epsilon: float = 1.0, iters: int = 50,
                      rows: str = "video") -> tuple[torch.Tensor, torch.Tensor]:
    """Norton's faulty-negative rectified soft targets for a square batch of (text, video) logits.

    ``Q = n * Sinkhorn(S / epsilon, uniform marginals)`` with ``S`` the video x text matrix ``logitsᵀ`` when
    ``rows="video"`` (Norton: ``log_optimal_transport(logits_per_video)``; the last Sinkhorn update normalises the text
    columns exactly), or the text x video matrix itself when ``rows="text"`` (vidclip before 2026-11; with a
    converged plan both agree). Then ``v2t = beta * Q + (1 - beta) * I`` and ``t2v = beta * Qᵀ + (1 - beta) * I``.
    Norton applies this to raw dot products with ``epsilon=1`` (methods.md §5.1(a)); vidclip's loss passes the
    scaled logits ``exp(logit_scale) * cos`` (see vidclip.losses). Computed without gradients.

    Args:
        logits: (N, N) text x video, text i <-> video i on the diagonal.
        beta: weight of the transport plan in the targets.
        epsilon: entropic regularisation.
        iters: Sinkhorn iterations.
        rows: "video" (Norton) or "text": which side the Sinkhorn loop normalises first.

    Returns:
        ``(targets_t2v, targets_v2t)``, each (N, N) with rows summing to 1 (up to Sinkhorn convergence); float64 for
        float64 logits, else float32.
    """
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"rectified_targets needs square (N, N) logits, got {tuple(logits.shape)}")
    if rows not in RECTIFY_ROWS:
        raise ValueError(f"rectified_targets: rows={rows!r}, choose one of {RECTIFY_ROWS}")
    n = logits.shape[0]
    dtype = solver_dtype(logits)
    scores = logits.detach().to(dtype)  # (N_t, N_v)
    scores = scores.t() if rows == "video" else scores  # (rows, cols) of the Sinkhorn problem
    uniform = torch.full((1, n), 1.0 / n, device=logits.device, dtype=dtype)
    plan = sinkhorn_batch(-scores[None], uniform, uniform, reg=epsilon, iters=iters)[0] * n  # (rows, cols)
    plan_tv = plan.t() if rows == "video" else plan  # (N_t, N_v)
    eye = torch.eye(n, device=logits.device, dtype=dtype)
    return beta * plan_tv + (1 - beta) * eye, beta * plan_tv.t() + (1 - beta) * eye


def bucket_marginals(row_mask: torch.Tensor, col_mask: torch.Tensor, dtype: torch.dtype = torch.float32
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """SuperGlue dustbin marginals for problems with m valid rows and n valid columns (Norton's prompt bucket).

    Row marginal ``[1/(m+n)] * m ⊕ n/(m+n)`` and column marginal ``[1/(m+n)] * n ⊕ m/(m+n)``; invalid rows/columns
    get 0. Both sum to 1. A problem with no valid row and no valid column transports its unit mass bucket-to-bucket.

    Args:
        row_mask: (G, M) bool, True = valid row.
        col_mask: (G, N) bool, True = valid column.
        dtype: floating dtype of the marginals.

    Returns:
        ``(a (G, M+1), b (G, N+1))`` in ``dtype``, the last entry being the bucket.
    """
    m = row_mask.sum(-1, keepdim=True).to(dtype)  # (G, 1)
    n = col_mask.sum(-1, keepdim=True).to(dtype)  # (G, 1)
    total = (m + n).clamp_min(1.0)
    empty = (m + n == 0).to(dtype)  # (G, 1) keep the mass at 1 so the log-domain solver never sees an all-zero marginal
    a = torch.cat([row_mask.to(dtype) / total, n / total + empty], -1)  # (G, M+1)
    b = torch.cat([col_mask.to(dtype) / total, m / total + empty], -1)  # (G, N+1)
    return a, b


def add_bucket(sims: torch.Tensor, bucket: Union[float, torch.Tensor]) -> torch.Tensor:
    """``[[S, p], [p, p]]``: append the bucket row and column to (G, m, n) similarities -> (G, m+1, n+1).

    ``bucket`` is a scalar or a (G,) tensor of per-problem values (may require grad).
    """
    g, m, n = sims.shape
    p = torch.as_tensor(bucket, dtype=sims.dtype, device=sims.device)
    p = p.reshape(-1, 1, 1).expand(g, 1, 1)  # (G, 1, 1)
    top = torch.cat([sims, p.expand(g, m, 1)], -1)  # (G, m, n+1)
    return torch.cat([top, p.expand(g, 1, n + 1)], 1)  # (G, m+1, n+1)


def bucket_plan(sims: torch.Tensor, bucket: Union[float, torch.Tensor], epsilon: float = 0.1, iters: int = 50,
                row_mask: torch.Tensor | None = None, col_mask: torch.Tensor | None = None,
                mass: float | None = None, grad: GradMode = "detach", solver: str = "auto") -> torch.Tensor:
    """Transport plan between rows and columns of similarity blocks, with Norton's alignable prompt bucket.

    Maximises ``<T, [[S, p], [p, p]]> - epsilon * H(T)`` under :func:`bucket_marginals`, then keeps the (m, n) block;
    rows (columns) less similar to everything than the bucket value ``p`` send their mass to the bucket.

    Args:
        sims: (G, m, n) similarities (Norton: fused clip-caption scores in [0, 1]).
        bucket: scalar or (G,) bucket value(s) p (Norton: 30th percentile of the positive-pair similarities).
        epsilon: entropic regularisation (Norton: 0.1).
        iters: log-Sinkhorn iterations (Norton: 50).
        row_mask / col_mask: (G, m) / (G, n) bool validity (default: all valid); invalid entries get zero mass.
        mass: rescale each plan block to this total (Norton: the group size, 8); None keeps the raw plan.
        grad: "detach" (Norton: computed under no_grad) or "autodiff".
        solver: :func:`sinkhorn_batch` solver ("auto", "pot", "scaling").

    Returns:
        (G, m, n) plan blocks (float64 for float64 ``sims``, else float32).
    """
    g, m, n = sims.shape
    if row_mask is None:
        row_mask = torch.ones(g, m, dtype=torch.bool, device=sims.device)
    if col_mask is None:
        col_mask = torch.ones(g, n, dtype=torch.bool, device=sims.device)
    dtype = solver_dtype(sims)
    a, b = bucket_marginals(row_mask.bool(), col_mask.bool(), dtype)
    with torch.autocast(device_type=sims.device.type, enabled=False):
        cost = -add_bucket(sims.to(dtype), bucket.to(dtype) if torch.is_tensor(bucket) else bucket)  # (G, m+1, n+1)
    plan = sinkhorn_batch(cost, a, b, reg=epsilon, iters=iters, grad=grad, solver=solver)[:, :m, :n]  # (G, m, n)
    if mass is not None:
        plan = plan * (mass / plan.sum((1, 2), keepdim=True).clamp_min(1e-12))
    return plan



def paragraph_scores(blocks: torch.Tensor, row_mask: torch.Tensor, col_mask: torch.Tensor,
                     bucket: Union[float, torch.Tensor], epsilon: float = 0.1, iters: int = 50,
                     mass: float | None = None, scale: float = 1.0 / 0.07) -> torch.Tensor:
    """Norton's video-paragraph logits: ``scale * Σ T ⊙ D`` for every (paragraph a, video b) block D.

    T is the :func:`bucket_plan` of D (computed without gradient, as Norton's ``log_optimal_transport_prompt`` under
    ``no_grad``) rescaled to total ``mass`` (Norton: ``length``, the group size); the gradient reaches D through
    ``Σ T ⊙ D`` only. Padded sentences / clips carry zero mass and zero cost.

    Args:
        blocks: (A, B, m, n) clip-caption scores: sentence i of paragraph a vs clip j of video b (Norton: the batch
            min-max normalised fused matrix, see ``NortonHead.paragraph_cost``).
        row_mask / col_mask: (A, m) / (B, n) bool, True = a real sentence / clip.
        bucket: the prompt-bucket value p (scalar, no gradient).
        epsilon / iters: entropic regularisation and log-Sinkhorn iterations (Norton ``scale`` 0.1, 50).
        mass: total mass of every plan (default m, the padded group size; Norton: ``length``).
        scale: logit scale (Norton: 1/0.07, its never-trained ``logit_scale``).

    Returns:
        (A, B) logits, paragraph a (text) x video b.
    """
    num_a, num_b, m, n = blocks.shape
    rows = row_mask.bool()[:, None, :].expand(num_a, num_b, m).reshape(-1, m)  # (A*B, m)
    cols = col_mask.bool()[None, :, :].expand(num_a, num_b, n).reshape(-1, n)  # (A*B, n)
    valid = rows[:, :, None] & cols[:, None, :]  # (A*B, m, n)
    flat = blocks.reshape(num_a * num_b, m, n).masked_fill(~valid, 0.0)  # (A*B, m, n)
    p = torch.as_tensor(bucket, dtype=solver_dtype(flat), device=flat.device).detach()
    plan = bucket_plan(flat.detach(), p, epsilon, iters, rows, cols, mass=float(m if mass is None else mass))
    return scale * (plan.to(flat.dtype) * flat).sum((1, 2)).reshape(num_a, num_b)
