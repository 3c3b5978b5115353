"""Training loop behind ``python tools/train.py --config C [--resume [auto|PATH]] [key=value ...]``.

The same script runs as one process or under ``accelerate launch --num_processes N`` (DDP; gloo with ``--cpu``).

* Every process encodes its local batch; the model's ``forward(batch, gather)`` gathers the features of all
  processes (with gradients, see :mod:`vidclip.distributed`) and computes the contrastive loss on the global batch
  of ``N x train.batch_size`` pairs. DDP averages the parameter gradients, which equals one process on the whole
  batch.
* Gradient accumulation (``train.grad_accum_steps``) sums the gradients of several micro-batches before one
  optimiser step. It does **not** add negatives: each micro-batch's contrastive loss only sees the pairs of that
  micro-batch (times the number of processes). Use more processes or a bigger ``train.batch_size`` for more
  negatives.
* The data order depends only on ``train.seed`` and the epoch; ``--resume`` restores model, optimiser, LR
  schedule, grad scaler and RNG states from the newest complete checkpoint and skips the batches of the current
  epoch that were already seen, so the resumed run continues at the exact optimiser step.
* Batches where every video failed to decode are skipped (on every process at once); failed videos are counted
  and logged with their paths. A non-finite loss raises :class:`NonFiniteError` naming the step and loss term.
* Outputs in ``train.output_dir``: ``config.yaml``, ``checkpoints/step_<N>/`` (+ ``latest``),
  ``metrics_step_<N>.json`` and ``val_history.jsonl`` from validation on the held-out ``data.val_list`` (never the
  test list unless ``train.select_on_test``), TensorBoard scalars in ``tensorboard/``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ..config import default_values, save_config, to_container
from ..data.loaders import build_train_loader
from ..distributed import make_feature_gather
from ..errors import CheckpointError, ConfigError, NonFiniteError
from ..identity import IDENTITY_VERSION, describe_changes, differing_keys, flatten, sha256_file
from ..objective import build_objective
from .checkpoint import (
    MODEL_FILE,
    RUN_CONFIG,
    CheckpointManager,
    checkpoints_dir,
    ensure_writable_dir,
    find_latest,
    list_checkpoints,
)
from .optim import (
    clamp_logit_scale,
    create_optimizer,
    create_scheduler,
    current_lrs,
    freeze_backbone_layers,
    freeze_conv1,
    freeze_towers,
)

_logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ state
@dataclass
class TrainState:
    """Where the loop is; saved in every checkpoint (``trainer_state.json``)."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # current epoch (incremented when its last batch has been consumed)
    batch_in_epoch: int = 0  # loader batches of the current epoch consumed so far (skipped ones included)
    samples_seen: int = 0  # training pairs seen by this process
    failed_videos: int = 0  # videos of this process that failed to decode
    skipped_batches: int = 0  # batches skipped because some process had no decodable video

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        known = {k: int(v) for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# ------------------------------------------------------------------------------------------------------ set-up
def create_accelerator(cfg: DictConfig):
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import is_tensorboard_available

    log_with = None
    if cfg.train.tensorboard:
        if is_tensorboard_available():
            log_with = "tensorboard"
        else:
            _logger.warning("train.tensorboard=true but tensorboard is not installed: scalars go to the log only")
    # CPU-only multi-process launches (torchrun / `accelerate launch --multi_gpu` without GPUs) need cpu=True for
    # accelerate to pick the gloo backend instead of falling back to independent single processes.
    cpu_distributed = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        cpu=cpu_distributed,
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with=log_with,
        project_dir=cfg.train.output_dir,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def validation_list(cfg: DictConfig) -> str | None:
    """The list used for model selection; refuses the test list unless ``train.select_on_test``."""
    val, test = cfg.data.val_list, cfg.data.test_list
    uses_test = bool(val) and bool(test) and Path(val).resolve() == Path(test).resolve()
    if uses_test and not cfg.train.select_on_test:
        raise ConfigError(
            f"data.val_list={val} is the test list: selecting checkpoints on test data inflates results. Point "
            "data.val_list at a held-out part of the training data, or set train.select_on_test=true to allow it")
    if not val and cfg.train.select_on_test and test:
        _logger.warning("validating on the TEST list %s (train.select_on_test=true)", test)
        return test
    return val or None


def total_steps_for(cfg: DictConfig, batches_per_epoch: int) -> int:
    """Optimiser steps of the run: ``train.max_steps`` or epochs x ceil(batches / accumulation)."""
    if cfg.train.max_steps:
        return int(cfg.train.max_steps)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.train.grad_accum_steps)
    return max(1, cfg.train.epochs * steps_per_epoch)


def schedule_steps_for(cfg: DictConfig, batches_per_epoch: int) -> int | None:
    """Horizon of the LR schedule: ``train.schedule_epochs`` epochs of optimiser steps (None: the run's steps)."""
    if cfg.train.schedule_epochs is None:
        return None
    return max(1, cfg.train.schedule_epochs * math.ceil(batches_per_epoch / cfg.train.grad_accum_steps))


# Keys that may change between a checkpoint and its --resume: where/what is logged and evaluated, not what is
# optimised. Every other config key (model, data the training reads, train.*, loss) must equal the checkpoint's.
RESUME_SAFE_KEYS = ("train.output_dir", "train.val_every", "train.save_every", "train.log_every",
                    "train.keep_checkpoints", "train.tensorboard", "train.select_on_test", "data.num_workers",
                    "data.val_list", "data.test_list", "data.test_num_frames", "data.test_sampler", "data.dataset",
                    "data.reader_backend", "model.pretrained", "eval", "extract", "demo")


def run_identity(cfg: DictConfig, num_processes: int) -> dict[str, Any]:
    """What a checkpoint's optimisation depends on: every config key but the safe ones, the train list's bytes and
    the number of processes (``run_config.json`` of each checkpoint)."""
    keys = {k: v for k, v in flatten(to_container(cfg)).items()
            if not any(k == p or k.startswith(p + ".") for p in RESUME_SAFE_KEYS)}
    train_list = Path(str(cfg.data.train_list or ""))
    keys["data.train_list.sha256"] = sha256_file(train_list) if train_list.is_file() else None
    keys["num_processes"] = int(num_processes)
    return {"format": "vidclip-run", "version": IDENTITY_VERSION, "optimisation": keys}


def check_resume_config(step_dir: Path, identity: dict[str, Any], allow_changes: Sequence[str] = ()) -> None:
    """Refuse ``--resume`` when a key that changes the optimisation differs from the checkpoint's (keys named);
    keys in ``allow_changes`` are accepted with a warning."""
    path = step_dir / RUN_CONFIG
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["optimisation"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: missing or unreadable ({exc}), so --resume cannot check that the run "
                              "continues with the same settings. Start a new run (new train.output_dir) from its "
                              f"weights with model.pretrained={step_dir / MODEL_FILE}") from exc
    current = identity["optimisation"]
    keys = differing_keys(recorded, current, defaults=flatten(default_values()))
    allowed = [k for k in keys if any(k == a or k.startswith(a + ".") for a in allow_changes)]
    if allowed:
        _logger.warning("--resume with changed %s (allowed by --allow-change)", describe_changes(recorded, current,
                                                                                                allowed))
    refused = [k for k in keys if k not in allowed]
    if refused:
        raise ConfigError(f"{path}: --resume with settings that change the optimisation: "
                          f"{describe_changes(recorded, current, refused)}. Resume with the checkpoint's values, "
                          "start a new run (new train.output_dir, or --overwrite), or accept the change explicitly "
                          f"with --allow-change {refused[0]}")


def check_run_folder(run_dir: Path, resume: str | None, overwrite: bool, is_main: bool) -> None:
    """Refuse to train into a folder holding checkpoints unless resuming; ``overwrite`` deletes them first."""
    existing = list_checkpoints(run_dir)
    if not existing or resume is not None:
        return
    if not overwrite:
        raise ConfigError(f"train.output_dir={run_dir} already holds checkpoints (newest {existing[-1].name}): pass "
                          "--resume to continue that run, --overwrite to delete them and start over, or set "
                          "train.output_dir to a new folder")
    if is_main:
        _logger.warning("--overwrite: deleting %s and the validation history of %s", checkpoints_dir(run_dir), run_dir)
        shutil.rmtree(checkpoints_dir(run_dir))
        for stale in [run_dir / "val_history.jsonl", *run_dir.glob("metrics_step_*.json")]:
            stale.unlink(missing_ok=True)


def _resume_dir(resume: str | None, run_dir: Path) -> Path | None:
    if resume is None:
        return None
    target = run_dir if resume == "auto" else Path(resume)
    found = find_latest(target)
    if found is None and resume != "auto":
        raise CheckpointError(f"--resume {resume}: no complete checkpoint there (looked for checkpoints/latest "
                              "and step_<N> folders with model.safetensors and trainer_state.json)")
    if found is None:
        _logger.info("--resume auto: no checkpoint in %s yet, starting from scratch", run_dir)
    return found


# ------------------------------------------------------------------------------------------------------ the loop
class Trainer:
    """Owns the prepared objects and runs the loop; one instance per run."""

    def __init__(self, cfg: DictConfig, resume: str | None = None, overwrite: bool = False,
                 allow_changes: Sequence[str] = ()):
        from accelerate.utils import set_seed

        from ..data.builders import build_dataset
        from ..models.factory import create_model

        self.cfg = cfg
        self.run_dir = Path(cfg.train.output_dir)
        ensure_writable_dir(self.run_dir, "train.output_dir")
        self.acc = acc = create_accelerator(cfg)
        check_run_folder(self.run_dir, resume, overwrite, acc.is_main_process)
        acc.wait_for_everyone()
        identity = run_identity(cfg, acc.num_processes)
        resume_dir = _resume_dir(resume, self.run_dir)
        if resume_dir is not None:  # before any data or model is built
            check_resume_config(resume_dir, identity, allow_changes)
        set_seed(cfg.train.seed)
        self.val_list = validation_list(cfg)
        self.dataset = build_dataset(cfg, "train", train=True)
        loader = build_train_loader(cfg, self.dataset, acc.num_processes)
        self.loader_generator = loader.generator  # accelerate's loader keeps the same object
        model = create_model(cfg.model, pretrained=cfg.model.pretrained)
        self.objective = build_objective(model, cfg.train.loss)
        freeze_backbone_layers(model, cfg.train.freeze_layers)
        if cfg.train.freeze_conv1:
            freeze_conv1(model)
        freeze_towers(model, list(cfg.train.freeze_towers))
        optimizer = create_optimizer(model, cfg.train)
        self.model, self.optimizer, self.loader = acc.prepare(model, optimizer, loader)
        self.batches_per_epoch = len(self.loader)
        if self.batches_per_epoch == 0:
            raise ConfigError(f"data.train_list has {len(self.dataset)} videos: fewer than one batch of "
                              f"train.batch_size={cfg.train.batch_size} per process. Lower the batch size")
        self.total_steps = total_steps_for(cfg, self.batches_per_epoch)
        self.scheduler = create_scheduler(optimizer, self.total_steps, cfg.train.warmup_ratio, cfg.train.min_lr_ratio,
                                          schedule=cfg.train.schedule,
                                          schedule_steps=schedule_steps_for(cfg, self.batches_per_epoch))
        acc.register_for_checkpointing(self.scheduler)  # stepped once per optimiser step by us, not by accelerate
        self.checkpoints = CheckpointManager(acc, self.model, self.run_dir, keep=cfg.train.keep_checkpoints,
                                             arch=cfg.model.arch, model_config=to_container(model.cfg),  # as built
                                             run_config=identity)
        self.gather = make_feature_gather(acc)
        self.state = TrainState()
        if resume_dir is not None:
            self.state = TrainState.from_dict(self.checkpoints.load(resume_dir))
        if acc.is_main_process:
            save_config(cfg, self.run_dir)
        if acc.log_with:
            acc.init_trackers("tensorboard")
        self._window = _Window()

    @property
    def unwrapped(self):
        return self.acc.unwrap_model(self.model)

    # ---------------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns the last validation report (empty without a val list)."""
        acc, cfg, state = self.acc, self.cfg, self.state
        _logger.info("training %d optimiser steps: %d batches/epoch/process, %d process(es), global batch %d, "
                     "accumulation %d", self.total_steps, self.batches_per_epoch, acc.num_processes,
                     cfg.train.batch_size * acc.num_processes, cfg.train.grad_accum_steps)
        self.bar = tqdm(total=self.total_steps, initial=state.step, disable=not acc.is_local_main_process,
                        desc="train", unit="step", dynamic_ncols=True)
        report: dict[str, Any] = {}
        last_val_step = last_save_step = -1
        self.model.train()
        while self._more_to_do():
            epoch_done = self._run_epoch()
            if epoch_done and cfg.train.val_every == 0 and state.step < self.total_steps:
                report, last_val_step = self.validate() or report, state.step
            if epoch_done and cfg.train.save_every == 0 and state.step < self.total_steps:
                self.save()
                last_save_step = state.step
        if last_val_step != state.step:
            report = self.validate() or report
        if last_save_step != state.step:
            self.save()
        self.bar.close()
        acc.end_training()
        _logger.info("done: %d steps, %d failed videos skipped, %d batches skipped", state.step,
                     state.failed_videos, state.skipped_batches)
        return report

    def _more_to_do(self) -> bool:
        """Until ``total_steps``; without ``train.max_steps`` also never past ``train.epochs`` epochs (batches of
        undecodable videos are skipped, so an epoch can hold fewer optimiser steps than batches)."""
        if self.state.step >= self.total_steps:
            return False
        return self.cfg.train.max_steps is not None or self.state.epoch < self.cfg.train.epochs

    def _epoch_loader(self):
        from accelerate import skip_first_batches

        epoch, seed = self.state.epoch, self.cfg.train.seed
        self.loader.set_epoch(epoch)  # accelerate forwards it to the (grouped) epoch shuffle sampler
        self.loader_generator.manual_seed(seed * 100003 + epoch)  # worker base seeds
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if self.state.batch_in_epoch:
            loader = skip_first_batches(self.loader, self.state.batch_in_epoch)
            loader.set_epoch(epoch)
            return loader
        return self.loader

    def _run_epoch(self) -> bool:
        """Consume the rest of the current epoch (or stop at ``total_steps``); True when the epoch ended."""
        state = self.state
        t_last = time.perf_counter()
        for batch in self._epoch_loader():
            t_data = time.perf_counter() - t_last
            state.batch_in_epoch += 1
            stepped = self._train_batch(batch, t_data)
            if state.batch_in_epoch >= self.batches_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            if stepped:
                self._after_step()
                if state.step >= self.total_steps:
                    return state.batch_in_epoch == 0
            t_last = time.perf_counter()
        if state.batch_in_epoch != 0:  # the loader ended early (never with drop_last) : close the epoch
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        return True

    def _train_batch(self, batch: dict[str, Any], t_data: float) -> bool:
        """One micro-batch; True when it completed an optimiser step."""
        acc, state = self.acc, self.state
        failed = list(batch.get("failed") or [])
        if failed:
            state.failed_videos += len(failed)
            _logger.warning("step %d: %d video(s) failed to decode and were skipped: %s", state.step + 1,
                            len(failed), ", ".join(map(str, failed)))
        rows = int(batch["video"].shape[0])
        if self._fewest_rows(rows) == 0:
            state.skipped_batches += 1
            _logger.warning("step %d: skipping a batch: a process has no decodable video in it", state.step + 1)
            return False
        t0 = time.perf_counter()
        with acc.accumulate(self.model):
            losses = self.objective(self.model, batch, gather=self.gather)
            self._check_finite(losses)
            acc.backward(losses["loss"])
            if acc.sync_gradients and self.cfg.train.grad_clip > 0:
                acc.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        state.samples_seen += rows
        self._window.add(losses, rows * acc.num_processes, t_data, time.perf_counter() - t0)
        if not acc.sync_gradients:
            return False
        if not acc.optimizer_step_was_skipped:
            self.scheduler.step()
        clamp_logit_scale(self.unwrapped, self.cfg.model.logit_scale_max)
        state.step += 1
        return True

    def _fewest_rows(self, rows: int) -> int:
        if self.acc.num_processes == 1:
            return rows
        counts = self.acc.gather(torch.tensor([rows], device=self.acc.device))
        return int(counts.min().item())

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        if bool(torch.isfinite(values).all()):
            return
        bad = {k: float(v.detach()) for k, v in losses.items() if not math.isfinite(float(v.detach()))}
        name, value = next(iter(bad.items()))
        raise NonFiniteError(f"optimiser step {self.state.step + 1}: loss term '{name}' is {value} "
                             f"(non-finite terms: {bad}). Lower train.lr / train.clip_lr, check the data, or use "
                             "train.mixed_precision=no")

    def _after_step(self) -> None:
        cfg, state = self.cfg, self.state
        self.bar.update(1)
        if self._window.count:
            self.bar.set_postfix(loss=f"{self._window.last_loss:.4f}")
        if state.step % max(1, cfg.train.log_every) == 0 or state.step == self.total_steps:
            self._log_window()
        if cfg.train.val_every and state.step % cfg.train.val_every == 0 and state.step < self.total_steps:
            self.validate()
        if cfg.train.save_every and state.step % cfg.train.save_every == 0 and state.step < self.total_steps:
            self.save()

    def _log_window(self) -> None:
        summary = self._window.summary()
        lrs = current_lrs(self.optimizer)
        scalars = {f"train/{k}": v for k, v in summary["losses"].items()}
        scalars.update({f"lr/{k}": v for k, v in lrs.items()})
        scalars.update({"train/samples_per_s": summary["samples_per_s"], "train/data_s": summary["data_s"],
                        "train/compute_s": summary["compute_s"],
                        "train/logit_scale": float(self.unwrapped.logit_scale.detach().exp())})
        losses = " ".join(f"{k} {v:.4f}" for k, v in summary["losses"].items())
        lr_text = " ".join(f"{k} {v:.2e}" for k, v in lrs.items())
        _logger.info("step %d/%d | %.1f samples/s | data %.3fs compute %.3fs per batch | lr %s | %s",
                     self.state.step, self.total_steps, summary["samples_per_s"], summary["data_s"],
                     summary["compute_s"], lr_text, losses)
        self.acc.log(scalars, step=self.state.step)
        self._window = _Window()

    # ---------------------------------------------------------------------------------------------------------
    def save(self) -> Path:
        return self.checkpoints.save(self.state.step, asdict(self.state))

    def validate(self) -> dict[str, Any]:
        """Retrieval metrics on the validation list (main process); writes metrics_step_<N>.json."""
        if not self.val_list:
            return {}
        acc = self.acc
        report: dict[str, Any] = {}
        if acc.is_main_process:
            report = run_validation(self.cfg, self.unwrapped, self.val_list, acc.device, self.state.step, self.run_dir)
            acc.log({f"val/{d}_{k}": v for d in ("t2v", "v2t") for k, v in report[d].items()
                     if isinstance(v, (int, float))}, step=self.state.step)
        self.model.train()
        acc.wait_for_everyone()
        return report


def run_validation(cfg: DictConfig, model, val_list: str, device: torch.device, step: int,
                   run_dir: Path) -> dict[str, Any]:
    """Evaluate ``model`` on ``val_list`` and record the result (``metrics_step_<N>.json``, ``val_history.jsonl``)."""
    from ..io import atomic_write_json
    from .evaluate import evaluate

    val_cfg = cfg.copy()
    val_cfg.data.val_list = val_list
    val_cfg.eval.split = "val"
    was_training = model.training
    report = evaluate(val_cfg, model, device, show_progress=False)
    model.train(was_training)
    report["step"] = step
    atomic_write_json(run_dir / f"metrics_step_{step}.json", report)
    line = {"step": step, "t2v": report["t2v"], "v2t": report["v2t"], "num_videos": report["num_videos"],
            "num_failed_videos": report["num_failed_videos"]}
    with open(run_dir / "val_history.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    _logger.info("validation at step %d on %s: t2v R@1 %.2f R@5 %.2f | v2t R@1 %.2f (%d videos)", step, val_list,
                 report["t2v"]["R@1"], report["t2v"]["R@5"], report["v2t"]["R@1"], report["num_videos"])
    return report


class _Window:
    """Running sums between two throughput lines."""

    def __init__(self):
        self.start = time.perf_counter()
        self.count = 0
        self.samples = 0
        self.data_s = 0.0
        self.compute_s = 0.0
        self.loss_sums: dict[str, float] = {}
        self.last_loss = float("nan")

    def add(self, losses: dict[str, torch.Tensor], samples: int, data_s: float, compute_s: float) -> None:
        self.count += 1
        self.samples += samples
        self.data_s += data_s
        self.compute_s += compute_s
        for name, value in losses.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + float(value.detach())
        self.last_loss = float(losses["loss"].detach())

    def summary(self) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        n = max(self.count, 1)
        return {"samples_per_s": self.samples / elapsed, "data_s": self.data_s / n, "compute_s": self.compute_s / n,
                "losses": {k: v / n for k, v in self.loss_sums.items()}}


def train(cfg: DictConfig, resume: str | None = None, overwrite: bool = False,
          allow_changes: Sequence[str] = ()) -> dict[str, Any]:
    """Run a whole training from a resolved config; returns the last validation report.

    Args:
        cfg: resolved config.
        resume: ``"auto"`` or a run / checkpoint folder; its optimisation settings must equal ``cfg``'s.
        overwrite: delete the checkpoints already in ``train.output_dir`` instead of refusing to train there.
        allow_changes: config keys allowed to differ from the checkpoint's on resume (logged).
    """
    return Trainer(cfg, resume=resume, overwrite=overwrite, allow_changes=allow_changes).fit()


__all__: list[str] = ["train", "Trainer", "TrainState", "validation_list", "run_validation", "total_steps_for"]
