"""Robustness 4: training and extraction SIGKILLed at several seeded-random points (real subprocesses) and resumed
give the same final state as an uninterrupted run; full disks and unwritable outputs give clear errors and leave
earlier outputs intact. (One kill + resume each: tests/test_train.py, tests/test_extract_search.py; checkpoint-level
disk-full / unwritable / kill-during-save: tests/test_checkpoint.py.)"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidclip.config import load_config
from vidclip.engine.checkpoint import find_latest, list_checkpoints
from vidclip.errors import VidclipError

from .helpers import REPO, TINY_CONFIG, synth_overrides

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def _kill_when(cmd, log: Path, ready, delay: float, timeout: float = 120) -> bool:
    """Start ``cmd``; once ``ready()`` holds wait ``delay`` s and SIGKILL it. False when it finished first."""
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=out, stderr=out)
        deadline = time.time() + timeout
        while proc.poll() is None and not ready() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _step(path: Path | None) -> int:
    return int(path.name.split("_")[1]) if path is not None else 0


# ------------------------------------------------------------------------------------------------- training
def _train_args(synth, run_dir):
    return ["--config", str(TINY_CONFIG), *synth_overrides(synth, **{
        "train.output_dir": str(run_dir), "train.max_steps": "6", "train.save_every": "1",
        "train.keep_checkpoints": "10",
        "train.batch_size": "2", "data.val_list": "null", "train.log_every": "1", "train.seed": "3"})]


@pytest.mark.slow
def test_training_killed_at_random_points_resumes_to_the_same_weights(synth, tmp_path):
    from vidclip.cli.train import parse_args
    from vidclip.engine.train import Trainer

    args = parse_args(_train_args(synth, tmp_path / "reference"))
    Trainer(load_config(args.config, args.overrides)).fit()  # uninterrupted, in-process
    _, reference = find_latest(tmp_path / "reference"), load_file(str(find_latest(tmp_path / "reference") /
                                                                        "model.safetensors"))
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "tools/train.py", *_train_args(synth, run_dir)]
    rng = random.Random(20240607)
    kills = []
    for attempt in range(2):  # two kills at seeded-random points (some land mid-checkpoint), then a clean finish
        target = _step(find_latest(run_dir)) + rng.randint(1, 2)
        delay = rng.uniform(0.0, 0.4)
        killed = _kill_when(cmd + (["--resume"] if attempt else []), tmp_path / "train.log",
                            lambda target=target: _step(find_latest(run_dir)) >= target, delay)
        kills.append((target, round(delay, 2), killed, _step(find_latest(run_dir))))
        for checkpoint in list_checkpoints(run_dir):  # every complete checkpoint is loadable
            load_file(str(checkpoint / "model.safetensors"))
            json.loads((checkpoint / "trainer_state.json").read_text())
    assert sum(k[2] for k in kills) >= 1, kills
    done = subprocess.run(cmd + ["--resume"], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    final = find_latest(run_dir)
    assert final.name == "step_6", kills
    expected = json.loads((find_latest(tmp_path / "reference") / "trainer_state.json").read_text())
    assert json.loads((final / "trainer_state.json").read_text()) == expected  # same samples seen, same position
    got = load_file(str(final / "model.safetensors"))
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=f"weights differ at {key} after {kills}")


# ------------------------------------------------------------------------------------------------- extraction
def _extract_cmd(synth, out, checkpoint, *extra):
    return [sys.executable, "tools/extract_embeddings.py", "--config", str(TINY_CONFIG), "--videos",
            str(synth / "synthetic_test.jsonl"), "--out", str(out), "--checkpoint", str(checkpoint),
            "--shard-size", "1", *extra, *synth_overrides(synth, **{"extract.batch_size": "1"})]


def _complete_shards(out: Path) -> int:
    return len(list((out / "shards").glob("shard_*.jsonl")))


@pytest.mark.slow
def test_extraction_killed_at_random_points_resumes_byte_identical(synth, tmp_path, tiny_checkpoint):
    full = tmp_path / "full"
    subprocess.run(_extract_cmd(synth, full, tiny_checkpoint), cwd=REPO, env=ENV, check=True, capture_output=True)
    out = tmp_path / "part"
    rng = random.Random(7)
    kills = []
    for attempt in range(2):
        target = _complete_shards(out) + rng.randint(1, 2) if out.exists() else rng.randint(1, 2)
        delay = rng.uniform(0.0, 0.3)
        cmd = _extract_cmd(synth, out, tiny_checkpoint, *(["--resume"] if attempt else []))
        def ready(target=target):
            return out.exists() and _complete_shards(out) >= target

        killed = _kill_when(cmd, tmp_path / "extract.log", ready, delay)
        kills.append((target, round(delay, 2), killed, _complete_shards(out)))
        for shard in (out / "shards").glob("shard_*.safetensors"):  # never a half-written shard under its name
            load_file(str(shard))
    assert sum(k[2] for k in kills) >= 1, kills
    subprocess.run(_extract_cmd(synth, out, tiny_checkpoint, "--resume"), cwd=REPO, env=ENV, check=True,
                   capture_output=True)
    names = sorted(p.name for p in (full / "shards").iterdir())
    assert names == sorted(p.name for p in (out / "shards").iterdir()), "no leftover or missing shard files"
    for name in names:
        assert (full / "shards" / name).read_bytes() == (out / "shards" / name).read_bytes(), (name, kills)
    manifest = (out / "manifest.jsonl").read_text().splitlines()
    assert (full / "manifest.jsonl").read_text().splitlines() == manifest
    assert len({json.loads(line)["video_id"] for line in manifest}) == len(manifest) == 6  # none lost, none twice


# ------------------------------------------------------------------------------------------------- full disk
def test_extraction_disk_full_is_clear_and_keeps_earlier_shards(synth, tmp_path, tiny_checkpoint, monkeypatch):
    import vidclip
    from vidclip.engine import extract

    cfg = load_config(TINY_CONFIG, synth_overrides(synth, **{"extract.shard_size": "2", "model.arch": "tiny-vifi"}))
    model = vidclip.create_model(cfg.model, pretrained=str(tiny_checkpoint)).eval()
    real_replace, calls = os.replace, {"n": 0}

    def replace_then_disk_full(src, dst):
        if str(dst).endswith(".safetensors"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_disk_full)
    out = tmp_path / "emb"
    with pytest.raises(VidclipError) as info:
        extract.run_extraction(cfg, model, str(cfg.data.test_list), out, resume=False)
    message = str(info.value)
    assert "shard_00001" in message and "No space left" in message and "--resume" in message
    first = load_file(str(out / "shards" / "shard_00000.safetensors"))  # the earlier shard is intact
    assert first["pooled"].shape[0] == 2 and (out / "shards" / "shard_00000.jsonl").is_file()
    assert not list((out / "shards").glob(".*.tmp")), "temporary files are cleaned up"
    monkeypatch.setattr(os, "replace", real_replace)
    summary = extract.run_extraction(cfg, model, str(cfg.data.test_list), out, resume=True)
    assert summary["manifest_lines"] == 6 and summary["extracted_here"] == 4  # only the missing shards


def test_unwritable_outputs_fail_before_work_with_a_clear_error(synth, tmp_path, tiny_checkpoint):
    """Running as root, chmod does not stop writes: a path below a regular file is unwritable for everyone."""
    import vidclip
    from vidclip.cli import eval as eval_cli
    from vidclip.engine import extract
    from vidclip.engine.train import Trainer

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cfg = load_config(TINY_CONFIG, synth_overrides(synth, **{"model.arch": "tiny-vifi",
                                                             "train.output_dir": str(blocker / "run"),
                                                             "train.batch_size": "2",
                                                             "eval.output": str(blocker / "metrics.json")}))
    model = vidclip.create_model(cfg.model, pretrained=str(tiny_checkpoint)).eval()
    with pytest.raises(VidclipError, match=r"cannot write to output directory .*a_file/emb"):
        extract.run_extraction(cfg, model, str(cfg.data.test_list), blocker / "emb", resume=False)
    with pytest.raises(VidclipError, match=r"a_file/run"):
        Trainer(cfg)
    started = time.perf_counter()
    with pytest.raises(VidclipError, match=r"eval.output.*a_file"):
        eval_cli.main(["--config", str(TINY_CONFIG), "--checkpoint", str(tiny_checkpoint),
                       *synth_overrides(synth, **{"model.arch": "tiny-vifi",
                                                  "eval.output": str(blocker / "metrics.json")})])
    assert time.perf_counter() - started < 20
    assert blocker.read_text() == "not a directory"
