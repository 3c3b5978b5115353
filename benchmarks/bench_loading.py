"""Video loading: 12 frames -> normalised (12, 3, 224, 224), side by side in one process.

Compared on the same frame indices (CLIP4Clip's protocol: first frame of each second, then a uniform slice to 12):
- ``vidclip``: ``open_video(auto)`` + ``clip4clip`` sampler + batched tensor transforms;
- ``clip4clip``: a faithful re-implementation of CLIP4Clip's ``RawVideoExtractorCV2`` (OpenCV, one frame per second by
  seeking, PIL resize / crop / normalise per frame, then the uniform slice);
- ``decode floor``: decord ``get_batch`` of the same 12 indices with no transforms.
Also: DataLoader throughput over the same files with 1 and 2 workers.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from common import SHARED_DATA, markdown_table, summarize, time_calls, write_results

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
    video = torch.stack(images)
    if len(video) > max_frames:
        video = video[np.linspace(0, len(video) - 1, num=max_frames, dtype=int)]
    return video


def clip4clip_indices(num_frames: int, fps: float, max_frames: int = 12) -> np.ndarray:
    """The frame indices CLIP4Clip ends up with (for the decode floor)."""
    fps_i = int(fps)
    duration = (num_frames + fps_i - 1) // fps_i
    idx = np.array([s * fps_i for s in range(duration + 1) if s * fps_i < num_frames])
    if len(idx) > max_frames:
        idx = idx[np.linspace(0, len(idx) - 1, num=max_frames, dtype=int)]
    return idx


# ------------------------------------------------------------------------------ vidclip and the decode floor
def make_vidclip_loader(max_frames: int = 12, size: int = 224):
    from vidclip.data.readers import open_video
    from vidclip.data.samplers import create_sampler
    from vidclip.data.transforms import create_video_transform

    sampler = create_sampler("clip4clip", max_frames, sample_fps=1.0, slice="uniform")
    transform = create_video_transform(size, train=False)

    def load(path: str) -> torch.Tensor:
        with open_video(path) as reader:
            picked = sampler(reader.num_frames, reader.fps)
            frames = reader.get_frames(picked.indices[picked.mask])
        return transform(frames)

    return load


def decode_floor(path: str, indices: np.ndarray) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, num_threads=0)
    return reader.get_batch(list(indices)).asnumpy()


def synthetic_long_gop(directory: Path, count: int, seconds: int = 10, fps: int = 30) -> List[Path]:
    """320x240 H.264 clips with one keyframe per file (long GOP) and moving content."""
    import av

    paths = []
    rng = np.random.default_rng(0)
    for i in range(count):
        path = directory / f"longgop_{i}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            stream.codec_context.gop_size = seconds * fps
            base = rng.integers(0, 255, (240, 640, 3), dtype=np.uint8)
            for t in range(seconds * fps):
                frame = np.ascontiguousarray(base[:, t % 320: t % 320 + 320])
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


def bench_files(paths: List[Path], repeats: int) -> List[Dict[str, object]]:
    from vidclip.data.readers import open_video

    vidclip_load = make_vidclip_loader()
    rows = []
    for path in paths:
        with open_video(str(path)) as reader:
            idx = clip4clip_indices(reader.num_frames, reader.fps)
        results = {
            "vidclip": summarize(time_calls(lambda: vidclip_load(str(path)), repeats)),
            "clip4clip": summarize(time_calls(lambda: clip4clip_loader(str(path)), repeats)),
            "decode_floor": summarize(time_calls(lambda: decode_floor(str(path), idx), repeats)),
        }
        rows.append({"file": path.name, **results,
                     "speedup_vs_clip4clip": results["clip4clip"]["median_s"] / results["vidclip"]["median_s"],
                     "ratio_to_floor": results["vidclip"]["median_s"] / results["decode_floor"]["median_s"]})
    return rows


def bench_workers(paths: List[Path], repeats: int) -> Dict[str, float]:
    """Videos/s of a DataLoader over the files with 1 and 2 workers (each epoch decodes every file once)."""
    from torch.utils.data import DataLoader, Dataset

    load = make_vidclip_loader()

    class Files(Dataset):
        def __len__(self):
            return len(paths) * 4

        def __getitem__(self, i):
            return load(str(paths[i % len(paths)]))

    out = {}
    for workers in (1, 2):
        loader = DataLoader(Files(), batch_size=2, num_workers=workers)
        times = time_calls(lambda: [b for b in loader], max(1, repeats // 2), warmup=0)
        out[f"videos_per_s_{workers}w"] = len(paths) * 4 / summarize(times)["median_s"]
    out["scaling_2w_over_1w"] = out["videos_per_s_2w"] / out["videos_per_s_1w"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    repeats = 3 if args.quick else args.repeats
    real = sorted((SHARED_DATA / "videos" / "msrvtt").glob("*.mp4"))
    with tempfile.TemporaryDirectory() as tmp:
        synth = synthetic_long_gop(Path(tmp), 2 if args.quick else 4)
        rows = bench_files(real + synth, repeats)
        workers = bench_workers(real + synth, repeats)
    table = markdown_table(
        ["file", "vidclip ms", "CLIP4Clip-style ms", "decord floor ms", "speed-up vs CLIP4Clip", "vidclip / floor"],
        [[r["file"], 1e3 * r["vidclip"]["median_s"], 1e3 * r["clip4clip"]["median_s"],
          1e3 * r["decode_floor"]["median_s"], r["speedup_vs_clip4clip"], r["ratio_to_floor"]] for r in rows])
    print("## Video loading (12 frames -> normalised 224 tensor), torch 1 thread, medians of", repeats, "runs\n")
    print(table)
    print(f"\nDataLoader: {workers['videos_per_s_1w']:.2f} videos/s with 1 worker, "
          f"{workers['videos_per_s_2w']:.2f} with 2 (x{workers['scaling_2w_over_1w']:.2f})")
    write_results("loading", {"rows": rows, "workers": workers, "repeats": repeats, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
