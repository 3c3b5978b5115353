"""Norton scoring (issue 17): vidclip's Norton head vs a faithful re-statement of the reference's operations, side
by side in one process, on the same inputs; one thread, CPU time, medians of interleaved rounds.

Inputs: N texts x N videos shaped as ViT-B/32 features (12 frames, 32 word slots of which 12 real, 512-d), through the
head's ``encode_text`` / ``encode_video``. Candidates:
- reference setting (``model.head.preset=reference``): retrieval scores = pooled cosine, as Norton's (VideoCLIP)
  retrieval; vidclip ``chunked_similarity`` vs the re-stated pooled dot products;
- Norton's fused fine-grained score (what its ``SequenceContrastLoss`` computes: pooled cosine, text->video and
  video->text log-sum-exp over every word / frame slot with its padding arithmetic, each min-max normalised over the
  N x N matrix, fused 0.5 / 1): vidclip ``NortonHead.paragraph_cost`` vs the re-statement, written here from the
  reference code's behaviour (one (N, N, L, T) einsum over all slots, exp, masked sums, log);
- vidclip's default head (fused per pair: pooled cosine + soft-maximum + word x frame bucket OT): the fast path
  (scaling-form Sinkhorn, padding slots dropped) vs the same head on POT's log-domain solver (``ot_solver=pot``).
Peak extra memory is the rise of the process's peak RSS (``VmHWM`` reset through ``/proc/self/clear_refs``), with
vidclip's blocks planned from the default budget ``eval.max_block_mb`` (512 MB).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from common import (
    interleaved_wall_cpu,
    load_average,
    markdown_table,
    pinned_to_one_core,
    ratio_stats,
    reset_peak_rss,
    status_mb,
    write_results,
)

DIM, FRAMES, SLOTS, REAL_WORDS = 512, 12, 32, 12
BUDGET_MB = 512.0


def features(head, n: int):
    from vidclip.features import TextEncoderOutput, VideoEncoderOutput

    g = torch.Generator().manual_seed(0)
    frames = torch.randn(n, FRAMES, DIM, generator=g)  # (N, T, D)
    video = VideoEncoderOutput(frames=frames, temporal=frames, mask=torch.ones(n, FRAMES, dtype=torch.bool))
    tokens = torch.randn(n, SLOTS, DIM, generator=g)  # (N, L, D)
    mask = torch.zeros(n, SLOTS, dtype=torch.bool)
    mask[:, :REAL_WORDS] = True  # SOT + 10 words + EOT, then padding
    text = TextEncoderOutput(pooled=tokens[:, 5], tokens=tokens, mask=mask)
    return head.encode_text(text), head.encode_video(video)


# ------------------------------------------------------------------------------------ re-stated reference operations
def reference_retrieval(tf, vf) -> torch.Tensor:
    """Norton's (VideoCLIP) retrieval: dot products of the pooled embeddings."""
    return tf["pooled"] @ vf["pooled"].t()


def reference_fused(tf, vf, alpha: float = 1.0, fusion_weight: float = 0.5) -> torch.Tensor:
    """Norton's fused fine-grained score over a whole N x N batch, as its SequenceContrastLoss computes it."""
    def minmax(x):
        return (x - x.min()) / (x.max() - x.min())

    text_mask, video_mask = tf["word_mask"].float(), vf["mask"].float()  # (A, L), (B, T)
    coarse = minmax(tf["pooled"] @ vf["pooled"].t())
    logits = torch.einsum("atd,bvd->abtv", tf["words"], vf["frames"])  # (A, B, L, T) every slot, padding included
    logits = logits * text_mask[:, None, :, None] * video_mask[None, :, None, :]
    expo = (logits / alpha).exp()
    t2v = torch.log(expo.sum(3) - (video_mask == 0).sum(-1)[None, :, None]) * alpha  # (A, B, L)
    t2v = minmax(t2v.sum(2) / text_mask.sum(-1)[:, None])
    v2t = torch.log(expo.sum(2) - (text_mask == 0).sum(-1)[:, None, None]) * alpha  # (A, B, T)
    v2t = minmax(v2t.sum(2) / video_mask.sum(-1)[None, :])
    return (fusion_weight * coarse + (t2v + v2t) / 2) / (fusion_weight + 1)


# ------------------------------------------------------------------------------------------------------ measures
CASES = ("reference setting: retrieval (pooled cosine)",
         "Norton's fused fine-grained score (batch min-max, paragraph cost)",
         "vidclip default (fused per pair, soft-max + word x frame OT) vs the same head on POT")


def candidates(n: int, dtype: torch.dtype = torch.float32) -> dict[str, tuple]:
    """case -> (vidclip fn, reference fn), built on the same features."""
    from vidclip.heads import create_head
    from vidclip.heads.norton import NortonHead
    from vidclip.ops.similarity import chunked_similarity, plan_chunks

    reference = create_head("norton", **NortonHead.PRESETS["reference"]).eval()
    default, default_pot = create_head("norton").eval(), create_head("norton", ot_solver="pot").eval()
    tf, vf = features(reference, n)
    tf = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tf.items()}
    vf = {k: v.to(dtype) if v.is_floating_point() else v for k, v in vf.items()}
    ref_chunks = plan_chunks(reference, tf, vf, BUDGET_MB, n, n)
    chunks = plan_chunks(default, tf, vf, BUDGET_MB, 256, 256)
    return {
        CASES[0]: (lambda: chunked_similarity(reference, tf, vf, *ref_chunks, out_dtype=dtype),
                   lambda: reference_retrieval(tf, vf)),
        CASES[1]: (lambda: reference.paragraph_cost(tf, vf), lambda: reference_fused(tf, vf)),
        CASES[2]: (lambda: chunked_similarity(default, tf, vf, *chunks, out_dtype=dtype),
                   lambda: chunked_similarity(default_pot, tf, vf, *chunks, out_dtype=dtype)),
        "blocks": chunks,
    }


def _peak_child(n: int, case: str, side: int, queue) -> None:
    torch.set_num_threads(1)
    with torch.no_grad():
        candidates(4)[case][side]()  # library initialisation (thread pools, kernels) is not the candidate's memory
        fn = candidates(n)[case][side]
        base = reset_peak_rss()
        fn()
        queue.put(status_mb("VmHWM") - base)


def peak_extra_mb(n: int, case: str, side: int) -> float:
    """Peak RSS rise of one call in a fresh process (a warm allocator would hide reused memory)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(n, case, side, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return float(value)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def run(n: int, rounds: int) -> list[dict[str, object]]:
    fns, fns64 = candidates(n), candidates(n, torch.float64)
    pairs, rows = n * n, []
    with torch.no_grad():
        for case in CASES:
            ours, ref = fns[case][0](), fns[case][1]()
            ours64, ref64 = fns64[case][0](), fns64[case][1]()
            _, cpu = interleaved_wall_cpu({"vidclip": fns[case][0], "reference": fns[case][1]}, rounds, warmup=0)
            row = {"case": case, "vidclip_us_per_pair": 1e6 * sorted(cpu["vidclip"])[rounds // 2] / pairs,
                   "reference_us_per_pair": 1e6 * sorted(cpu["reference"])[rounds // 2] / pairs,
                   "speedup": ratio_stats(cpu["reference"], cpu["vidclip"]),
                   "rel_diff_fp64": rel_diff(ours64, ref64), "rel_diff_fp32": rel_diff(ours, ref),
                   "fp32_error_vidclip": rel_diff(ours, ref64), "fp32_error_reference": rel_diff(ref, ref64),
                   "top1_agreement": float((ours.argmax(1) == ref.argmax(1)).double().mean())}
            print(f"  {case}: {row['vidclip_us_per_pair']:.2f} vs {row['reference_us_per_pair']:.2f} us/pair",
                  file=sys.stderr, flush=True)
            rows.append(row)
        start = time.process_time()
        reference_fused(*features_for_timing(n))
        rows[-1]["norton_fused_reference_us_per_pair"] = 1e6 * (time.process_time() - start) / pairs
    rows[-1]["blocks"] = fns["blocks"]
    for row in rows:
        row["vidclip_peak_mb"] = peak_extra_mb(n, row["case"], 0)
        row["reference_peak_mb"] = peak_extra_mb(n, row["case"], 1)
    return rows


def features_for_timing(n: int):
    from vidclip.heads import create_head

    return features(create_head("norton", fine="lse"), n)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with pinned_to_one_core(1):
        rows = run(args.n, args.rounds)
    header = ["case", "vidclip us/pair", "reference us/pair", "speed-up (median, range)", "rel. diff fp64",
              "fp32 error vidclip / reference", "top-1 agree", "peak extra MB vidclip / reference"]
    table = [[r["case"], r["vidclip_us_per_pair"], r["reference_us_per_pair"],
              f"x{r['speedup']['median']:.1f} ({r['speedup']['min']:.1f}-{r['speedup']['max']:.1f})",
              f"{r['rel_diff_fp64']:.1e}", f"{r['fp32_error_vidclip']:.1e} / {r['fp32_error_reference']:.1e}",
              r["top1_agreement"], f"{r['vidclip_peak_mb']:.0f} / {r['reference_peak_mb']:.0f}"] for r in rows]
    print(f"N = {args.n}, one core, 1 thread, CPU time, medians of {args.rounds} interleaved rounds; "
          f"load avg {load_average()}")
    print(markdown_table(header, table))
    print(f"(Norton's fused score re-statement alone: {rows[-1]['norton_fused_reference_us_per_pair']:.1f} us/pair; "
          f"default-head blocks {rows[-1]['blocks']} from eval.max_block_mb={BUDGET_MB:.0f})")
    write_results("bench_norton", {"n": args.n, "rounds": args.rounds, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
