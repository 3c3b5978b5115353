"""Video loading: 12 frames -> normalised (12, 3, 224, 224), side by side in one process, pinned to one core.

Compared on the same frame indices (CLIP4Clip's protocol: first frame of each second, then a uniform slice to 12):
- ``vidclip``: ``open_video(auto)`` + ``clip4clip`` sampler + ``create_video_transform`` (PIL resample per frame);
- ``vidclip decode``: the same without the transform (its share of the time is reported);
- ``clip4clip``: a faithful re-implementation of CLIP4Clip's ``RawVideoExtractorCV2`` (OpenCV, one frame per second by
  seeking, PIL resize / crop / ToTensor / normalise per frame, then the uniform slice);
- ``decode floor``: decord ``get_batch`` (1 thread) of the same indices with no transforms.
Per-file timings run with the process pinned to one core (``os.sched_setaffinity``), torch / OpenCV / decord at one
thread; the candidates are timed round-robin and ratios are medians of per-round ratios.
Then DataLoader throughput of vidclip's ``VideoTextDataset`` + collate over the same files with 1 and 2 workers
(both cores available).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import (
    SHARED_DATA,
    fmt_ms,
    fmt_ratio,
    interleaved_wall_cpu,
    load_average,
    markdown_table,
    pinned_to_one_core,
    ratio_stats,
    summarize,
    write_results,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------------------ CLIP4Clip-style reference loader
def clip4clip_loader(path: str, max_frames: int = 12, size: int = 224) -> torch.Tensor:
    """CLIP4Clip's cv2 extractor (landscape.md §4.1-4.2), re-implemented: seek per second, PIL transforms."""
    import cv2
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    preprocess = Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size),
                          lambda im: im.convert("RGB"), ToTensor(), Normalize(CLIP_MEAN, CLIP_STD)])
    cap = cv2.VideoCapture(path)
    frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = int(cap.get(cv2.CAP_PROP_FPS))
    total_duration = (frame_count + fps - 1) // fps
    images, ret = [], True
    for sec in range(0, total_duration + 1):
        if not ret:
            break
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(sec * fps))
        ret, frame = cap.read()
        if not ret:
            break
        images.append(preprocess(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))))
    cap.release()
    video = torch.stack(images)  # (n_seconds, 3, S, S)
    if len(video) > max_frames:
        video = video[np.linspace(0, len(video) - 1, num=max_frames, dtype=int)]  # (12, 3, S, S)
    return video


# ------------------------------------------------------------------------------ vidclip and the decode floor
def make_vidclip_loaders(max_frames: int = 12, size: int = 224):
    """(full loader, decode-only loader, sampled indices) built on vidclip's reader / sampler / transform."""
    from vidclip.data.readers import open_video
    from vidclip.data.samplers import create_sampler
    from vidclip.data.transforms import create_video_transform

    sampler = create_sampler("clip4clip", max_frames, sample_fps=1.0, slice="uniform")
    transform = create_video_transform(size, train=False)

    def indices(path: str) -> np.ndarray:
        with open_video(path) as reader:
            picked = sampler(reader.num_frames, reader.fps)
        return picked.indices[picked.mask]

    def decode(path: str) -> np.ndarray:
        with open_video(path) as reader:
            picked = sampler(reader.num_frames, reader.fps)
            return reader.get_frames(picked.indices[picked.mask])  # (T, H, W, 3) uint8

    return (lambda path: transform(decode(path))), decode, indices


def decode_floor(path: str, indices: np.ndarray) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    return reader.get_batch(list(indices)).asnumpy()  # (T, H, W, 3)


def synthetic_long_gop(directory: Path, seconds_list: list[int], fps: int = 30) -> list[Path]:
    """320x240 H.264 (yuv420p, default CRF) clips with a single keyframe each and smooth panning content."""
    import av

    paths = []
    rng = np.random.default_rng(0)
    for i, seconds in enumerate(seconds_list):
        path = directory / f"longgop_{seconds}s_{i}.mp4"
        coarse = rng.integers(0, 255, (30, 80, 3), dtype=np.uint8)
        base = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))  # (240, 640, 3) low-frequency texture
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            stream.codec_context.gop_size = seconds * fps
            stream.options = {"keyint": str(seconds * fps), "min-keyint": str(seconds * fps), "scenecut": "0"}
            for t in range(seconds * fps):
                shift = (2 * t) % 320
                frame = np.ascontiguousarray(base[:, shift: shift + 320])  # (240, 320, 3)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


def fused_normalize(frames: np.ndarray) -> torch.Tensor:
    """What a fused uint8 -> normalised float step costs: one copy-convert, one multiply-add (same values to 1e-6)."""
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, S, S) uint8 view
    out = torch.empty(x.shape, dtype=torch.float32)
    out.copy_(x)
    return out.mul_(1.0 / (255.0 * std)).add_(-torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) / std)


def bench_file(path: Path, loaders, repeats: int) -> dict[str, object]:
    from vidclip.data.transforms import create_video_transform

    full, decode, indices = loaders
    p = str(path)
    idx = indices(p)
    transform = create_video_transform(224, train=False)
    frames = decode(p)
    cropped = transform.resize_center_crop(frames)
    wall, times = interleaved_wall_cpu({"vidclip": lambda: full(p), "vidclip_decode": lambda: decode(p),
                         "clip4clip": lambda: clip4clip_loader(p), "floor": lambda: decode_floor(p, idx),
                         "pil_resize_crop": lambda: transform.resize_center_crop(frames),
                         "normalize": lambda: transform.normalize(cropped),
                         "fused_normalize": lambda: fused_normalize(cropped)}, repeats)
    transform_share = [(a - b) / a for a, b in zip(times["vidclip"], times["vidclip_decode"])]
    return {"file": path.name, "frames": len(idx), **{k: summarize(v) for k, v in times.items()},
            "wall": {k: summarize(v) for k, v in wall.items()},
            "wall_speedup_vs_clip4clip": ratio_stats(wall["clip4clip"], wall["vidclip"]),
            "wall_ratio_to_floor": ratio_stats(wall["vidclip"], wall["floor"]),
            "speedup_vs_clip4clip": ratio_stats(times["clip4clip"], times["vidclip"]),
            "ratio_to_floor": ratio_stats(times["vidclip"], times["floor"]),
            "decode_ratio_to_floor": ratio_stats(times["vidclip_decode"], times["floor"]),
            "transform_share": float(np.median(transform_share))}


def bench_workers(paths: list[Path], directory: Path, items_per_file: int, epochs: int) -> dict[str, float]:
    """Videos/s of a DataLoader over vidclip's ``VideoTextDataset`` (eval mode) with 1 and 2 workers."""
    from torch.utils.data import DataLoader

    from vidclip.data.collate import make_collate
    from vidclip.data.dataset import VideoTextDataset
    from vidclip.data.lists import VideoRecord
    from vidclip.data.samplers import create_sampler
    from vidclip.data.transforms import create_video_transform

    for path in paths:
        if path.parent != directory:
            shutil.copy(path, directory / path.name)  # the dataset resolves paths under one videos root (tmp dir)
    records = [VideoRecord(f"v{i}", paths[i % len(paths)].name, ["a caption"]) for i in range(len(paths) *
                                                                                          items_per_file)]
    dataset = VideoTextDataset(records, str(directory), create_sampler("clip4clip", 12), create_video_transform(224,
                               False), mode="eval")
    out = {}
    for workers in (1, 2):
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=make_collate(32),
                            persistent_workers=True)
        times = [t for t in _epoch_times(loader, epochs + 1)][1:]  # the first epoch starts the workers
        out[f"videos_per_s_{workers}w"] = len(dataset) / summarize(times)["median_s"]
        out[f"spread_pct_{workers}w"] = summarize(times)["spread_pct"]
        del loader
    out["scaling_2w_over_1w"] = out["videos_per_s_2w"] / out["videos_per_s_1w"]
    return out


def _epoch_times(loader, epochs: int):
    import time

    for _ in range(epochs):
        start = time.perf_counter()
        for _batch in loader:
            pass
        yield time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import cv2

    cv2.setNumThreads(1)
    repeats = 5 if args.quick else args.repeats
    real = sorted((SHARED_DATA / "videos" / "msrvtt").glob("*.mp4"))
    if not real:
        print(f"note: no real MSR-VTT clips under {SHARED_DATA}/videos/msrvtt; synthetic clips only")
    loaders = make_vidclip_loaders()
    with tempfile.TemporaryDirectory() as tmp:
        synth = synthetic_long_gop(Path(tmp), [10, 20] if args.quick else [10, 20, 30])
        with pinned_to_one_core() as core:
            rows = [bench_file(path, loaders, repeats) for path in real + synth]
        workers = bench_workers(real + synth, Path(tmp), 2 if args.quick else 4, 2 if args.quick else 3)
    table = markdown_table(
        ["file", "vidclip (wall)", "vidclip", "vidclip decode only", "CLIP4Clip-style", "decord floor",
         "speed-up vs CLIP4Clip", "vidclip / floor", "decode only / floor", "transform share"],
        [[r["file"], fmt_ms(r["wall"]["vidclip"]), fmt_ms(r["vidclip"]), fmt_ms(r["vidclip_decode"]),
          fmt_ms(r["clip4clip"]), fmt_ms(r["floor"]),
          fmt_ratio(r["speedup_vs_clip4clip"]), fmt_ratio(r["ratio_to_floor"]), fmt_ratio(r["decode_ratio_to_floor"]),
          f"{100 * r['transform_share']:.0f}%"] for r in rows])
    print(f"## Video loading: 12 frames -> (12, 3, 224, 224), one core (affinity {{{core}}}, 1 thread), medians of "
          f"{repeats} interleaved rounds of CPU time except the first column (±: (max-min)/median; ratios: median "
          f"(min-max) of per-round CPU-time ratios); "
          f"load avg {load_average()}\n")
    print(table)
    breakdown = markdown_table(
        ["file", "PIL resize + crop (12 frames)", "normalise (vidclip)", "fused uint8->float multiply-add"],
        [[r["file"], fmt_ms(r["pil_resize_crop"]), fmt_ms(r["normalize"]), fmt_ms(r["fused_normalize"])]
         for r in rows])
    print("\nTransform breakdown (same core, same rounds):\n")
    print(breakdown)
    print(f"\nDataLoader (VideoTextDataset + collate, batch 2, both cores): {workers['videos_per_s_1w']:.2f} videos/s "
          f"with 1 worker (±{workers['spread_pct_1w']:.0f}%), {workers['videos_per_s_2w']:.2f} with 2 "
          f"(±{workers['spread_pct_2w']:.0f}%): x{workers['scaling_2w_over_1w']:.2f}")
    write_results("loading", {"rows": rows, "workers": workers, "repeats": repeats, "table": table,
                              "breakdown": breakdown})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
