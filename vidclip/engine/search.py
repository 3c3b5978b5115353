"""Text-to-video search behind ``tools/search.py --index DIR --query "text" [--k 10] [--rerank] [--html F] [--json]``.

Stage 1: a FAISS index over the cached pooled embeddings (exact inner product by default; ``--index-type`` picks an
approximate one for collections in the millions). Stage 2 (``--rerank``): the model's head re-scores the top
``--rerank-k`` candidates on their cached frame/token features (GLSCL, UCoFiA and Norton need this; for the ViFi head
it reproduces the coarse score). The index is saved next to the embeddings and rebuilt when the manifest changes.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import load_config
from ..errors import ConfigError, IntegrityError
from ..features import l2_normalize
from ..identity import IDENTITY_VERSION, sha256_file, sha256_json
from ..io import atomic_write, atomic_write_json
from .extract import MANIFEST, CachedEmbeddings, load_embeddings, load_recorded_model, read_extraction_info

_logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "sq8", "fp16", "hnsw", "ivf")


@dataclass
class Hit:
    rank: int
    score: float
    video_id: str
    path: str
    coarse_score: float


def build_faiss_index(embeddings: np.ndarray, index_type: str = "flat", nlist: int | None = None):
    """A FAISS inner-product index over L2-normalised float32 rows.

    Args:
        embeddings: (N, D) float32, already normalised (inner product = cosine).
        index_type: flat (exact) | fp16 / sq8 (scalar-quantised, exact scan of compressed codes) | hnsw | ivf.
        nlist: IVF cells (default about 4 * sqrt(N)).
    """
    import faiss

    n, d = embeddings.shape
    if index_type == "flat":
        index = faiss.IndexFlatIP(d)
    elif index_type in ("fp16", "sq8"):
        qtype = faiss.ScalarQuantizer.QT_fp16 if index_type == "fp16" else faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexScalarQuantizer(d, qtype, faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    elif index_type == "ivf":
        cells = nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings)
        index.nprobe = max(1, cells // 16)
    else:
        raise ValueError(f"unknown index type '{index_type}'. Valid: {', '.join(INDEX_TYPES)}")
    index.add(embeddings)
    return index


def _index_identity(directory: Path, index_type: str, rows: int) -> dict:
    """What a cached index was built from: the extraction's file checksums (manifest + shards), type and rows."""
    files = read_extraction_info(directory).get("files") or {"manifest": sha256_file(directory / MANIFEST)}
    return {"format": "vidclip-index", "version": IDENTITY_VERSION, "extraction": sha256_json(files),
            "index_type": index_type, "rows": int(rows)}


def _read_cached_index(path: Path, stamp: Path, identity: dict):
    """The cached index when its stamp matches ``identity`` and its checksum, else None (logged)."""
    import faiss

    if not (path.is_file() and stamp.is_file()):
        return None
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        if recorded.get("identity") != identity:
            _logger.info("%s was built from other embeddings: rebuilding it", path)
            return None
        if recorded.get("sha256") != sha256_file(path):
            raise ValueError("SHA-256 differs from its stamp")
        return faiss.read_index(str(path))
    except (OSError, ValueError, RuntimeError, AttributeError) as exc:
        _logger.warning("%s: unreadable or corrupt index cache (%s): rebuilding it", path, exc)
        return None


def load_or_build_index(directory: Path, pooled: np.ndarray, index_type: str):
    """Reuse ``DIR/index_<type>.faiss`` when its stamp names the same embeddings, otherwise build and save it."""
    import faiss

    path = directory / f"index_{index_type}.faiss"
    stamp = path.with_suffix(".json")
    identity = _index_identity(directory, index_type, pooled.shape[0])
    index = _read_cached_index(path, stamp, identity)
    if index is not None:
        return index
    index = build_faiss_index(pooled, index_type)
    try:
        stamp.unlink(missing_ok=True)  # the old stamp must never vouch for the new file
        atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))
        atomic_write_json(stamp, {"identity": identity, "sha256": sha256_file(path)})
    except (OSError, RuntimeError) as exc:  # read-only index dir: search still works, index not cached
        _logger.warning("could not save the index in %s (%s); it will be rebuilt next time", directory, exc)
    return index


class VideoSearcher:
    """Loads extracted embeddings, the model that made them (hash-checked), and answers text queries."""

    def __init__(self, directory: str, index_type: str = "flat", device: str = "cpu",
                 checkpoint: str | None = None):
        self.directory = Path(directory)
        info = read_extraction_info(self.directory)
        self.cfg = load_config(self.directory / "config.yaml")
        self.videos_root = info.get("videos_root", "")
        self.device = torch.device(device)
        self.cache: CachedEmbeddings = load_embeddings(str(self.directory))
        if not self.cache.video_ids:
            raise IntegrityError(f"{self.directory}: no successfully extracted videos to search (see the errors in "
                                 f"{self.directory / MANIFEST})")
        self.model = load_recorded_model(self.directory, self.cfg.model, checkpoint).to(self.device).eval()
        pooled = l2_normalize(self.cache.features["pooled"].float()).numpy().astype(np.float32)
        self.index = load_or_build_index(self.directory, pooled, index_type)

    @torch.no_grad()
    def search(self, query: str, k: int = 10, rerank: bool = False, rerank_k: int = 100) -> list[Hit]:
        """Top-``k`` videos for ``query``; with ``rerank`` the head re-scores the top ``rerank_k`` first."""
        from ..tokenizer import tokenize

        if k < 1 or (rerank and rerank_k < 1):
            raise ConfigError(f"--k {k}" + (f" --rerank-k {rerank_k}" if rerank else "") + ": must be at least 1")

        tokens = tokenize([query], self.cfg.model.context_length).to(self.device)
        text_feats = self.model.encode_text(tokens)
        q = l2_normalize(text_feats["pooled"].float()).cpu().numpy().astype(np.float32)
        depth = min(len(self.cache.video_ids), max(k, rerank_k if rerank else k))
        coarse, rows = self.index.search(q, depth)
        rows, coarse = rows[0][rows[0] >= 0], coarse[0][rows[0] >= 0]
        scores = coarse
        if rerank:
            take = torch.as_tensor(rows, dtype=torch.long)
            cand = {key: v.index_select(0, take).float().to(self.device) for key, v in self.cache.features.items()}
            scores = self.model.similarity(text_feats, cand)[0].float().cpu().numpy()
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(rank=r + 1, score=float(scores[i]), video_id=self.cache.video_ids[rows[i]],
                    path=self.cache.paths[rows[i]], coarse_score=float(coarse[i])) for r, i in enumerate(order)]

    def resolve_path(self, hit: Hit) -> Path:
        path = Path(hit.path)
        return path if path.is_absolute() else Path(self.videos_root) / path

