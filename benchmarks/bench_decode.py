"""Decoding 12 uniformly spaced frames of each real file: vidclip's readers against the raw library floors.

Side by side in one process pinned to one core (torch and FFmpeg at one thread), the same frame indices for every
candidate (vidclip's ``uniform`` sampler, 12 frames), CPU time, medians of interleaved rounds:
- ``auto``: what the data loader runs per video: ``open_video(path)`` (torchcodec when it loads), the sampler on its
  ``num_frames`` / ``fps``, ``get_frames`` (uint8 ``(12, H, W, 3)``);
- ``auto + transform``: the same plus the CLIP transform to ``(12, 3, 224, 224)`` (the whole per-video loader);
- ``pyav``: ``open_video(path, backend="pyav")``, same indices;
- ``torchcodec raw``: ``VideoDecoder(path, seek_mode="exact", dimension_order="NHWC").get_frames_at(indices)``;
- ``decord``: ``decord.VideoReader(path, num_threads=1).get_batch(indices)`` (where decord opens the file);
- ``open``: opening alone (``open_video`` vs ``VideoDecoder``), the deterministic part of auto's overhead.
Goal (issue 16): ``auto`` within 1.05x of ``torchcodec raw``.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
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

FRAMES = 12


def candidates(path: Path) -> tuple[dict, np.ndarray]:
    """(name -> zero-argument callable, the frame indices every candidate decodes)."""
    from torchcodec.decoders import VideoDecoder

    from vidclip.data.readers import open_video
    from vidclip.data.samplers import create_sampler
    from vidclip.data.transforms import create_video_transform

    sampler = create_sampler("uniform", FRAMES)
    transform = create_video_transform(224, train=False)
    with open_video(path) as reader:
        picked = sampler(reader.num_frames, reader.fps)
    indices = np.asarray(picked.indices)[np.asarray(picked.mask, dtype=bool)]
    p = str(path)

    def auto():
        with open_video(p) as reader:
            chosen = sampler(reader.num_frames, reader.fps)
            return reader.get_frames(np.asarray(chosen.indices)[np.asarray(chosen.mask, dtype=bool)])

    def pyav():
        with open_video(p, backend="pyav") as reader:
            return reader.get_frames(indices)

    def raw():
        decoder = VideoDecoder(p, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=0)
        return decoder.get_frames_at(indices.tolist()).data.numpy()

    def auto_open():
        open_video(p).close()

    def raw_open():
        VideoDecoder(p, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=0)

    fns = {"auto": auto, "auto_transform": lambda: transform(auto()), "pyav": pyav, "torchcodec_raw": raw,
           "auto_open": auto_open, "raw_open": raw_open}
    decord_fn = _decord_candidate(p, indices)
    if decord_fn is not None:
        fns["decord"] = decord_fn
    return fns, indices


def _decord_candidate(path: str, indices: np.ndarray):
    try:
        import decord

        decord.VideoReader(path, num_threads=1)
    except Exception:  # not installed, or cannot open the file (Theora/Ogg)
        return None
    return lambda: decord.VideoReader(path, num_threads=1).get_batch(indices.tolist()).asnumpy()


def bench_file(path: Path, repeats: int) -> dict:
    from vidclip.data.readers import open_video

    fns, indices = candidates(path)
    reader = open_video(path)
    _, cpu = interleaved_wall_cpu(fns, repeats)
    row = {"file": f"{path.parent.name}/{path.name}", "frames": reader.num_frames, "decoder": reader.decoder
           if hasattr(reader, "decoder") else reader.backend, "indices": indices.tolist(),
           **{k: summarize(v) for k, v in cpu.items()},
           "auto_vs_raw": ratio_stats(cpu["auto"], cpu["torchcodec_raw"]),
           "pyav_vs_raw": ratio_stats(cpu["pyav"], cpu["torchcodec_raw"])}
    if "decord" in cpu:
        row["raw_vs_decord"] = ratio_stats(cpu["torchcodec_raw"], cpu["decord"])
        row["auto_vs_decord"] = ratio_stats(cpu["auto"], cpu["decord"])
    return row


def geomean(rows: list[dict], key: str) -> str:
    values = [r[key]["median"] for r in rows if key in r]
    return f"x{math.exp(sum(math.log(v) for v in values) / len(values)):.3f}" if values else "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from vidclip.data.readers.torchcodec import torchcodec_status

    usable, reason = torchcodec_status()
    if not usable:
        print(f"skipped: {reason}")
        return 0
    repeats = 5 if args.quick else args.repeats
    paths = sorted((SHARED_DATA / "videos").glob("*/*"))
    if not paths:
        print(f"skipped: no real videos under {SHARED_DATA}/videos")
        return 0
    with pinned_to_one_core() as core:
        rows = [bench_file(path, repeats) for path in paths]
    table = markdown_table(
        ["file", "frames", "auto decodes with", "auto", "auto + transform", "pyav", "torchcodec raw", "decord",
         "auto / torchcodec raw", "pyav / torchcodec raw", "torchcodec raw / decord", "open: auto / raw"],
        [[r["file"], r["frames"], r["decoder"], fmt_ms(r["auto"]), fmt_ms(r["auto_transform"]), fmt_ms(r["pyav"]),
          fmt_ms(r["torchcodec_raw"]), fmt_ms(r["decord"]) if "decord" in r else "cannot open",
          fmt_ratio(r["auto_vs_raw"]), fmt_ratio(r["pyav_vs_raw"]),
          fmt_ratio(r["raw_vs_decord"]) if "raw_vs_decord" in r else "-",
          f"{1e3 * r['auto_open']['median_s']:.2f} / {1e3 * r['raw_open']['median_s']:.2f} ms"] for r in rows])
    mp4 = [r for r in rows if r["file"].endswith(".mp4")]
    print(f"## Decoding {FRAMES} uniform frames, CPU time, one core (affinity {{{core}}}, 1 thread), medians of "
          f"{repeats} interleaved rounds (±: (max-min)/median; ratios: median (min-max) of per-round ratios); "
          f"load avg {load_average()}\n")
    print(table)
    print(f"\nGeometric means of the median ratios: auto / torchcodec raw {geomean(rows, 'auto_vs_raw')} (all files), "
          f"{geomean(mp4, 'auto_vs_raw')} (MP4 files: no PyAV probe); pyav / torchcodec raw "
          f"{geomean(rows, 'pyav_vs_raw')}; torchcodec raw / decord {geomean(rows, 'raw_vs_decord')}; "
          f"auto / decord {geomean(rows, 'auto_vs_decord')}")
    write_results("decode", {"rows": rows, "repeats": repeats, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
