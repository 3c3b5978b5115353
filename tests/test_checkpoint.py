"""Atomic checkpoints: round trip through accelerate, crash safety (raised error and a real SIGKILL), pruning."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from vidclip.engine import checkpoint as ckpt
from vidclip.engine.checkpoint import CheckpointManager, find_latest, load_model_weights, read_weights_metadata
from vidclip.errors import CheckpointError


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 3)
        self.logit_scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return (self.encoder(x) * self.logit_scale.exp()).pow(2).mean()


def _setup(run_dir: Path, keep: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(sched)
    manager = CheckpointManager(accelerator, model, run_dir, keep=keep, arch="toy", model_config={"width": 4})
    return accelerator, model, opt, sched, manager


def _train_steps(model, opt, sched, steps: int):
    for _ in range(steps):
        x = torch.randn(5, 4)  # global RNG: restored by load_state
        model(x).backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_round_trip_restores_model_optimizer_scheduler_and_rng(tmp_path):
    acc, model, opt, sched, manager = _setup(tmp_path)
    _train_steps(model, opt, sched, 3)
    step_dir = manager.save(3, {"epoch": 0, "batch_in_epoch": 3})
    _train_steps(model, opt, sched, 2)
    expected = _weights(model)

    acc2, model2, opt2, sched2, manager2 = _setup(tmp_path, seed=123)  # different init and RNG
    state = manager2.load(find_latest(tmp_path))
    assert state == {"epoch": 0, "batch_in_epoch": 3, "step": 3}
    assert sched2.last_epoch == 3
    _train_steps(model2, opt2, sched2, 2)
    for key, value in _weights(model2).items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6)

    assert step_dir == tmp_path / "checkpoints" / "step_3"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_3"
    meta = read_weights_metadata(step_dir / "model.safetensors")
    assert meta["format"] == "vidclip" and meta["arch"] == "toy" and meta["step"] == "3"
    assert json.loads(meta["model_config"]) == {"width": 4}
    assert set(load_file(str(step_dir / "model.safetensors"))) == {"encoder.weight", "encoder.bias", "logit_scale"}
    assert not list(step_dir.glob("pytorch_model*")) and not list(step_dir.glob("model_*.safetensors")), \
        "model weights are stored once"


def test_keep_last_k_and_latest_pointer(tmp_path):
    _, model, opt, sched, manager = _setup(tmp_path, keep=2)
    for step in (1, 2, 3, 4):
        _train_steps(model, opt, sched, 1)
        manager.save(step, {"epoch": 0})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_3", "step_4"]
    assert find_latest(tmp_path).name == "step_4"
    fresh = Toy()
    load_model_weights(fresh, tmp_path)  # a run directory resolves to its latest weights
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key])


def test_saving_the_same_step_twice_replaces_it(tmp_path):
    _, model, opt, sched, manager = _setup(tmp_path)
    _train_steps(model, opt, sched, 1)
    manager.save(1, {"epoch": 0, "note": "first"})
    manager.save(1, {"epoch": 1, "note": "second"})
    assert ckpt.read_trainer_state(find_latest(tmp_path))["note"] == "second"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_1"]


def test_disk_full_during_save_raises_and_keeps_previous(tmp_path, monkeypatch):
    _, model, opt, sched, manager = _setup(tmp_path)
    _train_steps(model, opt, sched, 1)
    manager.save(1, {"epoch": 0})
    before = _weights(model)
    _train_steps(model, opt, sched, 1)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints" / ".tmp_step_2"))

    monkeypatch.setattr(ckpt, "save_model_weights", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*earlier checkpoints"):
        manager.save(2, {"epoch": 0})
    assert find_latest(tmp_path).name == "step_1"
    assert not list((tmp_path / "checkpoints").glob(".tmp_*")), "the failed temp folder is removed"
    fresh = Toy()
    load_model_weights(fresh, tmp_path)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_unwritable_output_dir_raises_checkpoint_error(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the run directory should be")
    _, model, opt, sched, manager = _setup(blocker / "run")
    with pytest.raises(CheckpointError, match="could not write checkpoint"):
        manager.save(1, {"epoch": 0})


def test_find_latest_ignores_incomplete_and_stale(tmp_path):
    _, model, opt, sched, manager = _setup(tmp_path)
    manager.save(2, {"epoch": 0})
    root = tmp_path / "checkpoints"
    (root / ".tmp_step_9").mkdir()
    (root / ".tmp_step_9" / "model.safetensors").write_bytes(b"half")
    (root / "step_7").mkdir()  # no trainer state: not complete
    assert find_latest(tmp_path).name == "step_2"
    (root / "latest").write_text("step_5\n")  # dangling pointer: newest complete folder wins
    assert find_latest(tmp_path).name == "step_2"
    assert find_latest(root / "step_2") == root / "step_2"
    assert find_latest(tmp_path / "nothing_here") is None


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from accelerate import Accelerator
    from vidclip.engine import checkpoint as ckpt
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    manager = ckpt.CheckpointManager(acc, model, sys.argv[1], arch="toy")
    manager.save(1, {"epoch": 0})
    with torch.no_grad():
        model.weight.add_(1.0)
    def hang(root):  # the weights of step 2 are written; the process dies before the rename
        print("in temp phase", flush=True)
        time.sleep(600)
    ckpt._fsync_tree = hang
    manager.save(2, {"epoch": 0})
""")


@pytest.mark.slow
def test_sigkill_during_save_leaves_a_loadable_latest(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert "in temp phase" in line, proc.stderr.read() if proc.poll() is not None else line
        tmp_model = run_dir / "checkpoints" / ".tmp_step_2" / "model.safetensors"
        deadline = time.time() + 10
        while not tmp_model.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert tmp_model.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    latest = find_latest(run_dir)
    assert latest.name == "step_1"
    meta = read_weights_metadata(latest / "model.safetensors")
    assert meta["step"] == "1"
    fresh = torch.nn.Linear(4, 3)
    load_model_weights(fresh, run_dir)
    torch.manual_seed(0)
    reference = torch.nn.Linear(4, 3)  # the weights step 1 saved (same seed, not yet shifted by +1)
    torch.testing.assert_close(fresh.weight, reference.weight)

    # the next save removes the stale temp folder and moves latest forward
    _, model, opt, sched, manager = _setup(run_dir)
    manager.save(3, {"epoch": 0})
    assert not list((run_dir / "checkpoints").glob(".tmp_*"))
    assert find_latest(run_dir).name == "step_3"
