"""Atomic training checkpoints: ``<run>/checkpoints/step_<N>/`` plus a ``latest`` pointer.

A checkpoint directory holds

* ``model.safetensors``: the model weights alone (unwrapped names), metadata ``{"format": "vidclip", "arch",
  "step", "model_config"}``; this is what evaluation, extraction and ``create_model(pretrained=...)`` read;
* the rest of the training state written by ``accelerator.save_state`` (optimizer, scheduler, RNG states of every
  process, grad scaler), which ``--resume`` restores;
* ``trainer_state.json``: step, epoch, position in the epoch and counters of the loop.

Writing is atomic: everything goes into ``checkpoints/.tmp_step_<N>/``, files and folder are fsynced, the folder
is renamed to ``step_<N>``, and only then the ``latest`` file is replaced (write to a temp file, fsync,
``os.replace``). A crash at any moment leaves ``latest`` pointing at a complete checkpoint; half-written temp
folders are ignored by :func:`find_latest` and removed by the next save. Old step folders beyond ``keep`` are
deleted after the new one is in place.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, ConfigError, IntegrityError
from ..identity import CHECKSUMS_FILE, read_checksums, verify_checksums, write_checksums
from ..io import atomic_write_text, fsync_path
from ..models.weights import (  # noqa: F401  (the run layout is read in models.weights; re-exported for callers)
    _STEP_RE,
    CHECKPOINTS_DIR,
    LATEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    TMP_PREFIX,
    checkpoints_dir,
    find_latest,
    is_complete,
    list_checkpoints,
    load_model_weights,
    read_trainer_state,
    read_weights_metadata,
    resolve_model_weights,
    save_model_weights,
)

_logger = logging.getLogger(__name__)

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCALER_JSON = "scaler.json"
RUN_CONFIG = "run_config.json"
PICKLED_STATE = ("optimizer.bin", "scheduler.bin", "scaler.pt", "custom_checkpoint_*.pkl", "random_states_*.pkl")

PathLike = Union[str, Path]


# ---------------------------------------------------------------------------------------------------- file helpers
_fsync_path = fsync_path  # the one fsync helper lives in vidclip.io


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically; a temp file a crash leaves is removed by the next save."""
    atomic_write_text(path, text, prefix=f"{TMP_PREFIX}{path.name}.")


def ensure_writable_dir(directory: Path, key: str) -> None:
    """Create ``directory`` and probe a write, so an unwritable output fails before any work (ConfigError)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{key}={directory}: cannot write there ({exc.strerror or exc}). Choose a writable "
                          f"{key}") from exc


# ---------------------------------------------------------------------------------------------------------- saving
class CheckpointManager:
    """Saves and restores the full training state through an ``accelerate.Accelerator``.

    The model weights are written once, as ``model.safetensors`` with vidclip metadata, instead of accelerate's
    own copy (save/load pre-hooks take the model out of accelerate's state).
    """

    def __init__(self, accelerator, model: torch.nn.Module, run_dir: PathLike, keep: int = 2,
                 arch: str | None = None, model_config: dict[str, Any] | None = None,
                 run_config: dict[str, Any] | None = None):
        self.accelerator = accelerator
        self.model = model
        self.root = checkpoints_dir(run_dir)
        self.keep = max(1, int(keep))
        self.arch = arch
        self.model_config = model_config
        self.run_config = run_config
        accelerator.register_save_state_pre_hook(self._skip_accelerate_model_save)
        accelerator.register_load_state_pre_hook(self._load_model_weights_hook)

    # accelerate hooks ------------------------------------------------------------------------------------------
    @staticmethod
    def _skip_accelerate_model_save(models, weights, output_dir) -> None:
        weights.clear()  # model weights are written by save() as model.safetensors

    def _load_model_weights_hook(self, models, input_dir) -> None:
        load_model_weights(self.accelerator.unwrap_model(self.model), Path(input_dir) / MODEL_FILE)
        models.clear()

    # saving -------------------------------------------------------------------------------------------------------
    def save(self, step: int, trainer_state: dict[str, Any]) -> Path:
        """Write ``step_<step>`` atomically on every process; returns its path.

        Raises:
            CheckpointError: the folder cannot be written (disk full, read-only); earlier checkpoints are intact.
        """
        acc = self.accelerator
        final = self.root / f"step_{step}"
        tmp = self.root / f"{TMP_PREFIX}step_{step}"
        error = None
        if acc.is_main_process:
            error = self._guard(self._prepare_tmp, tmp)
        acc.wait_for_everyone()
        error = error or self._guard(self._save_training_state, tmp)
        errors = self._all_errors(error)
        if not errors and acc.is_main_process:
            error = self._guard(self._finish, tmp, final, step, trainer_state)
        errors = errors or self._all_errors(error)
        if errors:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(
                f"could not write checkpoint {final}: {errors[0]}. Free disk space or set train.output_dir to a "
                f"writable folder; earlier checkpoints in {self.root} are intact.")
        if acc.is_main_process:
            self._prune()
        acc.wait_for_everyone()
        _logger.info("saved checkpoint %s", final)
        return final

    @staticmethod
    def _guard(fn, *args) -> str | None:
        try:
            fn(*args)
        except OSError as exc:
            return f"{exc.strerror or exc} ({exc.filename or ''})"
        except (TypeError, ValueError) as exc:  # state that JSON cannot hold: refused rather than pickled
            return f"training state not serialisable without pickle ({exc})"
        return None

    def _all_errors(self, error: str | None) -> list[str]:
        """Errors of every process (so that all of them raise together instead of hanging in a collective)."""
        if self.accelerator.num_processes == 1:
            return [error] if error else []
        from accelerate.utils import gather_object

        return [e for e in gather_object([error]) if e]

    def _prepare_tmp(self, tmp: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f"{TMP_PREFIX}*"):  # left by a crash during an earlier save
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        tmp.mkdir()

    def _finish(self, tmp: Path, final: Path, step: int, trainer_state: dict[str, Any]) -> None:
        model = self.accelerator.unwrap_model(self.model)
        save_model_weights(model, tmp / MODEL_FILE, step=step, arch=self.arch, model_config=self.model_config)
        (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step}, indent=2))
        if self.run_config is not None:
            (tmp / RUN_CONFIG).write_text(json.dumps(self.run_config, indent=2, sort_keys=True))
        write_checksums(tmp, [p.name for p in tmp.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE])
        _fsync_tree(tmp)
        aside = None
        if final.exists():  # same step saved twice (e.g. epoch end == final): swap without a gap
            aside = self.root / f"{TMP_PREFIX}old_{final.name}"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        _fsync_path(self.root)
        write_text_atomic(self.root / LATEST_FILE, final.name + "\n")
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)

    def _prune(self) -> None:
        complete = list_checkpoints(self.root.parent)
        latest = find_latest(self.root.parent)
        for old in complete[: max(0, len(complete) - self.keep)]:
            if old != latest:
                shutil.rmtree(old, ignore_errors=True)

    # training state (no pickle) -----------------------------------------------------------------------------------
    def _save_training_state(self, folder: Path) -> None:
        """Optimizer, registered objects and scaler (main process) and this process's RNG states."""
        acc = self.accelerator
        if acc.is_main_process:
            for i, optimizer in enumerate(acc._optimizers):
                save_optimizer_state(optimizer.state_dict(), folder, suffix=f"_{i}" if i else "")
            for i, obj in enumerate(acc._custom_objects):
                (folder / f"custom_state_{i}.json").write_text(json.dumps(obj.state_dict(), allow_nan=True))
            if acc.scaler is not None:
                (folder / SCALER_JSON).write_text(json.dumps(acc.scaler.state_dict()))
        save_rng_state(folder / f"rng_state_{acc.process_index}.safetensors", accelerator_step=acc.step)

    # loading ------------------------------------------------------------------------------------------------------
    def load(self, step_dir: PathLike) -> dict[str, Any]:
        """Restore model, optimizer, scheduler, scaler and RNG states; returns the trainer state.

        Every file is checked against ``checksums.json`` first; nothing is unpickled (a checkpoint of an older vidclip
        holding pickled state is refused).
        """
        step_dir = Path(step_dir)
        if not is_complete(step_dir):
            raise CheckpointError(f"{step_dir}: not a complete vidclip checkpoint (needs {MODEL_FILE} and "
                                  f"{STATE_FILE}). Use --resume auto to pick the newest complete one")
        verify_checkpoint(step_dir)
        state = read_trainer_state(step_dir)
        acc = self.accelerator
        load_model_weights(acc.unwrap_model(self.model), step_dir / MODEL_FILE)
        for i, optimizer in enumerate(acc._optimizers):
            optimizer.load_state_dict(load_optimizer_state(step_dir, suffix=f"_{i}" if i else ""))
        for i, obj in enumerate(acc._custom_objects):
            obj.load_state_dict(_read_json(step_dir / f"custom_state_{i}.json"))
        if acc.scaler is not None:
            acc.scaler.load_state_dict(_read_json(step_dir / SCALER_JSON))
        acc.step = load_rng_state(step_dir / f"rng_state_{acc.process_index}.safetensors")
        _logger.info("resumed from %s (step %d)", step_dir, state.get("step", -1))
        return state


# ------------------------------------------------------------------------------------------ state files (no pickle)
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: missing or unreadable ({exc}). Resume from another checkpoint "
                              "(--resume <run>/checkpoints/step_<N>)") from exc


def verify_checkpoint(step_dir: Path) -> None:
    """Refuse a checkpoint holding pickled state, or whose files differ from its ``checksums.json``."""
    sums = read_checksums(step_dir)
    pickled = sorted(p.name for pattern in PICKLED_STATE for p in step_dir.glob(pattern))
    if sums is None or OPTIMIZER_TENSORS not in sums:
        what = f"pickled state ({', '.join(pickled)})" if pickled else f"no {CHECKSUMS_FILE}"
        raise CheckpointError(f"{step_dir}: {what}: written by an older vidclip or another tool; vidclip never "
                              "unpickles a file on resume. Start a new run from its weights with "
                              f"model.pretrained={step_dir / MODEL_FILE}")
    bad = verify_checksums(step_dir, sums)
    if bad:
        raise IntegrityError(f"{step_dir}: {', '.join(bad)} truncated or corrupt (SHA-256 differs from "
                             f"{CHECKSUMS_FILE}). Resume from an earlier checkpoint: --resume "
                             f"{step_dir.parent}/step_<N>")


def save_optimizer_state(state: dict[str, Any], folder: Path, suffix: str = "") -> None:
    """An optimizer ``state_dict`` as safetensors (tensors) + JSON (param groups, other values)."""
    tensors, values = {}, {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}/{name}"] = value.detach().cpu().contiguous().clone()
            else:
                values.setdefault(str(pid), {})[name] = value
    meta = {"param_groups": state["param_groups"], "values": values, "param_ids": [str(p) for p in state["state"]]}
    (folder / f"optimizer{suffix}.json").write_text(json.dumps(meta))
    save_file(tensors, str(folder / f"optimizer{suffix}.safetensors"), metadata={"format": "vidclip-optimizer"})


def load_optimizer_state(folder: Path, suffix: str = "") -> dict[str, Any]:
    meta = _read_json(folder / f"optimizer{suffix}.json")
    path = folder / f"optimizer{suffix}.safetensors"
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}: unreadable ({exc}). Resume from an earlier checkpoint") from exc
    state: dict[int, dict[str, Any]] = {int(pid): dict(meta["values"].get(pid, {})) for pid in meta["param_ids"]}
    for key, tensor in tensors.items():
        pid, name = key.split("/", 1)
        state[int(pid)][name] = tensor
    return {"state": state, "param_groups": meta["param_groups"]}


def save_rng_state(path: Path, accelerator_step: int = 0) -> None:
    """Python, NumPy, torch (and CUDA) generator states of this process in one safetensors file."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": json.dumps([version, list(internal), gauss]),
            "numpy": json.dumps([name, keys.tolist(), int(pos), int(has_gauss), float(cached)]),
            "accelerator_step": str(int(accelerator_step))}
    save_file(tensors, str(path), metadata=meta)


def load_rng_state(path: Path) -> int:
    """Restore what :func:`save_rng_state` wrote; returns accelerate's step counter."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        version, internal, gauss = json.loads(meta["python"])
        name, keys, pos, has_gauss, cached = json.loads(meta["numpy"])
    except Exception as exc:  # missing file (other number of processes), truncated, bad metadata
        raise CheckpointError(f"{path}: missing or unreadable RNG state ({exc}). Resume with the number of "
                              "processes of the saved run, or from another checkpoint") from exc
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return int(meta.get("accelerator_step", 0))
