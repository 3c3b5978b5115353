"""A self-contained HTML results page: for each query, its hits with rank, score, id, path and a thumbnail strip.

Thumbnails are decoded with vidclip's own reader (uniformly spaced frames) and embedded as base64 JPEG, so the page
needs no server and no files beside it.
"""
from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
from PIL import Image

from ..errors import VideoDecodeError

_logger = logging.getLogger(__name__)
THUMB_HEIGHT = 96

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; background: #fafafa; color: #222; }
h2 { margin-top: 2em; } .hit { display: flex; align-items: center; gap: 1em; padding: .5em; border-bottom: 1px solid #ddd; }
.meta { width: 22em; font-size: 0.9em; } .meta code { font-size: 0.85em; color: #555; word-break: break-all; }
.rank { font-size: 1.4em; font-weight: bold; width: 2.5em; text-align: right; }
.strip img { height: %dpx; margin-right: 2px; border-radius: 3px; } .error { color: #b00; }
""" % THUMB_HEIGHT


def thumbnail_strip(path: Path, count: int = 5) -> List[str]:
    """Base64 JPEGs of ``count`` uniformly spaced frames of the video at ``path``."""
    from ..data.readers import open_video

    reader = open_video(str(path))
    n = reader.num_frames
    indices = np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(np.int64))
    frames = reader.get_frames(indices)
    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        image.thumbnail((THUMB_HEIGHT * 4, THUMB_HEIGHT))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=80)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def _hit_html(hit, resolve_path: Callable, count: int) -> str:
    try:
        imgs = "".join(f'<img src="data:image/jpeg;base64,{b64}" alt="frame">'
                       for b64 in thumbnail_strip(resolve_path(hit), count))
    except (VideoDecodeError, OSError) as exc:
        imgs = f'<span class="error">no thumbnails: {html.escape(str(exc))}</span>'
    return (f'<div class="hit"><div class="rank">{hit.rank}</div><div class="meta"><b>{html.escape(hit.video_id)}'
            f'</b><br>score {hit.score:.4f} (coarse {hit.coarse_score:.4f})<br><code>{html.escape(hit.path)}</code>'
            f'</div><div class="strip">{imgs}</div></div>')


def write_results_page(out: Path, results: Dict[str, list], resolve_path: Callable, thumbnails: int = 5,
                       reranked: bool = False) -> Path:
    """Write the page for ``results`` ({query: [Hit, ...]}) to ``out`` and return its path."""
    sections = []
    for query, hits in results.items():
        body = "".join(_hit_html(h, resolve_path, thumbnails) for h in hits)
        note = " (re-ranked by the head)" if reranked else ""
        sections.append(f"<h2>query: “{html.escape(query)}”{note}</h2>{body}")
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>vidclip search</title>'
            f"<style>{_STYLE}</style></head><body><h1>vidclip search results</h1>{''.join(sections)}</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
