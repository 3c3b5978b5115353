"""Search: query latency (text encode + top-10) over 1e5 / 1e6 cached 512-d embeddings, exact vs approximate FAISS
indexes (recall@10 against exact), and the cost of re-ranking the top 100 with each head on cached features."""
from __future__ import annotations

import argparse
import logging
import time
from typing import Dict, List

import numpy as np
import torch

from common import markdown_table, summarize, time_calls, write_results


def random_unit(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    # a little cluster structure so approximate indexes face a realistic (non-uniform) distribution
    centers = rng.standard_normal((256, d), dtype=np.float32)
    x += 2.0 * centers[rng.integers(0, 256, n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_index(n: int, index_types: List[str], queries: np.ndarray, repeats: int) -> List[Dict[str, object]]:
    from vidclip.engine.search import build_faiss_index

    base = random_unit(n, queries.shape[1], seed=1)
    exact = build_faiss_index(base, "flat")
    _, truth = exact.search(queries, 10)
    rows = []
    for kind in index_types:
        start = time.perf_counter()
        index = exact if kind == "flat" else build_faiss_index(base, kind)
        build_s = time.perf_counter() - start
        times = time_calls(lambda: index.search(queries[:1], 10), repeats)
        _, found = index.search(queries, 10)
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        rows.append({"n": n, "index": kind, "build_s": build_s, "query": summarize(times), "recall@10": recall})
    return rows


def bench_encode(repeats: int) -> Dict[str, float]:
    import vidclip

    model = vidclip.create_model("vifi-B-32").eval()
    with torch.no_grad():
        times = time_calls(lambda: model.encode_text(["a man is playing a guitar on stage"]), repeats)
    return summarize(times)


def bench_rerank(repeats: int, top: int = 100) -> List[Dict[str, object]]:
    """Head similarity of one query against ``top`` cached candidates (12 frames, B/32 features)."""
    import vidclip

    rows = []
    for arch in ("vifi-B-32", "glscl-B-32", "ucofia-B-32", "norton-B-32"):
        model = vidclip.create_model(arch).eval()
        with torch.no_grad():
            video = model.encode_video(torch.randn(2, 12, 3, 224, 224), torch.ones(2, 12, dtype=torch.bool))
            cands = {k: v[:1].expand(top, *v.shape[1:]).contiguous() for k, v in video.items()}
            text = model.encode_text(["a man is playing a guitar on stage"])
            times = time_calls(lambda: model.similarity(text, cands), repeats)
        rows.append({"head": arch, "rerank_top": top, **summarize(times)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    queries = random_unit(200, 512, seed=7)
    index_rows = []
    for n in sizes:
        index_rows += bench_index(n, ["flat", "fp16", "sq8", "ivf"], queries, args.repeats)
    encode = bench_encode(args.repeats)
    rerank = bench_rerank(args.repeats)
    t1 = markdown_table(["embeddings", "index", "top-10 ms (median)", "spread %", "recall@10 vs exact", "build s"],
                        [[r["n"], r["index"], 1e3 * r["query"]["median_s"], r["query"]["spread_pct"], r["recall@10"],
                          r["build_s"]] for r in index_rows])
    t2 = markdown_table(["head (B/32)", "re-rank top-100 ms", "spread %"],
                        [[r["head"], 1e3 * r["median_s"], r["spread_pct"]] for r in rerank])
    print("## Search latency (one query, 512-d)\n")
    print(t1)
    print(f"\ntext encoding (ViT-B/32 text tower, one query): {1e3 * encode['median_s']:.1f} ms median\n")
    print(t2)
    write_results("search", {"index": index_rows, "encode": encode, "rerank": rerank, "tables": [t1, t2]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
