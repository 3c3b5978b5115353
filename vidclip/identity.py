"""Identity of what vidclip writes: which settings, weights and inputs produced an artefact, and file checksums.

Every artefact (extraction folder, FAISS index cache, checkpoint, run folder) records an identity: a flat dict of
dotted keys (``config.model.head.name``, ``weights.sha256``, ``inputs.sha256``, ``shard_size``...). A reader or a
``--resume`` recomputes the identity it expects and compares: :func:`differing_keys` names every key that differs,
:func:`describe_changes` turns them into one line (``train.lr 0.001 -> 0.01``). Files are checked with SHA-256
checksums (:func:`sha256_file`, :func:`write_checksums`, :func:`verify_checksums`).

This module sits on the ground floor: it works on plain dicts, paths and tensors, never on configs or models.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch

from .io import atomic_write_json

IDENTITY_VERSION = 1
CHECKSUMS_FILE = "checksums.json"
_CHUNK = 1 << 22

PathLike = Union[str, os.PathLike]


# ------------------------------------------------------------------------------------------------------- hashing
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, in sorted name order.

    Equal for the same weights however they were loaded (open_clip tag, file, checkpoint, seeded random init).
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ flat identities
def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(obj, Mapping):
        return {prefix: obj} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def select(flat: Mapping[str, Any], include: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Keys of ``flat`` equal to or below one of ``include`` and not below any of ``exclude``."""
    def below(key: str, prefixes: Iterable[str]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    include, exclude = tuple(include), tuple(exclude)
    return {k: v for k, v in flat.items() if below(k, include) and not below(k, exclude)}


def _canonical(value: Any) -> Any:
    """JSON round trip, so tuples equal lists and ints equal what a file read back gives."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def differing_keys(recorded: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = (),
                   defaults: Mapping[str, Any] | None = None) -> list[str]:
    """Flat keys whose values differ (or that exist on one side only), sorted; ``ignore`` prefixes skipped.

    With ``defaults``, a key the recorded side lacks (written by an older version) counts as equal when the current
    value is its default: a new option whose default keeps the old behaviour does not block a resume.
    """
    ignore = tuple(ignore)
    keys = set(recorded) | set(current)
    defaults = defaults or {}

    def differs(k: str) -> bool:
        if any(k == p or k.startswith(p + ".") for p in ignore):
            return False
        if k not in recorded and k in defaults and _canonical(current.get(k)) == _canonical(defaults[k]):
            return False
        return _canonical(recorded.get(k, "<missing>")) != _canonical(current.get(k, "<missing>"))

    return sorted(k for k in keys if differs(k))


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:16] + "..." + text[-8:]


def describe_changes(recorded: Mapping[str, Any], current: Mapping[str, Any], keys: Sequence[str],
                     limit: int = 6) -> str:
    """``"train.lr 0.001 -> 0.01, train.batch_size 4 -> 8"`` for the first ``limit`` keys."""
    parts = [f"{k} {_short(recorded.get(k, '<missing>'))} -> {_short(current.get(k, '<missing>'))}"
             for k in keys[:limit]]
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(parts) + more


# ------------------------------------------------------------------------------------------------------ checksums
def write_checksums(folder: PathLike, names: Iterable[str]) -> Path:
    """Write ``<folder>/checksums.json``: SHA-256 of each named file (paths relative to ``folder``)."""
    folder = Path(folder)
    sums = {name: sha256_file(folder / name) for name in sorted(names)}
    return atomic_write_json(folder / CHECKSUMS_FILE, {"format": "vidclip-checksums", "sha256": sums})


def read_checksums(folder: PathLike) -> dict[str, str] | None:
    """The recorded checksums of ``folder`` (None when it has no checksums file or it is unreadable)."""
    path = Path(folder) / CHECKSUMS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        sums = data["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sums if isinstance(sums, dict) else None


def verify_checksums(folder: PathLike, sums: Mapping[str, str]) -> list[str]:
    """Names of the files of ``sums`` that are missing or whose SHA-256 differs (empty: all intact)."""
    folder = Path(folder)
    bad = []
    for name, expected in sums.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            bad.append(name)
    return bad
