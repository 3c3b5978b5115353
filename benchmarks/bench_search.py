"""Search: query latency over 1e5 / 1e6 cached 512-d embeddings with exact and approximate FAISS indexes
(``vidclip.engine.search.build_faiss_index``; recall@10 against the exact index), and the cost of a full query:
text encoding (ViT-B/32 text tower), coarse top-100, re-ranking the 100 candidates with each head on cached features.

Embeddings are random unit vectors with cluster structure (256 centres), so approximate indexes face a non-uniform
distribution; the queries are held-out points of the same distribution."""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from common import fmt_ms, interleaved, load_average, markdown_table, summarize, write_results

HEAD_ARCHS = ("vifi-B-32", "glscl-B-32", "ucofia-B-32", "norton-B-32")
QUERY = "a man is playing a guitar on stage"


def random_unit(n: int, d: int, seed: int, centers_seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(centers_seed).standard_normal((256, d), dtype=np.float32)
    x = rng.standard_normal((n, d), dtype=np.float32)  # (N, D)
    x += 2.0 * centers[rng.integers(0, 256, n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_index(n: int, index_types: list[str], queries: np.ndarray, repeats: int) -> list[dict[str, object]]:
    from vidclip.engine.search import build_faiss_index

    base = random_unit(n, queries.shape[1], seed=1)
    exact = build_faiss_index(base, "flat")
    _, truth = exact.search(queries, 10)
    indexes, builds = {"flat": exact}, {"flat": 0.0}
    for kind in index_types:
        if kind == "flat":
            continue
        start = time.perf_counter()
        indexes[kind] = build_faiss_index(base, kind, nlist=1024 if (kind == "ivf" and n > 200_000) else None)
        builds[kind] = time.perf_counter() - start
    del base
    times = interleaved({k: (lambda i=i: i.search(queries[:1], 10)) for k, i in indexes.items()}, repeats)
    rows = []
    for kind, index in indexes.items():
        _, found = index.search(queries, 10)
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        rows.append({"n": n, "index": kind, "build_s": builds[kind], "query": summarize(times[kind]),
                     "recall@10": recall, "params": _index_params(index)})
    return rows


def _index_params(index) -> str:
    if hasattr(index, "nprobe"):
        return f"nlist {index.nlist}, nprobe {index.nprobe}"
    if hasattr(index, "hnsw"):
        return f"M 32, efSearch {index.hnsw.efSearch}"
    return ""


def _cached_candidates(model, top: int) -> dict[str, torch.Tensor]:
    """Head video features of ``top`` random videos shaped as ViT-B/32 outputs (12 frames, 49 patches)."""
    from vidclip.features import VideoEncoderOutput

    g = torch.Generator().manual_seed(0)
    frames = torch.randn(top, 12, model.embed_dim, generator=g)  # (K, T, D)
    patches = torch.randn(top, 12, 49, model.embed_dim, generator=g) if model.cfg.patch_tokens else None
    out = VideoEncoderOutput(frames=frames, temporal=model.temporal(frames, torch.ones(top, 12, dtype=torch.bool)),
                             mask=torch.ones(top, 12, dtype=torch.bool), patches=patches)
    return model.head.encode_video(out)


def bench_query(base_index, repeats: int, top: int = 100) -> list[dict[str, object]]:
    """Per head: text encoding, coarse top-``top`` over ``base_index``, re-rank of the ``top`` candidates."""
    import vidclip

    rows = []
    for arch in HEAD_ARCHS:
        try:
            model = vidclip.create_model(arch).eval()
        except Exception as exc:  # head not available in this checkout
            rows.append({"head": arch, "skipped": f"{type(exc).__name__}: {exc}"})
            continue
        times = _time_query(model, base_index, top, repeats)
        total = [a + b + c for a, b, c in zip(times["encode"], times["coarse"], times["rerank"])]
        rows.append({"head": arch, **{k: summarize(v) for k, v in times.items()}, "total": summarize(total)})
    return rows


@torch.no_grad()
def _time_query(model, base_index, top: int, repeats: int) -> dict[str, list[float]]:
    cands = _cached_candidates(model, top)
    text = model.encode_text([QUERY])
    query = text["pooled"].numpy().astype(np.float32)  # (1, D)
    return interleaved({"encode": lambda: model.encode_text([QUERY]),
                        "coarse": lambda: base_index.search(query, top),
                        "rerank": lambda: model.similarity(text, cands)}, repeats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads (1: stable under load)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    repeats = 5 if args.quick else args.repeats
    plans = [(100_000, ["flat", "fp16", "sq8", "ivf"])]
    if not args.quick:
        plans = [(100_000, ["flat", "fp16", "sq8", "ivf", "hnsw"]), (1_000_000, ["flat", "fp16", "sq8", "ivf"])]
    queries = random_unit(200, 512, seed=7)
    index_rows = []
    for n, kinds in plans:
        index_rows += bench_index(n, kinds, queries, repeats)
    from vidclip.engine.search import build_faiss_index

    base_index = build_faiss_index(random_unit(100_000, 512, seed=1), "flat")
    query_rows = bench_query(base_index, repeats)
    t1 = markdown_table(["embeddings", "index", "params", "top-10 latency (1 query)", "recall@10 vs exact", "build s"],
                        [[r["n"], r["index"], r["params"], fmt_ms(r["query"]), f"{r['recall@10']:.3f}",
                          f"{r['build_s']:.1f}"] for r in index_rows])
    t2 = markdown_table(["head", "text encode", "coarse top-100 (flat, 1e5)", "re-rank top-100", "query total"],
                        [[r["head"], "skipped: " + r["skipped"][:70], "", "", ""] if "skipped" in r else
                         [r["head"], fmt_ms(r["encode"]), fmt_ms(r["coarse"]), fmt_ms(r["rerank"]), fmt_ms(r["total"])]
                         for r in query_rows])
    print(f"## Search: one 512-d query, {args.threads} thread(s) (torch and FAISS), medians of {repeats} interleaved "
          f"rounds; load avg {load_average()}\n")
    print(t1)
    if args.quick:
        print("\n(quick mode: 1e5 only; the full mode adds 1e6 and HNSW at 1e5)")
    print("\n### Full query: text encoding + coarse search + head re-ranking of the top 100 (cached features)\n")
    print(t2)
    write_results("search", {"index": index_rows, "query": query_rows, "repeats": repeats, "tables": [t1, t2]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
