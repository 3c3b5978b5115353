"""Similarity at evaluation scale from cached features: each head's chunked N_t x N_v matrix (wall time, peak memory,
time per pair at several sizes) vs materialising the full pairwise (N_t, N_v, D) tensor as query-dependent methods do.

Each measurement runs in a fresh process so its peak RSS is its own; features are random but shaped exactly as
ViT-B/32 features (12 frames, 49 patches, 32 words, 512-d)."""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from typing import Dict, List

import torch

from common import markdown_table, write_results

ARCHS = {"vifi": "vifi-B-32", "glscl": "glscl-B-32", "ucofia": "ucofia-B-32", "norton": "norton-B-32"}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _encoder_outputs(model, n_videos: int, n_texts: int, frames: int = 12, words: int = 32):
    from vidclip.heads.base import TextEncoderOutput, VideoEncoderOutput

    g = torch.Generator().manual_seed(0)
    d = model.head_dim if hasattr(model, "head_dim") else 512
    patches = torch.randn(n_videos, frames, 49, d, generator=g) if model.cfg.patch_tokens else None
    frames_t = torch.randn(n_videos, frames, d, generator=g)
    video = VideoEncoderOutput(frames=frames_t, temporal=frames_t, mask=torch.ones(n_videos, frames, dtype=torch.bool),
                               patches=patches)
    tokens = torch.randn(n_texts, words, d, generator=g)
    mask = torch.zeros(n_texts, words, dtype=torch.bool)
    mask[:, :12] = True
    text = TextEncoderOutput(pooled=tokens[:, 5], tokens=tokens, mask=mask)
    return video, text


def _measure_head(head_name: str, n: int, chunk: int, queue) -> None:
    torch.set_num_threads(2)
    import vidclip
    from vidclip.ops.similarity import chunked_similarity

    model = vidclip.create_model(ARCHS[head_name]).eval()
    with torch.no_grad():
        video, text = _encoder_outputs(model, n, n)
        vfeats, tfeats = model.head.encode_video(video), model.head.encode_text(text)
        del video, text
        base = _rss_mb()
        start = time.perf_counter()
        sim = chunked_similarity(model.head, tfeats, vfeats, chunk, chunk)
        wall = time.perf_counter() - start
    queue.put({"head": head_name, "n": n, "chunk": chunk, "wall_s": wall, "pairs": n * n,
               "us_per_pair": 1e6 * wall / (n * n), "peak_extra_mb": _rss_mb() - base, "shape": list(sim.shape)})


def _measure_materialised(n: int, d: int, queue) -> None:
    """X-Pool style: a text-conditioned video embedding per (text, video) pair, (N_t, N_v, D) fp32 at once."""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    text, frames = torch.randn(n, d, generator=g), torch.randn(n, 12, d, generator=g)
    base = _rss_mb()
    start = time.perf_counter()
    attn = torch.softmax(torch.einsum("td,vfd->tvf", text, frames), -1)  # (N_t, N_v, F)
    pooled = torch.einsum("tvf,vfd->tvd", attn, frames)  # (N_t, N_v, D): the materialised tensor
    sim = torch.nn.functional.cosine_similarity(pooled, text[:, None, :], dim=-1)
    wall = time.perf_counter() - start
    queue.put({"head": "materialised (N_t,N_v,D)", "n": n, "chunk": n, "wall_s": wall, "pairs": n * n,
               "us_per_pair": 1e6 * wall / (n * n), "peak_extra_mb": _rss_mb() - base, "shape": list(sim.shape)})


def run_isolated(target, *args) -> Dict[str, object]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get(timeout=3600)
    proc.join()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--chunk", type=int, default=250)
    args = parser.parse_args(argv)
    plan: List = []
    sizes_small = [250, 500] if args.quick else [250, 500, 1000]
    for head in ARCHS:
        for n in sizes_small:
            plan.append((head, n))
    if not args.quick:
        plan += [("vifi", 10_000), ("glscl", 10_000)]
    rows = [run_isolated(_measure_head, head, n, args.chunk) for head, n in plan]
    rows.append(run_isolated(_measure_materialised, 1000 if not args.quick else 500, 512))
    table = markdown_table(["head", "N_t = N_v", "chunk", "wall s", "µs / pair", "peak extra MB"],
                           [[r["head"], r["n"], r["chunk"], r["wall_s"], r["us_per_pair"], r["peak_extra_mb"]]
                            for r in rows])
    print("## Chunked similarity from cached ViT-B/32-shaped features (2 threads)\n")
    print(table)
    write_results("similarity", {"rows": rows, "table": table})
    print(json.dumps({"done": len(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
