"""Offline video embeddings behind ``python tools/extract_embeddings.py --config C --videos DIR_OR_LIST --out DIR``.

Output layout (architecture.md §3)::

    DIR/config.yaml                 resolved config (model + preprocessing)
    DIR/model.json                  model identity (arch, head, pretrained / checkpoint)
    DIR/shards/shard_00000.safetensors   features of videos [0, S), row-aligned with ...
    DIR/shards/shard_00000.jsonl         ... the manifest lines of the same videos
    DIR/manifest.jsonl              every input video in input order: id, path, status, error, num_frames, shard, row

Work is cut into shards of ``--shard-size`` consecutive inputs (inputs sorted, so the cut is deterministic); process
``r`` of ``N`` (accelerate) takes shards ``r, r+N, ...``: disjoint, no gaps. Each shard is written to a temporary
file and renamed, so a process killed at any moment loses at most the shard in progress; ``--resume`` skips complete
shards and the result is byte-identical to an uninterrupted run. Broken files are recorded as ``failed`` with their
error and never stop the run.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..config import save_config
from ..data.builders import build_sampler, build_transform
from ..data.collate import make_collate
from ..data.dataset import VideoTextDataset
from ..data.lists import VideoRecord, read_list
from ..errors import VidclipError
from ..features import Features
from ..io import atomic_write
from .encode import encode_video_loader

_logger = logging.getLogger(__name__)
SHARD_DIR = "shards"


@dataclass
class CachedEmbeddings:
    """Features of the videos that were extracted successfully, in manifest order."""

    video_ids: List[str]
    features: Features
    num_frames: List[int]
    paths: List[str]
    failed: Dict[str, str] = field(default_factory=dict)  # video_id -> error


# ------------------------------------------------------------------------------------------------------ inputs
def discover_inputs(videos: str, extensions: Sequence[str], videos_root: str = "") -> Tuple[List[VideoRecord], str]:
    """Records to extract and their root: a folder (recursive, by extension) or a JSONL data list."""
    source = Path(videos)
    if source.is_file() and source.suffix == ".jsonl":
        root = videos_root or str(source.parent)
        return read_list(source), root
    if not source.is_dir():
        raise VidclipError(f"--videos {videos}: not a folder of videos nor a .jsonl data list")
    exts = {e.lower() for e in extensions}
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise VidclipError(f"--videos {videos}: no video files with extensions {sorted(exts)} found")
    records, seen = [], {}
    for path in files:
        rel = path.relative_to(source)
        video_id = path.stem if path.stem not in seen else str(rel.with_suffix(""))
        if path.stem in seen:
            _logger.warning("two videos named %s (%s, %s): using %s as the id", path.stem, seen[path.stem], rel,
                            video_id)
        seen.setdefault(path.stem, rel)
        records.append(VideoRecord(video_id=video_id, path=str(rel), captions=[]))
    return records, str(source)


def shard_ranges(num_inputs: int, shard_size: int) -> List[Tuple[int, int]]:
    return [(s, min(s + shard_size, num_inputs)) for s in range(0, num_inputs, shard_size)]


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


# ------------------------------------------------------------------------------------------------------ writing
def _shard_complete(out: Path, index: int) -> bool:
    """Both files of the shard exist (the manifest part is renamed last, so it marks completion)."""
    base = out / SHARD_DIR / shard_name(index)
    return base.with_suffix(".jsonl").is_file() and base.with_suffix(".safetensors").is_file()


def _write_shard(out: Path, index: int, features: Features, lines: List[dict]) -> None:
    base = out / SHARD_DIR / shard_name(index)
    tensors = {k: v.contiguous() for k, v in features.items()}
    # one metadata key only: safetensors writes metadata from a hash map, so several keys have no stable order
    atomic_write(base.with_suffix(".safetensors"),
                        lambda tmp: save_file(tensors, tmp, metadata={"format": "vidclip-embeddings"}))
    text = "".join(json.dumps(line) + "\n" for line in lines)
    atomic_write(base.with_suffix(".jsonl"), lambda tmp: Path(tmp).write_text(text))


def _extract_shard(cfg: DictConfig, model, records: List[VideoRecord], root: str, start: int, index: int,
                   device: torch.device) -> Tuple[Features, List[dict]]:
    dataset = VideoTextDataset(records, videos_root=root, sampler=build_sampler(cfg, train=False),
                               transform=build_transform(cfg, train=False), mode="eval",
                               backend=cfg.data.reader_backend, seed=cfg.train.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.extract.batch_size, shuffle=False,
                                         num_workers=cfg.data.num_workers,
                                         collate_fn=make_collate(cfg.model.context_length))
    encoded = encode_video_loader(model, loader, device, show_progress=False)
    keep = model.head.video_feature_keys if cfg.extract.save_frames else ("pooled",)
    dtype = getattr(torch, cfg.extract.dtype)
    feats = {k: v.to(dtype) for k, v in encoded.features.items() if k in keep}
    row_of = {idx: row for row, idx in enumerate(encoded.indices)}
    lines = []
    for i, record in enumerate(records):
        ok = i in row_of
        lines.append({
            "video_id": record.video_id, "path": record.path, "status": "ok" if ok else "failed",
            "error": None if ok else encoded.failed.get(i, "unknown error"),
            "num_frames": encoded.num_frames[row_of[i]] if ok else 0,
            "shard": f"{SHARD_DIR}/{shard_name(index)}.safetensors" if ok else None,
            "row": row_of[i] if ok else None, "input_index": start + i,
        })
    return feats, lines


def _write_manifest(out: Path, num_shards: int) -> Tuple[int, int]:
    lines = []
    for index in range(num_shards):
        part = (out / SHARD_DIR / shard_name(index)).with_suffix(".jsonl")
        lines.extend(part.read_text().splitlines())
    atomic_write(out / "manifest.jsonl", lambda tmp: Path(tmp).write_text("".join(x + "\n" for x in lines)))
    failed = sum(1 for x in lines if json.loads(x)["status"] == "failed")
    return len(lines), failed


# ------------------------------------------------------------------------------------------------------ reading
def read_manifest(directory: str) -> List[dict]:
    path = Path(directory) / "manifest.jsonl"
    if not path.is_file():
        raise VidclipError(f"{path} not found: run tools/extract_embeddings.py --out {directory} first (or finish it"
                           " with --resume)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_embeddings(directory: str, keys: Optional[Sequence[str]] = None) -> CachedEmbeddings:
    """All extracted features (rows of successful videos, manifest order) and the failures."""
    entries = read_manifest(directory)
    shards: Dict[str, Dict[str, torch.Tensor]] = {}
    chunks: Dict[str, List[torch.Tensor]] = {}
    ids, frames, paths, failed = [], [], [], {}
    for entry in entries:
        if entry["status"] != "ok":
            failed[entry["video_id"]] = entry["error"]
            continue
        if entry["shard"] not in shards:
            shards[entry["shard"]] = load_file(str(Path(directory) / entry["shard"]))
        shard = shards[entry["shard"]]
        for key in keys or shard.keys():
            chunks.setdefault(key, []).append(shard[key][entry["row"]])
        ids.append(entry["video_id"])
        frames.append(entry["num_frames"])
        paths.append(entry["path"])
    features = {k: torch.stack(v) for k, v in chunks.items()}
    return CachedEmbeddings(ids, features, frames, paths, failed)


# ------------------------------------------------------------------------------------------------------ driver
def _check_out_dir(out: Path, resume: bool) -> None:
    if (out / "manifest.jsonl").exists() or (out / SHARD_DIR).exists():
        if not resume:
            raise VidclipError(f"{out} already holds an extraction: pass --resume to continue it or choose a new --out")
    try:
        (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise VidclipError(f"cannot write to output directory {out}: {exc.strerror}. Choose a writable --out") from exc


def run_extraction(cfg: DictConfig, model, videos: str, out: Path, resume: bool, accelerator=None,
                   checkpoint: Optional[str] = None) -> Dict[str, object]:
    """Extract every shard assigned to this process; the main process then writes the manifest."""
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    device = accelerator.device if accelerator else torch.device("cpu")
    is_main = rank == 0
    records, root = discover_inputs(videos, cfg.extract.extensions, cfg.data.videos_root)
    ranges = shard_ranges(len(records), cfg.extract.shard_size)
    if is_main:
        _check_out_dir(out, resume)
        for stale in (out / SHARD_DIR).glob(".*.tmp"):  # what a killed run was writing: never complete
            stale.unlink()
        save_config(cfg, out)
        identity = dict(model.model_info(), checkpoint=checkpoint, videos_root=root)
        atomic_write(out / "model.json", lambda tmp: Path(tmp).write_text(json.dumps(identity, indent=2)))
    if accelerator:
        accelerator.wait_for_everyone()
    mine = [i for i in range(rank, len(ranges), world) if not (resume and _shard_complete(out, i))]
    start_time, done_videos = time.time(), 0
    bar = tqdm(total=sum(ranges[i][1] - ranges[i][0] for i in mine), desc=f"extract (rank {rank})", unit="video",
               disable=not is_main)
    for index in mine:
        lo, hi = ranges[index]
        feats, lines = _extract_shard(cfg, model, records[lo:hi], root, lo, index, device)
        try:
            _write_shard(out, index, feats, lines)
        except OSError as exc:
            raise VidclipError(f"{out}: could not write {SHARD_DIR}/{shard_name(index)} ({exc.strerror or exc}). "
                               f"Earlier shards are complete: free space or fix permissions, then rerun with --resume"
                               ) from exc
        done_videos += hi - lo
        bar.update(hi - lo)
        bar.set_postfix(videos_per_s=f"{done_videos / max(time.time() - start_time, 1e-9):.2f}")
    bar.close()
    if accelerator:
        accelerator.wait_for_everyone()
    summary: Dict[str, object] = {"inputs": len(records), "shards": len(ranges), "extracted_here": done_videos}
    if is_main:
        total, failed = _write_manifest(out, len(ranges))
        summary.update(manifest_lines=total, failed=failed)
    return summary


def extract_embeddings(cfg: DictConfig, videos: str, out: Path, checkpoint: Optional[str] = None,
                       resume: bool = False) -> Dict[str, object]:
    """What ``tools/extract_embeddings.py`` does, on every process of a launch (accelerate / torchrun or plain).

    Args:
        cfg: resolved config (model, preprocessing, ``extract.shard_size``).
        videos: folder of videos (recursive) or a JSONL data list.
        out: output directory.
        checkpoint: vidclip checkpoint or open_clip weights (default ``model.pretrained``).
        resume: skip shards already written.

    Returns:
        the summary of :func:`run_extraction`, plus ``is_main_process``.
    """
    from accelerate import Accelerator

    from ..models.factory import create_model

    # CPU-only multi-process launches (torchrun) need cpu=True for accelerate to pick gloo
    cpu_distributed = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(cpu=cpu_distributed)
    pretrained = checkpoint or cfg.model.pretrained
    model = create_model(cfg.model, pretrained=pretrained).to(accelerator.device).eval()
    summary = run_extraction(cfg, model, videos, Path(out), resume, accelerator, pretrained)
    summary["is_main_process"] = accelerator.is_main_process
    return summary
