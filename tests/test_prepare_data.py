"""Official annotations -> unified lists: real MSR-VTT / MSVD / DiDeMo files (exact published counts), hand-made
files for the formats not available here (MSRVTT_data.json, raw-captions.pkl, DiDeMo train_data.json), checksums,
missing videos and missing splits."""
from __future__ import annotations

import csv
import json
import pickle
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from vidclip.cli import main as cli_main
from vidclip.cli.prepare_data import main
from vidclip.data import converters as cv
from vidclip.data.lists import read_list
from vidclip.data.prepare import DEFAULT_EXPECTED, file_fingerprint, prepare
from vidclip.errors import DataListError


@pytest.fixture(autouse=True)
def _keep_pytest_logging(monkeypatch):
    """``main`` configures console logging for the tool; keep pytest's log capture instead."""
    monkeypatch.setattr("vidclip.cli.common.setup_logging", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def ann(shared_data) -> Path:
    return shared_data / "annotations"


def _lists(out: Path, dataset: str):
    return {p.stem[len(dataset) + 1:]: read_list(p) for p in sorted(out.glob(f"{dataset}_*.jsonl"))}


# ------------------------------------------------------------------------------------------------ real MSR-VTT
def test_msrvtt_1ka_from_the_real_csv(ann, shared_data, tmp_path):
    out = tmp_path / "lists"
    assert main(["msrvtt", "--annotations", str(ann), "--videos", str(shared_data / "videos"), "--out", str(out),
                 "--strict"]) == 0
    lists = _lists(out, "msrvtt")
    assert set(lists) == {"test_1ka"}  # the training splits need MSRVTT_data.json, absent here
    test = lists["test_1ka"]
    with open(ann / "msrvtt" / "MSRVTT_JSFUSION_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(test) == len(rows) == 1000 and len({r.video_id for r in test}) == 1000
    assert [(r.video_id, r.captions) for r in test] == [(row["video_id"], [row["sentence"]]) for row in rows]
    assert test[0].video_id == "video9770" and test[0].captions == ["a person is connecting something to system"]
    dup = Counter(r.captions[0] for r in test)
    assert sorted(n for n in dup.values() if n > 1) == [2, 2, 2, 3] and dup["a man playing video games"] == 3
    # the two real clips are found in their sub-folder; the other 998 are reported, not fatal
    paths = {r.video_id: r.path for r in test}
    assert paths["video9770"] == "msrvtt/video9770.mp4" and paths["video9771"] == "msrvtt/video9771.mp4"
    missing = (out / "missing_msrvtt.txt").read_text().splitlines()[1:]
    assert len(missing) == 998 and "test_1ka\tvideo9770.mp4" not in missing and "test_1ka\tvideo7020.mp4" in missing


def test_msrvtt_reports_splits_it_cannot_make(ann, tmp_path):
    report = prepare("msrvtt", ann, tmp_path / "no_videos", tmp_path / "out")
    assert set(report.written) == {"test_1ka"}
    for split in ("train_9k", "train_7k", "val_9k_holdout", "train_9k_minus_val"):
        assert "MSRVTT_data.json" in report.missing_splits[split]
    assert report.problems == []
    assert report.written["test_1ka"]["missing_videos"] == 1000


def test_holdout_on_the_real_9k_ids_is_stable_and_never_test(ann):
    ids = cv.read_msrvtt_ids(ann / "msrvtt" / "MSRVTT_train.9k.csv")
    test_ids = {vid for vid, _ in cv.read_msrvtt_test_csv(ann / "msrvtt" / "MSRVTT_JSFUSION_test.csv")}
    assert len(ids) == 9000 and not set(ids) & test_ids
    held = cv.holdout_ids(ids, 500)
    assert len(held) == 500 and not set(held) & test_ids
    assert held == [vid for vid in ids if vid in set(held)]  # kept in file order
    assert set(cv.holdout_ids(list(reversed(ids)), 500)) == set(held)  # independent of file order
    assert len(cv.read_msrvtt_ids(ann / "msrvtt" / "MSRVTT_train.7k.csv")) == 7010


# ------------------------------------------------------------------------------------------------ hand-made MSR-VTT
def _fake_msrvtt(root: Path, num_videos=30, test=(25, 26, 27, 28, 29), captions_per_video=3, uncaptioned=()):
    root.mkdir(parents=True, exist_ok=True)
    split_of = lambda i: "test" if i in test else ("validate" if i % 7 == 0 else "train")  # noqa: E731
    data = {"info": {}, "videos": [{"video_id": f"video{i}", "split": split_of(i), "category": 0}
                                   for i in range(num_videos)],
            "sentences": [{"video_id": f"video{i}", "caption": f"video {i} caption {j}", "sen_id": i * 10 + j}
                          for j in range(captions_per_video) for i in range(num_videos) if i not in uncaptioned]}
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    train = [f"video{i}" for i in range(num_videos) if i not in test]
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n" + "\n".join(train) + "\n")
    (root / "MSRVTT_train.7k.csv").write_text("video_id\n" + "\n".join(train[:12]) + "\n")
    rows = [f"ret{k},msr{i},video{i},test sentence {i}" for k, i in enumerate(test)]
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + "\n".join(rows) + "\n")
    return train


def test_msrvtt_training_lists_from_a_hand_made_data_json(tmp_path):
    train = _fake_msrvtt(tmp_path / "ann" / "msrvtt_data")
    report = prepare("msrvtt", tmp_path / "ann", tmp_path / "videos", tmp_path / "out", val_size=5)
    lists = _lists(tmp_path / "out", "msrvtt")
    assert report.missing_splits == {}
    assert [r.video_id for r in lists["train_9k"]] == train
    # captions in file order (the json lists them caption-major, so each video's own order must be kept)
    assert lists["train_9k"][0].captions == ["video 0 caption 0", "video 0 caption 1", "video 0 caption 2"]
    assert len(lists["train_7k"]) == 12 and lists["test_1ka"][0].captions == ["test sentence 25"]
    val, rest = lists["val_9k_holdout"], lists["train_9k_minus_val"]
    assert len(val) == 5 and len(rest) == len(train) - 5
    assert {r.video_id for r in val} | {r.video_id for r in rest} == set(train)
    assert not {r.video_id for r in val} & {r.video_id for r in rest}
    assert not {r.video_id for r in val} & {r.video_id for r in lists["test_1ka"]}
    assert [r.video_id for r in lists["test_full"]] == [f"video{i}" for i in range(25, 30)]
    assert [r.video_id for r in lists["val_full"]] == ["video0", "video7", "video14", "video21"]
    # hand-made files are not the official ones: size / checksum / count disagreements are all reported
    assert any("MSRVTT_data.json differs from the official" in p for p in report.problems)
    assert "msrvtt train_9k: 25 videos (expected 9,000), 75 captions (expected 180,000)" in report.problems


def test_msrvtt_strict_fails_on_count_mismatch_and_uncaptioned_ids_are_reported(tmp_path, caplog):
    _fake_msrvtt(tmp_path / "ann", uncaptioned=(3,))
    rc = main(["msrvtt", "--annotations", str(tmp_path / "ann"), "--videos", str(tmp_path / "v"), "--out",
               str(tmp_path / "out"), "--strict", "--val-size", "4"])
    assert rc == 1
    assert "1 id(s) of MSRVTT_train.9k.csv have no caption" in caplog.text and "['video3']" in caplog.text
    assert "video3" not in {r.video_id for r in read_list(tmp_path / "out" / "msrvtt_train_9k.jsonl")}
    assert main(["msrvtt", "--annotations", str(tmp_path / "ann"), "--videos", str(tmp_path / "v"), "--out",
                 str(tmp_path / "out2"), "--val-size", "4"]) == 0  # same problems, not strict


def test_msrvtt_overlap_between_train_and_test_is_a_problem(tmp_path):
    root = tmp_path / "ann"
    _fake_msrvtt(root)
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo25\n")
    report = prepare("msrvtt", root, tmp_path / "v", tmp_path / "out", val_size=1)
    assert any("both in MSRVTT_train.9k.csv and the 1k-A test csv" in p and "video25" in p for p in report.problems)


def test_malformed_official_files_name_the_file(tmp_path):
    root = tmp_path / "ann"
    root.mkdir()
    (root / "MSRVTT_JSFUSION_test.csv").write_text("id,text\nvideo1,hello\n")
    with pytest.raises(DataListError, match=r"MSRVTT_JSFUSION_test\.csv: header .* lacks column"):
        prepare("msrvtt", root, tmp_path / "v", tmp_path / "out")
    (root / "MSRVTT_JSFUSION_test.csv").unlink()
    (root / "MSRVTT_data.json").write_text('{"videos": [{"video_id": "video0"}], "sentences": []}')
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\n")
    with pytest.raises(DataListError, match=r"MSRVTT_data\.json: videos\[0\] lacks key\(s\) \['split'\]"):
        prepare("msrvtt", root, tmp_path / "v", tmp_path / "out")


def test_no_annotations_at_all_is_an_error_naming_what_is_needed(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    assert main(["msvd", "--annotations", str(tmp_path / "empty"), "--videos", ".", "--out", str(tmp_path)]) == 1
    assert "no split could be converted" in caplog.text and "train_list.txt" in caplog.text
    assert main(["msvd", "--annotations", str(tmp_path / "nope"), "--videos", ".", "--out", str(tmp_path)]) == 1


# ------------------------------------------------------------------------------------------------ real MSVD
def test_msvd_from_the_real_files(ann, tmp_path):
    out = tmp_path / "out"
    assert cli_main(["prepare-data", "msvd", "--annotations", str(ann), "--videos", str(tmp_path / "videos"),
                     "--out", str(out), "--strict"]) == 0
    lists = _lists(out, "msvd")
    assert {s: len(r) for s, r in lists.items()} == {"train": 1200, "val": 100, "test": 670}
    captions = json.loads((ann / "msvd" / "captions_msvd.json").read_text())
    test = lists["test"]
    assert sum(len(r.captions) for r in test) == 27763
    assert min(len(r.captions) for r in test) == 21 and max(len(r.captions) for r in test) == 81
    assert all(r.captions == captions[r.video_id] and r.path == f"{r.video_id}.avi" for r in test)
    ids = (ann / "msvd" / "test_list.txt").read_text().split()
    assert [r.video_id for r in test] == ids


def test_msvd_raw_captions_pickle_joins_tokens(tmp_path):
    root = tmp_path / "ann" / "msvd"
    root.mkdir(parents=True)
    raw = {"vidA_1_5": [["a", "cat", "sleeps"], ["the", "cat", "is", "asleep"]], "vidB_0_3": [["dogs", "run"]]}
    (root / "raw-captions.pkl").write_bytes(pickle.dumps(raw, protocol=2))
    (root / "test_list.txt").write_text("vidB_0_3\nvidA_1_5\n")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "vidA_1_5.mp4").write_bytes(b"")  # on disk with another extension than the default
    report = prepare("msvd", tmp_path / "ann", tmp_path / "videos", tmp_path / "out")
    test = read_list(tmp_path / "out" / "msvd_test.jsonl")
    assert [(r.video_id, r.path, r.captions) for r in test] == [
        ("vidB_0_3", "vidB_0_3.avi", ["dogs run"]),
        ("vidA_1_5", "vidA_1_5.mp4", ["a cat sleeps", "the cat is asleep"])]
    assert set(report.missing_splits) == {"train", "val"} and report.missing_videos == {"test": ["vidB_0_3.avi"]}


def test_msvd_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({"v": Evil()}))
    with pytest.raises(DataListError, match="only plain dict/list/str"):
        cv.read_msvd_captions(path)


# ------------------------------------------------------------------------------------------------ DiDeMo
def test_didemo_test_from_the_real_files(ann, tmp_path):
    report = prepare("didemo", ann, tmp_path / "videos", tmp_path / "out")
    assert report.problems == [] and set(report.missing_splits) == {"train", "val"}
    test = read_list(tmp_path / "out" / "didemo_test.jsonl")
    moments = json.loads((ann / "didemo" / "test_data.json").read_text())
    assert len(test) == 1004 and sum(len(r.sentences) for r in test) == len(moments) == 4021
    assert len({m["video"] for m in moments}) == 1037
    # a video annotated under two extensions gets both sets of descriptions, in file order
    by_stem = {}
    for m in moments:
        by_stem.setdefault(m["video"].rsplit(".", 1)[0], []).append(m)
    both = next(stem for stem, ms in by_stem.items() if len({m["video"] for m in ms}) == 2)
    record = next(r for r in test if r.video_id == both)
    assert record.captions == [" ".join(m["description"] for m in by_stem[both])]
    assert [s["text"] for s in record.sentences] == [m["description"] for m in by_stem[both]]
    assert all(r.start is None and r.end is None and len(r.captions) == 1 for r in test)
    assert all(s["start"] % 5 == 0 and s["end"] % 5 == 0 and 0 <= s["start"] < s["end"] <= 30
               for r in test for s in r.sentences)
    first = next(r for r in test if r.video_id == moments[0]["video"].rsplit(".", 1)[0])
    # moments[0].times = [[4,4],[4,4],[0,0],[4,4],[0,0],[0,0],[4,4]]: (4,4) wins 4 to 3 -> seconds 20..25
    assert first.sentences[[s["text"] for s in first.sentences].index(moments[0]["description"])] == {
        "text": moments[0]["description"], "start": 20.0, "end": 25.0}
    names = [n.strip() for n in (ann / "splits" / "didemo" / "test_list.txt").read_text().splitlines() if n.strip()]
    no_ext = next(n for n in names if n.endswith("."))
    assert next(r for r in test if r.video_id == no_ext.rstrip(".")).path == no_ext.rstrip(".") + ".mp4"


@pytest.mark.parametrize("times, expected", [
    ([[0, 1], [0, 1], [2, 2], [2, 2]], (0.0, 10.0)),  # tie: the first annotator's pair wins
    ([[2, 2], [0, 1], [0, 1], [2, 2], [0, 1]], (0.0, 10.0)),  # majority
    ([[5, 5]], (25.0, 30.0)),
])
def test_moment_seconds(times, expected):
    assert cv.moment_seconds(times) == expected


@pytest.mark.parametrize("name, stem", [("a.mov", "a"), ("a.mp4", "a"), ("a.", "a"), ("a", "a"),
                                        ("10052357@N03_7585070382_5762149bfc.", "10052357@N03_7585070382_5762149bfc"),
                                        ("x@N01_1_b.m4v", "x@N01_1_b")])
def test_strip_video_extension(name, stem):
    assert cv.strip_video_extension(name) == stem


def test_didemo_train_from_hand_made_files(tmp_path):
    root = tmp_path / "ann"
    (root / "didemo").mkdir(parents=True)
    (root / "splits" / "didemo").mkdir(parents=True)
    moments = [
        {"annotation_id": 1, "description": "a dog runs.", "video": "v1.mov", "times": [[0, 0]] * 4},
        {"annotation_id": 2, "description": "it stops", "video": "v2.avi", "times": [[1, 2], [1, 2], [3, 3], [1, 2]]},
        {"annotation_id": 3, "description": "the dog barks", "video": "v1.mp4", "times": [[1, 1]] * 4},
        {"annotation_id": 4, "description": "not listed", "video": "v9.mp4", "times": [[0, 0]] * 4},
    ]
    (root / "didemo" / "train_data.json").write_text(json.dumps(moments))
    (root / "splits" / "didemo" / "train_list.txt").write_text("v1.mov\nv2.\nv3.mp4\n")
    (tmp_path / "videos" / "sub").mkdir(parents=True)
    (tmp_path / "videos" / "sub" / "v2.mp4").write_bytes(b"")
    report = prepare("didemo", root, tmp_path / "videos", tmp_path / "out")
    train = read_list(tmp_path / "out" / "didemo_train.jsonl")
    assert [(r.video_id, r.path, r.captions) for r in train] == [
        ("v1", "v1.mov", ["a dog runs. the dog barks"]), ("v2", "sub/v2.mp4", ["it stops"])]
    assert train[0].sentences == [{"text": "a dog runs.", "start": 0.0, "end": 5.0},
                                  {"text": "the dog barks", "start": 5.0, "end": 10.0}]
    assert train[1].sentences == [{"text": "it stops", "start": 5.0, "end": 15.0}]
    assert report.missing_videos == {"train": ["v1.mov"]}
    assert report.written["train"]["sentences"] == 3
    assert any("didemo train: 3 list_videos (expected 8,392)" in p for p in report.problems)


# ------------------------------------------------------------------------------------------------ checksums
def test_fingerprint_equals_git_hash_object(ann):
    path = ann / "msvd" / "val_list.txt"
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    blob = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout
    facts = json.loads(DEFAULT_EXPECTED.read_text())["msvd"]["files"]["val_list.txt"]
    assert file_fingerprint(path)["git_blob_sha1"] == blob.strip() == facts["git_blob_sha1"]


def test_expected_facts_match_the_manifest_and_landscape(shared_data):
    facts = json.loads(DEFAULT_EXPECTED.read_text())
    manifest = {}
    for line in (shared_data / "MANIFEST.tsv").read_text().splitlines()[1:]:
        path, size, sha = line.split("\t")
        manifest[path] = (int(size), sha)
    located = {("msrvtt", n): f"annotations/msrvtt/{n}" for n in facts["msrvtt"]["files"] if n.endswith(".csv")}
    located.update({("msvd", n): f"annotations/msvd/{n}" for n in facts["msvd"]["files"]})
    located.update({("didemo", "test_data.json"): "annotations/didemo/test_data.json",
                    ("didemo", "test_list.txt"): "annotations/splits/didemo/test_list.txt",
                    ("didemo", "train_list.txt"): "annotations/splits/didemo/train_list.txt"})
    for (dataset, name), rel in located.items():
        entry = facts[dataset]["files"][name]
        assert (entry["bytes"], entry["sha256"]) == manifest[rel], rel
    # the blob id published for the file that is not available here (landscape.md Appendix A)
    assert facts["msrvtt"]["files"]["MSRVTT_data.json"]["git_blob_sha1"] == "f41b0f660fc5dbd8115f30033fb3f2e064ced442"


def test_a_modified_official_file_fails_the_checksum(ann, tmp_path):
    root = tmp_path / "ann"
    root.mkdir()
    text = (ann / "msrvtt" / "MSRVTT_JSFUSION_test.csv").read_text()
    (root / "MSRVTT_JSFUSION_test.csv").write_text(text.replace("gymnastics", "gymnastic", 1))
    report = prepare("msrvtt", root, tmp_path / "v", tmp_path / "out")
    assert len(report.problems) == 1 and "differs from the official MSRVTT_JSFUSION_test.csv" in report.problems[0]
    assert "sha256" in report.problems[0] and "bytes 74474 (expected 74475)" in report.problems[0]


def test_drop_missing_leaves_absent_videos_out(ann, shared_data, tmp_path):
    report = prepare("msrvtt", ann, shared_data / "videos", tmp_path / "out", drop_missing=True)
    test = read_list(tmp_path / "out" / "msrvtt_test_1ka.jsonl")
    assert [r.video_id for r in test] == ["video9770", "video9771"]
    assert report.problems == []  # counts are checked on the official lists, before dropping
    assert report.written["test_1ka"]["videos"] == 2 and report.written["test_1ka"]["missing_videos"] == 998


# ------------------------------------------------------------------------------------------------ ActivityNet
def _anet_json(path: Path):
    return json.loads(path.read_text())


def test_activitynet_from_the_real_files(ann, tmp_path, capsys):
    out = tmp_path / "lists"
    assert main(["activitynet", "--annotations", str(ann), "--videos", str(tmp_path / "no_videos"), "--out", str(out),
                 "--strict"]) == 0
    printed = capsys.readouterr().out
    assert "note: activitynet train: 15 id(s) of train_ids.json are not in train.json" in printed
    assert "all checks passed" in printed and "not written: val_2 (needs val_2.json" in printed
    lists = _lists(out, "activitynet")
    assert set(lists) == {"train", "val_1", "val_holdout", "train_minus_val"}  # val_2.json is not in shared/data
    folder = ann / "activitynet"
    for split, id_list, videos, sentences in (("train", "train_ids.json", 10009, 37421),
                                              ("val_1", "val_ids.json", 4917, 17505)):
        captions, ids = _anet_json(folder / f"{split}.json"), _anet_json(folder / id_list)
        records = lists[split]
        # caption file ∩ id list, in id-list order (CLIP4Clip iterates the id list)
        assert [r.video_id for r in records] == [vid for vid in ids if vid in captions]
        assert len(records) == videos and sum(len(r.sentences) for r in records) == sentences
        assert all(len(r.captions) == 1 and r.start is None and r.end is None for r in records)
        for r in records:
            entry = captions[r.video_id]
            assert r.captions[0] == " ".join(s.strip() for s in entry["sentences"])
            assert [(s["text"], s["start"], s["end"]) for s in r.sentences] == [
                (t.strip(), float(a), float(b)) for t, (a, b) in zip(entry["sentences"], entry["timestamps"])]
            assert r.meta == {"duration": entry["duration"]} and r.path == f"{r.video_id}.mp4"
    first = lists["val_1"][0]
    assert first.video_id == "v_JDg--pjY5gg" and first.captions[0].startswith(
        "A man in a red shirt talks to a camera before the camera cuts away")
    held, rest = lists["val_holdout"], lists["train_minus_val"]
    assert len(held) == 500 and len(rest) == 9509 and not {r.video_id for r in held} & {r.video_id for r in rest}
    assert {r.video_id for r in held} | {r.video_id for r in rest} == {r.video_id for r in lists["train"]}
    missing = (out / "missing_activitynet.txt").read_text().splitlines()[1:]
    assert sum(line.startswith("val_1\t") for line in missing) == 4917  # every missing video is reported


def test_activitynet_names_the_ids_the_id_lists_and_caption_files_disagree_on(ann, tmp_path):
    report = prepare("activitynet", ann, tmp_path / "v", tmp_path / "out")
    assert report.problems == []  # 15 / 9 uncaptioned ids are the expected numbers (expected.json)
    folder = ann / "activitynet"
    for split, id_list, count in (("train", "train_ids.json", 15), ("val_1", "val_ids.json", 9)):
        extra = sorted(set(_anet_json(folder / id_list)) - set(_anet_json(folder / f"{split}.json")))
        assert len(extra) == count
        note = next(n for n in report.notes if n.startswith(f"activitynet {split}: {count} id(s) of {id_list}"))
        assert all(vid in note for vid in extra)
    assert "v_1v5HE_Nm99g" in report.notes[0] and "val_2" in report.missing_splits


def test_activitynet_expected_facts_match_the_manifest(shared_data):
    facts = json.loads(DEFAULT_EXPECTED.read_text())["activitynet"]["files"]
    manifest = dict(line.split("\t", 1) for line in (shared_data / "MANIFEST.tsv").read_text().splitlines()[1:])
    for name in ("train.json", "val_1.json", "train_ids.json", "val_ids.json", "train_list.txt", "val_1_list.txt"):
        size, sha = manifest[f"annotations/activitynet/{name}"].split("\t")
        assert (facts[name]["bytes"], facts[name]["sha256"]) == (int(size), sha), name
    # landscape.md Appendix A: PromptSwitch's val_1.json blob
    assert facts["val_1.json"]["git_blob_sha1"] == "71006d3f4fbadf8221d0713511d0469391604430"


def _fake_activitynet(root: Path, splits=("train", "val_1")):
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        group = "train" if split == "train" else "val"  # val_1 and val_2 annotate the same videos
        data = {f"v_{group}{i}": {"duration": 10.0 + i, "timestamps": [[0, 4.5], [3, 10.0 + i]],
                                  "sentences": [f"{split} video {i} starts.", f" Then it ends {i}. "]}
                for i in range(4)}
        (root / f"{split}.json").write_text(json.dumps(data))
    return root


def test_activitynet_hand_made_id_lists_videos_and_val_2(tmp_path):
    root = _fake_activitynet(tmp_path / "ann" / "ActivityNet", ("train", "val_1", "val_2"))
    (root / "train_ids.json").write_text(json.dumps(["v_train2", "v_train0", "v_extra", "v_train1"]))
    (root / "val_ids.json").write_text(json.dumps(["v_val0", "v_val1", "v_val2", "v_val3"]))
    videos = tmp_path / "videos"
    for name in ("v_val0.mp4", "val1.mkv", "sub/v_val2.webm"):  # v_ names, CLIP4Clip's bare ids, sub-folders
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        (videos / name).write_bytes(b"")
    report = prepare("activitynet", tmp_path / "ann", videos, tmp_path / "out", val_size=1)
    lists = _lists(tmp_path / "out", "activitynet")
    assert [r.video_id for r in lists["train"]] == ["v_train2", "v_train0", "v_train1"]  # id-list order
    assert any("1 id(s) of train_ids.json are not in train.json" in n and "v_extra" in n for n in report.notes)
    assert any("1 video(s) of train.json are not in train_ids.json" in n and "v_train3" in n for n in report.notes)
    assert lists["train"][0].captions == ["train video 2 starts. Then it ends 2."]
    assert lists["train"][0].sentences == [{"text": "train video 2 starts.", "start": 0.0, "end": 4.5},
                                           {"text": "Then it ends 2.", "start": 3.0, "end": 12.0}]
    assert [r.path for r in lists["val_1"]] == ["v_val0.mp4", "val1.mkv", "sub/v_val2.webm", "v_val3.mp4"]
    assert report.missing_videos["val_1"] == ["v_val3.mp4"] and len(lists["val_2"]) == 4
    assert lists["val_2"][1].captions == ["val_2 video 1 starts. Then it ends 1."]
    assert len(lists["val_holdout"]) == 1 and len(lists["train_minus_val"]) == 2
    # hand-made files are not the official ones: every count disagreement is reported
    assert "activitynet train: 3 videos (expected 10,009), 3 captions (expected 10,009), 6 sentences (expected " \
           "37,421)" in report.problems
    assert any(p.startswith("activitynet val_2: 4 videos (expected 4,885)") for p in report.problems)


def test_activitynet_without_id_lists_uses_the_caption_file_and_says_so(tmp_path):
    _fake_activitynet(tmp_path / "ann", ("val_1",))
    report = prepare("activitynet", tmp_path / "ann", tmp_path / "v", tmp_path / "out")
    assert set(report.written) == {"val_1"} and report.written["val_1"]["videos"] == 4
    assert any("no id list" in n and "every video of val_1.json is used" in n for n in report.notes)
    assert "train.json" in report.missing_splits["train"] and "train.json" in report.missing_splits["val_holdout"]


def test_activitynet_malformed_caption_file_names_the_video(tmp_path):
    root = tmp_path / "ann"
    root.mkdir()
    (root / "val_1.json").write_text(json.dumps({"v_a": {"duration": 3, "timestamps": [[0, 1]],
                                                         "sentences": ["one.", "two."]}}))
    with pytest.raises(DataListError, match=r"val_1\.json: video 'v_a': 'timestamps' must hold one"):
        prepare("activitynet", root, tmp_path / "v", tmp_path / "out")
    (root / "val_1.json").write_text(json.dumps({"v_a": {"duration": 3, "sentences": ["one."]}}))
    with pytest.raises(DataListError, match=r"video 'v_a' lacks key\(s\) \['timestamps'\]"):
        prepare("activitynet", root, tmp_path / "v", tmp_path / "out")
