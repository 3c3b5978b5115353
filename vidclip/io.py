"""Atomic file writes: a reader (or a crash) sees the old file or the complete new one, never half of it.

Every write goes to a temporary file in the destination folder (``<prefix><name>.<random>.tmp``), is flushed and
fsynced, then renamed over the destination with ``os.replace`` (atomic on POSIX and Windows), and the folder is
fsynced so the rename survives a power cut. A failed write removes its temporary file and leaves the old file.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, os.PathLike]


def fsync_path(path: PathLike) -> None:
    """fsync a file or a directory (directories: makes renames inside it durable); best effort on directories."""
    path = Path(path)
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[Path], Any], prefix: str | None = None) -> Path:
    """Create or replace ``path`` with what ``write(tmp_path)`` writes to a temporary file; returns ``path``.

    Args:
        path: destination; its folder is created when missing.
        write: called once with the temporary path (e.g. ``lambda tmp: save_file(tensors, tmp)``).
        prefix: temporary-name prefix (default ``.<name>.``), so a caller can find and remove what a killed
            process left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes, prefix: str | None = None) -> Path:
    """Create or replace ``path`` with ``data`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), prefix=prefix)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8", prefix: str | None = None) -> Path:
    """Create or replace ``path`` with ``text`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding), prefix=prefix)


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Create or replace ``path`` with ``obj`` as JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent))
