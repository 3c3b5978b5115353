"""Fault injection (issue 15): nothing vidclip writes is silently lost, mixed, stale or executed.

Every case ends in the correct result or in a refusal whose message names the file (and the differing keys) and the
way out. Extractions are made once per module with a tiny random checkpoint and copied before each damage, so most
cases cost no encoding at all. See ROBUSTNESS.md §7 for the table of fault classes.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vidclip
from vidclip.config import load_config
from vidclip.engine import extract
from vidclip.engine.extract import discover_inputs, load_embeddings, load_recorded_model, read_manifest, run_extraction
from vidclip.errors import CheckpointError, ConfigError, DataListError, IntegrityError, VidclipError
from vidclip.identity import sha256_file, weights_sha256, write_checksums

from .helpers import REPO, TINY_CONFIG, synth_overrides

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cfg(synth: Path, **extra: str):
    values = {"extract.shard_size": "2", "extract.batch_size": "2", "eval.batch_size": "2"}
    values.update(extra)
    return load_config(TINY_CONFIG, synth_overrides(synth, **values))


def _model(cfg, checkpoint):
    return vidclip.create_model(cfg.model, pretrained=str(checkpoint)).eval()


def _other_checkpoint(folder: Path, arch: str = "tiny-vifi", seed: int = 1) -> Path:
    from vidclip.models.weights import save_model_weights

    torch.manual_seed(seed)
    return save_model_weights(vidclip.create_model(arch), folder / f"{arch}_{seed}.safetensors", arch=arch)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(synth, tiny_checkpoint, tmp_path_factory) -> Path:
    """A clean extraction of the 6 test videos (3 shards of 2) with the tiny checkpoint."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    cfg = _cfg(synth)
    run_extraction(cfg, _model(cfg, tiny_checkpoint), str(cfg.data.test_list), out, resume=False,
                   checkpoint=str(tiny_checkpoint))
    return out


@pytest.fixture
def copy_of(reference, tmp_path):
    def _copy(name: str = "emb") -> Path:
        return Path(shutil.copytree(reference, tmp_path / name))

    return _copy


# ------------------------------------------------------------------------------ extraction: resume after changes
def _resume_with_change(change: str, synth: Path, tmp_path: Path, checkpoint: Path):
    """(cfg, model, videos, checkpoint) of a resume that differs from the reference in one way."""
    cfg, videos, ckpt = _cfg(synth), str(synth / "synthetic_test.jsonl"), checkpoint
    if change == "shard_size":
        cfg = _cfg(synth, **{"extract.shard_size": "3"})
    elif change == "inputs":
        from vidclip.data.lists import read_list, write_list

        videos = str(write_list(read_list(videos)[:5], tmp_path / "five.jsonl"))
    elif change == "weights":
        ckpt = _other_checkpoint(tmp_path)
    elif change == "config":
        cfg = _cfg(synth, **{"data.test_num_frames": "4"})
    return cfg, _model(cfg, ckpt), videos, ckpt


@pytest.mark.parametrize("change, keys", [
    ("shard_size", ["shard_size 2 -> 3", "--shard-size 2"]),
    ("inputs", ["inputs.count 6 -> 5", "inputs.sha256", "the same --videos"]),
    ("weights", ["weights.sha256", "the same weights"]),
    ("config", ["config.data.test_num_frames 8 -> 4", "the same config values"]),
])
def test_resume_with_other_shards_inputs_weights_or_config_is_refused(change, keys, synth, tmp_path,
                                                                      tiny_checkpoint, copy_of):
    out = copy_of()
    before = _files(out)
    cfg, model, videos, ckpt = _resume_with_change(change, synth, tmp_path, tiny_checkpoint)
    with pytest.raises(IntegrityError) as info:
        run_extraction(cfg, model, videos, out, resume=True, checkpoint=str(ckpt))
    message = str(info.value)
    assert str(out / "model.json") in message and "new --out" in message and "--overwrite" in message
    for key in keys:
        assert key in message, message
    assert _files(out) == before, "a refused resume changes nothing"


def test_resume_of_a_random_init_extraction_with_another_random_model_is_refused(synth, tmp_path):
    cfg = _cfg(synth, **{"extract.shard_size": "6"})
    torch.manual_seed(0)
    first = vidclip.create_model(cfg.model).eval()
    records = str(tmp_path / "two.jsonl")
    from vidclip.data.lists import read_list, write_list

    write_list(read_list(cfg.data.test_list)[:2], records)
    run_extraction(cfg, first, records, tmp_path / "emb", resume=False)
    torch.manual_seed(1)
    with pytest.raises(IntegrityError, match=r"weights\.sha256"):
        run_extraction(cfg, vidclip.create_model(cfg.model).eval(), records, tmp_path / "emb", resume=True)


def test_existing_extraction_needs_resume_or_overwrite(synth, tmp_path, tiny_checkpoint, copy_of):
    out = copy_of()
    (out / "index_flat.faiss").write_bytes(b"old index")
    (out / "index_flat.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    cfg = _cfg(synth)
    model = _model(cfg, tiny_checkpoint)
    with pytest.raises(IntegrityError, match="already holds an extraction: pass --resume .* --overwrite"):
        run_extraction(cfg, model, str(cfg.data.test_list), out, resume=False, checkpoint=str(tiny_checkpoint))
    other = _other_checkpoint(tmp_path)
    run_extraction(cfg, _model(cfg, other), str(cfg.data.test_list), out, resume=False, checkpoint=str(other),
                   overwrite=True)
    assert not (out / "index_flat.faiss").exists() and (out / "notes.txt").read_text() == "mine"
    info = json.loads((out / "model.json").read_text())
    assert info["identity"]["weights"]["sha256"] == weights_sha256(_model(cfg, other).state_dict())


# ------------------------------------------------------------------------- extraction: damaged files, kills
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor bytes: the file still parses
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip], ids=["truncated", "corrupt"])
def test_damaged_shard_is_named_on_load_and_redone_on_resume(damage, synth, tiny_checkpoint, reference, copy_of):
    out = copy_of()
    shard = out / "shards" / "shard_00001.safetensors"
    damage(shard)
    with pytest.raises(IntegrityError) as info:
        load_embeddings(out)
    assert str(shard) in str(info.value) and "--resume" in str(info.value)
    cfg = _cfg(synth)
    summary = run_extraction(cfg, _model(cfg, tiny_checkpoint), str(cfg.data.test_list), out, resume=True,
                             checkpoint=str(tiny_checkpoint))
    assert summary["extracted_here"] == 2, "only the damaged shard is extracted again"
    assert _files(out) == _files(reference), "the repaired folder equals the clean extraction byte for byte"


def test_shard_killed_between_its_files_is_redone(synth, tiny_checkpoint, reference, copy_of):
    """A kill after the features but before the checksums / manifest part (or a part without checksums)."""
    out = copy_of()
    (out / "shards" / "shard_00000.sha256").unlink()
    (out / "shards" / "shard_00002.jsonl").unlink()
    (out / "manifest.jsonl").unlink()
    cfg = _cfg(synth)
    summary = run_extraction(cfg, _model(cfg, tiny_checkpoint), str(cfg.data.test_list), out, resume=True,
                             checkpoint=str(tiny_checkpoint))
    assert summary["extracted_here"] == 4
    assert _files(out) == _files(reference)


@pytest.mark.parametrize("damage", ["corrupt_line", "truncated", "latin1"])
def test_damaged_manifest_is_named_and_rewritten_by_resume(damage, synth, tiny_checkpoint, reference, copy_of):
    out = copy_of()
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    if damage == "corrupt_line":
        manifest.write_text("\n".join(lines[:2] + ['{"video_id": "x", "sta'] + lines[3:]) + "\n")
        with pytest.raises(IntegrityError, match=rf"{manifest}:3: corrupt manifest line"):
            read_manifest(out)
    elif damage == "truncated":
        _truncate(manifest)
    else:
        manifest.write_bytes(manifest.read_bytes().replace(b"test", "t\u00e9st".encode("latin-1"), 1))
        with pytest.raises(IntegrityError, match=rf"{manifest}: not UTF-8"):
            read_manifest(out)
    with pytest.raises(IntegrityError, match=rf"{manifest}: changed since extraction.*--resume"):
        load_embeddings(out)
    cfg = _cfg(synth)
    summary = run_extraction(cfg, _model(cfg, tiny_checkpoint), str(cfg.data.test_list), out, resume=True,
                             checkpoint=str(tiny_checkpoint))
    assert summary["extracted_here"] == 0 and _files(out) == _files(reference)


def test_corrupt_model_json_is_named_by_readers_and_resume(synth, tiny_checkpoint, copy_of):
    out = copy_of()
    (out / "model.json").write_text('{"arch": "tiny-vifi", "identity": {"weights"')
    cfg = _cfg(synth)
    for action in (lambda: load_embeddings(out),
                   lambda: run_extraction(cfg, _model(cfg, tiny_checkpoint), str(cfg.data.test_list), out,
                                          resume=True, checkpoint=str(tiny_checkpoint))):
        with pytest.raises(IntegrityError, match=rf"{out / 'model.json'}: unreadable.*--overwrite"):
            action()


def test_disk_full_while_writing_the_manifest_keeps_shards_and_resume_finishes(synth, tiny_checkpoint, reference,
                                                                               tmp_path, monkeypatch):
    cfg = _cfg(synth)
    model = _model(cfg, tiny_checkpoint)
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith("manifest.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "emb"
    with pytest.raises(VidclipError, match=r"could not write manifest.jsonl.*No space left.*--resume"):
        run_extraction(cfg, model, str(cfg.data.test_list), out, resume=False, checkpoint=str(tiny_checkpoint))
    monkeypatch.setattr(os, "replace", real_replace)
    summary = run_extraction(cfg, model, str(cfg.data.test_list), out, resume=True, checkpoint=str(tiny_checkpoint))
    assert summary["extracted_here"] == 0 and _files(out) == _files(reference)


# ------------------------------------------------------------------------------------------ unique ids, names
def test_ids_are_unique_by_construction_with_hostile_names(tmp_path):
    names = ["a/b.mp4", "b.mp4", "c.mp4", "c.avi", "d.mp4", "y.mp4.avi", "y.mp4", "y.avi", "deep/er/e.mkv",
             "spa ce.mp4", "uni\u2603\u00e9.mp4", "new\nline.mp4", "quote\"s.webm", "-dash.mp4"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    records, root = discover_inputs(str(tmp_path), [".mp4", ".avi", ".mkv", ".webm"])
    ids = {r.path: r.video_id for r in records}
    assert len(set(ids.values())) == len(names) == len(records)
    assert ids["a/b.mp4"] == "a/b.mp4" and ids["b.mp4"] == "b.mp4"  # stem 'b' repeats: relative paths
    assert ids["c.mp4"] == "c.mp4" and ids["c.avi"] == "c.avi"
    assert ids["d.mp4"] == "d" and ids["deep/er/e.mkv"] == "e" and ids["spa ce.mp4"] == "spa ce"
    assert ids["y.mp4.avi"] == "y.mp4.avi" and ids["y.mp4"] == "y.mp4"  # stem 'y.mp4' is another file's path
    assert ids["new\nline.mp4"] == "new\nline"


def test_extraction_of_a_folder_with_repeated_stems_keeps_every_video(synth, tiny_checkpoint, tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    source = sorted((synth / "videos" / "test").glob("*.mp4"))
    shutil.copy(source[0], videos / "clip.mp4")
    shutil.copy(source[1], videos / "sub" / "clip.mp4")
    shutil.copy(source[2], videos / "clip.avi")  # an mp4 payload named .avi decodes all the same
    cfg = _cfg(synth)
    run_extraction(cfg, _model(cfg, tiny_checkpoint), str(videos), tmp_path / "emb", resume=False)
    cached = load_embeddings(tmp_path / "emb")
    assert sorted(cached.video_ids) == ["clip.avi", "clip.mp4", "sub/clip.mp4"] and not cached.failed


# ------------------------------------------------------------------------- search: recorded model, index cache
def test_search_uses_the_recorded_model_and_refuses_other_weights(synth, tiny_checkpoint, tmp_path, copy_of):
    from vidclip.engine.search import VideoSearcher

    out = copy_of()
    searcher = VideoSearcher(str(out))
    assert weights_sha256(searcher.model.state_dict()) == weights_sha256(_model(_cfg(synth), tiny_checkpoint)
                                                                          .state_dict())
    with pytest.raises(IntegrityError, match=r"--checkpoint .* is not the model that produced these embeddings"):
        VideoSearcher(str(out), checkpoint=str(_other_checkpoint(tmp_path)))


def test_random_init_extraction_is_seeded_recorded_and_rebuilt(synth, tmp_path):
    from vidclip.engine.evaluate import run_evaluation
    from vidclip.engine.search import VideoSearcher

    cfg = _cfg(synth, **{"extract.shard_size": "6"})
    assert cfg.model.pretrained is None
    out = tmp_path / "emb"
    extract.extract_embeddings(cfg, str(cfg.data.test_list), out)
    weights = json.loads((out / "model.json").read_text())["identity"]["weights"]
    assert weights["source"] is None and weights["random_init_seed"] == cfg.train.seed
    searcher = VideoSearcher(str(out))  # rebuilds the same random model from the recorded seed
    assert weights_sha256(searcher.model.state_dict()) == weights["sha256"]
    report, _ = run_evaluation(cfg, embeddings=str(out), output=str(tmp_path / "m.json"))
    torch.manual_seed(cfg.train.seed)
    assert report["t2v"] == _eval_with(cfg, vidclip.create_model(cfg.model))["t2v"]  # the same seeded model

    # an extraction made by an unsaved model without a seed cannot be searched without its weights
    unsaved = tmp_path / "unsaved"
    torch.manual_seed(5)
    run_extraction(cfg, vidclip.create_model(cfg.model).eval(), str(cfg.data.test_list), unsaved, resume=False)
    with pytest.raises(IntegrityError, match=r"unsaved model .* Pass --checkpoint"):
        VideoSearcher(str(unsaved))


def _eval_with(cfg, model):
    from vidclip.engine.evaluate import evaluate

    return evaluate(cfg, model.eval(), torch.device("cpu"), show_progress=False)


def _search_rows(searcher, query: str, k: int = 6):
    return [(h.video_id, round(h.score, 5)) for h in searcher.search(query, k=k)]


def test_index_cache_is_rebuilt_when_stale_corrupt_or_unwritable(synth, tiny_checkpoint, tmp_path, copy_of,
                                                                 monkeypatch, caplog):
    from vidclip.engine import search

    out = copy_of()
    query = "a red circle moves to the left"
    first = search.VideoSearcher(str(out))
    expected = _search_rows(first, query)
    index, stamp = out / "index_flat.faiss", out / "index_flat.json"
    assert index.is_file() and json.loads(stamp.read_text())["sha256"] == sha256_file(index)

    _truncate(index)  # corrupt cache: rebuilt, same answers
    assert _search_rows(search.VideoSearcher(str(out)), query) == expected
    assert "corrupt index cache" in caplog.text
    stamp.write_text('{"identity": ')  # truncated stamp: rebuilt
    assert _search_rows(search.VideoSearcher(str(out)), query) == expected

    # stale cache: another extraction in the folder, the old index and stamp put back
    old_index, old_stamp = index.read_bytes(), stamp.read_bytes()
    other = _other_checkpoint(tmp_path)
    cfg = _cfg(synth)
    run_extraction(cfg, _model(cfg, other), str(cfg.data.test_list), out, resume=False, checkpoint=str(other),
                   overwrite=True)
    index.write_bytes(old_index)
    stamp.write_bytes(old_stamp)
    fresh = search.VideoSearcher(str(out))
    assert index.read_bytes() != old_index, "the stale index was replaced"
    scratch = Path(shutil.copytree(out, tmp_path / "scratch"))  # the same embeddings indexed from scratch
    for p in scratch.glob("index_*"):
        p.unlink()
    assert _search_rows(fresh, query) == _search_rows(search.VideoSearcher(str(scratch)), query)
    assert _search_rows(fresh, query) != expected

    # disk full while caching the index: search still answers, nothing half-written is left
    for p in out.glob("index_*"):
        p.unlink()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(search, "atomic_write", full)
    assert _search_rows(search.VideoSearcher(str(out)), query) == _search_rows(fresh, query)
    assert not list(out.glob("index_*")) and not list(out.glob(".*.tmp"))


def test_search_arguments_and_hostile_queries(copy_of, tmp_path):
    from vidclip.engine.search import VideoSearcher
    from vidclip.engine.search_html import write_results_page

    searcher = VideoSearcher(str(copy_of()))
    for k, rerank in ((0, False), (-2, True), (-2, False)):
        with pytest.raises(ConfigError, match=rf"--k {k}.*at least 1"):
            searcher.search("a circle", k=k, rerank=rerank)
    with pytest.raises(ConfigError, match="--rerank-k 0"):
        searcher.search("a circle", k=2, rerank=True, rerank_k=0)
    queries = ["", "\x00\x1b[31m\u202e\r\n", "word " * 2000, "<script>alert(1)</script>", "None", "\U0001F600" * 40]
    results = {q: searcher.search(q, k=8, rerank=True) for q in queries}
    assert all(len(hits) == 6 for hits in results.values())  # k larger than the collection: every video once
    page = write_results_page(tmp_path / "p.html", results, searcher.resolve_path, 1, True).read_text()
    assert "<script>alert" not in page and "&lt;script&gt;" in page


@pytest.mark.slow  # two interpreter start-ups (~15 s each on the shared machine)
def test_cli_refusals_are_one_line_without_traceback(tmp_path):
    for args, expected in ((["--index", str(tmp_path / "none"), "--query", "x"], "model.json not found"),
                           (["--index", str(tmp_path), "--query", "x", "--k", "0"], "--k 0")):
        done = subprocess.run([sys.executable, "tools/search.py", *args], cwd=REPO, env=ENV, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


# ------------------------------------------------------------------------------ evaluation from embeddings
def _head_arch(head: str) -> str:
    return f"tiny-{head}"


@pytest.mark.parametrize("head", ["vifi", "glscl", "ucofia", "norton"])
def test_embeddings_evaluation_equals_checkpoint_evaluation_bit_for_bit(head, synth, tmp_path):
    from vidclip.engine.evaluate import evaluate, run_evaluation
    from vidclip.heads import list_heads

    assert head in list_heads()
    arch = _head_arch(head)
    cfg = _cfg(synth, **{"model.arch": arch, "extract.shard_size": "4"})
    checkpoint = _other_checkpoint(tmp_path, arch, seed=2)
    model = _model(cfg, checkpoint)
    run_extraction(cfg, model, str(cfg.data.test_list), tmp_path / "emb", resume=False, checkpoint=str(checkpoint))
    from_model, sim_model = evaluate(cfg, model, torch.device("cpu"), show_progress=False, return_similarity=True)
    recorded = load_recorded_model(tmp_path / "emb", cfg.model)
    from_emb, sim_emb = evaluate(cfg, recorded, torch.device("cpu"), embeddings=str(tmp_path / "emb"),
                                 show_progress=False, return_similarity=True)
    assert torch.equal(sim_model, sim_emb)
    assert (from_model["t2v"], from_model["v2t"]) == (from_emb["t2v"], from_emb["v2t"])
    by_tool, _ = run_evaluation(cfg, embeddings=str(tmp_path / "emb"), output=str(tmp_path / "m.json"))
    assert (by_tool["t2v"], by_tool["v2t"]) == (from_model["t2v"], from_model["v2t"])


def test_embeddings_evaluation_refuses_other_checkpoint_config_or_missing_features(synth, tmp_path,
                                                                                   tiny_checkpoint, copy_of):
    from vidclip.engine.evaluate import run_evaluation

    out = copy_of()
    cfg = _cfg(synth)
    with pytest.raises(IntegrityError, match=r"--checkpoint .* is not the model that produced these embeddings"):
        run_evaluation(cfg, checkpoint=str(_other_checkpoint(tmp_path)), embeddings=str(out),
                       output=str(tmp_path / "m.json"))
    report, _ = run_evaluation(cfg, checkpoint=str(tiny_checkpoint), embeddings=str(out),
                               output=str(tmp_path / "m.json"))  # the same weights: accepted
    assert report["num_failed_videos"] == 0
    with pytest.raises(IntegrityError, match=r"other settings than this config: .*model\.arch tiny-vifi -> "
                                             r"tiny-glscl.*config\.yaml"):
        run_evaluation(_cfg(synth, **{"model.arch": "tiny-glscl"}), embeddings=str(out),
                       output=str(tmp_path / "m.json"))
    pooled_only = tmp_path / "pooled"
    gcfg = _cfg(synth, **{"model.arch": "tiny-glscl", "extract.save_frames": "false", "extract.shard_size": "6"})
    ckpt = _other_checkpoint(tmp_path, "tiny-glscl")
    run_extraction(gcfg, _model(gcfg, ckpt), str(gcfg.data.test_list), pooled_only, resume=False,
                   checkpoint=str(ckpt))
    with pytest.raises(IntegrityError, match=r"lack the feature\(s\) .* extract\.save_frames=true"):
        run_evaluation(gcfg, embeddings=str(pooled_only), output=str(tmp_path / "m.json"))


def test_evaluation_of_an_empty_list_is_a_named_error(synth, tmp_path, tiny_checkpoint):
    from vidclip.engine.evaluate import run_evaluation

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataListError, match=rf"data.test_list={empty}: no videos to evaluate"):
        run_evaluation(_cfg(synth, **{"data.test_list": str(empty)}), checkpoint=str(tiny_checkpoint),
                       output=str(tmp_path / "m.json"))


# ------------------------------------------------------------------------------------ checkpoints: no pickle
class _Payload:
    """Unpickling this creates ``marker``: proof that a loader executed code from a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.encoder(x).pow(2).mean()


def _toy_run(run_dir: Path, seed: int = 0):
    from accelerate import Accelerator

    from vidclip.engine.checkpoint import CheckpointManager

    torch.manual_seed(seed)
    acc = Accelerator(cpu=True)
    model = _Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    model, opt = acc.prepare(model, opt)
    acc.register_for_checkpointing(sched)
    manager = CheckpointManager(acc, model, run_dir, arch="toy", run_config={"optimisation": {"train.lr": 0.05}})
    return acc, model, opt, sched, manager


def _saved_toy(run_dir: Path) -> Path:
    acc, model, opt, sched, manager = _toy_run(run_dir)
    for _ in range(2):
        model(torch.randn(5, 4)).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return manager.save(2, {"epoch": 0})


RESUME_FILES = ["model.safetensors", "optimizer.safetensors", "optimizer.json", "custom_state_0.json",
                "rng_state_0.safetensors", "trainer_state.json", "run_config.json", "checksums.json", "latest"]


def test_a_resume_reads_only_non_executable_files(tmp_path):
    step = _saved_toy(tmp_path / "run")
    assert sorted(p.name for p in step.iterdir()) == sorted(set(RESUME_FILES) - {"latest"})
    assert not list(step.glob("*.pkl")) and not list(step.glob("*.bin")) and not list(step.glob("*.pt"))
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    for name in ("optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl", "scaler.pt"):
        (step / name).write_bytes(payload)  # what accelerate would read: never opened by vidclip
    *_, manager = _toy_run(tmp_path / "run", seed=1)
    from vidclip.engine.checkpoint import find_latest

    state = manager.load(find_latest(tmp_path / "run"))
    assert state["step"] == 2 and not marker.exists()


@pytest.mark.parametrize("name", RESUME_FILES)
def test_a_pickle_payload_in_any_file_a_resume_reads_does_not_run(name, tmp_path):
    """The payload replaces the file and the checksums are recomputed (an attacker controls them too)."""
    from vidclip.engine.checkpoint import find_latest
    from vidclip.engine.train import check_resume_config

    step = _saved_toy(tmp_path / "run")
    marker = tmp_path / "pwned"
    target = step.parent / name if name == "latest" else step / name
    target.write_bytes(pickle.dumps(_Payload(marker)))
    if name not in ("checksums.json", "latest"):
        write_checksums(step, [p.name for p in step.iterdir() if p.name != "checksums.json"])
    *_, manager = _toy_run(tmp_path / "run", seed=1)
    if name == "latest":
        assert manager.load(find_latest(tmp_path / "run"))["step"] == 2  # a bad pointer is ignored
    elif name == "run_config.json":
        with pytest.raises(CheckpointError, match=rf"{target}: missing or unreadable"):
            check_resume_config(step, {"optimisation": {}})
    else:
        with pytest.raises(VidclipError) as info:
            manager.load(step)
        assert name in str(info.value), str(info.value)
    assert not marker.exists(), f"unpickling {name} ran code"


@pytest.mark.parametrize("name", ["optimizer.safetensors", "rng_state_0.safetensors", "optimizer.json",
                                  "model.safetensors", "custom_state_0.json"])
def test_truncated_training_state_is_named(name, tmp_path):
    step = _saved_toy(tmp_path / "run")
    _truncate(step / name)
    *_, manager = _toy_run(tmp_path / "run", seed=1)
    with pytest.raises(IntegrityError, match=rf"{step}: {name} truncated or corrupt.*--resume"):
        manager.load(step)


def test_corrupt_weights_of_a_checkpoint_are_refused_by_every_reader(tmp_path):
    """Evaluation, extraction and ``create_model`` read ``model.safetensors`` through ``load_model_weights``."""
    from vidclip.models.weights import load_model_weights

    step = _saved_toy(tmp_path / "run")
    _flip(step / "model.safetensors")  # still parses: only the checksum can tell
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt \(SHA-256 differs from .*checksums.json"):
        load_model_weights(_Toy(), tmp_path / "run")


def test_a_checkpoint_with_pickled_state_is_refused_not_unpickled(tmp_path):
    from accelerate import Accelerator

    from vidclip.models.weights import save_model_weights

    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(_Toy(), torch.optim.AdamW(_Toy().parameters()))
    step = tmp_path / "run" / "checkpoints" / "step_1"
    acc.save_state(str(step))  # what older vidclip versions wrote: optimizer.bin, random_states_0.pkl
    save_model_weights(acc.unwrap_model(model), step / "model.safetensors")
    (step / "trainer_state.json").write_text('{"step": 1}')
    *_, manager = _toy_run(tmp_path / "run", seed=1)
    with pytest.raises(CheckpointError, match=r"pickled state \(.*random_states_0.pkl.*never unpickles"):
        manager.load(step)


# ------------------------------------------------------------------------------ run folders, resume settings
def _train_cfg(synth: Path, run_dir: Path, **extra: str):
    values = {"train.output_dir": str(run_dir), "train.batch_size": "2", "train.max_steps": "2",
              "data.val_list": "null"}
    values.update(extra)
    return load_config(TINY_CONFIG, synth_overrides(synth, **values))


def _fake_checkpoint(cfg, run_dir: Path) -> Path:
    """A complete step folder whose run_config.json records ``cfg`` (what a finished run leaves)."""
    from vidclip.engine.train import run_identity
    from vidclip.models.weights import save_model_weights

    step = run_dir / "checkpoints" / "step_2"
    step.mkdir(parents=True)
    save_model_weights(vidclip.create_model(cfg.model), step / "model.safetensors", arch=cfg.model.arch)
    (step / "trainer_state.json").write_text('{"step": 2}')
    (step / "run_config.json").write_text(json.dumps(run_identity(cfg, 1)))
    return step


def test_training_into_a_folder_with_checkpoints_needs_resume_or_overwrite(synth, tmp_path):
    from vidclip.engine.train import Trainer

    run_dir = tmp_path / "run"
    cfg = _train_cfg(synth, run_dir)
    step = _fake_checkpoint(cfg, run_dir)
    (run_dir / "val_history.jsonl").write_text('{"step": 2}\n')
    with pytest.raises(ConfigError, match=rf"train.output_dir={run_dir} already holds checkpoints \(newest step_2\): "
                                          r"pass --resume .* --overwrite"):
        Trainer(cfg)
    assert step.is_dir()
    Trainer(cfg, overwrite=True)
    assert not step.exists() and not (run_dir / "val_history.jsonl").exists()


def test_resume_with_changed_optimisation_keys_is_refused_naming_them(synth, tmp_path):
    from vidclip.engine.train import Trainer, check_resume_config, run_identity

    run_dir = tmp_path / "run"
    cfg = _train_cfg(synth, run_dir)
    step = _fake_checkpoint(cfg, run_dir)
    changed = _train_cfg(synth, run_dir, **{"train.lr": "0.5", "train.batch_size": "4"})
    with pytest.raises(ConfigError) as info:
        Trainer(changed, resume="auto")
    message = str(info.value)
    assert str(step / "run_config.json") in message and "train.batch_size 2 -> 4" in message
    assert "train.lr 0.002 -> 0.5" in message and "--allow-change" in message
    with pytest.raises(ConfigError, match=r"optimisation: train.batch_size 2 -> 4\. "):  # lr allowed, logged
        Trainer(changed, resume="auto", allow_changes=["train.lr"])
    safe = _train_cfg(synth, run_dir, **{"train.log_every": "7", "data.num_workers": "0", "eval.batch_size": "3"})
    check_resume_config(step, run_identity(safe, 1))  # logging / evaluation keys may change
    edited = tmp_path / "train_edited.jsonl"
    edited.write_text(Path(cfg.data.train_list).read_text().replace("circle", "disc"))
    other_list = _train_cfg(synth, run_dir, **{"data.train_list": str(edited)})
    with pytest.raises(ConfigError, match=r"data.train_list .*data.train_list.sha256"):
        check_resume_config(step, run_identity(other_list, 1))
    with pytest.raises(ConfigError, match=r"num_processes 1 -> 2"):
        check_resume_config(step, run_identity(cfg, 2))


# --------------------------------------------------------------------------------- data files and small configs
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_annotation_and_list_files_truncated_corrupt_or_not_utf8_are_named(tmp_path):
    from vidclip.data import converters as conv
    from vidclip.data.lists import read_list

    csv = _write(tmp_path / "MSRVTT_JSFUSION_test.csv",
                 b"key,vid_key,video_id,sentence\nret0,msr7,video7,a man sings\nret1,msr8,video8\n")
    with pytest.raises(DataListError, match=rf"{csv}:3: no value for \['sentence'\]"):
        conv.read_msrvtt_test_csv(csv)
    latin = "key,vid_key,video_id,sentence\nret0,msr7,video7,un caf\u00e9\n".encode("latin-1")
    cases = [(conv.read_msrvtt_test_csv, _write(tmp_path / "latin.csv", latin)),
             (conv.read_id_list, _write(tmp_path / "ids.txt", b"video1\nvid\xe9o2\n")),
             (conv.read_msrvtt_data_json, _write(tmp_path / "data.json", b'{"videos": [{"video_id": "\xff"}]}')),
             (read_list, _write(tmp_path / "list.jsonl", b'{"video_id": "a", "path": "a.mp4", "captions": []}\n'
                                                         b'{"video_id": "b\xe9", "path": "b.mp4", "captions": []}\n'))]
    for reader, path in cases:
        with pytest.raises(DataListError, match=rf"{path}.*UTF-8"):
            reader(path)
    with pytest.raises(DataListError, match=r"list.jsonl:2: not UTF-8"):
        read_list(tmp_path / "list.jsonl")
    truncated = _write(tmp_path / "trunc.json", b'{"videos": [{"video_id": "video1", "spl')
    with pytest.raises(DataListError, match=rf"{truncated}: not valid JSON"):
        conv.read_msrvtt_data_json(truncated)
    cut = _write(tmp_path / "cut.jsonl", b'{"video_id": "a", "path": "a.mp4", "captions": []}\n{"video_id": "b", "pa')
    with pytest.raises(DataListError, match=rf"{cut}:2: malformed JSON"):
        read_list(cut)


@pytest.mark.parametrize("overrides, message", [
    (["train.betas=[0.9]"], r"train.betas=\[0.9\] must be two numbers"),
    (["model.temporal.type=seq_transformer", "model.temporal.num_layers=0"], r"model.temporal.num_layers=0"),
])
def test_small_config_mistakes_fail_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_CONFIG, overrides)


@pytest.mark.parametrize("content", [b"model:\n  arch: tiny-vifi\ntrain:\n  lr: [0.1\n", b"model: {arch: tiny",
                                     b"model:\n  arch: tiny-vif\xe9\n"], ids=["corrupt", "truncated", "latin1"])
def test_config_file_truncated_corrupt_or_not_utf8_is_named(content, tmp_path):
    path = _write(tmp_path / "exp.yaml", content)
    with pytest.raises(ConfigError, match=rf"{path}: not valid YAML"):
        load_config(path)
