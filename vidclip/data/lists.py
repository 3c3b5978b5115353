"""The unified data list: JSONL, one video per line (architecture.md §3).

``{"video_id": str, "path": str (relative to the videos root), "captions": [str, ...], "start": float|null,
"end": float|null}``; paragraph datasets (DiDeMo) add ``"sentences": [{"text", "start", "end"}, ...]``; any extra
information goes under ``"meta": {...}``.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

from ..errors import DataListError
from ..io import atomic_write

_logger = logging.getLogger(__name__)
REQUIRED_KEYS = ("video_id", "path", "captions")


@dataclass
class VideoRecord:
    """One video of a data list."""

    video_id: str
    path: str  # relative to the videos root
    captions: list[str] = field(default_factory=list)
    start: float | None = None  # seconds; None = from the beginning
    end: float | None = None  # seconds; None = to the end
    sentences: list[dict[str, Any]] | None = None  # paragraph datasets: [{"text", "start", "end"}]
    meta: dict[str, Any] | None = None  # anything else (e.g. the synthetic motion labels)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v is not None or k in ("start", "end")}


def _parse_line(line: str, path: Path, lineno: int) -> VideoRecord:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataListError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(obj, dict):
        raise DataListError(f"{path}:{lineno}: each line must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise DataListError(f"{path}:{lineno}: missing key(s) {', '.join(missing)}")
    captions = obj["captions"]
    if isinstance(captions, str) or not isinstance(captions, list):
        raise DataListError(f"{path}:{lineno}: 'captions' must be a list of strings")
    unknown = set(obj) - {f for f in VideoRecord.__dataclass_fields__}
    if unknown:
        raise DataListError(f"{path}:{lineno}: unknown key(s) {', '.join(sorted(unknown))}; put extra information "
                            "under \"meta\"")
    for key in ("start", "end"):
        value = obj.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataListError(f"{path}:{lineno}: '{key}' must be a number of seconds or null, got {value!r}")
    sentences = obj.get("sentences")
    if sentences is not None and not (isinstance(sentences, list)
                                      and all(isinstance(s, dict) and "text" in s for s in sentences)):
        raise DataListError(f"{path}:{lineno}: 'sentences' must be a list of {{\"text\", \"start\", \"end\"}} objects")
    return VideoRecord(video_id=str(obj["video_id"]), path=str(obj["path"]), captions=[str(c) for c in captions],
                       start=obj.get("start"), end=obj.get("end"), sentences=obj.get("sentences"),
                       meta=obj.get("meta"))


def read_list(path: Union[str, Path]) -> list[VideoRecord]:
    """Read a JSONL data list; malformed lines and duplicate ids raise ``DataListError`` with file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataListError(f"data list not found: {path}. Write one with tools/prepare_data.py or "
                            "tools/make_synthetic.py")
    records: list[VideoRecord] = []
    first_line: dict[str, int] = {}
    empty = 0
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        lineno = exc.object[: exc.start].count(b"\n") + 1
        raise DataListError(f"{path}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start}); data lists are UTF-8 "
                            "JSONL: re-save the file as UTF-8") from exc
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside a caption
        if not line.strip():
            continue
        record = _parse_line(line, path, lineno)
        if record.video_id in first_line:
            raise DataListError(f"{path}:{lineno}: duplicate video_id '{record.video_id}' (first on line "
                                f"{first_line[record.video_id]}); merge their captions into one line")
        first_line[record.video_id] = lineno
        empty += sum(1 for c in record.captions if not c.strip())
        records.append(record)
    if empty:
        _logger.warning("%s: %d empty or whitespace-only caption(s) (kept; they encode as SOT+EOT)", path, empty)
    return records


def write_list(records: Iterable[VideoRecord], path: Union[str, Path]) -> Path:
    """Write records as JSONL atomically (a crash never leaves a half-written list)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")

    return atomic_write(path, write)


def resolve_video_path(videos_root: Union[str, Path], record: VideoRecord) -> Path:
    """Absolute path of a record's video under ``videos_root``.

    The check is lexical (``..`` and absolute paths are refused) and does not follow symbolic links, so a videos
    root whose files are links to another disk keeps working.

    Raises:
        DataListError: the record's path is empty, absolute, or climbs out of the videos root.
    """
    root = Path(os.path.abspath(videos_root or "."))
    rel = str(record.path)
    candidate = Path(os.path.normpath(root / rel))
    if not rel.strip() or os.path.isabs(rel) or root not in candidate.parents:
        raise DataListError(f"video '{record.video_id}': path {rel!r} points outside the videos root {root}; "
                            "data lists hold paths relative to data.videos_root (no absolute paths, no '..')")
    return candidate
