"""Training engine: loop pieces, end-to-end runs of the tiny model on the synthetic dataset, resume after SIGKILL,
and a 2-process run that must equal a 1-process run on the same global batch."""
from __future__ import annotations

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

from vidclip.cli.train import parse_args
from vidclip.config import load_config
from vidclip.data.loaders import EpochShuffleSampler
from vidclip.engine.checkpoint import find_latest, read_weights_metadata
from vidclip.engine.train import TrainState, total_steps_for, validation_list
from vidclip.errors import ConfigError, NonFiniteError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY = CONFIGS / "synthetic_tiny_vifi.yaml"


# ----------------------------------------------------------------------------------------------- loop pieces
def test_epoch_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    assert list(a) == list(a), "iterating twice gives the same order"
    b.set_epoch(3)
    assert list(a) != list(b)
    c = EpochShuffleSampler(50, seed=4)
    c.set_epoch(2)
    assert list(c) != list(a)


def test_total_steps_from_epochs_or_max_steps():
    cfg = load_config(None, ["train.epochs=3", "train.grad_accum_steps=2"])
    assert total_steps_for(cfg, batches_per_epoch=7) == 3 * 4  # ceil(7 / 2): accelerate syncs at epoch end
    cfg = load_config(None, ["train.max_steps=5"])
    assert total_steps_for(cfg, batches_per_epoch=7) == 5


def test_validation_refuses_the_test_list(tmp_path):
    lst = tmp_path / "test.jsonl"
    lst.write_text("")
    cfg = load_config(None, [f"data.val_list={lst}", f"data.test_list={lst}"])
    with pytest.raises(ConfigError, match="select_on_test"):
        validation_list(cfg)
    cfg = load_config(None, [f"data.val_list={lst}", f"data.test_list={lst}", "train.select_on_test=true"])
    assert validation_list(cfg) == str(lst)
    cfg = load_config(None, [f"data.test_list={lst}"])
    assert validation_list(cfg) is None, "no val list: no validation, and never silently the test list"
    cfg = load_config(None, [f"data.test_list={lst}", "train.select_on_test=true"])
    assert validation_list(cfg) == str(lst)


def test_parse_args_resume_forms():
    assert parse_args(["--config", "c.yaml"]).resume is None
    assert parse_args(["--config", "c.yaml", "--resume"]).resume == "auto"
    args = parse_args(["--config", "c.yaml", "--resume", "runs/x", "train.lr=1e-3"])
    assert args.resume == "runs/x" and args.overrides == ["train.lr=1e-3"]


def test_train_state_round_trip_ignores_unknown_keys():
    state = TrainState(step=3, epoch=1, batch_in_epoch=2)
    assert TrainState.from_dict({**state.__dict__, "unknown": 9}) == state


@pytest.mark.slow
def test_every_config_file_loads():
    pytest.importorskip("vidclip.models.factory", reason="the model factory (arch files) is not in this tree yet")
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert len(files) >= 30
    for path in files:
        cfg = load_config(path)
        if path.parent.name not in ("data", "methods") and path.name != "demo.yaml":
            assert cfg.model.arch, f"{path} names no model.arch"


# -------------------------------------------------------------------------------------------- end to end
def _run(cmd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    for module in ("vidclip.models.factory", "vidclip.data.synthetic", "vidclip.data.dataset", "vidclip.metrics"):
        pytest.importorskip(module, reason=f"{module} is not in this tree yet")
    out = tmp_path_factory.mktemp("synthetic")
    res = _run([sys.executable, "tools/make_synthetic.py", "--out", str(out), "--num-videos", "24", "--seed", "0"])
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _overrides(data_dir: Path, run_dir: Path, *extra: str):
    return [f"data.videos_root={data_dir / 'videos'}", f"data.train_list={data_dir}/synthetic_train.jsonl",
            f"data.val_list={data_dir}/synthetic_val.jsonl", f"data.test_list={data_dir}/synthetic_test.jsonl",
            f"train.output_dir={run_dir}", "data.num_workers=0", "train.batch_size=4", "train.log_every=2",
            "train.tensorboard=false", "train.seed=7", *extra]


def _train_cmd(data_dir: Path, run_dir: Path, *extra: str):
    return [sys.executable, "tools/train.py", "--config", str(TINY), *_overrides(data_dir, run_dir, *extra)]


def _final_weights(run_dir: Path):
    latest = find_latest(run_dir)
    return latest, load_file(str(latest / "model.safetensors"))


def test_tiny_training_writes_run_outputs(synthetic, tmp_path):
    from vidclip.engine.train import Trainer

    run_dir = tmp_path / "run"
    cfg = load_config(TINY, _overrides(synthetic, run_dir, "train.max_steps=4", "train.val_every=2"))
    trainer = Trainer(cfg)
    before = {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}
    report = trainer.fit()
    assert trainer.state.step == 4
    assert (run_dir / "config.yaml").is_file()
    assert load_config(run_dir / "config.yaml").train.max_steps == 4
    history = [json.loads(line) for line in (run_dir / "val_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4]
    assert {"R@1", "R@5", "R@10", "MdR", "MnR"} <= set(history[-1]["t2v"])
    assert json.loads((run_dir / "metrics_step_4.json").read_text())["t2v"] == report["t2v"]
    latest, weights = _final_weights(run_dir)
    assert latest.name == "step_4"
    meta = read_weights_metadata(latest / "model.safetensors")
    assert meta["format"] == "vidclip" and meta["step"] == "4" and meta["arch"] == cfg.model.arch
    changed = [k for k, v in weights.items() if not torch.equal(v, before[k])]
    assert changed, "training changed the weights"


def test_non_finite_loss_names_step_and_term(synthetic, tmp_path):
    from vidclip.engine.train import Trainer

    cfg = load_config(TINY, _overrides(synthetic, tmp_path / "run", "train.max_steps=3"))
    trainer = Trainer(cfg)
    objective = trainer.objective
    original = objective.losses
    calls = {"n": 0}

    def poisoned(outputs):
        out = original(outputs)
        calls["n"] += 1
        if calls["n"] == 2:
            out = {**out, "contrastive": out["contrastive"] * float("nan")}
        return out

    objective.losses = poisoned
    with pytest.raises(NonFiniteError, match=r"step 2: loss term 'contrastive'"):
        trainer.fit()


def test_batches_of_failed_videos_are_skipped_and_counted(synthetic, tmp_path):
    from vidclip.engine.train import Trainer

    records = [json.loads(line) for line in (synthetic / "synthetic_train.jsonl").read_text().splitlines()]
    broken = synthetic / "videos" / "broken_for_training_test.mp4"  # inside the videos root, as a real list would be
    broken.write_bytes(b"not a video at all")
    for record in records[:8]:  # 8 of the videos cannot be decoded
        record["path"] = broken.name
    lst = tmp_path / "train.jsonl"
    lst.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = load_config(TINY, _overrides(synthetic, tmp_path / "run", f"data.train_list={lst}", "data.val_list=null",
                                       "train.batch_size=2", "train.epochs=1"))
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.state.failed_videos == 8
    assert trainer.state.skipped_batches >= 1  # with batch 2 and 8 broken videos some batch is all broken
    assert trainer.state.step == len(records) // 2 - trainer.state.skipped_batches


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(synthetic, tmp_path):
    extra = ("train.max_steps=16", "train.save_every=4", "train.keep_checkpoints=10", "train.grad_accum_steps=2",
             "data.val_list=null")
    full = _run(_train_cmd(synthetic, tmp_path / "full", *extra))
    assert full.returncode == 0, full.stderr[-3000:]

    run_dir = tmp_path / "killed"
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(_train_cmd(synthetic, run_dir, *extra), cwd=REPO, stdout=log, stderr=log,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while find_latest(run_dir) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = find_latest(run_dir)
    assert killed_at is not None and killed_at.name != "step_16"

    resumed = _run(_train_cmd(synthetic, run_dir, *extra) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed_at}" in resumed.stderr
    ref_dir, ref = _final_weights(tmp_path / "full")
    got_dir, got = _final_weights(run_dir)
    assert ref_dir.name == got_dir.name == "step_16"
    assert json.loads((got_dir / "trainer_state.json").read_text()) == \
        json.loads((ref_dir / "trainer_state.json").read_text())
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=f"weights differ at {key}")


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_global_batch(synthetic, tmp_path):
    """``accelerate launch`` with 2 CPU processes x batch 2 == 1 process x batch 4 (same data, same gradients)."""
    extra = ("train.max_steps=3", "data.val_list=null", "train.lr=1e-3", "train.clip_lr=1e-4")
    single = _run(_train_cmd(synthetic, tmp_path / "one", *extra))
    assert single.returncode == 0, single.stderr[-3000:]
    port = 29000 + os.getpid() % 1000
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port)]
    cmd = launch + _train_cmd(synthetic, tmp_path / "two", *extra, "train.batch_size=2")[1:]
    double = _run(cmd, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "2 process(es)" in double.stderr
    one_dir, one = _final_weights(tmp_path / "one")
    two_dir, two = _final_weights(tmp_path / "two")
    assert (two_dir / "rng_state_1.safetensors").is_file(), "both processes saved their RNG state"
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=f"weights differ at {key}")
