"""GPU suite (issues 16 and 17): one command, one markdown table set, under 4 minutes on one GPU.

Sections (random weights, nothing downloaded; every cell is measured or says why not):
1. Training step: ViT-B/32 and B/16 for vifi, GLSCL and UCoFiA: samples/s and peak GPU memory, fp32 and bf16 autocast,
   with and without gradient checkpointing (forward, losses of ``vidclip.objective``, backward, AdamW step).
2. Extraction: videos/s of decode + transform + ``encode_video`` (ViT-B/32, bf16) over the real files of
   ``../shared/data/videos`` (synthetic H.264 clips when absent): CPU decoding (``auto``; in this process and with
   DataLoader workers), torchcodec GPU decoding (NVDEC, ``data.decode_device=cuda``) and the decoded-frame cache.
3. Similarity: microseconds per text-video pair of every registered head through ``chunked_similarity`` at
   N = 1,000 and 10,000 (ViT-B/32 feature shapes: 12 frames, 49 patches, 32 word slots of which 12 real, 512-d),
   fp32 and bf16; a cell predicted to exceed its time share is skipped with the prediction.

Without CUDA (``--dry-run`` is implied) the same code runs on the CPU with tiny models and tiny sizes, to check the
script, not to measure anything. Usage::

    python benchmarks/gpu_suite.py                 # on a GPU machine; writes bench_results/gpu_suite.md
    python benchmarks/gpu_suite.py --dry-run       # CPU, tiny shapes (about a minute)
"""
from __future__ import annotations

import argparse
import gc
import logging
import math
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS_DIR, SHARED_DATA, machine_info, markdown_table, write_results

HEAD_ARCH = {"vifi": "vifi", "glscl": "glscl", "ucofia": "ucofia", "norton": "norton"}  # head -> arch family


SECTION_SHARE = {"train": 0.45, "extract": 0.2, "similarity": 1.0}  # of the suite time left when a section starts


class Clock:
    """Wall-clock budget; a section gets a share of what is left (``section``) and checks ``left()``."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def section(self, share: float) -> Clock:
        return Clock(max(0.0, share * self.left()))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None


def short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
    return text if len(text) < 120 else text[:117] + "..."


def arch_name(family: str, size: str) -> str:
    """``vifi`` + ``B-32`` -> ``vifi-B-32``; the dry run uses ``tiny-<family>``."""
    return f"tiny-{family}" if size == "tiny" else f"{family}-{size}"


# ----------------------------------------------------------------------------------------------- 1. training step
def train_step_fn(model, batch: dict, bf16: bool, device: torch.device) -> Callable[[], float]:
    from omegaconf import OmegaConf

    from vidclip.config import TrainCfg
    from vidclip.engine.optim import create_optimizer
    from vidclip.objective import build_objective

    model.train()
    optimizer = create_optimizer(model, OmegaConf.structured(TrainCfg))
    objective = build_objective(model)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = objective(model, batch)["loss"]
        loss.backward()
        optimizer.step()
        sync(device)
        return float(loss.detach())

    return step


def make_batch(model, batch_size: int, num_frames: int, device: torch.device) -> dict:
    from vidclip.tokenizer import tokenize

    size = model.image_size
    captions = [f"a person does thing number {i}" for i in range(batch_size)]
    return {"video": torch.randn(batch_size, num_frames, 3, size, size, device=device),  # (B, T, 3, S, S)
            "video_mask": torch.ones(batch_size, num_frames, dtype=torch.bool, device=device),
            "text_tokens": tokenize(captions, model.cfg.context_length).to(device), "captions": captions}


def bench_train(args, device: torch.device, clock: Clock) -> list[dict]:
    import vidclip

    rows = []
    variants = [("fp32", False, False), ("fp32 + ckpt", False, True), ("bf16", True, False),
                ("bf16 + ckpt", True, True)]  # (label, bf16 autocast, gradient checkpointing)
    for size in args.sizes:
        batch_size = args.batch_size.get(size, 8)
        for family in ("vifi", "glscl", "ucofia"):
            arch, model = arch_name(family, size), None
            for label, bf16, ckpt in variants:
                row = {"arch": arch, "variant": label, "batch": batch_size, "frames": args.num_frames}
                rows.append(row)
                if clock.left() <= 0:
                    row["note"] = "skipped: the section's time share is spent"
                    continue
                try:
                    reset_peak(device)
                    if model is None:  # one random model per architecture; variants reuse it
                        torch.manual_seed(0)
                        model = vidclip.create_model(arch).to(device)
                    model.frame_encoder.set_grad_checkpointing(ckpt)
                    model.text_encoder.set_grad_checkpointing(ckpt)
                    batch = make_batch(model, batch_size, args.num_frames, device)
                    step = train_step_fn(model, batch, bf16, device)
                    for _ in range(args.warmup):
                        loss = step()
                    times = []
                    for _ in range(args.steps):
                        start = time.perf_counter()
                        loss = step()
                        times.append(time.perf_counter() - start)
                    median = float(np.median(times))
                    row.update(step_ms=1e3 * median, samples_per_s=batch_size / median, peak_mb=peak_mb(device),
                               loss=loss, finite=math.isfinite(loss))
                except Exception as exc:  # OOM, missing kernels: recorded, the suite goes on
                    row["note"] = short(exc)
                finally:
                    batch = step = None  # noqa: F841  (frees the optimiser state before the next variant)
                    if model is not None:
                        model.zero_grad(set_to_none=True)
                    reset_peak(device)
                print(f"train {arch} {label}: {row.get('samples_per_s', row.get('note'))}", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------- 2. extraction
def video_set(tmp: Path, count: int, dry_run: bool) -> tuple[str, list]:
    """(videos root, records): the real files (repeated to ``count``), else synthetic H.264 clips."""
    from vidclip.data.lists import VideoRecord

    root = SHARED_DATA / "videos"
    names = sorted(str(p.relative_to(root)) for p in root.glob("*/*")) if root.is_dir() else []
    if not names:
        root = tmp / "videos"
        names = [synthetic_clip(root / f"synthetic_{i}.mp4", seconds=2 if dry_run else 10).name for i in range(4)]
    records = [VideoRecord(f"v{i}", names[i % len(names)], ["a caption"]) for i in range(count)]
    return str(root), records


def synthetic_clip(path: Path, seconds: int, fps: int = 30) -> Path:
    """320x240 H.264 clip, one keyframe per 5 s, smooth panning texture."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    base = np.kron(rng.integers(0, 255, (30, 80, 3), dtype=np.uint8), np.ones((8, 8, 1), dtype=np.uint8))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.gop_size = 5 * fps
        for t in range(seconds * fps):
            frame = np.ascontiguousarray(base[:, (2 * t) % 320: (2 * t) % 320 + 320])  # (240, 320, 3)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def extraction_rate(model, root: str, records: list, reader_factory, workers: int, device: torch.device,
                    batch_size: int, context: str | None = None) -> float:
    """Videos/s of one pass: dataset (uniform 12 frames, CLIP transform) -> DataLoader -> encode_video."""
    from vidclip.data.collate import make_collate
    from vidclip.data.dataset import VideoTextDataset
    from vidclip.data.samplers import create_sampler
    from vidclip.data.transforms import create_video_transform
    from vidclip.engine.encode import encode_video_loader

    dataset = VideoTextDataset(records, root, create_sampler("uniform", 12), create_video_transform(
        model.image_size, train=False), mode="eval", reader_factory=reader_factory)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=make_collate(model.cfg.context_length),
                                         multiprocessing_context=context if workers else None)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        encoded = encode_video_loader(model, loader, device, show_progress=False)
    sync(device)
    elapsed = time.perf_counter() - start
    if encoded.failed:
        raise RuntimeError(f"{len(encoded.failed)} videos failed to decode: {list(encoded.failed.values())[:2]}")
    return len(records) / elapsed


def bench_extraction(args, device: torch.device, clock: Clock) -> list[dict]:
    from functools import partial

    import vidclip
    from vidclip.data.readers import open_video
    from vidclip.data.readers.torchcodec import torchcodec_status

    rows: list[dict] = []
    arch = arch_name("vifi", "tiny" if args.dry_run else "B-32")
    model = vidclip.create_model(arch).to(device).eval()
    workers = 0 if args.dry_run else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        root, records = video_set(Path(tmp), args.videos, args.dry_run)
        extraction_rate(model, root, records[:2], partial(open_video, backend="auto"), 0, device, 2)  # warm-up
        cases: list[tuple[str, Callable[[], float]]] = [
            ("CPU decode (auto), main process",
             lambda: extraction_rate(model, root, records, partial(open_video, backend="auto"), 0, device,
                                     args.extract_batch)),
        ]
        if workers:
            cases.append((f"CPU decode (auto), {workers} DataLoader workers",
                          lambda: extraction_rate(model, root, records, partial(open_video, backend="auto"), workers,
                                                  device, args.extract_batch)))
        usable, reason = torchcodec_status()
        gpu_note = None if (usable and device.type == "cuda") else (reason if not usable else "no CUDA device")
        cases.append(("torchcodec GPU decode (NVDEC), main process",
                      None if gpu_note else lambda: extraction_rate(
                          model, root, records, partial(open_video, backend="torchcodec", device="cuda"), 0, device,
                          args.extract_batch)))
        cache_case, cache_note = frame_cache_case(args, model, root, records, device, Path(tmp), workers)
        cases.append(("frame cache (built once before; build time in the note)", cache_case))
        for label, fn in cases:
            row = {"pipeline": label, "videos": len(records), "model": arch}
            rows.append(row)
            if fn is None:
                row["note"] = f"skipped: {gpu_note}" if "NVDEC" in label else f"skipped: {cache_note}"
                continue
            if clock.left() <= 0:
                row["note"] = "skipped: the section's time share is spent"
                continue
            try:
                row["videos_per_s"] = fn()
                if "cache" in label:
                    row["note"] = cache_note
            except Exception as exc:
                row["note"] = short(exc)
            print(f"extract {label}: {row.get('videos_per_s', row.get('note'))}", flush=True)
    return rows


def frame_cache_case(args, model, root: str, records: list, device: torch.device, tmp: Path, workers: int):
    """(callable measuring extraction from the frame cache, note) or (None, why not)."""
    try:
        from vidclip.data.frame_cache import build_frame_cache
        from vidclip.data.samplers import create_sampler
    except ImportError as exc:
        return None, f"vidclip.data.frame_cache not available ({exc})"
    try:
        start = time.perf_counter()
        cache = build_frame_cache(tmp / "cache", records, root, create_sampler("uniform", 12), model.image_size,
                                  num_workers=workers)
        stats = cache.stats()
        note = (f"build {time.perf_counter() - start:.1f} s for {stats['videos']} distinct videos, "
                f"{stats['bytes_per_video'] / 1e3:.0f} kB per video")
    except Exception as exc:
        return None, f"cache build failed: {short(exc)}"
    return (lambda: extraction_rate(model, root, records, cache.open_reader, 0, device, args.extract_batch)), note


# ----------------------------------------------------------------------------------------------- 3. similarity
def head_features(model, n: int, device: torch.device, dtype: torch.dtype, frames: int = 12, words: int = 32):
    """Head-encoded (text, video) features of ``n`` random texts and videos with ViT-B/32 shapes."""
    from vidclip.features import TextEncoderOutput, VideoEncoderOutput

    g = torch.Generator(device=device).manual_seed(0)
    d = model.embed_dim
    patches = (torch.randn(n, frames, 49, d, generator=g, device=device, dtype=dtype)  # (N, T, P, D)
               if model.cfg.patch_tokens else None)
    frame_feats = torch.randn(n, frames, d, generator=g, device=device, dtype=dtype)  # (N, T, D)
    video = VideoEncoderOutput(frames=frame_feats, temporal=frame_feats,
                               mask=torch.ones(n, frames, dtype=torch.bool, device=device), patches=patches)
    tokens = torch.randn(n, words, d, generator=g, device=device, dtype=dtype)  # (N, L, D)
    mask = torch.zeros(n, words, dtype=torch.bool, device=device)
    mask[:, :12] = True  # 12 real words, the rest padding
    text = TextEncoderOutput(pooled=tokens[:, 5], tokens=tokens, mask=mask)
    with torch.no_grad():
        return model.head.encode_text(text), model.head.encode_video(video)


def bench_similarity(args, device: torch.device, clock: Clock) -> list[dict]:
    import vidclip
    from vidclip.ops.similarity import chunked_similarity
    from vidclip.registry import HEADS

    rows = []
    heads = HEADS.names()
    share = max(2.0, clock.left() / max(1, len(heads) * 2))  # seconds per (head, dtype)
    for name in heads:
        family = HEAD_ARCH.get(name, name)
        arch = arch_name(family, "tiny" if args.dry_run else "B-32")
        try:
            model = vidclip.create_model(arch).to(device).eval()
        except Exception as exc:
            rows.append({"head": name, "note": f"no architecture {arch}: {short(exc)}"})
            continue
        del model.frame_encoder, model.text_encoder  # only the head scores
        for dtype in (torch.float32, torch.bfloat16):
            spent, us_per_pair = 0.0, 0.0
            for n in args.pairs:
                row = {"head": name, "dtype": str(dtype).replace("torch.", ""), "n": n}
                rows.append(row)
                predicted = us_per_pair * n * n / 1e6
                if predicted > share - spent or clock.left() <= 0:
                    row["note"] = (f"skipped: predicted {predicted:.1f} s > the {share - spent:.1f} s left to it"
                                   if clock.left() > 0 else "skipped: the suite's time budget is spent")
                    continue
                try:
                    model.head.to(dtype)
                    reset_peak(device)
                    text, video = head_features(model, n, device, dtype)
                    if n == args.pairs[0]:  # warm-up (kernel selection, lazy init) at the first size only
                        chunked_similarity(model.head, text, video, args.chunk, args.chunk, device=device)
                        sync(device)
                    start = time.perf_counter()
                    scores = chunked_similarity(model.head, text, video, args.chunk, args.chunk, device=device)
                    sync(device)
                    elapsed = time.perf_counter() - start
                    us_per_pair = max(us_per_pair, 1e6 * elapsed / (n * n))
                    spent += elapsed * (2 if n == args.pairs[0] else 1)
                    row.update(us_per_pair=1e6 * elapsed / (n * n), seconds=elapsed, peak_mb=peak_mb(device),
                               finite=bool(torch.isfinite(scores).all()))
                except Exception as exc:
                    row["note"] = short(exc)
                finally:
                    text = video = scores = None  # noqa: F841
                    reset_peak(device)
                print(f"similarity {name} {row['dtype']} N={n}: {row.get('us_per_pair', row.get('note'))}", flush=True)
        model.head.to(torch.float32)
    return rows


# ----------------------------------------------------------------------------------------------- report
def fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def report(args, device: torch.device, train: list, extract: list, similarity: list, seconds: float) -> str:
    info = machine_info()
    gpu = info["cuda"] or "no GPU (dry run on the CPU: tiny models and sizes, not a measurement)"
    lines = [f"## GPU suite ({time.strftime('%Y-%m-%d %H:%M')}, {gpu}, torch {info['torch']}, "
             f"{seconds:.0f} s in total; `python benchmarks/gpu_suite.py{' --dry-run' if args.dry_run else ''}`)",
             "", f"### Training step ({args.num_frames} frames per video, median of {args.steps} steps after "
             f"{args.warmup} warm-up; random weights)", "",
             markdown_table(["arch", "variant", "batch", "step ms", "samples/s", "peak GPU MB", "note"],
                            [[r["arch"], r["variant"], r.get("batch", "-"), fmt(r.get("step_ms")),
                              fmt(r.get("samples_per_s")),
                              fmt(r.get("peak_mb"), ".0f"), r.get("note", "")] for r in train]),
             "", f"### Extraction (decode + transform + encode_video, bf16, {args.extract_batch} videos per batch)",
             "", markdown_table(["pipeline", "model", "videos", "videos/s", "note"],
                                [[r["pipeline"], r["model"], r["videos"], fmt(r.get("videos_per_s"), ".2f"),
                                  r.get("note", "")] for r in extract]),
             "", f"### Similarity through chunked_similarity (chunk {args.chunk}, ViT-B/32 feature shapes)", "",
             markdown_table(["head", "dtype", "N", "us/pair", "seconds", "peak GPU MB", "note"],
                            [[r["head"], r.get("dtype", "-"), r.get("n", "-"), fmt(r.get("us_per_pair"), ".4f"),
                              fmt(r.get("seconds"), ".2f"), fmt(r.get("peak_mb"), ".0f"), r.get("note", "")]
                             for r in similarity])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models and sizes (implied without CUDA)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget of the whole suite (default 220 s on a GPU, 900 s for a dry run)")
    parser.add_argument("--only", nargs="*", default=["train", "extract", "similarity"])
    parser.add_argument("--out", default=str(RESULTS_DIR / "gpu_suite.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    args.dry_run = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        args.sizes, args.batch_size, args.num_frames, args.warmup, args.steps = ["tiny"], {"tiny": 4}, 4, 1, 2
        args.pairs, args.chunk, args.videos, args.extract_batch, args.workers = [32, 64], 32, 4, 2, 0
        torch.set_num_threads(1)
    else:
        args.sizes, args.batch_size = ["B-32", "B-16"], {"B-32": 32, "B-16": 16}
        args.num_frames, args.warmup, args.steps = 12, 1, 3
        args.pairs, args.chunk, args.videos, args.extract_batch, args.workers = [1000, 10000], 1000, 64, 16, 8
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    clock = Clock(args.budget_s or (900.0 if args.dry_run else 220.0))
    sections = {"train": bench_train, "extract": bench_extraction, "similarity": bench_similarity}
    results = {}
    for name in ("train", "extract", "similarity"):
        results[name] = []
        if name in args.only:
            try:
                results[name] = sections[name](args, device, clock.section(SECTION_SHARE[name]))
            except Exception as exc:  # a section that cannot start at all still leaves the others
                traceback.print_exc()
                results[name] = [{"note": f"section failed: {short(exc)}", "arch": "-", "variant": "-",
                                  "pipeline": "-", "model": "-", "videos": "-", "head": "-"}]
    seconds = clock.budget_s - clock.left()
    text = report(args, device, results["train"], results["extract"], results["similarity"], seconds)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    write_results("gpu_suite", {**results, "dry_run": args.dry_run, "seconds": seconds, "markdown": text})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
