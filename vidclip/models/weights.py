"""Weight files, every format vidclip reads or writes, with no training code involved.

* vidclip checkpoints: ``model.safetensors`` with metadata ``{"format": "vidclip", "arch", "step", "model_config"}``,
  alone or inside the run layout ``<run>/checkpoints/step_<N>/`` with a ``latest`` pointer (the layout is read here and
  written by :mod:`vidclip.engine.checkpoint`);
* open_clip weight files: ``.pt`` / ``.pth`` / ``.bin`` state dicts (read without unpickling code), ``.safetensors``,
  and OpenAI JIT archives (``ViT-B-32.pt``).
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError
from ..identity import CHECKSUMS_FILE, read_checksums, sha256_bytes

_logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.json"
TMP_PREFIX = ".tmp_"
_STEP_RE = re.compile(r"^step_(\d+)$")
_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------------- model weights
def _unshared_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors with no shared storage (safetensors refuses tied tensors)."""
    seen: set = set()
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[name] = tensor.clone() if key in seen else tensor
        seen.add(key)
    return out


def save_model_weights(model: torch.nn.Module, path: PathLike, step: int = 0, arch: str | None = None,
                       model_config: dict[str, Any] | None = None) -> Path:
    """Write ``model.state_dict()`` to a safetensors file with vidclip metadata."""
    path = Path(path)
    metadata = {"format": "vidclip", "arch": str(arch or ""), "step": str(int(step))}
    if model_config is not None:
        metadata["model_config"] = json.dumps(model_config)
    save_file(_unshared_state_dict(model.state_dict()), str(path), metadata=metadata)
    return path


def read_weights_metadata(path: PathLike) -> dict[str, str]:
    """The metadata dict of a safetensors file (empty when it has none)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def resolve_model_weights(path: PathLike) -> Path:
    """``model.safetensors`` of a run dir, a ``checkpoints`` dir, a step dir, or the file itself.

    Raises:
        CheckpointError: nothing loadable at ``path``.
    """
    path = Path(path)
    if path.is_file():
        return path
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    latest = find_latest(path)
    if latest is not None:
        return latest / MODEL_FILE
    raise CheckpointError(f"{path}: no {MODEL_FILE} and no complete checkpoint under {path}/{CHECKPOINTS_DIR}. "
                          "Pass a run directory, a checkpoints/step_<N> directory or a .safetensors file")


def load_model_weights(model: torch.nn.Module, path: PathLike, strict: bool = True) -> dict[str, str]:
    """Load weights written by :func:`save_model_weights` into ``model``; returns the file's metadata."""
    file = resolve_model_weights(path)
    try:
        data = file.read_bytes()
        state = load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{file}: cannot read weights ({exc}). The file is truncated or not safetensors") from exc
    recorded = (read_checksums(file.parent) or {}).get(file.name)  # inside a checkpoint folder: verify its bytes
    if recorded is not None and sha256_bytes(data) != recorded:
        raise CheckpointError(f"{file}: corrupt (SHA-256 differs from {file.parent / CHECKSUMS_FILE}). Use another "
                              "checkpoint of the run (checkpoints/step_<N>)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(f"{file}: weights do not fit the model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}. Was it trained with a different model.arch?")
    return read_weights_metadata(file)


# ------------------------------------------------------------------------------------------------- finding latest
def checkpoints_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def is_complete(step_dir: Path) -> bool:
    """A step folder is complete when it was renamed into place with its model weights and trainer state."""
    return step_dir.is_dir() and (step_dir / MODEL_FILE).is_file() and (step_dir / STATE_FILE).is_file()


def list_checkpoints(run_dir: PathLike) -> list[Path]:
    """Complete ``step_<N>`` folders of a run, oldest first (temp folders ignored)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and is_complete(p)]
    return [p for _, p in sorted(steps)]


def find_latest(run_dir: PathLike) -> Path | None:
    """The newest complete checkpoint of a run (``latest`` pointer first), or None.

    ``run_dir`` may also be the ``checkpoints`` folder itself or a step folder.
    """
    path = Path(run_dir)
    if _STEP_RE.match(path.name) and is_complete(path):
        return path
    if path.name == CHECKPOINTS_DIR and not (path / CHECKPOINTS_DIR).exists():
        path = path.parent
    pointer = checkpoints_dir(path) / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()  # never trust its bytes: only step_<N> is followed
        target = checkpoints_dir(path) / (name if _STEP_RE.match(name) else "<invalid latest pointer>")
        if is_complete(target):
            return target
        _logger.warning("%s points at %s, which is missing or incomplete; using the newest complete checkpoint",
                        pointer, target)
    complete = list_checkpoints(path)
    return complete[-1] if complete else None


def read_trainer_state(step_dir: PathLike) -> dict[str, Any]:
    path = Path(step_dir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the trainer state ({exc})") from exc


# ------------------------------------------------------------------------------------------ open_clip formats
def is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript zip archive (OpenAI's original CLIP weight files, e.g. ``ViT-B-32.pt``)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def read_open_clip_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """State dict of an open_clip weight file: safetensors, torch pickles, or OpenAI JIT archives."""
    from open_clip.factory import load_state_dict

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if is_torchscript_archive(path):  # OpenAI JIT archive (e.g. ViT-B-32.pt)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the only reader
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
            return {k: v for k, v in state.items() if k not in _JIT_EXTRA_KEYS}
        return load_state_dict(str(path), weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read open_clip weights ({exc}). Expected a .pt/.pth/.bin state dict, "
                              "a .safetensors file or an OpenAI JIT archive") from exc


def check_shapes(expected: dict[str, torch.Size], found: dict[str, torch.Size], source: str) -> None:
    """Raise ``CheckpointError`` naming the first key whose shape differs, and missing / unexpected keys."""
    for key, shape in found.items():
        if key in expected and tuple(expected[key]) != tuple(shape):
            raise CheckpointError(f"{source}: shape mismatch for '{key}': the file has {tuple(shape)}, the model "
                                  f"expects {tuple(expected[key])}. Were the weights made for another architecture?")
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the model: {len(missing)} missing (e.g. {missing[:4]}), "
                              f"{len(unexpected)} unexpected (e.g. {unexpected[:4]}). Check model.arch / "
                              "model.clip.model_name")


def load_open_clip_weights(clip: nn.Module, path: Union[str, Path]) -> None:
    """Load an open_clip weight file into ``clip`` (strict; position embeddings resized as open_clip does)."""
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    state = read_open_clip_state_dict(path)
    if next(iter(state), "").startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    model_state = clip.state_dict()
    if "logit_scale" in state and "logit_scale" in model_state:
        state["logit_scale"] = state["logit_scale"].reshape(model_state["logit_scale"].shape)
    if "logit_bias" not in model_state:
        state.pop("logit_bias", None)
    buffers_not_saved = {name for name, _ in clip.named_buffers()} - set(model_state)  # e.g. attn_mask in JIT files
    state = {k: v for k, v in state.items() if k not in buffers_not_saved}
    resize_pos_embed(state, clip)
    resize_text_pos_embed(state, clip)
    check_shapes({k: v.shape for k, v in model_state.items()}, {k: v.shape for k, v in state.items()}, str(path))
    clip.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------- vidclip weights
def vidclip_weights_file(path: Path) -> Path | None:
    """The ``model.safetensors`` of a vidclip checkpoint at ``path``, or None when ``path`` is not one."""
    if path.suffix not in ("", ".safetensors") and not path.is_dir():
        return None
    try:
        file = resolve_model_weights(path)
        is_vidclip = read_weights_metadata(file).get("format") == "vidclip"
    except Exception:  # not a checkpoint folder / unreadable safetensors: try it as open_clip weights
        return None
    if not is_vidclip and path.is_dir():
        raise CheckpointError(f"{file}: a safetensors file without the vidclip metadata marker; pass the file "
                              "itself to load it as open_clip weights")
    return file if is_vidclip else None


def load_vidclip_weights(model: nn.Module, file: Path) -> dict[str, str]:
    """Load a vidclip ``model.safetensors`` into ``model`` after checking every key and shape."""
    with safe_open(str(file), framework="pt") as f:
        found = {key: torch.Size(f.get_slice(key).get_shape()) for key in f.keys()}
        meta = dict(f.metadata() or {})
    expected = {k: v.shape for k, v in model.state_dict().items()}
    arch = meta.get("arch") or "?"
    check_shapes(expected, found, f"{file} (vidclip checkpoint of arch '{arch}', model arch '{model.cfg.arch}')")
    return load_model_weights(model, file)
