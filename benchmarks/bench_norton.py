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
from common import interleaved_wall_cpu, load_average, markdown_table, pinned_to_one_core, ratio_stats, write_results

DIM, FRAMES, SLOTS, REAL_WORDS = 512, 12, 32, 12
BUDGET_MB = 512.0


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> float:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


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
def peak_extra_mb(fn) -> float:
    base = _reset_peak()
    fn()
    return _status_mb("VmHWM") - base


def compare(name: str, vidclip_fn, reference_fn, rounds: int, pairs: int) -> dict[str, object]:
    ours, ref = vidclip_fn(), reference_fn()
    rel = float((ours.double() - ref.double()).norm() / ref.double().norm())
    same_top1 = float((ours.argmax(1) == ref.argmax(1)).double().mean())
    _, cpu = interleaved_wall_cpu({"vidclip": vidclip_fn, "reference": reference_fn}, rounds, warmup=0)
    row = {"case": name, "vidclip_us_per_pair": 1e6 * sorted(cpu["vidclip"])[rounds // 2] / pairs,
           "reference_us_per_pair": 1e6 * sorted(cpu["reference"])[rounds // 2] / pairs,
           "speedup": ratio_stats(cpu["reference"], cpu["vidclip"]), "rel_diff": rel, "top1_agreement": same_top1,
           "vidclip_peak_mb": peak_extra_mb(vidclip_fn), "reference_peak_mb": peak_extra_mb(reference_fn)}
    print(f"  {name}: {row['vidclip_us_per_pair']:.2f} vs {row['reference_us_per_pair']:.2f} us/pair, "
          f"rel {rel:.1e}", file=sys.stderr, flush=True)
    return row


def run(n: int, rounds: int) -> list[dict[str, object]]:
    from vidclip.heads import create_head
    from vidclip.heads.norton import NortonHead
    from vidclip.ops.similarity import chunked_similarity, plan_chunks

    reference = create_head("norton", **NortonHead.PRESETS["reference"]).eval()
    default, default_pot = create_head("norton").eval(), create_head("norton", ot_solver="pot").eval()
    tf, vf = features(reference, n)
    pairs = n * n
    rows = []
    with torch.no_grad():
        chunks = plan_chunks(reference, tf, vf, BUDGET_MB, n, n)
        rows.append(compare("reference setting: retrieval (pooled cosine)",
                            lambda: chunked_similarity(reference, tf, vf, *chunks), lambda: reference_retrieval(tf, vf),
                            rounds, pairs))
        rows.append(compare("Norton's fused fine-grained score (batch min-max, paragraph cost)",
                            lambda: reference.paragraph_cost(tf, vf), lambda: reference_fused(tf, vf), rounds, pairs))
        chunks = plan_chunks(default, tf, vf, BUDGET_MB, 256, 256)
        rows.append(compare("vidclip default (fused per pair, soft-max + word x frame OT) vs same head on POT",
                            lambda: chunked_similarity(default, tf, vf, *chunks),
                            lambda: chunked_similarity(default_pot, tf, vf, *chunks), rounds, pairs))
        rows[-1]["blocks"] = chunks
        start = time.process_time()
        reference_fused(tf, vf)
        rows[-1]["norton_fused_reference_us_per_pair"] = 1e6 * (time.process_time() - start) / pairs
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with pinned_to_one_core(1):
        rows = run(args.n, args.rounds)
    header = ["case", "vidclip us/pair", "reference us/pair", "speed-up (median, range)", "rel. diff", "top-1 agree",
              "peak extra MB vidclip / reference"]
    table = [[r["case"], r["vidclip_us_per_pair"], r["reference_us_per_pair"],
              f"x{r['speedup']['median']:.1f} ({r['speedup']['min']:.1f}-{r['speedup']['max']:.1f})",
              f"{r['rel_diff']:.1e}", r["top1_agreement"],
              f"{r['vidclip_peak_mb']:.0f} / {r['reference_peak_mb']:.0f}"] for r in rows]
    print(f"N = {args.n}, one core, 1 thread, CPU time, medians of {args.rounds} interleaved rounds; "
          f"load avg {load_average()}")
    print(markdown_table(header, table))
    print(f"(Norton's fused score re-statement alone: {rows[-1]['norton_fused_reference_us_per_pair']:.1f} us/pair; "
          f"default-head blocks {rows[-1]['blocks']} from eval.max_block_mb={BUDGET_MB:.0f})")
    write_results("bench_norton", {"n": args.n, "rounds": args.rounds, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
