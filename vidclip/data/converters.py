"""Official annotation files of MSR-VTT, MSVD, DiDeMo and ActivityNet Captions -> ``VideoRecord`` lists (pure
parsing, no disk scans).

Every reader raises ``DataListError`` naming the file (and row or key) when a file does not have the expected layout.
Where a video lives on disk is decided by the caller through ``path_for(video_id, raw_name) -> relative path``.

Formats (shared/docs/landscape.md §4.5, methods.md §1.2-1.4):
- MSR-VTT ``MSRVTT_data.json``: ``{"videos": [{"video_id", "split", ...}], "sentences": [{"video_id", "caption",
  "sen_id"}]}``; ``MSRVTT_train.{9k,7k}.csv``: header ``video_id``; ``MSRVTT_JSFUSION_test.csv``: header
  ``key,vid_key,video_id,sentence`` (1k-A, one caption per video).
- MSVD ``raw-captions.pkl`` (``{id: [[token, ...], ...]}``, tokens joined with " ") or ``captions_msvd.json``
  (``{id: [caption, ...]}``); ``{train,val,test}_list.txt``: one id per line.
- DiDeMo ``{split}_data.json``: ``[{"annotation_id", "description", "video", "times": [[s, e], ...]}]`` with ``times``
  in 5-second chunks (one pair per annotator); ``{split}_list.txt``: video file names (odd or missing extensions).
- ActivityNet Captions ``{train,val_1,val_2}.json``: ``{"v_<id>": {"duration", "timestamps": [[s, e], ...],
  "sentences": [...]}}`` (seconds); CLIP4Clip id lists ``{train,val}_ids.json``: a JSON list of ``v_<id>``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import pickle
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import DataListError
from .lists import VideoRecord

PathFor = Callable[[str, str | None], str]
DIDEMO_CHUNK_SECONDS = 5.0
MSRVTT_HOLDOUT_SALT = "vidclip-msrvtt-val-holdout-v1"


def default_path_for(ext: str) -> PathFor:
    """``path_for`` that names every video ``<video_id><ext>`` (ignores the raw name)."""
    return lambda video_id, raw_name=None: f"{video_id}{ext}"


# ------------------------------------------------------------------------------------------------- shared readers
def read_text_utf8(path: Path) -> str:
    """A file's text; a missing file or one that is not UTF-8 raises ``DataListError`` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataListError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); re-download it or re-save it "
                            "as UTF-8") from exc
    except OSError as exc:
        raise DataListError(f"{path}: cannot read ({exc.strerror or exc}); check the path") from exc


def read_id_list(path: Path) -> list[str]:
    """Ids of a one-per-line split file (blank lines skipped); duplicates raise ``DataListError``."""
    ids = [line.strip() for line in read_text_utf8(path).splitlines() if line.strip()]
    _refuse_duplicates(ids, path)
    return ids


def _refuse_duplicates(ids: Sequence[str], path: Path) -> None:
    dup = [k for k, n in Counter(ids).items() if n > 1]
    if dup:
        raise DataListError(f"{path}: {len(dup)} id(s) listed more than once, e.g. {dup[:3]}; fix the split file")


def _load_json(path: Path):
    try:
        return json.loads(read_text_utf8(path))
    except json.JSONDecodeError as exc:
        raise DataListError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); re-download the file") from exc


def _csv_rows(path: Path, header: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV file with ``header``; a short row (a missing field would become the text "None") or extra
    fields raise ``DataListError`` naming the file and line."""
    reader = csv.DictReader(io.StringIO(read_text_utf8(path), newline=""))
    missing = [h for h in header if h not in (reader.fieldnames or [])]
    if missing:
        raise DataListError(f"{path}: header {reader.fieldnames} lacks column(s) {missing}; expected a header "
                            f"line '{','.join(header)}'")
    rows = []
    for row in reader:
        absent = [h for h in header if row.get(h) is None]
        if absent or None in row:
            what = f"no value for {absent}" if absent else f"extra fields {row[None]}"
            raise DataListError(f"{path}:{reader.line_num}: {what}; every row needs the {len(reader.fieldnames)} "
                                f"columns of the header (quote fields that contain commas)")
        rows.append(dict(row))
    return rows


# ------------------------------------------------------------------------------------------------------- MSR-VTT
def read_msrvtt_ids(path: Path) -> list[str]:
    """Video ids of ``MSRVTT_train.9k.csv`` / ``MSRVTT_train.7k.csv`` (header ``video_id``), in file order."""
    ids = [row["video_id"].strip() for row in _csv_rows(path, ["video_id"]) if row["video_id"].strip()]
    _refuse_duplicates(ids, path)
    return ids


def read_msrvtt_test_csv(path: Path) -> list[tuple[str, str]]:
    """``(video_id, sentence)`` rows of ``MSRVTT_JSFUSION_test.csv`` (1k-A), in file order."""
    rows = [(row["video_id"].strip(), row["sentence"]) for row in
            _csv_rows(path, ["key", "vid_key", "video_id", "sentence"])]
    _refuse_duplicates([vid for vid, _ in rows], path)
    return rows


def read_msrvtt_data_json(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Captions of each video (file order) and the official split of each video from ``MSRVTT_data.json``."""
    data = _load_json(path)
    if not isinstance(data, dict) or "videos" not in data or "sentences" not in data:
        raise DataListError(f"{path}: expected an object with keys 'videos' and 'sentences' (MSRVTT_data.json)")
    splits: dict[str, str] = {}
    for i, video in enumerate(data["videos"]):
        _require_keys(video, ("video_id", "split"), path, f"videos[{i}]")
        splits[str(video["video_id"])] = str(video["split"])
    captions: dict[str, list[str]] = {}
    for i, sentence in enumerate(data["sentences"]):
        _require_keys(sentence, ("video_id", "caption"), path, f"sentences[{i}]")
        captions.setdefault(str(sentence["video_id"]), []).append(str(sentence["caption"]))
    return captions, splits


def _require_keys(obj, keys: Sequence[str], path: Path, where: str) -> None:
    if not isinstance(obj, dict):
        raise DataListError(f"{path}: {where} must be an object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataListError(f"{path}: {where} lacks key(s) {missing}")


def msrvtt_test_records(rows: Sequence[tuple[str, str]], path_for: PathFor) -> list[VideoRecord]:
    """1k-A: one record per test row with its single caption."""
    return [VideoRecord(video_id=vid, path=path_for(vid, None), captions=[sentence]) for vid, sentence in rows]


def captioned_records(ids: Sequence[str], captions: dict[str, list[str]], path_for: PathFor
                      ) -> tuple[list[VideoRecord], list[str]]:
    """Records (all captions) of ``ids`` in order, and the ids that have no caption at all (left out)."""
    records, uncaptioned = [], []
    for vid in ids:
        if captions.get(vid):
            records.append(VideoRecord(video_id=vid, path=path_for(vid, None), captions=list(captions[vid])))
        else:
            uncaptioned.append(vid)
    return records, uncaptioned


def holdout_ids(ids: Sequence[str], size: int, salt: str = MSRVTT_HOLDOUT_SALT) -> list[str]:
    """A deterministic held-out subset of ``ids`` (in input order).

    The ``size`` ids with the smallest ``sha256(salt + "/" + id)`` are chosen, so the subset depends only on the ids
    themselves (not on file order, Python's hash seed or a random generator's version).
    """
    if size > len(ids):
        raise DataListError(f"cannot hold out {size} videos from a list of {len(ids)}")
    ranked = sorted(ids, key=lambda vid: hashlib.sha256(f"{salt}/{vid}".encode()).hexdigest())
    chosen = set(ranked[:size])
    return [vid for vid in ids if vid in chosen]


# --------------------------------------------------------------------------------------------------------- MSVD
class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler for plain containers only: ``raw-captions.pkl`` is a dict of lists of lists of str."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain dict/list/str data is expected")


def read_msvd_captions(path: Path) -> dict[str, list[str]]:
    """MSVD captions per video id from ``captions_msvd.json`` or ``raw-captions.pkl`` (token lists joined by " ")."""
    path = Path(path)
    if path.suffix == ".pkl":
        try:
            with open(path, "rb") as f:
                raw = _PlainDataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise DataListError(f"{path}: not a plain pickle of {{id: [[token, ...], ...]}} ({exc})") from exc
    else:
        raw = _load_json(path)
    if not isinstance(raw, dict):
        raise DataListError(f"{path}: expected a mapping video_id -> captions, got {type(raw).__name__}")
    captions: dict[str, list[str]] = {}
    for vid, items in raw.items():
        if not isinstance(items, list):
            raise DataListError(f"{path}: captions of '{vid}' must be a list, got {type(items).__name__}")
        captions[str(vid)] = [" ".join(map(str, c)) if isinstance(c, (list, tuple)) else str(c) for c in items]
    return captions


# ------------------------------------------------------------------------------------------------------- DiDeMo
def strip_video_extension(name: str) -> str:
    """DiDeMo video name without its file extension and trailing dots (``a.mov``, ``a.mp4``, ``a.`` -> ``a``)."""
    name = name.strip()
    base, dot, ext = name.rpartition(".")
    if dot and base and ext.isalnum() and len(ext) <= 5:
        name = base
    return name.rstrip(".")


def moment_seconds(times: Sequence[Sequence[int]]) -> tuple[float, float]:
    """(start, end) seconds of a DiDeMo moment from its annotators' ``[first_chunk, last_chunk]`` pairs.

    Aggregation: the most common pair among the annotators, ties broken by the first annotator giving one of the
    tied pairs; chunk ``k`` covers seconds ``[5k, 5(k+1))``.
    """
    pairs = [(int(s), int(e)) for s, e in times]
    if not pairs:
        raise ValueError("a moment needs at least one [start_chunk, end_chunk] pair")
    counts = Counter(pairs)
    best = max(counts.values())
    first, last = next(p for p in pairs if counts[p] == best)
    return first * DIDEMO_CHUNK_SECONDS, (last + 1) * DIDEMO_CHUNK_SECONDS


def read_didemo_data(path: Path) -> list[dict]:
    """Moments of a DiDeMo ``{split}_data.json``, validated (``description``, ``video``, ``times``)."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataListError(f"{path}: expected a list of moments, got {type(data).__name__}")
    for i, moment in enumerate(data):
        _require_keys(moment, ("description", "video", "times"), path, f"entry {i}")
        times = moment["times"]
        if not times or not all(isinstance(t, (list, tuple)) and len(t) == 2 for t in times):
            raise DataListError(f"{path}: entry {i} ('{moment['video']}'): 'times' must be [[start, end], ...] "
                                f"chunk pairs, got {times!r}")
    return data


def didemo_records(moments: Sequence[dict], list_names: Sequence[str], path_for: PathFor
                   ) -> tuple[list[VideoRecord], list[str]]:
    """Paragraph records for the videos of a split list, and the list names with no moment in the json.

    Names are matched without extension (``strip_video_extension``), so a video annotated under both ``x.mov`` and
    ``x.mp4`` is one video. Its paragraph joins every description with a single space in file order; ``sentences``
    keep each description with its moment in seconds (``moment_seconds``). ``start``/``end`` stay None: the
    whole-video window of the paragraph protocol ([0, 31] s in CLIP4Clip) is an evaluation setting.
    """
    by_video: dict[str, list[dict]] = {}
    for moment in moments:
        by_video.setdefault(strip_video_extension(str(moment["video"])), []).append(moment)
    records, unannotated, seen = [], [], set()
    for raw_name in list_names:
        vid = strip_video_extension(raw_name)
        if vid in seen:
            continue
        seen.add(vid)
        if vid not in by_video:
            unannotated.append(raw_name)
            continue
        sentences = []
        for moment in by_video[vid]:
            start, end = moment_seconds(moment["times"])
            sentences.append({"text": str(moment["description"]), "start": start, "end": end})
        paragraph = " ".join(s["text"] for s in sentences)
        records.append(VideoRecord(video_id=vid, path=path_for(vid, raw_name), captions=[paragraph],
                                   sentences=sentences))
    return records, unannotated


# -------------------------------------------------------------------------------------------------- ActivityNet
ACTIVITYNET_ID_PREFIX = "v_"  # caption-file keys are "v_<YouTube id>"; CLIP4Clip names its video files without it


def read_json_id_list(path: Path) -> list[str]:
    """Ids of a JSON list file (ActivityNet ``train_ids.json`` / ``val_ids.json``); duplicates raise."""
    data = _load_json(path)
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise DataListError(f"{path}: expected a JSON list of video id strings")
    ids = [v.strip() for v in data if v.strip()]
    _refuse_duplicates(ids, path)
    return ids


def read_activitynet_captions(path: Path) -> dict[str, dict]:
    """``{video_id: {"duration", "timestamps", "sentences"}}`` of an ActivityNet Captions ``train.json`` /
    ``val_1.json`` / ``val_2.json``, validated (one ``[start, end]`` pair per sentence)."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DataListError(f"{path}: expected an object video_id -> {{duration, timestamps, sentences}}, got "
                            f"{type(data).__name__}")
    for vid, entry in data.items():
        _require_keys(entry, ("duration", "timestamps", "sentences"), path, f"video '{vid}'")
        sentences, stamps = entry["sentences"], entry["timestamps"]
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
            raise DataListError(f"{path}: video '{vid}': 'sentences' must be a non-empty list of strings")
        if not isinstance(stamps, list) or len(stamps) != len(sentences) or not all(
                isinstance(t, (list, tuple)) and len(t) == 2 for t in stamps):
            raise DataListError(f"{path}: video '{vid}': 'timestamps' must hold one [start, end] pair per sentence "
                                f"({len(sentences)} sentences, timestamps {stamps!r})")
    return data


def activitynet_records(captions: dict[str, dict], ids: Sequence[str], path_for: PathFor
                        ) -> tuple[list[VideoRecord], list[str]]:
    """Paragraph records of the ``ids`` (in that order) found in the caption file, and the ids that are not in it.

    The paragraph (the record's single caption) joins the video's sentences, each stripped, with one space: the same
    open_clip / CLIP4Clip tokens as CLIP4Clip's ``" ".join(sentences)`` (the tokenizer collapses whitespace, and the
    files start most sentences with a space). ``sentences`` keep each sentence with its timestamps in seconds as
    given (real files: a few end after ``duration`` or start after they end); ``start``/``end`` stay None: the
    target is the whole video (CLIP4Clip reads 0 to ceil(duration)). ``meta.duration``: the file's duration (s).
    """
    records, uncaptioned = [], []
    for vid in ids:
        entry = captions.get(vid)
        if entry is None:
            uncaptioned.append(vid)
            continue
        sentences = [{"text": str(text).strip(), "start": float(s), "end": float(e)}
                     for text, (s, e) in zip(entry["sentences"], entry["timestamps"])]
        paragraph = " ".join(s["text"] for s in sentences)
        records.append(VideoRecord(video_id=vid, path=path_for(vid, None), captions=[paragraph], sentences=sentences,
                                   meta={"duration": float(entry["duration"])}))
    return records, uncaptioned
