"""Decoded-frame cache vs live decoding, per training step, on CPU; plus the cache's build time and size.

Two settings, each a training step = one batch from the training ``DataLoader`` (``num_workers=0``: the loading cost
lands in the step) + forward, losses, backward, AdamW:
- ``tiny``: the demo's recipe (``synthetic_tiny_seqtransf``: batch 32 x 4 frames of 32 px) on synthetic 64x64 clips;
- ``B/32``: ``vifi-B-32`` (random weights) on the real clips of ../shared/data/videos (MSR-VTT + misc H.264 files),
  12 frames (CLIP4Clip sampler) of 224 px, batch 4.
Live and cached loading are timed side by side (round-robin, process CPU time, 1 torch thread, so background load
on a shared machine barely moves the numbers); the compute part is the same batch for both and is timed once per
round. The build runs once per setting from an empty folder, in this process (0 workers) and with 2 workers.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import (
    SHARED_DATA,
    fmt_ms,
    fmt_ratio,
    interleaved_wall_cpu,
    load_average,
    markdown_table,
    ratio_stats,
    summarize,
    write_results,
)

REAL_SUFFIXES = (".mp4",)


def tiny_lists(folder: Path, num_train: int) -> list[str]:
    """Synthetic clips + lists under ``folder``; overrides pointing the demo recipe at them."""
    from vidclip.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(folder, num_train=num_train, num_val=2, num_test=2, seed=0, show_progress=False)
    return [f"data.videos_root={folder / 'videos'}", f"data.train_list={folder / 'synthetic_train.jsonl'}"]


def real_lists(folder: Path, copies: int) -> list[str]:
    """A training list of the real H.264 clips in ../shared/data/videos, each listed ``copies`` times."""
    from vidclip.data.lists import VideoRecord, write_list

    root = SHARED_DATA / "videos"
    files = sorted(p for p in root.rglob("*") if p.suffix in REAL_SUFFIXES)
    if not files:
        raise SystemExit(f"no real clips under {root}: set VIDCLIP_SHARED_DATA")
    records = [VideoRecord(f"{p.stem}_{i}", str(p.relative_to(root)), [f"a video {p.stem}"])
               for i in range(copies) for p in files]
    write_list(records, folder / "real_train.jsonl")
    return [f"data.videos_root={root}", f"data.train_list={folder / 'real_train.jsonl'}"]


def settings(quick: bool, work: Path) -> dict[str, tuple[str | None, list[str]]]:
    """name -> (experiment config, overrides)."""
    from vidclip.resources import packaged_path

    tiny = tiny_lists(work / "synthetic", 96 if quick else 320)
    real = real_lists(work, 2)
    return {
        "tiny (synthetic_tiny_seqtransf, batch 32 x 4 x 32 px)": (
            str(packaged_path("configs", "synthetic_tiny_seqtransf.yaml")), tiny + ["data.group_by_meta=null"]),
        "B/32 (vifi-B-32, batch 4 x 12 x 224 px, real clips)": (
            None, real + ["model.arch=vifi-B-32", "data.num_frames=12", "data.train_sampler=clip4clip",
                          "train.batch_size=4"]),
    }


def build_cache(cfg, workers: int) -> tuple[float, float, dict]:
    """(wall s, CPU s of this process, stats) of building the cache of ``cfg`` from an empty folder."""
    from vidclip.data.builders import build_sampler, list_path_for
    from vidclip.data.frame_cache import build_frame_cache
    from vidclip.data.lists import read_list

    shutil.rmtree(cfg.data.frame_cache, ignore_errors=True)
    records = read_list(list_path_for(cfg, "train"))
    start, start_cpu = time.perf_counter(), time.process_time()
    cache = build_frame_cache(cfg.data.frame_cache, records, cfg.data.videos_root, build_sampler(cfg, True),
                              cfg.data.image_size, cfg.data.reader_backend, num_workers=workers)
    return time.perf_counter() - start, time.process_time() - start_cpu, cache.stats()


def measure(name: str, config: str | None, overrides: list[str], cache_dir: Path, repeats: int) -> dict:
    from vidclip.config import load_config
    from vidclip.data.builders import build_dataset
    from vidclip.data.loaders import build_train_loader
    from vidclip.engine.optim import create_optimizer
    from vidclip.models.factory import create_model
    from vidclip.objective import build_objective

    common = overrides + ["data.num_workers=0", "model.pretrained=null"]
    live_cfg = load_config(config, common)
    cached_cfg = load_config(config, common + [f"data.frame_cache={cache_dir}"])
    builds = {w: build_cache(cached_cfg, w) for w in (0, 2)}
    loaders = {"live": build_train_loader(live_cfg, build_dataset(live_cfg, "train", train=True)),
               "cached": build_train_loader(cached_cfg, build_dataset(cached_cfg, "train", train=True))}
    iters = {k: iter(v) for k, v in loaders.items()}

    def next_batch(kind: str):
        try:
            return next(iters[kind])
        except StopIteration:
            iters[kind] = iter(loaders[kind])
            return next(iters[kind])

    torch.manual_seed(0)
    model = create_model(live_cfg.model)
    objective, optimizer = build_objective(model, live_cfg.train.loss), create_optimizer(model, live_cfg.train)
    model.train()
    batch = next_batch("live")

    def step():
        optimizer.zero_grad(set_to_none=True)
        objective(model, batch)["loss"].backward()
        optimizer.step()

    wall, cpu = interleaved_wall_cpu({"live": lambda: next_batch("live"), "cached": lambda: next_batch("cached"),
                                      "compute": step}, repeats)
    live_step = [d + c for d, c in zip(cpu["live"], cpu["compute"])]
    cached_step = [d + c for d, c in zip(cpu["cached"], cpu["compute"])]
    stats = builds[0][2]
    return {"setting": name, "data_live": summarize(cpu["live"]), "data_cached": summarize(cpu["cached"]),
            "compute": summarize(cpu["compute"]), "step_live": summarize(live_step),
            "step_cached": summarize(cached_step), "speedup": ratio_stats(live_step, cached_step),
            "data_speedup": ratio_stats(cpu["live"], cpu["cached"]), "wall_live": summarize(wall["live"]),
            "build": {w: {"wall_s": b[0], "cpu_s": b[1]} for w, b in builds.items()}, "cache": stats}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer synthetic clips and rounds")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    repeats = 3 if args.quick else args.repeats
    rows = []
    with tempfile.TemporaryDirectory(prefix="vidclip-bench-cache-") as tmp:
        work = Path(tmp)
        for name, (config, overrides) in settings(args.quick, work).items():
            rows.append(measure(name, config, overrides, work / "cache", repeats))
    print(f"## Frame cache vs live decoding per training step (CPU, 1 torch thread, num_workers=0, process CPU time, "
          f"medians of {repeats} interleaved rounds); load avg {load_average()}\n")
    print(markdown_table(
        ["setting", "data live", "data cached", "compute", "step live", "step cached", "step speed-up",
         "data speed-up"],
        [[r["setting"], fmt_ms(r["data_live"]), fmt_ms(r["data_cached"]), fmt_ms(r["compute"]), fmt_ms(r["step_live"]),
          fmt_ms(r["step_cached"]), fmt_ratio(r["speedup"]), fmt_ratio(r["data_speedup"])] for r in rows]))
    print("\n## Cache build (from an empty folder) and size\n")
    print(markdown_table(
        ["setting", "videos", "frames", "size", "per video", "build wall (0 workers)", "build wall (2 workers)",
         "build CPU (0 workers)"],
        [[r["setting"], r["cache"]["videos"], r["cache"]["frames"], f"{r['cache']['bytes'] / 1e6:.1f} MB",
          f"{r['cache']['bytes_per_video'] / 1e3:.1f} kB", f"{r['build'][0]['wall_s']:.2f} s",
          f"{r['build'][2]['wall_s']:.2f} s", f"{r['build'][0]['cpu_s']:.2f} s"] for r in rows]))
    write_results("bench_frame_cache", {"rows": rows, "repeats": repeats})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
