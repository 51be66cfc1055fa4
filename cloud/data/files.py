"""Files that readers see whole or not at all: written to a temporary name, then renamed over the old one."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """Flushes a file or a directory entry to disk; a path that does not exist is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # e.g. a chunk zarr left out as all fill value: its directory's fsync covers it
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(path: Path) -> Path:
    """Where ``write_atomically`` writes ``path`` before renaming it into place (a reader may follow it growing)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomically(
    path: Path, data: bytes | Sequence[bytes | memoryview], fsync_file: bool = True, fsync_dir: bool = True
) -> None:
    """Replaces ``path`` with ``data`` (bytes, or parts written one after the other) in one rename. ``fsync_file``
    makes the bytes durable before the rename, ``fsync_dir`` makes the rename itself durable (it survives power
    loss, not only a killed process)."""
    tmp = temporary_path(path)
    with open(tmp, "wb") as f:
        for part in (data,) if isinstance(data, bytes) else data:
            f.write(part)
        if fsync_file:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync_dir:
        fsync_path(path.parent)


def append_after(path: Path, committed_bytes: int, data: bytes) -> int:
    """Appends ``data`` to a commit-guarded file right after what was committed (dropping what a killed writer left
    past it); returns the file's new length, for the next commit to name."""
    with open(path, "a+b") as f:
        f.truncate(committed_bytes)
        f.seek(committed_bytes)
        f.write(data)
    return committed_bytes + len(data)


def read_json(path: Path) -> Any:
    """Reads a JSON file another process may be replacing; None if it does not exist (yet)."""
    for delay in (0.001, 0.01, 0.05, 0.2, 0.5):
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:  # our own files are renamed into place; this only guards foreign writers
            time.sleep(delay)
    return json.loads(path.read_bytes())
