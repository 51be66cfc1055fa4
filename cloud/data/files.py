"""Files that readers see whole or not at all: written to a temporary name, then renamed over the old one."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from protocol.file_writes import write_all


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


def drop_cached(path: Path) -> None:
    """Tells the kernel a file's pages will not be read soon (POSIX_FADV_DONTNEED): their memory is free at once for
    what is written next. On a VM whose guest memory is backed by the host on first touch, a write into pages freed
    this way took 0.04 s for 200 MB against 0.4-0.5 s into memory never used before. A path that is gone, or a system
    without fadvise, is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass
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


BODY_PIECE = 16 << 20  # the body is written in pieces this large: a reader follows it piece by piece
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writing the range's dirty pages back, without waiting for them


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range from the C library (Python's os has none); None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _libc_sync_file_range()


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Starts writing ``nbytes`` at ``offset`` of ``fd`` to disk now, while the caller goes on (a CDLL call lets go of
    the GIL), so the fsync that makes the file durable finds most of it written; a no-op where the system has no
    sync_file_range or the file system refuses it (the fsync then writes it all)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)


@contextlib.contextmanager
def body_first(path: Path, head_bytes: int, body: Iterable[bytes | memoryview]) -> Iterator[Callable[[bytes], None]]:
    """Replaces ``path`` with a head of ``head_bytes`` followed by ``body`` (its parts one after the other), writing
    the body on a thread of its own from the start, while the caller still makes the head: yields the function that
    writes the head (exactly ``head_bytes`` long), which the caller must call. Each piece of the body starts going to
    disk as soon as it is written (``start_writeback``), so once the block ends and the body is whole, the fsync
    before the file is renamed into place has little left to write. A reader of the temporary file
    (``temporary_path``) that starts once the head is written sees a file growing from its start, as
    ``write_atomically`` writes one."""
    tmp = temporary_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        failed: list[BaseException] = []
        stop = threading.Event()
        writer = threading.Thread(target=_write_body, args=(fd, head_bytes, body, stop, failed), name="publish-body")
        writer.start()
        written: list[int] = []

        def write_head(head: bytes) -> None:
            if len(head) != head_bytes:
                raise ValueError(f"the head is {len(head)} bytes, not the {head_bytes} its body was placed after")
            os.pwrite(fd, head, 0)
            written.append(len(head))

        try:
            yield write_head
        except BaseException:  # the caller failed (e.g. signing): the body need not finish
            stop.set()
            writer.join()
            if not written:  # no head, so no hint either: no reader follows this file
                tmp.unlink(missing_ok=True)
            raise
        writer.join()
        if not written:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"{path.name}: its head was never written")
        if failed:  # left behind as a writer that died leaves it: a reader may follow it, and gives it up
            raise failed[0]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_body(
    fd: int, at: int, body: Iterable[bytes | memoryview], stop: threading.Event, failed: list[BaseException]
) -> None:
    try:
        for part in body:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), BODY_PIECE):
                if stop.is_set():
                    return
                began = at
                at += write_all(fd, [view[start : start + BODY_PIECE]], at)
                start_writeback(fd, began, at - began)
    except BaseException as err:  # the publish raises it
        failed.append(err)


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
