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
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig

from ..config import to_container
from ..data.builders import build_dataset
from ..data.lists import read_list
from ..data.loaders import build_eval_loader
from ..features import Features
from ..io import atomic_write_json
from ..metrics import retrieval_metrics
from ..ops.similarity import chunked_similarity
from .checkpoint import ensure_writable_dir
from .encode import EncodedVideos, encode_texts, encode_video_loader, scatter_similarity

_logger = logging.getLogger(__name__)


def _peak_memory_mb(device: torch.device) -> Dict[str, float]:
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def _bank_texts(cfg: DictConfig) -> List[str]:
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


def _video_features_from_embeddings(directory: str, dataset) -> EncodedVideos:
    """Cached features from the extraction tool, re-ordered to the dataset's video order."""
    from .extract import load_embeddings

    cached = load_embeddings(directory)
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
                       device: torch.device) -> torch.Tensor:
    """(N_texts, num_videos) similarity, NaN columns for failed videos, built block by block."""
    n_texts = int(text_feats["pooled"].shape[0])
    if not videos.indices:
        return torch.full((n_texts, num_videos), float("nan"))
    sim_ok = chunked_similarity(model.head, text_feats, videos.features, cfg.eval.text_chunk, cfg.eval.video_chunk,
                                device=device)
    return scatter_similarity(sim_ok, videos.indices, num_videos)


def _postprocess(cfg, model, sim, videos, num_videos, device):
    from ..postprocess import apply_postprocess
    from ..registry import POSTPROCESSORS

    name = cfg.eval.postprocess
    bank_sim = None
    if POSTPROCESSORS.info(name, "needs_query_bank", False):
        bank_feats = encode_texts(model, _bank_texts(cfg), device, show_progress=True)
        bank_sim = compute_similarity(cfg, model, bank_feats, videos, num_videos, device)
    return apply_postprocess(name, sim, bank_sim=bank_sim, logit_scale=float(model.logit_scale.exp()))


def _multi_caption(cfg: DictConfig, dataset) -> bool:
    if cfg.eval.multi_caption == "auto":
        return len(dataset.texts) != len(dataset.records)
    return cfg.eval.multi_caption == "yes"


def evaluate(cfg: DictConfig, model, device: torch.device, embeddings: Optional[str] = None,
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
    videos = (_video_features_from_embeddings(embeddings, dataset) if embeddings
              else _video_features_from_model(cfg, model, dataset, device))
    t_video = time.time()
    text_feats = encode_texts(model, dataset.texts, device, show_progress=show_progress)
    sim = compute_similarity(cfg, model, text_feats, videos, num_videos, device)
    t_sim = time.time()
    multi = _multi_caption(cfg, dataset)
    text_to_video = torch.as_tensor(dataset.text_to_video) if multi else None
    failed_idx = sorted(videos.failed)
    report: Dict[str, Any] = {
        "dataset": cfg.data.dataset, "split": split, "mode": cfg.eval.mode, "multi_caption": multi,
        "model": model.model_info(), "head": cfg.model.head.name,
        "num_videos": num_videos, "num_texts": len(dataset.texts), "num_failed_videos": len(failed_idx),
        "failed_videos": [{"video_id": dataset.records[i].video_id, "error": videos.failed[i]} for i in failed_idx],
    }
    raw = retrieval_metrics(sim, text_to_video, mode=cfg.eval.mode, failed_videos=failed_idx)
    report["postprocess"] = "none"
    report["t2v"], report["v2t"] = raw["t2v"], raw["v2t"]
    if cfg.eval.postprocess != "none":
        sim_pp, label = _postprocess(cfg, model, sim, videos, num_videos, device)
        pp = retrieval_metrics(sim_pp, text_to_video, mode=cfg.eval.mode, failed_videos=failed_idx)
        report["postprocess"] = label
        report["raw"] = {"t2v": raw["t2v"], "v2t": raw["v2t"]}
        report["t2v"], report["v2t"] = pp["t2v"], pp["v2t"]
    report["timing_s"] = {"videos": round(t_video - start, 3), "texts_and_similarity": round(t_sim - t_video, 3),
                          "total": round(time.time() - start, 3)}
    report.update(_peak_memory_mb(device))
    return (report, sim) if return_similarity else report


def run_evaluation(cfg: DictConfig, checkpoint: Optional[str] = None, embeddings: Optional[str] = None,
                   output: Optional[str] = None, device: Optional[str] = None) -> Tuple[Dict[str, Any], Path]:
    """What ``tools/eval_retrieval.py`` does: build the model, evaluate, write ``metrics.json``.

    Args:
        cfg: resolved config.
        checkpoint: vidclip checkpoint (run dir, step dir or model.safetensors); default ``model.pretrained``.
        embeddings: directory written by extraction, used instead of encoding the videos.
        output: metrics.json path (default ``eval.output`` or ``<train.output_dir>/metrics.json``).
        device: torch device name (default: cuda if available, else cpu).

    Returns:
        ``(report, path of the metrics.json written)``.
    """
    from ..models.factory import create_model

    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(output or cfg.eval.output or Path(cfg.train.output_dir) / "metrics.json")
    ensure_writable_dir(out.parent, "eval.output (or --output) folder")
    model = create_model(cfg.model, pretrained=checkpoint or cfg.model.pretrained).to(torch_device)
    report = evaluate(cfg, model, torch_device, embeddings=embeddings)
    report["checkpoint"] = checkpoint
    report["embeddings"] = embeddings
    report["config"] = to_container(cfg)
    atomic_write_json(out, report)
    return report, out
