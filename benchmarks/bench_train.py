"""Training step throughput: samples/s of one optimiser step (forward, contrastive + auxiliary losses, backward,
AdamW step) of the tiny model on CPU, with and without gradient checkpointing, fp32 and bf16 autocast; ViT-B/32 on
the GPU only when CUDA exists.

The model is vidclip's ``VideoTextModel`` (losses from ``vidclip.objective``, as in ``vidclip.engine.train``) with
the engine's optimiser (``create_optimizer``) on random preprocessed frames and real tokenised captions. Variants are
timed round-robin in one process (copies of the same initial weights); ratios are medians of per-round ratios."""
from __future__ import annotations

import argparse
import copy
import logging
import math
from collections.abc import Callable

import torch
from common import (
    fmt_ms,
    fmt_ratio,
    interleaved,
    interleaved_wall_cpu,
    load_average,
    markdown_table,
    ratio_stats,
    summarize,
    write_results,
)


def make_batch(model, batch_size: int, num_frames: int, device: str = "cpu") -> dict[str, object]:
    from vidclip.tokenizer import tokenize

    size = model.image_size
    captions = [f"a red circle moves {d} number {i}" for i, d in zip(range(batch_size), ["left", "right"] * batch_size)]
    return {"video": torch.randn(batch_size, num_frames, 3, size, size, device=device),  # (B, T, 3, S, S)
            "video_mask": torch.ones(batch_size, num_frames, dtype=torch.bool, device=device),
            "text_tokens": tokenize(captions, model.cfg.context_length).to(device), "captions": captions}


def make_step(model, batch, checkpointing: bool, bf16: bool, device: str = "cpu") -> Callable[[], float]:
    """One optimiser step of ``model`` on ``batch``; returns the loss value."""
    from omegaconf import OmegaConf

    from vidclip.config import TrainCfg
    from vidclip.engine.optim import create_optimizer
    from vidclip.objective import build_objective

    model.frame_encoder.set_grad_checkpointing(checkpointing)
    model.text_encoder.set_grad_checkpointing(checkpointing)
    model.train()
    optimizer = create_optimizer(model, OmegaConf.structured(TrainCfg))
    objective = build_objective(model)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = objective(model, batch)["loss"]
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    return step


def cpu_variants(arch: str, batch_size: int, num_frames: int) -> dict[str, Callable[[], float]]:
    import vidclip

    torch.manual_seed(0)
    base = vidclip.create_model(arch)
    batch = make_batch(base, batch_size, num_frames)
    variants = {}
    for name, ckpt, bf16 in (("fp32", False, False), ("fp32 + grad checkpointing", True, False),
                             ("bf16 autocast", False, True), ("bf16 autocast + grad checkpointing", True, True)):
        step = make_step(copy.deepcopy(base), batch, ckpt, bf16)
        try:
            loss = step()
        except Exception as exc:  # bf16 autocast kernels missing on this CPU / torch build
            print(f"note: {name} does not run here ({type(exc).__name__}: {exc}); skipped")
            continue
        if not math.isfinite(loss):
            print(f"note: {name} gives a non-finite loss ({loss}); skipped")
            continue
        variants[name] = step
    return variants


def gpu_rows(batch_size: int, num_frames: int, repeats: int):
    if not torch.cuda.is_available():
        print("\nViT-B/32 on GPU: skipped (torch.cuda.is_available() is False: this machine has no GPU)")
        return []
    import vidclip

    model = vidclip.create_model("vifi-B-32").cuda()
    batch = make_batch(model, batch_size, num_frames, "cuda")
    fns = {f"vifi-B-32 {n} (GPU)": make_step(copy.deepcopy(model), batch, ckpt, bf16, "cuda")
           for n, ckpt, bf16 in (("fp32", False, False), ("bf16 autocast", False, True),
                                 ("bf16 autocast + grad checkpointing", True, True))}
    times = interleaved(fns, repeats)
    return [{"variant": n, "batch": batch_size, **summarize(t), "samples_per_s": batch_size / summarize(t)["median_s"],
             "vs_fp32": ratio_stats(t, next(iter(times.values())))} for n, t in times.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="tiny-vifi")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-frames", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable under background load)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else args.repeats
    archs = [args.arch] if args.quick else [args.arch, "tiny-prompt-switch", "tiny-glscl"]
    rows = []
    for arch in archs:
        try:
            variants = cpu_variants(arch, args.batch_size, args.num_frames)
        except Exception as exc:  # an architecture whose head is not available in this checkout
            print(f"note: {arch} skipped ({type(exc).__name__}: {exc})")
            continue
        wall, times = interleaved_wall_cpu(variants, repeats)
        fp32 = times["fp32"]
        rows += [{"arch": arch, "variant": n, "batch": args.batch_size, **summarize(t), "wall": summarize(wall[n]),
                  "samples_per_s": args.batch_size / summarize(t)["median_s"], "vs_fp32": ratio_stats(t, fp32)}
                 for n, t in times.items()]
    table = markdown_table(["arch", "variant", "step wall", "step CPU time", "samples/s (CPU)", "CPU time vs fp32"],
                           [[r["arch"], r["variant"], fmt_ms(r["wall"]), fmt_ms(r), f"{r['samples_per_s']:.1f}",
                             fmt_ratio(r["vs_fp32"])] for r in rows])
    print(f"## Training step on CPU: batch {args.batch_size} x {args.num_frames} frames, {torch.get_num_threads()} "
          f"torch threads, medians of {repeats} interleaved rounds; load avg {load_average()}\n")
    print(table)
    gpu = gpu_rows(args.batch_size, args.num_frames, repeats)
    if gpu:
        print(markdown_table(["variant", "step time", "samples/s", "time vs fp32"],
                             [[r["variant"], fmt_ms(r), f"{r['samples_per_s']:.1f}", fmt_ratio(r["vs_fp32"])]
                              for r in gpu]))
    write_results("train", {"rows": rows, "gpu_rows": gpu, "repeats": repeats, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
