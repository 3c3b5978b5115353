"""``vidclip eval`` / ``tools/eval_retrieval.py --config C [--checkpoint P | --embeddings DIR] [key=value ...]``.

Prints the metrics table and writes ``metrics.json``; see :mod:`vidclip.engine.evaluate` for the protocol.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from . import common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eval_retrieval", description="Retrieval evaluation of a model or of "
                                     "cached embeddings; prints a metrics table and writes metrics.json.")
    parser.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    parser.add_argument("--checkpoint", help="vidclip checkpoint (run dir, step dir or model.safetensors); with "
                        "--embeddings it must be the model recorded with them")
    parser.add_argument("--embeddings", help="directory written by tools/extract_embeddings.py; texts are encoded "
                        "with the model recorded there")
    parser.add_argument("--output", help="metrics.json path (default: eval.output or <train.output_dir>/metrics.json)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def format_report(report: dict[str, Any], out: Any) -> str:
    """The console summary: title, the (raw and post-processed) metric tables, counts, time and memory."""
    from ..metrics import format_metrics_table

    lines = [f"{report['config']['data']['dataset']} {report['split']} | head {report['head']} | "
             f"post-processing {report['postprocess']}"]
    if "raw" in report:
        lines += ["without post-processing:\n" + format_metrics_table(report["raw"]), f"with {report['postprocess']}:"]
    lines.append(format_metrics_table({"t2v": report["t2v"], "v2t": report["v2t"]}))
    lines.append(f"videos {report['num_videos']} (failed {report['num_failed_videos']}), texts {report['num_texts']}, "
                 f"{report['timing_s']['total']:.1f} s (similarity {report['similarity_us_per_pair']:.2f} us/pair), "
                 f"peak RSS {report['peak_rss_mb']:.0f} MB -> {out}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    common.setup_logging()
    args = parse_args(argv)
    from ..config import load_config
    from ..engine.evaluate import run_evaluation


    def body() -> int:
        cfg = load_config(args.config, args.overrides)
        report, out = run_evaluation(cfg, checkpoint=args.checkpoint, embeddings=args.embeddings,
                                     output=args.output, device=args.device)
        print(format_report(report, out))
        return 0

    return body()
