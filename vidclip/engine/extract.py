"""Offline video embeddings behind ``python tools/extract_embeddings.py --config C --videos DIR_OR_LIST --out DIR``.

Output layout (architecture.md §3)::

    DIR/config.yaml                 resolved config (model + preprocessing)
    DIR/model.json                  model (arch, head, weights source), identity, and file checksums when complete
    DIR/shards/shard_00000.safetensors   features of videos [0, S), row-aligned with ...
    DIR/shards/shard_00000.sha256        ... SHA-256 of the features and of the manifest part, written between them
    DIR/shards/shard_00000.jsonl         ... the manifest lines of the same videos (renamed last: marks completion)
    DIR/manifest.jsonl              every input video in input order: id, path, status, error, num_frames, shard, row

Work is cut into shards of ``--shard-size`` consecutive inputs (inputs sorted, so the cut is deterministic); process
``r`` of ``N`` (accelerate) takes shards ``r, r+N, ...``: disjoint, no gaps. Each shard is written to a temporary
file and renamed, so a process killed at any moment loses at most the shard in progress; ``--resume`` skips complete
shards and the result is byte-identical to an uninterrupted run. Broken files are recorded as ``failed`` with their
error and never stop the run.

Identity (``model.json["identity"]``): the config keys that change the features (:func:`content_config`), the
SHA-256 of the weights (with their source, or the seed of a random init), of the input list and its videos root,
and the shard size. ``--resume`` refuses any difference, naming the keys; shards whose checksums do not match are
extracted again. Readers verify the manifest and shard checksums recorded at the end (``model.json["files"]``) and
search / evaluation rebuild the recorded model and check its hash.

Video ids of a folder are unique by construction (:func:`unique_video_ids`): the file stem, or the relative path with
extension when another file shares the stem; a JSONL list keeps its own ids (duplicates are refused).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch
from omegaconf import DictConfig
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..config import default_values, save_config, to_container
from ..data.builders import build_reader_factory, build_sampler, build_transform, worker_context
from ..data.collate import make_collate
from ..data.dataset import VideoTextDataset
from ..data.lists import VideoRecord, read_list
from ..errors import IntegrityError, VidclipError
from ..features import Features
from ..identity import (
    IDENTITY_VERSION,
    describe_changes,
    differing_keys,
    flatten,
    select,
    sha256_bytes,
    sha256_file,
    sha256_json,
    weights_sha256,
)
from ..io import atomic_write
from .encode import encode_video_loader

_logger = logging.getLogger(__name__)
SHARD_DIR = "shards"
MANIFEST = "manifest.jsonl"
MODEL_JSON = "model.json"
# data keys that do not change the features of an evaluation video (the effective frame count is added apart)
_NOT_PREPROCESSING = ("data.dataset", "data.videos_root", "data.train_list", "data.val_list", "data.test_list",
                      "data.num_frames", "data.test_num_frames", "data.train_sampler", "data.train_augment",
                      "data.caption_sampling", "data.num_workers", "data.max_videos", "data.group_by_meta")


@dataclass
class CachedEmbeddings:
    """Features of the videos that were extracted successfully, in manifest order."""

    video_ids: list[str]
    features: Features
    num_frames: list[int]
    paths: list[str]
    failed: dict[str, str] = field(default_factory=dict)  # video_id -> error


# ------------------------------------------------------------------------------------------------------ inputs
def discover_inputs(videos: str, extensions: Sequence[str], videos_root: str = "") -> tuple[list[VideoRecord], str]:
    """Records to extract and their root: a folder (recursive, by extension) or a JSONL data list.

    Ids of a folder are unique by construction: a file's stem when no other file has that stem (and the stem is not
    another file's relative path), else its relative path with extension (``a/b.mp4``, ``c.avi``).
    """
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
    rels = [path.relative_to(source).as_posix() for path in files]
    ids = unique_video_ids(rels)
    return [VideoRecord(video_id=vid, path=rel, captions=[]) for vid, rel in zip(ids, rels)], str(source)


def unique_video_ids(rel_paths: Sequence[str]) -> list[str]:
    """One id per relative path: the stem when unambiguous, else the relative path itself (always unique)."""
    stems = [Path(rel).stem for rel in rel_paths]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    taken = set(rel_paths)
    ids = [stem if counts[stem] == 1 and (stem not in taken or stem == rel) else rel
           for stem, rel in zip(stems, rel_paths)]
    clashes = sorted({rel for stem, rel in zip(stems, rel_paths) if counts[stem] > 1})
    if clashes:
        _logger.warning("%d videos share a file stem with another video; their ids are their relative paths "
                        "(e.g. %s)", len(clashes), ", ".join(clashes[:4]))
    return ids


def shard_ranges(num_inputs: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, num_inputs)) for s in range(0, num_inputs, shard_size)]


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


# ------------------------------------------------------------------------------------------------------ writing
def _shard_files(out: Path, index: int) -> tuple[Path, Path, Path]:
    """(features, manifest part, checksums) of a shard; the manifest part is renamed last and marks completion."""
    base = out / SHARD_DIR / shard_name(index)
    return base.with_suffix(".safetensors"), base.with_suffix(".jsonl"), base.with_suffix(".sha256")


def _shard_complete(out: Path, index: int) -> bool:
    """The shard's three files exist and match the checksums written with them; a damaged shard is logged."""
    feats, part, sums = _shard_files(out, index)
    if not part.is_file():
        return False
    try:
        recorded = json.loads(sums.read_text(encoding="utf-8"))
        intact = recorded == {"safetensors": sha256_file(feats), "jsonl": sha256_file(part)}
    except (OSError, ValueError):
        intact = False
    if not intact:
        _logger.warning("%s: truncated, corrupt or without checksums: extracting shard %d again", part.with_suffix(""),
                        index)
    return intact


def _write_shard(out: Path, index: int, features: Features, lines: list[dict]) -> None:
    feats, part, sums = _shard_files(out, index)
    part.unlink(missing_ok=True)  # a shard being redone is incomplete until its manifest part is back
    tensors = {k: v.contiguous() for k, v in features.items()}
    # one metadata key only: safetensors writes metadata from a hash map, so several keys have no stable order
    atomic_write(feats, lambda tmp: save_file(tensors, tmp, metadata={"format": "vidclip-embeddings"}))
    text = "".join(json.dumps(line) + "\n" for line in lines)
    checksums = {"safetensors": sha256_file(feats), "jsonl": sha256_bytes(text.encode("utf-8"))}
    atomic_write(sums, lambda tmp: Path(tmp).write_text(json.dumps(checksums), encoding="utf-8"))
    atomic_write(part, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _extract_shard(cfg: DictConfig, model, records: list[VideoRecord], root: str, start: int, index: int,
                   device: torch.device) -> tuple[Features, list[dict]]:
    dataset = VideoTextDataset(records, videos_root=root, sampler=build_sampler(cfg, train=False),
                               transform=build_transform(cfg, train=False), mode="eval",
                               backend=cfg.data.reader_backend, seed=cfg.train.seed,
                               reader_factory=build_reader_factory(cfg))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.extract.batch_size, shuffle=False,
                                         num_workers=cfg.data.num_workers,
                                         collate_fn=make_collate(cfg.model.context_length),
                                         multiprocessing_context=worker_context(cfg))
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


def _write_manifest(out: Path, num_shards: int) -> tuple[int, int]:
    lines = []
    for index in range(num_shards):
        part = _shard_files(out, index)[1]
        try:
            lines.extend(part.read_text(encoding="utf-8").splitlines())
        except OSError as exc:
            raise IntegrityError(f"{part}: missing ({exc.strerror or exc}); a process did not finish its shards. "
                                 f"Rerun with --resume --out {out}") from exc
    atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text("".join(x + "\n" for x in lines), encoding="utf-8"))
    failed = sum(1 for x in lines if json.loads(x)["status"] == "failed")
    return len(lines), failed


def _file_checksums(out: Path, num_shards: int) -> dict[str, str]:
    """SHA-256 of the manifest and of every shard's features (from the checksums written with each shard)."""
    files = {MANIFEST: sha256_file(out / MANIFEST)}
    for index in range(num_shards):
        feats, _, sums = _shard_files(out, index)
        files[f"{SHARD_DIR}/{feats.name}"] = json.loads(sums.read_text(encoding="utf-8"))["safetensors"]
    return files


# ------------------------------------------------------------------------------------------------------ identity
def content_config(cfg: DictConfig) -> dict[str, object]:
    """Config keys that change what extraction writes: the model (weights aside), video preprocessing, storage."""
    flat = flatten(to_container(cfg))
    keys = select(flat, ["model"], exclude=["model.pretrained"])
    keys.update(select(flat, ["data"], exclude=_NOT_PREPROCESSING))
    keys["data.test_num_frames"] = cfg.data.test_num_frames or cfg.data.num_frames  # the effective value
    keys.update(select(flat, ["extract.save_frames", "extract.dtype"]))
    return keys


def extraction_identity(cfg: DictConfig, model, records: Sequence[VideoRecord], root: str,
                        checkpoint: str | None = None, random_init_seed: int | None = None) -> dict[str, object]:
    """What produced an extraction: content config, weights hash (and source), the input list, the shard layout."""
    inputs = [[r.video_id, r.path, r.start, r.end] for r in records]
    return {"format": "vidclip-extraction", "version": IDENTITY_VERSION, "config": content_config(cfg),
            "weights": {"sha256": weights_sha256(model.state_dict()), "source": checkpoint,
                        "random_init_seed": random_init_seed},
            "inputs": {"count": len(records), "sha256": sha256_json(inputs), "videos_root": os.path.abspath(root)},
            "shard_size": int(cfg.extract.shard_size)}


def read_extraction_info(directory: Union[str, Path]) -> dict[str, object]:
    """``DIR/model.json`` (model, weights source, identity, file checksums); IntegrityError when unreadable."""
    path = Path(directory) / MODEL_JSON
    if not path.is_file():
        raise IntegrityError(f"{path} not found: {directory} is not a vidclip extraction (or it was never started). "
                             f"Run tools/extract_embeddings.py --out {directory}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path}: unreadable ({exc}). Re-extract into a new --out, or pass --overwrite") from exc
    if not isinstance(info, dict):
        raise IntegrityError(f"{path}: not a JSON object. Re-extract into a new --out, or pass --overwrite")
    return info


def _way_out(keys: Sequence[str], recorded: dict[str, object]) -> str:
    hints = []
    if "shard_size" in keys:
        hints.append(f"--shard-size {recorded.get('shard_size')}")
    if any(k.startswith("weights.") for k in keys):
        hints.append(f"the same weights (--checkpoint {recorded.get('weights.source')})")
    if any(k.startswith("inputs.") for k in keys):
        hints.append("the same --videos (same files, same videos_root)")
    if any(k.startswith("config.") for k in keys):
        hints.append("the same config values")
    return " and ".join(hints)


def check_resume_identity(out: Path, identity: dict[str, object]) -> None:
    """Refuse ``--resume`` into a folder made with other settings, weights, inputs or shard layout."""
    info = read_extraction_info(out)
    if "identity" not in info:
        raise IntegrityError(f"{out / MODEL_JSON}: written by an older vidclip without an identity, so --resume "
                             "cannot check that it continues the same extraction. Pass --overwrite or choose a new "
                             "--out")
    recorded, current = flatten(info["identity"]), flatten(identity)
    defaults = {f"config.{k}": v for k, v in flatten(default_values()).items()}
    keys = differing_keys(recorded, current, ignore=["weights.source", "weights.random_init_seed"], defaults=defaults)
    if keys:
        raise IntegrityError(f"{out / MODEL_JSON}: --resume with other settings than this extraction: "
                             f"{describe_changes(recorded, current, keys)}. Rerun with {_way_out(keys, recorded)}, "
                             "or choose a new --out (or pass --overwrite to discard it)")


def _discard(out: Path) -> None:
    """--overwrite: remove what an earlier extraction wrote (only vidclip's own files)."""
    shutil.rmtree(out / SHARD_DIR, ignore_errors=True)
    for name in (MANIFEST, MODEL_JSON, "config.yaml"):
        (out / name).unlink(missing_ok=True)
    for cache in list(out.glob("index_*.faiss")) + list(out.glob("index_*.json")):
        cache.unlink(missing_ok=True)
    _logger.warning("--overwrite: discarded the earlier extraction in %s", out)


# ------------------------------------------------------------------------------------------------------ reading
def _parse_manifest_line(line: str, path: Path, lineno: int) -> dict:
    try:
        entry = json.loads(line)
        if not isinstance(entry, dict) or entry["status"] not in ("ok", "failed"):
            raise ValueError("not a manifest entry")
        if entry["status"] == "ok":
            entry["shard"], entry["row"] = str(entry["shard"]), int(entry["row"])
        return entry
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}:{lineno}: corrupt manifest line ({exc}). Rerun the extraction with --resume "
                             f"--out {path.parent} to rewrite it") from exc


def read_manifest(directory: Union[str, Path]) -> list[dict]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise VidclipError(f"{path} not found: run tools/extract_embeddings.py --out {directory} first (or finish it"
                           " with --resume)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise IntegrityError(f"{path}: not UTF-8 (corrupt). Rerun the extraction with --resume --out {directory} to "
                             "rewrite it") from exc
    return [_parse_manifest_line(line, path, n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _verified_files(directory: Path) -> dict[str, str] | None:
    """Checksums recorded at the end of the extraction (None for folders of older vidclip versions)."""
    info = read_extraction_info(directory)
    if "identity" not in info:
        _logger.warning("%s: written by an older vidclip without checksums; files are not verified", directory)
        return None
    files = info.get("files")
    if not isinstance(files, dict):
        raise IntegrityError(f"{directory}: the extraction did not finish (no checksums in {MODEL_JSON}). Rerun it "
                             f"with --resume --out {directory}")
    manifest = directory / MANIFEST
    if manifest.is_file() and sha256_file(manifest) != files.get(MANIFEST):
        raise IntegrityError(f"{manifest}: changed since extraction (SHA-256 differs from {MODEL_JSON}). Rerun the "
                             f"extraction with --resume --out {directory} to rewrite it")
    return files


def _load_shard(directory: Path, name: str, files: dict[str, str] | None) -> dict[str, torch.Tensor]:
    path = directory / name
    way_out = f"Rerun the extraction with --resume --out {directory} (damaged shards are extracted again)"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot read ({exc.strerror or exc}). {way_out}") from exc
    if files is not None and sha256_bytes(data) != files.get(name):
        raise IntegrityError(f"{path}: truncated or corrupt (SHA-256 differs from {MODEL_JSON}). {way_out}")
    try:
        return load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types
        raise IntegrityError(f"{path}: not a readable safetensors file ({exc}). {way_out}") from exc


def load_embeddings(directory: Union[str, Path], keys: Sequence[str] | None = None) -> CachedEmbeddings:
    """All extracted features (rows of successful videos, manifest order) and the failures, checksums verified."""
    directory = Path(directory)
    files = _verified_files(directory) if (directory / MODEL_JSON).is_file() else None
    entries = read_manifest(directory)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    chunks: dict[str, list[torch.Tensor]] = {}
    ids, frames, paths, failed = [], [], [], {}
    for entry in entries:
        if entry["status"] != "ok":
            failed[entry["video_id"]] = entry["error"]
            continue
        if entry["shard"] not in shards:
            shards[entry["shard"]] = _load_shard(directory, entry["shard"], files)
        shard = shards[entry["shard"]]
        wanted = list(keys or shard.keys())
        missing = [k for k in wanted if k not in shard]
        if missing or not 0 <= entry["row"] < min((len(shard[k]) for k in wanted), default=0):
            raise IntegrityError(f"{directory / entry['shard']}: no row {entry['row']} / key(s) {missing} for video "
                                 f"'{entry['video_id']}' (features need extract.save_frames=true for re-ranking "
                                 "heads). Re-extract into a new --out")
        for key in wanted:
            chunks.setdefault(key, []).append(shard[key][entry["row"]])
        ids.append(entry["video_id"])
        frames.append(entry["num_frames"])
        paths.append(entry["path"])
    features = {k: torch.stack(v) for k, v in chunks.items()}
    return CachedEmbeddings(ids, features, frames, paths, failed)


def load_recorded_model(directory: Union[str, Path], model_cfg, checkpoint: str | None = None):
    """The model that produced an extraction: its recorded weights (or seeded random init), hash-checked.

    Args:
        directory: extraction folder.
        model_cfg: the model block to build (the extraction's own ``config.yaml`` or an equal one).
        checkpoint: weights to use instead of the recorded source; refused unless they are the same weights.

    Raises:
        IntegrityError: no recorded weights and no ``checkpoint``, or weights whose SHA-256 differs.
    """
    from ..models.factory import create_model

    directory = Path(directory)
    info = read_extraction_info(directory)
    if "identity" not in info:  # older vidclip: no hash to check
        return create_model(model_cfg, pretrained=checkpoint or info.get("checkpoint") or model_cfg.pretrained)
    weights = info["identity"]["weights"]
    source, seed = checkpoint or weights.get("source"), weights.get("random_init_seed")
    if source is None and seed is None:
        raise IntegrityError(f"{directory / MODEL_JSON}: the embeddings were made by an unsaved model (random init "
                             "with no recorded seed). Pass --checkpoint with those weights, or re-extract with a "
                             "checkpoint")
    model = create_model_seeded(model_cfg, source, seed)
    if weights_sha256(model.state_dict()) != weights["sha256"]:
        given = f"--checkpoint {checkpoint}" if checkpoint else f"the recorded weights {source or 'random init'}"
        raise IntegrityError(f"{directory / MODEL_JSON}: {given} is not the model that produced these embeddings "
                             f"(weights SHA-256 {str(weights['sha256'])[:12]}... recorded). Omit --checkpoint to use "
                             f"the recorded {weights.get('source') or 'random init'}, or re-extract with the new "
                             "weights")
    return model


def check_compatible_config(directory: Union[str, Path], cfg: DictConfig) -> None:
    """Refuse evaluating embeddings extracted with another model or preprocessing than ``cfg`` (keys named)."""
    info = read_extraction_info(directory)
    if "identity" not in info:
        _logger.warning("%s: written by an older vidclip without an identity; its settings are not checked",
                        directory)
        return
    recorded, current = dict(info["identity"]["config"]), content_config(cfg)
    keys = differing_keys(recorded, current, ignore=["extract"], defaults=flatten(default_values()))
    if keys:
        raise IntegrityError(f"{Path(directory) / MODEL_JSON}: --embeddings were extracted with other settings than "
                             f"this config: {describe_changes(recorded, current, keys)}. Evaluate with the "
                             f"extraction's config ({Path(directory) / 'config.yaml'}) or re-extract with this one")
    if recorded.get("extract.dtype") != "float32":
        _logger.warning("%s holds %s features: metrics can differ slightly from encoding the videos (extract with "
                        "extract.dtype=float32 for bit-identical evaluation)", directory, recorded.get("extract.dtype"))


def create_model_seeded(model_cfg, pretrained: str | None, seed: int | None):
    """``create_model``; random init (no ``pretrained``) is drawn from ``seed`` without touching the global RNG."""
    from ..models.factory import create_model

    if pretrained or seed is None:
        return create_model(model_cfg, pretrained=pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return create_model(model_cfg, pretrained=None)


# ------------------------------------------------------------------------------------------------------ driver
def _check_out(out: Path, resume: bool, overwrite: bool, identity: dict[str, object]) -> bool:
    """Refuse an existing extraction without --resume/--overwrite, or one made differently (read-only, so every
    process checks and all of them stop together); returns whether ``out`` holds an extraction."""
    exists = any((out / name).exists() for name in (MANIFEST, SHARD_DIR, MODEL_JSON))
    if exists and not (resume or overwrite):
        raise IntegrityError(f"{out} already holds an extraction: pass --resume to continue it, --overwrite to "
                             "replace it, or choose a new --out")
    if exists and resume and not overwrite:
        check_resume_identity(out, identity)
    return exists


def _init_out(out: Path, exists: bool, overwrite: bool) -> None:
    """Main process: discard an extraction being overwritten, create the shard folder and probe a write."""
    if exists and overwrite:
        _discard(out)
    try:
        (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise VidclipError(f"cannot write to output directory {out}: {exc.strerror}. Choose a writable --out") from exc


def _write_model_json(out: Path, info: dict[str, object]) -> None:
    atomic_write(out / MODEL_JSON, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2), encoding="utf-8"))


def run_extraction(cfg: DictConfig, model, videos: str, out: Path, resume: bool, accelerator=None,
                   checkpoint: str | None = None, overwrite: bool = False,
                   random_init_seed: int | None = None) -> dict[str, object]:
    """Extract every shard assigned to this process; the main process then writes the manifest and checksums.

    ``resume`` continues an extraction made with the same identity (content config, weights hash, inputs, shard
    size), re-extracting shards whose checksums do not match; anything else is refused (:class:`IntegrityError`).
    ``overwrite`` discards an earlier extraction in ``out`` first.
    """
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    device = accelerator.device if accelerator else torch.device("cpu")
    is_main = rank == 0
    out = Path(out)
    records, root = discover_inputs(videos, cfg.extract.extensions, cfg.data.videos_root)
    ranges = shard_ranges(len(records), cfg.extract.shard_size)
    identity = extraction_identity(cfg, model, records, root, checkpoint, random_init_seed)
    info = dict(model.model_info(), checkpoint=checkpoint, videos_root=root, identity=identity)
    exists = _check_out(out, resume, overwrite, identity)
    if accelerator:
        accelerator.wait_for_everyone()  # every process has looked at ``out`` before the main one writes to it
    if is_main:
        _init_out(out, exists, overwrite)
        for stale in (out / SHARD_DIR).glob(".*.tmp"):  # what a killed run was writing: never complete
            stale.unlink()
        save_config(cfg, out)
        _write_model_json(out, info)  # the identity, without file checksums until the end
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
    summary: dict[str, object] = {"inputs": len(records), "shards": len(ranges), "extracted_here": done_videos}
    if is_main:
        try:
            total, failed = _write_manifest(out, len(ranges))
            _write_model_json(out, dict(info, files=_file_checksums(out, len(ranges))))
        except OSError as exc:
            raise VidclipError(f"{out}: could not write {MANIFEST} / {MODEL_JSON} ({exc.strerror or exc}). Every "
                               "shard is complete: free space or fix permissions, then rerun with --resume") from exc
        summary.update(manifest_lines=total, failed=failed)
    return summary


def extract_embeddings(cfg: DictConfig, videos: str, out: Path, checkpoint: str | None = None,
                       resume: bool = False, overwrite: bool = False) -> dict[str, object]:
    """What ``tools/extract_embeddings.py`` does, on every process of a launch (accelerate / torchrun or plain).

    Args:
        cfg: resolved config (model, preprocessing, ``extract.shard_size``).
        videos: folder of videos (recursive) or a JSONL data list.
        out: output directory.
        checkpoint: vidclip checkpoint or open_clip weights (default ``model.pretrained``). With neither, the
            random-init weights are drawn from ``train.seed`` and the seed is recorded, so search and evaluation
            rebuild the same model.
        resume: continue an extraction of the same identity (see :func:`run_extraction`).
        overwrite: discard an earlier extraction in ``out``.

    Returns:
        the summary of :func:`run_extraction`, plus ``is_main_process``.
    """
    from accelerate import Accelerator

    # CPU-only multi-process launches (torchrun) need cpu=True for accelerate to pick gloo
    cpu_distributed = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(cpu=cpu_distributed)
    pretrained = checkpoint or cfg.model.pretrained
    seed = None if pretrained else int(cfg.train.seed)
    if seed is not None:
        _logger.warning("no weights (model.pretrained and --checkpoint unset): random init drawn from train.seed=%d "
                        "and recorded in %s", seed, Path(out) / MODEL_JSON)
    model = create_model_seeded(cfg.model, pretrained, seed).to(accelerator.device).eval()
    summary = run_extraction(cfg, model, videos, Path(out), resume, accelerator, pretrained, overwrite, seed)
    summary["is_main_process"] = accelerator.is_main_process
    return summary
