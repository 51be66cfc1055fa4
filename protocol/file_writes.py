"""Writing a list of buffers at a file offset, whole: the edge's spool log and the cloud's ingest log and version files
append this way (not the wire, but both sides of it need it and this is the layer both import)."""

from __future__ import annotations

import os
from collections.abc import Sequence

IOV_MAX = 512  # buffers per writev call (Linux allows 1024)


def write_all(fd: int, parts: Sequence[bytes | memoryview], offset: int) -> int:
    """Writes ``parts`` one after another at ``offset`` of ``fd`` (``pwritev``, at most ``IOV_MAX`` buffers a call,
    finishing any short write) without joining them; returns how many bytes."""
    written = 0
    for first in range(0, len(parts), IOV_MAX):
        group = parts[first : first + IOV_MAX]
        total = sum(len(p) for p in group)
        done = os.pwritev(fd, group, offset + written)
        skip = done
        for part in group if done < total else ():  # a short write (rare on a regular file): the rest part by part
            view = memoryview(part)[skip:] if skip < len(part) else memoryview(b"")
            skip = max(0, skip - len(part))
            while view:
                n = os.pwrite(fd, view, offset + written + done)
                view, done = view[n:], done + n
        written += total
    return written
