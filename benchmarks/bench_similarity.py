"""Similarity at evaluation scale from cached features: each head's chunked N_t x N_v matrix
(``vidclip.ops.similarity.chunked_similarity``): wall time, time per pair at several sizes (linearity), peak memory
for several chunk sizes (bounded by the chunk, not by N), vs the same head unchunked (chunk = N: every pairwise
intermediate at once) and vs an X-Pool-style materialised (N_t, N_v, D) tensor.

Each head runs in a fresh process whose address space is capped (``RLIMIT_AS``: a run that would exhaust the
machine fails with an allocation error instead of waking the OOM killer); peak memory is the rise of the process's
peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` before each measurement). Features are random but shaped
as ViT-B/32 features (12 frames, 49 patches, 32 words, 512-d) and go through each head's ``encode_video`` /
``encode_text``."""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time

import torch
from common import load_average, markdown_table, reset_peak_rss, status_mb, write_results

ARCHS = {"vifi": "vifi-B-32", "glscl": "glscl-B-32", "ucofia": "ucofia-B-32", "norton": "norton-B-32"}
MEMORY_CAP_GB = 8.0  # per head process, on top of what it holds after building the model


def _encoder_outputs(model, n_videos: int, n_texts: int, frames: int = 12, words: int = 32):
    from vidclip.features import TextEncoderOutput, VideoEncoderOutput

    g = torch.Generator().manual_seed(0)
    d = model.embed_dim
    patches = torch.randn(n_videos, frames, 49, d, generator=g) if model.cfg.patch_tokens else None  # (B, T, N, D)
    frames_t = torch.randn(n_videos, frames, d, generator=g)  # (B, T, D)
    video = VideoEncoderOutput(frames=frames_t, temporal=frames_t, mask=torch.ones(n_videos, frames, dtype=torch.bool),
                               patches=patches)
    tokens = torch.randn(n_texts, words, d, generator=g)  # (B, L, D)
    mask = torch.zeros(n_texts, words, dtype=torch.bool)
    mask[:, :12] = True  # 12 real words, the rest padding
    text = TextEncoderOutput(pooled=tokens[:, 5], tokens=tokens, mask=mask)
    return video, text


def _feature_mb(feats: dict[str, torch.Tensor]) -> float:
    return sum(t.numel() * t.element_size() for t in feats.values()) / 2 ** 20


def _measure(head, tfeats, vfeats, n: int, chunk: int) -> dict[str, object]:
    from vidclip.features import slice_features
    from vidclip.ops.similarity import chunked_similarity

    t_sub, v_sub = slice_features(tfeats, 0, n), slice_features(vfeats, 0, n)
    base = reset_peak_rss()
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        chunked_similarity(head, t_sub, v_sub, chunk, chunk)
    except (MemoryError, RuntimeError) as exc:
        return {"n": n, "chunk": chunk, "error": f"{type(exc).__name__}: {str(exc)[:80]}"}
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    print(f"  {n} x {n}, chunk {chunk}: {cpu:.2f} s CPU", file=sys.stderr, flush=True)
    return {"n": n, "chunk": chunk, "wall_s": wall, "cpu_s": cpu, "us_per_pair": 1e6 * cpu / (n * n),
            "peak_extra_mb": status_mb("VmHWM") - base}


class _Budgeted:
    """Runs measurements unless the time predicted from the last one (time per pair) exceeds the budget."""

    def __init__(self, head, tfeats, vfeats, budget_s: float):
        self.head, self.tfeats, self.vfeats, self.budget_s = head, tfeats, vfeats, budget_s
        self.us_per_pair = 0.0

    def __call__(self, n: int, chunk: int, tfeats=None, vfeats=None, **extra) -> dict[str, object]:
        predicted = self.us_per_pair * n * n / 1e6
        if predicted > self.budget_s:
            return dict(extra, n=n, chunk=chunk, skipped=f"predicted {predicted:.0f} s > budget {self.budget_s:.0f} s")
        row = _measure(self.head, tfeats or self.tfeats, vfeats or self.vfeats, n, chunk)
        self.us_per_pair = max(self.us_per_pair, row.get("us_per_pair", 0.0))
        return dict(row, **extra)


def _run_head(head_name: str, sizes: list[int], chunk: int, chunk_sweep: list[int], unchunked_n: int, big_n: int,
              budget_s: float, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    import logging

    import vidclip

    logging.basicConfig(level=logging.ERROR)
    print(f"{head_name}:", file=sys.stderr, flush=True)
    try:
        model = vidclip.create_model(ARCHS[head_name]).eval()
    except Exception as exc:  # head not available in this checkout
        queue.put([{"head": head_name, "n": 0, "chunk": 0, "error": f"not available ({exc})"}])
        return
    head = model.head
    del model.frame_encoder, model.text_encoder  # only the head is needed; keeps the baseline small
    n_max = max(sizes + [unchunked_n])
    with torch.no_grad():
        video, text = _encoder_outputs(model, n_max, n_max)
        vfeats, tfeats = head.encode_video(video), head.encode_text(text)
    del video, text
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = int((status_mb("VmSize") + MEMORY_CAP_GB * 1024) * 2 ** 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    _measure(head, tfeats, vfeats, 16, 16)  # warm-up (first-call allocations, lazy init)
    measure = _Budgeted(head, tfeats, vfeats, budget_s)
    rows = [measure(n, chunk) for n in sizes]
    rows += [measure(sizes[1], c) for c in chunk_sweep if c != chunk]  # peak memory follows the chunk
    rows.append(measure(unchunked_n, unchunked_n, kind="unchunked"))
    if big_n:
        rows.append(_big(measure, vfeats, tfeats, n_max, big_n, chunk))
    queue.put([dict(r, head=head_name) for r in rows])


def _big(measure: _Budgeted, vfeats, tfeats, n_max: int, big_n: int, chunk: int) -> dict[str, object]:
    """The big size when it fits: skipped with the reason when predicted time or feature memory is too large."""
    scale = big_n / n_max
    feat_mb = (_feature_mb(vfeats) + _feature_mb(tfeats)) * scale
    if feat_mb > 4096:
        return {"n": big_n, "chunk": chunk, "skipped": f"features would take {feat_mb / 1024:.1f} GB"}
    if measure.us_per_pair * big_n * big_n / 1e6 > measure.budget_s:
        return measure(big_n, chunk)  # returns the skip reason
    reps = int(scale + 0.999)
    big_t = {k: v.repeat(reps, *[1] * (v.dim() - 1))[:big_n] for k, v in tfeats.items()}  # (big_n, ...)
    big_v = {k: v.repeat(reps, *[1] * (v.dim() - 1))[:big_n] for k, v in vfeats.items()}
    return measure(big_n, chunk, big_t, big_v)


def _run_budget(head_name: str, preset: str | None, n: int, threads: int, queue) -> None:
    """One head at the default memory budget (``eval.max_block_mb`` of ``EvalCfg``), as ``vidclip eval`` scores:
    blocks planned by ``plan_chunks`` from the head's ``pair_bytes``; peak extra memory of the whole N x N call."""
    torch.set_num_threads(threads)
    import logging

    import vidclip
    from vidclip.config import EvalCfg
    from vidclip.features import slice_features
    from vidclip.ops.similarity import chunked_similarity, plan_chunks

    logging.basicConfig(level=logging.ERROR)
    overrides = {"head": {"name": head_name, "preset": preset}} if preset else {}
    model = vidclip.create_model(ARCHS[head_name], **overrides).eval()
    head, budget = model.head, EvalCfg().max_block_mb
    del model.frame_encoder, model.text_encoder
    with torch.no_grad():
        video, text = _encoder_outputs(model, n, n)
        vfeats, tfeats = head.encode_video(video), head.encode_text(text)
    del video, text
    chunked_similarity(head, slice_features(tfeats, 0, 8), slice_features(vfeats, 0, 8), max_block_mb=budget)  # warm-up
    blocks = plan_chunks(head, tfeats, vfeats, budget)
    base = reset_peak_rss()
    start_cpu = time.process_time()
    chunked_similarity(head, tfeats, vfeats, max_block_mb=budget)
    cpu = time.process_time() - start_cpu
    queue.put([{"head": head_name, "preset": preset or "defaults", "n": n, "budget_mb": budget,
                "blocks": f"{blocks[0]} x {blocks[1]}", "us_per_pair": 1e6 * cpu / (n * n),
                "peak_extra_mb": status_mb("VmHWM") - base}])


def budget_table(n: int, threads: int) -> str:
    """Every registered built-in head, defaults and ``reference`` preset, N x N at the default budget."""
    rows = []
    for head in ARCHS:
        for preset in (None, "reference"):
            rows += run_isolated(_run_budget, head, preset, n, threads)
    cells = [[r["head"], r.get("preset", ""), r.get("n", ""), r.get("blocks", ""),
              f"{r['us_per_pair']:.2f}" if "us_per_pair" in r else r.get("error", ""),
              f"{r['peak_extra_mb']:.0f}" if "peak_extra_mb" in r else ""] for r in rows]
    write_results("similarity_budget", {"rows": rows})
    return markdown_table(["head", "setting", "N_t = N_v", "blocks (planned)", "CPU µs / pair", "peak extra MB"],
                          cells)


def _run_materialised(n: int, d: int, threads: int, queue) -> None:
    """X-Pool style: a text-conditioned video embedding per (text, video) pair, (N_t, N_v, D) fp32 at once."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    text, frames = torch.randn(n, d, generator=g), torch.randn(n, 12, d, generator=g)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (int((status_mb("VmSize") + MEMORY_CAP_GB * 1024) * 2 ** 20), hard))
    base = reset_peak_rss()
    start, start_cpu = time.perf_counter(), time.process_time()
    attn = torch.softmax(torch.einsum("td,vfd->tvf", text, frames), -1)  # (N_t, N_v, F)
    pooled = torch.einsum("tvf,vfd->tvd", attn, frames)  # (N_t, N_v, D): the materialised tensor
    torch.nn.functional.cosine_similarity(pooled, text[:, None, :], dim=-1)  # (N_t, N_v)
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    queue.put([{"head": "X-Pool-style (N_t,N_v,D)", "n": n, "chunk": n, "wall_s": wall, "cpu_s": cpu,
                "kind": "materialised", "us_per_pair": 1e6 * cpu / (n * n),
                "peak_extra_mb": status_mb("VmHWM") - base}])


def run_isolated(target, *args) -> list[dict[str, object]]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    proc.join(timeout=3600)
    return queue.get(timeout=5) if not queue.empty() else [{"head": str(args[0]), "error": f"exit {proc.exitcode}"}]


def _row(r: dict[str, object]) -> list[object]:
    kind = r.get("kind", "chunked")
    if "error" in r or "skipped" in r:
        return [r["head"], kind, r.get("n", ""), r.get("chunk", ""), r.get("error") or r.get("skipped"), "", "", ""]
    return [r["head"], kind, r["n"], r["chunk"], f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}", f"{r['us_per_pair']:.3f}",
            f"{r['peak_extra_mb']:.0f}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--chunk", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable under background load)")
    parser.add_argument("--budget", type=int, metavar="N", default=0,
                        help="only the memory-budget table: every head at N x N with the default eval.max_block_mb")
    args = parser.parse_args(argv)
    if args.budget:
        from vidclip.config import EvalCfg

        print(f"## Peak extra memory at the default budget (eval.max_block_mb={EvalCfg().max_block_mb:.0f}), "
              f"ViT-B/32-shaped features, {args.threads} torch thread(s); load avg {load_average()}\n")
        print(budget_table(args.budget, args.threads))
        return 0
    sizes = [250, 500, 1000]
    sweep = [100] if args.quick else [50, 100, 500]  # at N = 500
    unchunked_n = 500 if args.quick else 1000
    big_n, budget = 10_000, (40.0 if args.quick else 600.0)
    rows: list[dict[str, object]] = []
    for head in ARCHS:
        rows += run_isolated(_run_head, head, sizes, args.chunk, sweep, unchunked_n, big_n, budget, args.threads)
    rows += run_isolated(_run_materialised, 500 if args.quick else 1000, 512, args.threads)
    table = markdown_table(["head", "mode", "N_t = N_v", "chunk", "wall s", "CPU s", "CPU µs / pair",
                            "peak extra MB"],
                           [_row(r) for r in rows])
    print(f"## Similarity from cached ViT-B/32-shaped features: {args.threads} torch thread(s), one run per cell, "
          f"address space capped at +{MEMORY_CAP_GB:.0f} GB per head; load avg {load_average()}\n")
    print(table)
    write_results("similarity", {"rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
