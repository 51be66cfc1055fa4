"""The episode store's one writer: a flock on a local folder, a lease object on object storage.

Object storage has no locks. The writer creates ``writer.lease`` with a conditional PUT (If-None-Match: *, which
S3, MinIO and moto honour): a second writer's create fails and it refuses to start, naming the URL and who holds
the lease. A writer that stops cleanly deletes its lease. One that dies (killed, power lost) leaves it behind: the
next writer starts only with ``take_over=True`` (``fleetloop cloud --take-over-store``), an operator's word that the
old one is gone. The lease does not expire by itself: a writer paused for minutes (a stalled VM) must not find its
store taken over by another in silence. Before each commit the writer checks that the lease is still its own, so
a writer that was taken over stops at its next commit instead of writing beside the new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from cloud.data.blobs import Blobs

LOCK_FILE = "writer.lock"
LEASE = "writer.lease"


class WriterHold(Protocol):
    def check(self) -> None: ...  # raises RuntimeError when this process no longer holds the store
    def close(self) -> None: ...


class FolderLock:
    """A flock on ``writer.lock`` in the store's folder, held for the store's lifetime."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._file: Any = open(root / LOCK_FILE, "a+b")  # noqa: SIM115 -- held for the store's lifetime
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(f"another process writes to the episode store at {root}") from None

    def check(self) -> None:
        """A flock cannot be taken from a live process."""

    def close(self) -> None:
        self._file.close()  # releases the flock


class ObjectLease:
    """``writer.lease`` in the store's prefix, created only where there is none."""

    def __init__(self, blobs: Blobs, take_over: bool = False) -> None:
        self._blobs = blobs
        self._token = uuid.uuid4().hex
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "since_unix": time.time(), "token": self._token}
        self._lease = json.dumps(mine).encode()
        if take_over:
            blobs.delete(LEASE)
        if not blobs.put_new(LEASE, self._lease):
            raise RuntimeError(
                f"another process writes to the episode store at {blobs.where} ({self._holder()}); if it is gone "
                "(killed, its machine lost), start this writer with --take-over-store"
            )

    def _holder(self) -> str:
        try:
            held = json.loads(self._blobs.get(LEASE) or b"{}")
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held["since_unix"])))
            return f"lease held by pid {held['pid']} on {held['host']} since {since}"
        except (ValueError, KeyError, TypeError):
            return "its lease is unreadable"

    def check(self) -> None:
        if self._blobs.get(LEASE) != self._lease:
            raise RuntimeError(
                f"the episode store at {self._blobs.where} was taken over by another writer ({self._holder()}): "
                "this one stops writing"
            )

    def close(self) -> None:
        if self._blobs.get(LEASE) == self._lease:  # never delete a lease another writer took over
            self._blobs.delete(LEASE)
