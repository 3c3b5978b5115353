"""Official annotation files -> unified JSONL data lists (``tools/prepare_data.py`` / ``vidclip prepare-data``).

``prepare_data.py {msrvtt,msvd,didemo,activitynet} --annotations DIR --videos DIR --out DIR [--ext .mp4]`` converts
every split whose files it finds (looking in ``DIR/<dataset>``, ``DIR/splits/<dataset>`` and ``DIR``), writes
``<out>/<dataset>_<split>.jsonl``, and checks what it read against ``data_lists/expected.json`` (shipped in the
package as ``vidclip/resources/data_lists/expected.json``, see :data:`DEFAULT_EXPECTED`): each official
file's sha256 / git blob id and each split's video and caption counts. Videos listed but absent under ``--videos``
are reported (count, first names, full list in ``<out>/missing_<dataset>.txt``) and kept in the lists unless
``--drop-missing`` is given; splits whose files are absent are named with the file they need.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import VIDEO_EXTENSIONS
from ..errors import DataListError
from ..registry import DATASETS as DATASET_CONVERTERS
from ..resources import packaged_path
from . import converters as cv
from .lists import VideoRecord, write_list

_logger = logging.getLogger(__name__)

EXTRA_VIDEO_EXTENSIONS = (".wmv", ".mts", ".m2ts", ".3g2")  # DiDeMo originals beyond constants.VIDEO_EXTENSIONS
DEFAULT_EXPECTED = packaged_path("data_lists", "expected.json")  # data_lists/expected.json links here
MSRVTT_VAL_SIZE = 500
ACTIVITYNET_VAL_SIZE = 500
ACTIVITYNET_HOLDOUT_SALT = "vidclip-activitynet-val-holdout-v1"
ACTIVITYNET_ID_LISTS = {"train": "train_ids.json", "val_1": "val_ids.json", "val_2": "val_ids.json"}  # CLIP4Clip
ACTIVITYNET_CE_LISTS = {"train": "train_list.txt", "val_1": "val_1_list.txt", "val_2": "val_2_list.txt"}
MSRVTT_FULL_SPLITS = {"train": "train_full", "validate": "val_full", "test": "test_full"}
SHOW = 5  # names shown in log messages before "..."


# --------------------------------------------------------------------------------------------------- videos on disk
class VideoIndex:
    """Video files under a root, by name without extension: decides each record's path and whether it exists."""

    def __init__(self, videos_root: Path, ext: str | None, default_ext: str):
        self.root, self.ext, self.default_ext = Path(videos_root), ext, default_ext
        self.files: set = set()
        self.by_stem: dict[str, list[str]] = {}
        if not self.root.is_dir():
            _logger.warning("videos folder %s does not exist: every listed video will be reported missing", self.root)
            return
        suffixes = {e.lower() for e in VIDEO_EXTENSIONS + EXTRA_VIDEO_EXTENSIONS}
        for folder, _, names in os.walk(self.root):
            for name in names:
                suffix = os.path.splitext(name)[1].lower()
                if name.startswith(".") or (suffix not in suffixes and suffix not in ("", ".")):
                    continue
                rel = os.path.relpath(os.path.join(folder, name), self.root).replace(os.sep, "/")
                self.files.add(rel)
                self.by_stem.setdefault(cv.strip_video_extension(name), []).append(rel)
        _logger.info("indexed %d video files under %s", len(self.files), self.root)

    def _preference(self, rel: str) -> tuple[int, int, str]:
        suffix = os.path.splitext(rel)[1].lower()
        order = list(VIDEO_EXTENSIONS + EXTRA_VIDEO_EXTENSIONS)
        return (order.index(suffix) if suffix in order else len(order), rel.count("/"), rel)

    def path_for(self, video_id: str, raw_name: str | None = None) -> str:
        """Relative path of a video: the file found on disk if any (``--ext`` restricts the choice), else a default."""
        found = self.by_stem.get(video_id, [])
        if self.ext:
            found = [rel for rel in found if rel.lower().endswith(self.ext.lower())]
        if found:
            return min(found, key=self._preference)
        if self.ext:
            return f"{video_id}{self.ext}"
        if raw_name and cv.strip_video_extension(raw_name) != raw_name.strip().rstrip("."):
            return raw_name.strip()  # DiDeMo: the original file name, extension included
        return f"{video_id}{self.default_ext}"

    def exists(self, rel: str) -> bool:
        return rel in self.files


# --------------------------------------------------------------------------------------------------- result types
@dataclass
class Converted:
    """What a converter produced: records per split, split-list sizes, the splits it could not make and why."""

    splits: dict[str, list[VideoRecord]] = field(default_factory=dict)
    list_sizes: dict[str, int] = field(default_factory=dict)
    missing_splits: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # official file name -> where it was found
    problems: list[str] = field(default_factory=list)  # disagreements with the official facts
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> extra counts checked like list_sizes
    notes: list[str] = field(default_factory=list)  # expected differences worth showing (e.g. ids left out)


@dataclass
class PrepareReport:
    """Outcome of ``prepare``: written lists with their counts, missing splits, failed checks, missing videos."""

    dataset: str
    written: dict[str, dict[str, object]] = field(default_factory=dict)
    missing_splits: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    missing_videos: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- file discovery
def find_annotation(annotations: Path, dataset: str, name: str) -> Path | None:
    """First ``name`` found in ``annotations/<alias>``, ``annotations/splits/<alias>`` or ``annotations``."""
    aliases = DATASET_CONVERTERS.info(dataset, "folder_aliases", (dataset,))
    folders = [annotations / a for a in aliases]
    folders += [annotations / "splits" / a for a in aliases] + [annotations]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    return None


def _needs(names: Sequence[str], annotations: Path) -> str:
    return f"needs {' + '.join(names)} (not found under {annotations})"


# --------------------------------------------------------------------------------------------------- converters
@DATASET_CONVERTERS.register("msrvtt", default_ext=".mp4",
                             folder_aliases=("msrvtt", "msrvtt_data", "MSRVTT", "MSR-VTT"))
def convert_msrvtt(annotations: Path, index: VideoIndex, val_size: int = MSRVTT_VAL_SIZE) -> Converted:
    """1k-A test from the JSFusion csv; 9k / 7k / held-out val / full splits from MSRVTT_data.json + id csvs."""
    out = Converted()
    names = ("MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv", "MSRVTT_data.json")
    out.files = {n: p for n in names if (p := find_annotation(annotations, "msrvtt", n)) is not None}
    test_ids: list[str] = []
    if "MSRVTT_JSFUSION_test.csv" in out.files:
        rows = cv.read_msrvtt_test_csv(out.files["MSRVTT_JSFUSION_test.csv"])
        test_ids = [vid for vid, _ in rows]
        out.splits["test_1ka"] = cv.msrvtt_test_records(rows, index.path_for)
    else:
        out.missing_splits["test_1ka"] = _needs(["MSRVTT_JSFUSION_test.csv"], annotations)
    ids = {k: cv.read_msrvtt_ids(out.files[f"MSRVTT_train.{k}.csv"]) for k in ("9k", "7k")
           if f"MSRVTT_train.{k}.csv" in out.files}
    if "9k" in ids and test_ids:
        overlap = set(ids["9k"]) & set(test_ids)
        if overlap:
            out.problems.append(f"{len(overlap)} video(s) are both in MSRVTT_train.9k.csv and the 1k-A test csv, "
                                f"e.g. {sorted(overlap)[:SHOW]}")
    if "MSRVTT_data.json" not in out.files:
        why = _needs(["MSRVTT_data.json"], annotations) + ", which holds the training captions"
        for split in ("train_9k", "train_7k", "val_9k_holdout", "train_9k_minus_val", *MSRVTT_FULL_SPLITS.values()):
            out.missing_splits[split] = why
        return out
    captions, official = cv.read_msrvtt_data_json(out.files["MSRVTT_data.json"])
    for key, csv_name in (("9k", "MSRVTT_train.9k.csv"), ("7k", "MSRVTT_train.7k.csv")):
        if key not in ids:
            out.missing_splits[f"train_{key}"] = _needs([csv_name], annotations)
            continue
        out.splits[f"train_{key}"] = _captioned(ids[key], captions, index, csv_name, out)
    if "9k" in ids:
        held = set(cv.holdout_ids(ids["9k"], val_size))
        out.splits["val_9k_holdout"] = [r for r in out.splits["train_9k"] if r.video_id in held]
        out.splits["train_9k_minus_val"] = [r for r in out.splits["train_9k"] if r.video_id not in held]
    else:
        for split in ("val_9k_holdout", "train_9k_minus_val"):
            out.missing_splits[split] = _needs(["MSRVTT_train.9k.csv"], annotations)
    for official_name, split in MSRVTT_FULL_SPLITS.items():
        split_ids = [vid for vid, s in official.items() if s == official_name]
        out.splits[split] = _captioned(split_ids, captions, index, "MSRVTT_data.json", out)
    return out


def _captioned(ids: Sequence[str], captions, index: VideoIndex, source: str, out: Converted) -> list[VideoRecord]:
    records, uncaptioned = cv.captioned_records(ids, captions, index.path_for)
    if uncaptioned:
        out.problems.append(f"{len(uncaptioned)} id(s) of {source} have no caption and were left out, e.g. "
                            f"{uncaptioned[:SHOW]}")
    return records


@DATASET_CONVERTERS.register("msvd", default_ext=".avi", folder_aliases=("msvd", "msvd_data", "MSVD"))
def convert_msvd(annotations: Path, index: VideoIndex) -> Converted:
    """train / val / test from ``{split}_list.txt`` + ``captions_msvd.json`` (or ``raw-captions.pkl``)."""
    out = Converted()
    for name in ("captions_msvd.json", "raw-captions.pkl", "train_list.txt", "val_list.txt", "test_list.txt"):
        if (path := find_annotation(annotations, "msvd", name)) is not None:
            out.files[name] = path
    caption_file = out.files.get("captions_msvd.json") or out.files.get("raw-captions.pkl")
    captions = cv.read_msvd_captions(caption_file) if caption_file else None
    for split in ("train", "val", "test"):
        list_name = f"{split}_list.txt"
        if captions is None or list_name not in out.files:
            out.missing_splits[split] = _needs([list_name, "captions_msvd.json or raw-captions.pkl"], annotations)
            continue
        ids = cv.read_id_list(out.files[list_name])
        out.list_sizes[split] = len(ids)
        out.splits[split] = _captioned(ids, captions, index, list_name, out)
    return out


@DATASET_CONVERTERS.register("didemo", default_ext=".mp4", folder_aliases=("didemo", "DiDeMo", "didemo_data"))
def convert_didemo(annotations: Path, index: VideoIndex) -> Converted:
    """Paragraph records (plus per-sentence moments) of each split with both ``{split}_data.json`` and list."""
    out = Converted()
    for split in ("train", "val", "test"):
        data_name, list_name = f"{split}_data.json", f"{split}_list.txt"
        for name in (data_name, list_name):
            if (path := find_annotation(annotations, "didemo", name)) is not None:
                out.files[name] = path
        if list_name in out.files:
            names = cv.read_id_list(out.files[list_name])
            out.list_sizes[split] = len({cv.strip_video_extension(n) for n in names})
        if data_name not in out.files or list_name not in out.files:
            out.missing_splits[split] = _needs([data_name, list_name], annotations)
            continue
        moments = cv.read_didemo_data(out.files[data_name])
        out.splits[split], unannotated = cv.didemo_records(moments, names, index.path_for)
        if unannotated:
            _logger.warning("didemo %s: %d video(s) of %s have no moment in %s and were left out, e.g. %s", split,
                            len(unannotated), list_name, data_name, unannotated[:SHOW])
    return out


@DATASET_CONVERTERS.register("activitynet", default_ext=".mp4",
                             folder_aliases=("activitynet", "ActivityNet", "activity_net", "anet"))
def convert_activitynet(annotations: Path, index: VideoIndex, val_size: int = ACTIVITYNET_VAL_SIZE) -> Converted:
    """Paragraph records of ``train`` / ``val_1`` / ``val_2`` (whichever caption files exist), each restricted to
    its id list as CLIP4Clip does, plus ``val_holdout`` / ``train_minus_val`` held out of ``train``.

    Id list of a split: the CLIP4Clip ``train_ids.json`` / ``val_ids.json`` when found, else the
    collaborative-experts ``{split}_list.txt``, else every video of the caption file. Every id list found is compared
    with its caption file and the ids on one side only are named in ``notes`` (their numbers are checked).
    """
    out = Converted()
    path_for = activitynet_path_for(index)
    for split in ACTIVITYNET_ID_LISTS:
        caption_name = f"{split}.json"
        for name in (caption_name, ACTIVITYNET_ID_LISTS[split], ACTIVITYNET_CE_LISTS[split]):
            if (path := find_annotation(annotations, "activitynet", name)) is not None:
                out.files[name] = path
        if caption_name not in out.files:
            out.missing_splits[split] = _needs([caption_name], annotations)
            continue
        captions = cv.read_activitynet_captions(out.files[caption_name])
        lists = {name: (cv.read_json_id_list if name.endswith(".json") else cv.read_id_list)(out.files[name])
                 for name in (ACTIVITYNET_ID_LISTS[split], ACTIVITYNET_CE_LISTS[split]) if name in out.files}
        for name, ids in lists.items():
            _compare_id_list(split, caption_name, captions, name, ids, out)
        if lists:
            ids = next(iter(lists.values()))
            out.list_sizes[split] = len(ids)
        else:
            ids = list(captions)
            out.notes.append(f"activitynet {split}: no id list ({ACTIVITYNET_ID_LISTS[split]} or "
                             f"{ACTIVITYNET_CE_LISTS[split]}) found: every video of {caption_name} is used")
        out.splits[split], _ = cv.activitynet_records(captions, ids, path_for)
    if "train" in out.splits:
        held = set(cv.holdout_ids([r.video_id for r in out.splits["train"]], val_size, ACTIVITYNET_HOLDOUT_SALT))
        out.splits["val_holdout"] = [r for r in out.splits["train"] if r.video_id in held]
        out.splits["train_minus_val"] = [r for r in out.splits["train"] if r.video_id not in held]
    else:
        for split in ("val_holdout", "train_minus_val"):
            out.missing_splits[split] = _needs(["train.json"], annotations)
    return out


def activitynet_path_for(index: VideoIndex) -> cv.PathFor:
    """``path_for`` finding ``v_<id>.*`` (GLSCL / UCoFiA file names) or ``<id>.*`` (CLIP4Clip's) on disk; when neither
    is there, ``v_<id>`` with the default extension."""
    prefix = cv.ACTIVITYNET_ID_PREFIX

    def path_for(video_id: str, raw_name: str | None = None) -> str:
        path = index.path_for(video_id)
        if index.exists(path) or not video_id.startswith(prefix):
            return path
        bare = index.path_for(video_id[len(prefix):])
        return bare if index.exists(bare) else path

    return path_for


def _compare_id_list(split: str, caption_name: str, captions: dict, list_name: str, ids: Sequence[str],
                     out: Converted) -> None:
    """Name the ids of ``list_name`` missing from the caption file and the captioned videos missing from the list."""
    listed = set(ids)
    uncaptioned = [vid for vid in ids if vid not in captions]
    unlisted = [vid for vid in captions if vid not in listed]
    if list_name == ACTIVITYNET_ID_LISTS[split]:
        out.counts[split] = {"ids_without_captions": len(uncaptioned), "captions_without_ids": len(unlisted)}
    if uncaptioned:
        out.notes.append(f"activitynet {split}: {len(uncaptioned)} id(s) of {list_name} are not in {caption_name} "
                         f"(no captions: left out, as CLIP4Clip does): {_names(uncaptioned)}")
    if unlisted:
        out.notes.append(f"activitynet {split}: {len(unlisted)} video(s) of {caption_name} are not in {list_name}"
                         f"{' (left out: the id list decides)' if list_name in ACTIVITYNET_ID_LISTS.values() else ''}"
                         f": {_names(unlisted)}")
    if not uncaptioned and not unlisted:
        _logger.info("activitynet %s: %s and %s list the same %d videos", split, list_name, caption_name, len(ids))


def _names(ids: Sequence[str], limit: int = 50) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


# --------------------------------------------------------------------------------------------------- checks
def file_fingerprint(path: Path) -> dict[str, object]:
    """``bytes``, ``sha256`` and ``git_blob_sha1`` (what ``git hash-object`` prints) of a file, in one read."""
    size = path.stat().st_size
    sha256, blob = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha256.update(chunk)
            blob.update(chunk)
    return {"bytes": size, "sha256": sha256.hexdigest(), "git_blob_sha1": blob.hexdigest()}


def check_files(files: dict[str, Path], facts: dict[str, dict]) -> list[str]:
    """Compare each official file with its reference fingerprint; returns the disagreements."""
    problems = []
    for name, path in sorted(files.items()):
        expected = facts.get(name)
        if not expected:
            _logger.info("%s: no reference fingerprint, not checked", path)
            continue
        actual = file_fingerprint(path)
        bad = [k for k in ("bytes", "sha256", "git_blob_sha1") if k in expected and expected[k] != actual[k]]
        if bad:
            problems.append(f"{path} differs from the official {name}: " + ", ".join(
                f"{k} {actual[k]} (expected {expected[k]})" for k in bad))
        else:
            _logger.info("%s: matches the official %s (%s)", path, name, ", ".join(k for k in expected if k in actual))
    return problems


def split_counts(records: Sequence[VideoRecord]) -> dict[str, int]:
    """``videos``, ``captions`` and (paragraph lists) ``sentences`` of a list."""
    counts = {"videos": len(records), "captions": sum(len(r.captions) for r in records)}
    if any(r.sentences for r in records):
        counts["sentences"] = sum(len(r.sentences or []) for r in records)
    return counts


def check_counts(dataset: str, split: str, counts: dict[str, int], expected: dict[str, int]) -> list[str]:
    """Disagreements between a split's counts and the reference counts (keys present in both)."""
    bad = [k for k in expected if k in counts and counts[k] != expected[k]]
    if bad:
        return [f"{dataset} {split}: " + ", ".join(f"{counts[k]:,} {k} (expected {expected[k]:,})" for k in bad)]
    checked = [f"{counts[k]:,} {k}" for k in expected if k in counts]
    if checked:
        _logger.info("%s %s: %s as expected", dataset, split, ", ".join(checked))
    return []


def load_expected(path: Path | None) -> dict[str, dict]:
    """Reference facts (``data_lists/expected.json``); empty, with a warning, when the file is absent."""
    path = Path(path) if path else DEFAULT_EXPECTED
    if not path.is_file():
        _logger.warning("reference facts %s not found: counts and checksums are not checked", path)
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------- writing
def _report_missing_videos(dataset: str, converted: Converted, index: VideoIndex, out: Path
                           ) -> dict[str, list[str]]:
    missing = {split: [r.path for r in records if not index.exists(r.path)] for split, records in
               converted.splits.items()}
    missing = {split: paths for split, paths in missing.items() if paths}
    target = out / f"missing_{dataset}.txt"
    if not missing:
        target.unlink(missing_ok=True)
        return {}
    lines = [f"{split}\t{path}" for split, paths in missing.items() for path in paths]
    target.write_text("# split\tpath (relative to the videos root)\n" + "\n".join(lines) + "\n", encoding="utf-8")
    for split, paths in missing.items():
        _logger.warning("%s %s: %d of %d video(s) not found under %s, e.g. %s (all listed in %s)", dataset, split,
                        len(paths), len(converted.splits[split]), index.root, paths[:SHOW], target)
    return missing


def prepare(dataset: str, annotations: Path, videos: Path, out: Path, ext: str | None = None,
            drop_missing: bool = False, val_size: int = MSRVTT_VAL_SIZE, expected_path: Path | None = None
            ) -> PrepareReport:
    """Convert, check and write every split of ``dataset`` found under ``annotations``.

    Raises:
        DataListError: an annotation file is malformed, or no split at all could be converted.
    """
    if dataset not in DATASET_CONVERTERS:
        raise DataListError(f"unknown dataset '{dataset}'. Valid: {', '.join(DATASET_CONVERTERS.names())}")
    annotations, out = Path(annotations), Path(out)
    if not annotations.is_dir():
        raise DataListError(f"--annotations {annotations}: folder not found")
    index = VideoIndex(Path(videos), ext, DATASET_CONVERTERS.info(dataset, "default_ext", ".mp4"))
    kwargs = {"val_size": val_size} if dataset in ("msrvtt", "activitynet") else {}
    converted = DATASET_CONVERTERS.get(dataset)(annotations, index, **kwargs)
    if not converted.splits:
        raise DataListError(f"{dataset}: no split could be converted from {annotations}: "
                            + "; ".join(f"{s} {why}" for s, why in converted.missing_splits.items()))
    facts = load_expected(expected_path).get(dataset, {})
    report = PrepareReport(dataset, missing_splits=dict(converted.missing_splits))
    report.problems = list(converted.problems) + check_files(converted.files, facts.get("files", {}))
    for split, size in converted.list_sizes.items():
        report.problems += check_counts(dataset, split, {"list_videos": size}, facts.get("splits", {}).get(split, {}))
    for split, counts in converted.counts.items():
        report.problems += check_counts(dataset, split, counts, facts.get("splits", {}).get(split, {}))
    report.notes = list(converted.notes)
    for note in report.notes:
        _logger.warning("%s", note)
    out.mkdir(parents=True, exist_ok=True)
    report.missing_videos = _report_missing_videos(dataset, converted, index, out)
    for split, records in converted.splits.items():
        counts = split_counts(records)
        report.problems += check_counts(dataset, split, counts, facts.get("splits", {}).get(split, {}))
        if drop_missing and split in report.missing_videos:
            gone = set(report.missing_videos[split])
            records = [r for r in records if r.path not in gone]
        path = write_list(records, out / f"{dataset}_{split}.jsonl")
        report.written[split] = {**split_counts(records), "missing_videos": len(report.missing_videos.get(split, [])),
                                 "path": str(path)}
    for split, why in converted.missing_splits.items():
        _logger.warning("%s %s: not written, %s", dataset, split, why)
    for problem in report.problems:
        _logger.warning("CHECK FAILED: %s", problem)
    return report

