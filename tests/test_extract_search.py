"""Extraction -> manifest/shards -> search, on the synthetic dataset with a tiny model (random weights)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vidclip
from vidclip.data.synthetic import make_synthetic_dataset
from vidclip.engine.extract import load_embeddings, read_manifest, run_extraction
from vidclip.engine.search import VideoSearcher, build_faiss_index

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(out, num_train=8, num_val=4, num_test=12, seed=3)
    return out


def _cfg(synth, arch="tiny-vifi", extra=()):
    return vidclip.load_config(REPO / "configs" / "synthetic_tiny_vifi.yaml", [
        f"model.arch={arch}", f"data.videos_root={synth / 'videos'}",
        f"data.train_list={synth / 'synthetic_train.jsonl'}", f"data.test_list={synth / 'synthetic_test.jsonl'}",
        "data.num_workers=0", "extract.dtype=float32", "extract.shard_size=5", *extra])


def _checkpoint(tmp_path, arch="tiny-vifi"):
    from vidclip.models.weights import save_model_weights

    torch.manual_seed(0)
    model = vidclip.create_model(arch)
    path = save_model_weights(model, tmp_path / "model.safetensors", arch=arch)
    return model, path


def test_manifest_shards_and_failures(synth, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for f in sorted((synth / "videos" / "test").glob("*.mp4"))[:6]:
        (videos / f.name).write_bytes(f.read_bytes())
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "text.mp4").write_text("not a video")
    (videos / "cut.mp4").write_bytes((synth / "videos" / "test" / "test00000.mp4").read_bytes()[:300])
    cfg = _cfg(synth)
    model, _ = _checkpoint(tmp_path)
    summary = run_extraction(cfg, model.eval(), str(videos), tmp_path / "emb", resume=False)
    entries = read_manifest(tmp_path / "emb")
    assert summary["manifest_lines"] == len(entries) == 9
    assert sorted(e["video_id"] for e in entries if e["status"] == "failed") == ["cut", "empty", "text"]
    for e in entries:
        if e["status"] == "failed":
            assert e["error"] and e["shard"] is None
        else:
            shard = load_file(str(tmp_path / "emb" / e["shard"]))
            assert shard["pooled"].shape[1] == 64 and e["num_frames"] == cfg.data.test_num_frames or cfg.data.num_frames
    assert len(list((tmp_path / "emb" / "shards").glob("*.safetensors"))) == 2  # 9 inputs / shard size 5


def test_extracted_embeddings_equal_evaluation_features(synth, tmp_path):
    from vidclip.data.builders import build_dataset
    from vidclip.data.loaders import build_eval_loader
    from vidclip.engine.encode import encode_video_loader

    cfg = _cfg(synth)
    model, _ = _checkpoint(tmp_path)
    run_extraction(cfg, model.eval(), str(cfg.data.test_list), tmp_path / "emb", resume=False)
    cached = load_embeddings(str(tmp_path / "emb"))
    dataset = build_dataset(cfg, "test", train=False)
    encoded = encode_video_loader(model, build_eval_loader(cfg, dataset), torch.device("cpu"), show_progress=False)
    assert cached.video_ids == [dataset.records[i].video_id for i in encoded.indices]
    assert torch.equal(cached.features["pooled"], encoded.features["pooled"])


@pytest.mark.slow
def test_search_returns_the_model_argmax_and_html(synth, tmp_path):
    cfg = _cfg(synth)
    model, ckpt = _checkpoint(tmp_path)
    run_extraction(cfg, model.eval(), str(cfg.data.test_list), tmp_path / "emb", resume=False, checkpoint=str(ckpt))
    searcher = VideoSearcher(str(tmp_path / "emb"))
    query = "a red circle moves to the left"
    hits = searcher.search(query, k=3)
    with torch.no_grad():
        sims = model.similarity(model.encode_text([query]), searcher.cache.features)[0]
    top = searcher.cache.video_ids.index(hits[0].video_id)
    assert abs(float(sims[top]) - float(sims.max())) < 1e-5  # (time-reversed twins may tie under mean pooling)
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].score >= hits[1].score >= hits[2].score
    assert torch.allclose(torch.tensor([h.score for h in hits]), sims.sort(descending=True).values[:3], atol=1e-5)
    out = subprocess.run([sys.executable, str(REPO / "tools" / "search.py"), "--index", str(tmp_path / "emb"),
                          "--query", query, "--k", "2", "--json", "--rerank", "--html", str(tmp_path / "p.html")],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert [h["score"] for h in result[query]] == pytest.approx([h.score for h in hits[:2]], abs=1e-5)
    assert (tmp_path / "p.html").read_text().count("data:image/jpeg;base64,") >= 2


def test_approximate_index_recall():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(3000, 32, generator=g), dim=-1).numpy()
    exact = build_faiss_index(x, "flat")
    _, truth = exact.search(x[:50], 10)
    for kind in ("fp16", "ivf", "hnsw"):
        _, found = build_faiss_index(x, kind).search(x[:50], 10)
        recall = sum(len(set(a) & set(b)) for a, b in zip(found, truth)) / truth.size
        assert recall > 0.5, (kind, recall)


def _extract_cmd(synth, out, ckpt, *extra):
    return [sys.executable, str(REPO / "tools" / "extract_embeddings.py"), "--config",
            str(REPO / "configs" / "synthetic_tiny_vifi.yaml"), "--videos", str(synth / "synthetic_test.jsonl"),
            "--out", str(out), "--checkpoint", str(ckpt), "--shard-size", "2", *extra,
            f"data.videos_root={synth / 'videos'}", "data.num_workers=0", "extract.batch_size=1"]


@pytest.mark.slow
def test_killed_extraction_resumes_byte_identical(synth, tmp_path):
    _, ckpt = _checkpoint(tmp_path)
    subprocess.run(_extract_cmd(synth, tmp_path / "full", ckpt), check=True, capture_output=True)
    proc = subprocess.Popen(_extract_cmd(synth, tmp_path / "part", ckpt), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "part" / "shards").glob("*.jsonl"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "part" / "manifest.jsonl").exists()
    subprocess.run(_extract_cmd(synth, tmp_path / "part", ckpt, "--resume"), check=True, capture_output=True)
    full_files = sorted(p.relative_to(tmp_path / "full") for p in (tmp_path / "full" / "shards").iterdir())
    part_files = sorted(p.relative_to(tmp_path / "part") for p in (tmp_path / "part" / "shards").iterdir())
    assert full_files == part_files
    for rel in full_files:
        assert (tmp_path / "full" / rel).read_bytes() == (tmp_path / "part" / rel).read_bytes(), rel
    assert (tmp_path / "full" / "manifest.jsonl").read_bytes() == (tmp_path / "part" / "manifest.jsonl").read_bytes()


@pytest.mark.slow
def test_two_process_extraction_covers_every_input_once(synth, tmp_path):
    _, ckpt = _checkpoint(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           *_extract_cmd(synth, tmp_path / "dp", ckpt)[1:]]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    entries = read_manifest(tmp_path / "dp")
    ids = [e["video_id"] for e in entries]
    assert len(ids) == len(set(ids)) == 12
    single = tmp_path / "single"
    subprocess.run(_extract_cmd(synth, single, ckpt), check=True, capture_output=True)
    a, b = load_embeddings(str(tmp_path / "dp")), load_embeddings(str(single))
    assert a.video_ids == b.video_ids
    assert torch.allclose(a.features["pooled"].float(), b.features["pooled"].float(), atol=1e-3)
