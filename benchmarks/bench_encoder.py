"""Encoder overhead: video embedding time of vidclip's FrameEncoder vs bare open_clip ``encode_image`` on the same
frames (ViT-B/32, random weights, 2 videos x 12 frames of 224x224, fp32, no grad), and the cost of the Prompt Switch
prompt cube (prompt-switch-B-32) and of GLSCL's sequence transformer (glscl-B-32) on top.

All candidates are timed round-robin in one process; ratios are medians of per-round ratios against the bare
open_clip baseline (encode_image on the 24 frames + reshape + mean of L2-normalised frames, as CLIP4Clip meanP)."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import (
    fmt_ms,
    fmt_ratio,
    interleaved_wall_cpu,
    load_average,
    markdown_table,
    ratio_stats,
    summarize,
    write_results,
)


def build_models() -> dict[str, object]:
    """open_clip ViT-B/32 plus the vidclip models sharing its visual weights (so outputs can be compared)."""
    import open_clip

    import vidclip

    clip = open_clip.create_model("ViT-B-32", force_quick_gelu=True).eval()  # as OpenAI weights (quick_gelu below)
    models = {"open_clip": clip}
    for arch in ("vifi-B-32", "prompt-switch-B-32", "glscl-B-32"):
        try:
            model = vidclip.create_model(arch, clip={"quick_gelu": True}).eval()
        except Exception as exc:  # a head not written yet: same temporal module on the mean-pooling head
            if arch != "glscl-B-32":
                raise
            print(f"note: glscl-B-32 unavailable ({type(exc).__name__}: {exc}); timing its sequence transformer "
                  "(4 layers) on the vifi head instead")
            model = vidclip.create_model("vifi-B-32", clip={"quick_gelu": True},
                                         temporal={"type": "seq_transformer", "num_layers": 4}).eval()
        model.frame_encoder.visual.load_state_dict(clip.visual.state_dict())
        models[arch] = model
    return models


def bare_mean_pooling(clip, frames: torch.Tensor, normalize_frames: bool = False) -> torch.Tensor:
    """open_clip alone: encode every frame, (optionally normalise,) average over time, normalise (ViFi-CLIP /
    CLIP4Clip meanP); ``normalize_frames`` follows the vifi-B-32 head config."""
    batch, num_frames = frames.shape[:2]
    embeds = clip.encode_image(frames.flatten(0, 1)).reshape(batch, num_frames, -1)  # (B, T, E)
    if normalize_frames:
        embeds = F.normalize(embeds, dim=-1)
    return F.normalize(embeds.mean(1), dim=-1)  # (B, E)


def check_equivalence(models, frames: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Max abs difference of vidclip's outputs vs open_clip's on the same frames (same weights)."""
    with torch.no_grad():
        bare_frames = models["open_clip"].encode_image(frames.flatten(0, 1)).reshape(*frames.shape[:2], -1)
        ours = models["vifi-B-32"].frame_encoder(frames, mask).frames  # (B, T, E)
        pooled = models["vifi-B-32"].encode_video(frames, mask)["pooled"]
        bare_pooled = bare_mean_pooling(models["open_clip"], frames, _normalizes_frames(models))
    return {"frame_encoder_max_abs_diff": float((ours - bare_frames).abs().max()),
            "frame_scale": float(bare_frames.abs().max()),
            "mean_pooled_max_abs_diff": float((pooled - bare_pooled).abs().max())}


def _normalizes_frames(models) -> bool:
    return bool(getattr(models["vifi-B-32"].head, "normalize_frames", False))


def candidates(models, frames: torch.Tensor, mask: torch.Tensor) -> dict[str, Callable[[], object]]:
    clip, normalize_frames = models["open_clip"], _normalizes_frames(models)
    return {
        "open_clip encode_image + mean pooling": lambda: bare_mean_pooling(clip, frames, normalize_frames),
        "vidclip FrameEncoder (frames only)": lambda: models["vifi-B-32"].frame_encoder(frames, mask),
        "vidclip vifi-B-32 encode_video (mean pooling)": lambda: models["vifi-B-32"].encode_video(frames, mask),
        "vidclip prompt-switch-B-32 encode_video (prompt cube)": lambda: models["prompt-switch-B-32"].encode_video(
            frames, mask),
        "vidclip glscl-B-32 encode_video (seqTransf + head)": lambda: models["glscl-B-32"].encode_video(frames, mask),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable under background load)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else args.repeats
    torch.manual_seed(0)
    models = build_models()
    frames = torch.randn(2, 12, 3, 224, 224)  # (B, T, 3, H, W) preprocessed
    mask = torch.ones(2, 12, dtype=torch.bool)
    equivalence = check_equivalence(models, frames, mask)
    fns = candidates(models, frames, mask)
    with torch.no_grad():
        wall, cpu = interleaved_wall_cpu(fns, repeats)
    base_name = next(iter(fns))
    vifi_name = "vidclip vifi-B-32 encode_video (mean pooling)"
    rows = []
    for name, t in cpu.items():
        rows.append({"candidate": name, "wall": summarize(wall[name]), "cpu": summarize(t),
                     "vs_open_clip": ratio_stats(t, cpu[base_name]), "vs_vifi": ratio_stats(t, cpu[vifi_name]),
                     "vs_open_clip_wall": ratio_stats(wall[name], wall[base_name]),
                     "videos_per_s": 2 / summarize(t)["median_s"]})
    table = markdown_table(["candidate", "wall, 2 videos x 12 frames", "CPU time", "videos/s (CPU)",
                            "vs open_clip + mean pooling (CPU)", "(wall)", "vs vidclip mean pooling (CPU)"],
                           [[r["candidate"], fmt_ms(r["wall"]), fmt_ms(r["cpu"]), f"{r['videos_per_s']:.2f}",
                             fmt_ratio(r["vs_open_clip"]), fmt_ratio(r["vs_open_clip_wall"]), fmt_ratio(r["vs_vifi"])]
                            for r in rows])
    print(f"## Encoder overhead: ViT-B/32 random weights, fp32, {args.threads} torch threads, medians of {repeats} "
          f"interleaved rounds; ratios on process CPU time (median (min-max) of per-round ratios); load avg "
          f"{load_average()}\n")
    print(table)
    print(f"\nSame weights, same frames: FrameEncoder vs encode_image max |diff| "
          f"{equivalence['frame_encoder_max_abs_diff']:.2e} (values up to {equivalence['frame_scale']:.2g}); "
          f"mean-pooled {equivalence['mean_pooled_max_abs_diff']:.2e}")
    write_results("encoder", {"rows": rows, "equivalence": equivalence, "repeats": repeats, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
