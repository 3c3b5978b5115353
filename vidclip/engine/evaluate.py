"""Retrieval evaluation behind ``tools/eval_retrieval.py --config C [--checkpoint P | --embeddings DIR] [k=v ...]``.

Videos are decoded once each (multi-caption lists included) and encoded in batches; texts are encoded once; the
similarity matrix is built chunk by chunk by the head (bounded memory); videos that fail to decode get NaN columns,
which ``clip4clip`` mode drops as the published protocol does and ``strict`` mode counts as misses. Post-processing
is opt-in and always labelled, with the raw numbers reported beside it. Zero-shot evaluation is
``model.pretrained=openai`` with no checkpoint.
"""
from __future__ import annotations

import logging
import random
import resource
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..config import to_container
from ..data.builders import SPLIT_KEYS, build_dataset, list_path_for
from ..data.lists import read_list
from ..data.loaders import build_eval_loader
from ..errors import DataListError, IntegrityError
from ..features import Features
from ..identity import sha256_file, weights_sha256
from ..io import atomic_write_json
from ..metrics import retrieval_metrics
from ..ops.similarity import chunked_similarity, chunked_similarity_levels
from .checkpoint import ensure_writable_dir
from .encode import EncodedVideos, encode_texts, encode_video_loader, scatter_similarity

_logger = logging.getLogger(__name__)


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def _bank_texts(cfg: DictConfig) -> list[str]:
    """Training captions for QB-Norm / SK-norm query banks (never the test queries)."""
    path = cfg.eval.query_bank_list or cfg.data.train_list
    texts = [c for record in read_list(path) for c in record.captions]
    if cfg.eval.query_bank_size and len(texts) > cfg.eval.query_bank_size:
        texts = random.Random(cfg.train.seed).sample(texts, cfg.eval.query_bank_size)
    _logger.info("query bank: %d training captions from %s", len(texts), path)
    return texts


def _video_features_from_model(cfg, model, dataset, device) -> EncodedVideos:
    loader = build_eval_loader(cfg, dataset)
    return encode_video_loader(model, loader, device, desc=f"encode {len(dataset)} videos")


def _video_features_from_embeddings(directory: str, dataset, model) -> EncodedVideos:
    """Cached features from the extraction tool, re-ordered to the dataset's video order."""
    from .extract import load_embeddings

    cached = load_embeddings(directory)
    missing = sorted(set(model.head.video_feature_keys) - set(cached.features)) if cached.video_ids else []
    if missing:
        raise IntegrityError(f"{directory}: the embeddings lack the feature(s) {missing} that head "
                             f"'{model.cfg.head.name}' needs (extracted with extract.save_frames=false?). Re-extract "
                             "with extract.save_frames=true")
    row_of = {vid: row for row, vid in enumerate(cached.video_ids)}
    indices, rows, failed = [], [], {}
    for idx, record in enumerate(dataset.records):
        if record.video_id in row_of:
            indices.append(idx)
            rows.append(row_of[record.video_id])
        else:
            failed[idx] = cached.failed.get(record.video_id, f"{record.path} (not in {directory})")
    take = torch.as_tensor(rows, dtype=torch.long)
    feats = {k: v.index_select(0, take).float() for k, v in cached.features.items()}
    frames = [cached.num_frames[r] for r in rows]
    return EncodedVideos(feats, indices, frames, failed)


def compute_similarity(cfg: DictConfig, model, text_feats: Features, videos: EncodedVideos, num_videos: int,
                       device: torch.device, levels: bool = False):
    """(N_texts, num_videos) similarity, NaN columns for failed videos, built block by block.

    With ``levels`` (multi-level heads: UCoFiA) a dict level name -> such a matrix.
    """
    n_texts = int(text_feats["pooled"].shape[0])
    if not videos.indices:
        empty = torch.full((n_texts, num_videos), float("nan"))
        return {name: empty.clone() for name in getattr(model.head, "LEVELS", ())} if levels else empty
    sim_ok = _similarity_ok(cfg, model, text_feats, videos.features, device, levels)
    if levels:
        return {name: scatter_similarity(value, videos.indices, num_videos) for name, value in sim_ok.items()}
    return scatter_similarity(sim_ok, videos.indices, num_videos)


def _similarity_ok(cfg: DictConfig, model, text_feats: Features, video_feats: Features, device: torch.device,
                   levels: bool = False):
    """The head's (N_texts, N_videos) scores (or ``{level: scores}``) of decoded videos, block by block."""
    score = chunked_similarity_levels if levels else chunked_similarity
    return score(model.head, text_feats, video_feats, cfg.eval.text_chunk, cfg.eval.video_chunk, device=device,
                 max_block_mb=cfg.eval.max_block_mb)


def _postprocess(cfg, model, sim, text_feats, videos, num_videos, device):
    from ..postprocess import apply_postprocess
    from ..registry import POSTPROCESSORS

    name = cfg.eval.postprocess
    kwargs: dict[str, Any] = {"logit_scale": float(model.scale().detach())}  # clamped, as in training
    if name == "sknorm":
        kwargs.update(_sknorm_banks(cfg, model, text_feats, videos, num_videos, device))
    elif POSTPROCESSORS.info(name, "needs_query_bank", False):
        bank_feats = encode_texts(model, _bank_texts(cfg), device, show_progress=True)
        kwargs["bank_sim"] = compute_similarity(cfg, model, bank_feats, videos, num_videos, device)
    return apply_postprocess(name, sim, **kwargs)


def _sknorm_banks(cfg, model, text_feats: Features, videos: EncodedVideos, num_videos: int,
                  device: torch.device) -> dict[str, Any]:
    """SK-norm inputs: training captions x test videos (t2v) and test texts x training videos (v2t, unless
    ``eval.video_bank_size=0``); per level for multi-level heads (UCoFiA: each level normalised, then averaged)."""
    per_level = hasattr(model.head, "similarity_levels")
    bank_texts = encode_texts(model, _bank_texts(cfg), device, show_progress=True)
    bank_videos = _bank_videos(cfg, model, device)
    if not per_level:
        out = {"bank_sim": compute_similarity(cfg, model, bank_texts, videos, num_videos, device)}
        if bank_videos is not None:
            out["bank_sim_v2t"] = _similarity_ok(cfg, model, text_feats, bank_videos.features, device).T
        return out
    out = {"levels": compute_similarity(cfg, model, text_feats, videos, num_videos, device, levels=True),
           "bank_levels": compute_similarity(cfg, model, bank_texts, videos, num_videos, device, levels=True)}
    if bank_videos is not None:
        bank = _similarity_ok(cfg, model, text_feats, bank_videos.features, device, levels=True)  # (N_t, N_bank_v)
        out["bank_levels_v2t"] = {k: v.T for k, v in bank.items()}
    return out


def _bank_videos(cfg, model, device: torch.device) -> EncodedVideos | None:
    """Training videos (of ``eval.query_bank_list`` or ``data.train_list``; the first ``eval.video_bank_size``) for
    SK-norm's v2t bank, encoded as the test videos are; failed ones are left out. None when the size is 0."""
    size = cfg.eval.video_bank_size
    if size == 0:
        return None
    bank_cfg = cfg.copy()
    bank_cfg.data.train_list = cfg.eval.query_bank_list or cfg.data.train_list
    bank_cfg.data.max_videos = size if size is not None else cfg.data.max_videos
    dataset = build_dataset(bank_cfg, "train", train=False)
    _logger.info("video bank: %d training videos from %s", len(dataset.records), bank_cfg.data.train_list)
    return _video_features_from_model(cfg, model, dataset, device)


def _multi_caption(cfg: DictConfig, dataset) -> bool:
    if cfg.eval.multi_caption == "auto":
        return len(dataset.texts) != len(dataset.records)
    return cfg.eval.multi_caption == "yes"


def evaluate(cfg: DictConfig, model, device: torch.device, embeddings: str | None = None,
             show_progress: bool = True, return_similarity: bool = False):
    """Evaluate ``model`` on ``cfg.eval.split`` and return the metrics report (no file written).

    With ``return_similarity`` the raw ``(N_texts, N_videos)`` matrix is returned too: ``(report, sim)``.
    """
    start = time.time()
    split = cfg.eval.split
    if split == "test" and not cfg.data.test_list:
        raise ValueError("data.test_list is not set: nothing to evaluate")
    dataset = build_dataset(cfg, split, train=False)
    num_videos = len(dataset.records)
    if num_videos == 0:
        key = f"data.{SPLIT_KEYS.get(split, split)}"
        raise DataListError(f"{key}={cfg.data[SPLIT_KEYS.get(split, split)]}: no videos to evaluate (empty list, or "
                            "data.max_videos=0). Point it at a list with videos")
    videos = (_video_features_from_embeddings(embeddings, dataset, model) if embeddings
              else _video_features_from_model(cfg, model, dataset, device))
    t_video = time.time()
    text_feats = encode_texts(model, dataset.texts, device, show_progress=show_progress)
    t_text = time.time()
    sim = compute_similarity(cfg, model, text_feats, videos, num_videos, device)
    t_sim = time.time()
    multi = _multi_caption(cfg, dataset)
    text_to_video = torch.as_tensor(dataset.text_to_video) if multi else None
    failed_idx = sorted(videos.failed)
    report: dict[str, Any] = {
        "dataset": cfg.data.dataset, "split": split, "mode": cfg.eval.mode, "multi_caption": multi,
        "model": model.model_info(), "head": cfg.model.head.name,
        "num_videos": num_videos, "num_texts": len(dataset.texts), "num_failed_videos": len(failed_idx),
        "failed_videos": [{"video_id": dataset.records[i].video_id, "error": videos.failed[i]} for i in failed_idx],
    }
    raw = retrieval_metrics(sim, text_to_video, mode=cfg.eval.mode, failed_videos=failed_idx)
    report["postprocess"] = "none"
    report["t2v"], report["v2t"] = raw["t2v"], raw["v2t"]
    if cfg.eval.postprocess != "none":
        sim_pp, label = _postprocess(cfg, model, sim, text_feats, videos, num_videos, device)
        pp = retrieval_metrics(sim_pp, text_to_video, mode=cfg.eval.mode, failed_videos=failed_idx)
        report["postprocess"] = label
        report["raw"] = {"t2v": raw["t2v"], "v2t": raw["v2t"]}
        report["t2v"], report["v2t"] = pp["t2v"], pp["v2t"]
    report["timing_s"] = {"videos": round(t_video - start, 3), "texts": round(t_text - t_video, 3),
                          "similarity": round(t_sim - t_text, 3), "total": round(time.time() - start, 3)}
    pairs = max(1, len(dataset.texts) * len(videos.indices))
    report["similarity_us_per_pair"] = round(1e6 * (t_sim - t_text) / pairs, 3)
    report["similarity_max_block_mb"] = cfg.eval.max_block_mb
    report.update(_peak_memory_mb(device))
    return (report, sim) if return_similarity else report


def run_evaluation(cfg: DictConfig, checkpoint: str | None = None, embeddings: str | None = None,
                   output: str | None = None, device: str | None = None) -> tuple[dict[str, Any], Path]:
    """What ``tools/eval_retrieval.py`` does: build the model, evaluate, write ``metrics.json``.

    Args:
        cfg: resolved config.
        checkpoint: vidclip checkpoint (run dir, step dir or model.safetensors); default ``model.pretrained``. With
            ``embeddings`` it must be the weights recorded with them (checked by hash).
        embeddings: directory written by extraction, used instead of encoding the videos; the text side uses the
            model recorded with them, and the config's model and preprocessing must equal the extraction's.
        output: metrics.json path (default ``eval.output`` or ``<train.output_dir>/metrics.json``).
        device: torch device name (default: cuda if available, else cpu).

    Returns:
        ``(report, path of the metrics.json written)``.
    """
    from ..models.factory import create_model
    from .extract import check_compatible_config, load_recorded_model

    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(output or cfg.eval.output or Path(cfg.train.output_dir) / "metrics.json")
    ensure_writable_dir(out.parent, "eval.output (or --output) folder")
    if embeddings:  # the model recorded with the embeddings (hash-checked); --checkpoint must be the same weights
        check_compatible_config(embeddings, cfg)
        model = load_recorded_model(embeddings, cfg.model, checkpoint).to(torch_device)
    else:
        model = create_model(cfg.model, pretrained=checkpoint or cfg.model.pretrained).to(torch_device)
    report = evaluate(cfg, model, torch_device, embeddings=embeddings)
    report["checkpoint"] = checkpoint
    report["embeddings"] = embeddings
    report["identity"] = {"weights_sha256": weights_sha256(model.state_dict()),  # what produced these numbers
                          "list_sha256": sha256_file(list_path_for(cfg, cfg.eval.split))}
    report["config"] = to_container(cfg)
    atomic_write_json(out, report)
    return report, out
