"""The unified JSONL data list: round trip, error messages with file and line, atomic writes, path confinement."""
from __future__ import annotations

import json
import logging
import os

import pytest

from vidclip.data.lists import VideoRecord, read_list, resolve_video_path, write_list
from vidclip.errors import DataListError


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _line(video_id, path=None, captions=("a caption",), **extra):
    return json.dumps({"video_id": video_id, "path": path or f"{video_id}.mp4", "captions": list(captions), **extra})


def test_round_trip_keeps_every_field(tmp_path):
    records = [
        VideoRecord("v1", "a/v1.mp4", ["first", "sécond ünïcode"]),
        VideoRecord("v2", "v2.mp4", ["para"], start=1.5, end=7.0,
                    sentences=[{"text": "para", "start": 1.5, "end": 7.0}], meta={"motion": "left"}),
    ]
    path = write_list(records, tmp_path / "sub" / "list.jsonl")
    assert read_list(path) == records
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"video_id": "v1", "path": "a/v1.mp4", "captions": ["first", "sécond ünïcode"], "start": None,
                     "end": None}


def test_malformed_line_names_file_and_line(tmp_path):
    path = _write_lines(tmp_path / "bad.jsonl", [_line("v1"), _line("v2"), '{"video_id": "v3", "path": '])
    with pytest.raises(DataListError, match=r"bad\.jsonl:3: malformed JSON"):
        read_list(path)


def test_blank_lines_are_skipped_but_line_numbers_stay_physical(tmp_path):
    path = _write_lines(tmp_path / "gaps.jsonl", [_line("v1"), "", "   ", "[1, 2]"])
    with pytest.raises(DataListError, match=r"gaps\.jsonl:4: each line must be a JSON object"):
        read_list(path)


def test_duplicate_video_id_names_both_lines(tmp_path):
    path = _write_lines(tmp_path / "dup.jsonl", [_line("v1"), _line("v2"), _line("v1", path="other.mp4")])
    with pytest.raises(DataListError, match=r"dup\.jsonl:3: duplicate video_id 'v1' \(first on line 1\)"):
        read_list(path)


def test_missing_keys_are_named(tmp_path):
    path = _write_lines(tmp_path / "keys.jsonl", [json.dumps({"video_id": "v1"})])
    with pytest.raises(DataListError, match=r"keys\.jsonl:1: missing key\(s\) path, captions"):
        read_list(path)


@pytest.mark.parametrize("bad, pattern", [
    ({"captions": "not a list"}, "'captions' must be a list"),
    ({"start": "3s"}, "'start' must be a number of seconds"),
    ({"sentences": ["no object"]}, "'sentences' must be a list"),
    ({"colour": "red"}, "unknown key"),
])
def test_wrong_types_and_unknown_keys_are_refused(tmp_path, bad, pattern):
    obj = {"video_id": "v1", "path": "v1.mp4", "captions": ["c"], **bad}
    path = _write_lines(tmp_path / "types.jsonl", [json.dumps(obj)])
    with pytest.raises(DataListError, match=pattern):
        read_list(path)


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(DataListError, match="prepare_data.py"):
        read_list(tmp_path / "nope.jsonl")


def test_empty_captions_are_kept_and_counted(tmp_path, caplog):
    path = _write_lines(tmp_path / "empty.jsonl", [_line("v1", captions=["", "ok"]), _line("v2", captions=["  "])])
    with caplog.at_level(logging.WARNING, logger="vidclip.data.lists"):
        records = read_list(path)
    assert [r.captions for r in records] == [["", "ok"], ["  "]]
    assert "2 empty or whitespace-only caption(s)" in caplog.text


def test_write_is_atomic_when_serialisation_fails(tmp_path):
    path = write_list([VideoRecord("old", "old.mp4", ["kept"])], tmp_path / "list.jsonl")
    before = path.read_bytes()

    def records():
        yield VideoRecord("new", "new.mp4", ["c"])
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        write_list(records(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["list.jsonl"]  # no temporary file left behind


def test_resolve_accepts_nested_relative_paths(tmp_path):
    record = VideoRecord("v", "sub/dir/../v.mp4", [])
    assert resolve_video_path(tmp_path, record) == tmp_path / "sub" / "v.mp4"


@pytest.mark.parametrize("bad_path", ["../outside.mp4", "a/../../outside.mp4", "/etc/passwd", "", "."])
def test_resolve_refuses_paths_escaping_the_root(tmp_path, bad_path):
    root = tmp_path / "videos"
    root.mkdir()
    with pytest.raises(DataListError, match="outside the videos root"):
        resolve_video_path(root, VideoRecord("v", bad_path, []))


def test_resolve_allows_symlinks_to_another_disk(tmp_path):
    elsewhere = tmp_path / "disk2" / "v.mp4"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"x")
    root = tmp_path / "videos"
    root.mkdir()
    (root / "v.mp4").symlink_to(elsewhere)
    resolved = resolve_video_path(root, VideoRecord("v", "v.mp4", []))
    assert resolved == root / "v.mp4" and resolved.read_bytes() == b"x"
