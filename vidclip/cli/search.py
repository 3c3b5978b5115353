"""``vidclip search`` / ``tools/search.py --index DIR --query "text" [--k 10] [--rerank] [--html FILE] [--json]``.

See :mod:`vidclip.engine.search` for the two stages (FAISS, then re-ranking by the head).
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from ..engine.search import INDEX_TYPES
from ..errors import ConfigError
from . import common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search", description="Text-to-video search over extracted embeddings.")
    parser.add_argument("--index", required=True, help="directory written by tools/extract_embeddings.py")
    parser.add_argument("--query", required=True, action="append", help="text query (repeat for several)")
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument("--rerank", action="store_true", help="re-score the top candidates with the model's head")
    parser.add_argument("--rerank-k", type=int, default=100, help="candidates re-scored with --rerank")
    parser.add_argument("--index-type", default="flat", choices=INDEX_TYPES, help="FAISS index (flat = exact)")
    parser.add_argument("--checkpoint", help="where the recorded weights now live (must be the same weights: their "
                        "SHA-256 is checked); default: the checkpoint recorded at extraction")
    parser.add_argument("--html", help="write a self-contained results page with thumbnails")
    parser.add_argument("--thumbnails", type=int, default=5, help="thumbnails per hit in the HTML page")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def format_hits(results: dict, reranked: bool) -> str:
    """One block per query: rank, score, video id and path of each hit."""
    lines = []
    for query, hits in results.items():
        lines.append(f"query: {query}" + ("  (re-ranked)" if reranked else ""))
        lines += [f"  {h.rank:>3}  {h.score:8.4f}  {h.video_id:<30} {h.path}" for h in hits]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    common.setup_logging(level=logging.WARNING)
    args = parse_args(argv)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..engine.search import VideoSearcher
    from ..engine.search_html import write_results_page

    if args.k < 1 or (args.rerank and args.rerank_k < 1):
        raise ConfigError(f"--k {args.k} / --rerank-k {args.rerank_k}: must be at least 1")
    searcher = VideoSearcher(args.index, args.index_type, checkpoint=args.checkpoint)
    results = {q: searcher.search(q, args.k, args.rerank, args.rerank_k) for q in args.query}
    if args.json:
        print(json.dumps({q: [h.__dict__ for h in hits] for q, hits in results.items()}, indent=2))
    else:
        print(format_hits(results, args.rerank))
    if args.html:
        write_results_page(Path(args.html), results, searcher.resolve_path, args.thumbnails, args.rerank)
        if not args.json:
            print(f"results page: {args.html}")
    return 0
