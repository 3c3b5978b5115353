"""UCoFiA evaluation scoring: vidclip's head through ``chunked_similarity`` (memory-budgeted blocks) vs a faithful
re-statement of the reference evaluation loop (Ziyang412/UCoFiA ``eval_t2v/main_ucofia._run_on_single_gpu`` ->
``get_similarity_logits`` -> ``_loose_similarity``), side by side on the same inputs.

The reference loop scores every (32 captions) x (32 videos) batch pair and, inside ``_loose_similarity``, re-runs the
4-layer seqTransf over the video batch for every text batch, then builds the three levels in its own layout
(``(b_t, L, b_v, P)`` patch-word tensor, softmax/permute chains, W_l2 dropped as the eval tree does). vidclip runs
the seqTransf once per video at encoding (counted here as a one-off cost per pair) and scores cached features.
Shapes are ViT-B/32's: 12 frames, 49 patches (3 selected, 48 pixel tokens), 32 word slots of which 12 real, 512-d.
Timings are process CPU time, one thread, medians of interleaved rounds; peak extra memory is the rise of the
process's peak RSS (``VmHWM``, reset before each measurement).

Run: ``python benchmarks/bench_ucofia_scoring.py [--n 250] [--rounds 3]``
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
from common import (
    interleaved_wall_cpu,
    load_average,
    markdown_table,
    pinned_to_one_core,
    reset_peak_rss,
    status_mb,
    write_results,
)

T, PATCHES, WORDS, REAL_WORDS, D, BATCH = 12, 49, 32, 12, 512, 32


def build(preset: str | None, n: int):
    """A UCoFiA head (ISA weights away from the identity), its seqTransf, and encoder outputs of n pairs."""
    from open_clip.transformer import ResidualAttentionBlock

    from vidclip.features import TextEncoderOutput, VideoEncoderOutput
    from vidclip.heads import create_head
    from vidclip.heads.ucofia import UCoFiAHead

    torch.manual_seed(0)
    kwargs = {**(UCoFiAHead.PRESETS[preset] if preset else {}), "eval_topk": "hard"}  # scoring is the same either way
    head = create_head("ucofia", embed_dim=D, max_words=WORDS, max_frames=T, **kwargs).eval()
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.startswith("w_"):
                p.add_(0.01 * torch.randn_like(p))
    temporal = torch.nn.ModuleList(ResidualAttentionBlock(D, 8, batch_first=True) for _ in range(4)).eval()
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(n, T, D, generator=g)
    video = VideoEncoderOutput(frames=frames, temporal=frames, mask=torch.ones(n, T, dtype=torch.bool),
                               patches=torch.randn(n, T, PATCHES, D, generator=g))
    tokens = torch.randn(n, WORDS, D, generator=g)
    mask = torch.zeros(n, WORDS, dtype=torch.bool)
    mask[:, :REAL_WORDS] = True
    text = TextEncoderOutput(pooled=tokens[:, REAL_WORDS - 1], tokens=tokens, mask=mask)
    return head, temporal, video, text


def seq_transf(temporal, frames: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip seqTransf body (positions omitted: same cost): blocks + residual add."""
    x = frames
    for block in temporal:
        x = block(x)
    return x + frames


# ------------------------------------------------------------------------------------------ reference loop
def reference_block(head, temporal, sentence, words, frames, pixels):
    """``_loose_similarity`` (eval tree) for one text batch x one video batch -> mean of the three level logits
    divided by exp(logit_scale) (vidclip's cosine units; scale 100)."""
    ls, tau = 100.0, head.tau
    visual = seq_transf(temporal, frames)  # recomputed per block, as the reference
    video = visual / visual.norm(dim=-1, keepdim=True)
    video = video.mean(1)  # every frame real in this benchmark
    video = video / video.norm(dim=-1, keepdim=True)
    frame_feats = frames / frames.norm(dim=-1, keepdim=True)
    s = sentence / sentence.norm(dim=-1, keepdim=True)
    w = words / words.norm(dim=-1, keepdim=True)
    vs = ls * (s @ head.w_sentence) @ (video @ head.w_video).t()
    fs = torch.matmul(s, frame_feats.permute(0, 2, 1))
    sf = ls * torch.sum(fs * torch.softmax(torch.matmul(torch.softmax(fs / tau, -1), head.w_frame) / tau, -1), -1).t()
    bt, nw, d = w.shape
    bv, npx, _ = pixels.shape
    fine = torch.matmul(torch.matmul(w.view(-1, d), head.w_word_proj), pixels.view(-1, d).t()).view(bt, nw, bv, npx)
    word_level = torch.sum(torch.softmax(torch.matmul(torch.softmax(fine / tau, 1).permute(0, 2, 3, 1),
                                                      head.w_word) / tau, -1).permute(0, 3, 1, 2) * fine, 1)
    frame_level = torch.sum(torch.softmax(torch.matmul(torch.softmax(fine / tau, -1), head.w_pixel) / tau, -1) * fine,
                            -1)
    s2f = torch.sum(torch.softmax(torch.matmul(torch.softmax(word_level / tau, -1), head.w_pixel2) / tau, -1)
                    * word_level, -1)
    v2w = torch.sum(torch.softmax(torch.matmul(torch.softmax(frame_level / tau, 1).permute(0, 2, 1), head.w_word2)
                                  / tau, -1).permute(0, 2, 1) * frame_level, 1)
    return (vs + sf + (s2f + v2w) / 2) / 3 / ls


def reference_loop(head, temporal, text, video, pixels) -> torch.Tensor:
    """``_run_on_single_gpu``: every text batch against every video batch, rows concatenated."""
    rows = []
    for t0 in range(0, len(text.tokens), BATCH):
        row = [reference_block(head, temporal, text.pooled[t0:t0 + BATCH], text.tokens[t0:t0 + BATCH],
                               video.frames[v0:v0 + BATCH], pixels[v0:v0 + BATCH])
               for v0 in range(0, len(video.frames), BATCH)]
        rows.append(torch.cat(row, 1))
    return torch.cat(rows, 0)


# ------------------------------------------------------------------------------------------ vidclip
def vidclip_features(head, temporal, text, video):
    """Cached features (pixel selection and pooling happen at encoding, as the reference's caching phase)."""
    from vidclip.features import VideoEncoderOutput

    encoded = VideoEncoderOutput(video.frames, seq_transf(temporal, video.frames), video.mask, video.patches)
    return head.encode_text(text), head.encode_video(encoded)


def vidclip_scores(head, temporal, tf, vf, frames, max_block_mb: float) -> torch.Tensor:
    """The seqTransf once per video (the part of encoding the reference repeats per block) + chunked scoring."""
    from vidclip.ops.similarity import chunked_similarity

    seq_transf(temporal, frames)
    return chunked_similarity(head, tf, vf, 256, 256, max_block_mb=max_block_mb)


def measure(preset: str | None, n: int, rounds: int, max_block_mb: float) -> dict[str, object]:
    from vidclip.ops.similarity import chunked_similarity

    head, temporal, video, text = build(preset, n)
    with torch.no_grad():
        pixels = head.select_pixels(video.frames, video.patches, video.mask)  # eval tree: W_l2 dropped
        if head.eval_drop_wl2 is False:
            pixels = pixels @ head.w_pixel_proj
        ref = reference_loop(head, temporal, text, video, pixels)
        tf, vf = vidclip_features(head, temporal, text, video)
        ours = vidclip_scores(head, temporal, tf, vf, video.frames, max_block_mb)
        if head.mask_padding_words:  # the reference has no word mask: compare the reference preset only
            same = None
        else:
            same = float((ours - ref).norm() / ref.norm())
        ranks_equal = bool((ours.argmax(1) == ref.argmax(1)).all()) if same is not None else None
        fns = {"reference": lambda: reference_loop(head, temporal, text, video, pixels),
               "vidclip": lambda: vidclip_scores(head, temporal, tf, vf, video.frames, max_block_mb),
               "vidclip_cached": lambda: chunked_similarity(head, tf, vf, 256, 256, max_block_mb=max_block_mb)}
        wall, cpu = interleaved_wall_cpu(fns, rounds, warmup=0)
        peaks = {}
        for name, fn in fns.items():
            base = reset_peak_rss()
            fn()
            peaks[name] = status_mb("VmHWM") - base
    pairs = n * n
    out = {"preset": preset or "defaults", "n": n, "rel_diff": same, "argmax_equal": ranks_equal,
           "max_block_mb": max_block_mb}
    for name in fns:
        out[f"{name}_us_per_pair"] = 1e6 * statistics.median(cpu[name]) / pairs
        out[f"{name}_peak_extra_mb"] = peaks[name]
    out["speedup"] = statistics.median(a / b for a, b in zip(cpu["reference"], cpu["vidclip"]))
    out["speedup_cached"] = statistics.median(a / b for a, b in zip(cpu["reference"], cpu["vidclip_cached"]))
    return out


def training_scoring_ms(preset: str | None, batch: int, rounds: int = 5) -> float:
    """Best-of-``rounds`` CPU ms of the training-time B x B similarity, forward + backward, from encoded features
    (train mode, autograd: one tile)."""
    import time

    head, _, video, text = build(preset, batch)
    head.train()
    torch.manual_seed(3)
    vf = {k: x.detach().requires_grad_(x.is_floating_point()) for k, x in head.encode_video(video).items()}
    tf = {k: x.detach().requires_grad_(x.is_floating_point()) for k, x in head.encode_text(text).items()}
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        head.similarity(tf, vf).logsumexp(1).sum().backward()
        best = min(best, time.process_time() - start)
    return 1e3 * best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-block-mb", type=float, default=512.0)
    parser.add_argument("--train-batch", type=int, default=0, metavar="B",
                        help="only the training-time B x B scoring (forward + backward, ms) of both settings")
    args = parser.parse_args(argv)
    if args.train_batch:
        with pinned_to_one_core(1):
            for preset in ("reference", None):
                print(f"{preset or 'defaults'}: B={args.train_batch} forward + backward "
                      f"{training_scoring_ms(preset, args.train_batch):.0f} ms")
        return 0
    rows, results = [], []
    with pinned_to_one_core(1):
        for preset in ("reference", None):
            r = measure(preset, args.n, args.rounds, args.max_block_mb)
            results.append(r)
            rows.append([r["preset"], r["n"], f"{r['vidclip_cached_us_per_pair']:.1f}",
                         f"{r['vidclip_us_per_pair']:.1f}", f"{r['reference_us_per_pair']:.1f}",
                         f"x{r['speedup_cached']:.2f}", f"x{r['speedup']:.2f}",
                         f"{r['vidclip_peak_extra_mb']:.0f} / {r['reference_peak_extra_mb']:.0f}",
                         "n/a" if r["rel_diff"] is None else f"{r['rel_diff']:.1e}"])
    print(markdown_table(["head setting", "N", "vidclip µs/pair (cached features)",
                          "vidclip µs/pair (+ one-off seqTransf)", "reference µs/pair", "speed-up (cached)",
                          "speed-up (+ seqTransf)", "peak extra MB vidclip / reference", "rel. diff"], rows))
    print(f"load average {load_average()}")
    write_results("ucofia_scoring", {"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
