"""The gateway's ingest log: accepted batches appended as records, one fsync per group, before they are acked.

A batch is durable once its record is fsync'd here; a compactor moves it into the episode store later, off the ack
path, and then trims the log. On start the log is replayed into the store (the store skips rows it already has, by
(episode_id, seq)), so a gateway killed between the ack and the store write loses nothing.

Layout under ``folder``: segment files ``<first record number, 16 digits>.log``. A record is::

    b"FLG1" | header length u32 | body length u64 | crc32 of header and body u32 | header (JSON) | body

The header holds the batch's fields and, per column, how to cut its bytes out of the body: an array's dtype and
shape, or an encoded camera's codec and packet sizes (its keyframe flags are in the body). No pickle: a record is
read back with json and numpy only. A record cut short at the end of the last segment (a write killed midway) is
dropped on open; a whole record whose checksum fails is refused (``IngestLogError`` naming file and offset).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud.data.files import fsync_path
from cloud.data.store import StepRows
from protocol.video import PacketColumn

log = logging.getLogger("fleetloop")

MAGIC = b"FLG1"
FRAME = struct.Struct("<4sIQI")
MAX_HEADER_BYTES = 16 << 20
MAX_BODY_BYTES = 1 << 34
SUFFIX = ".log"
IOV_MAX = 512  # parts per writev call (Linux allows 1024)


class IngestLogError(RuntimeError):
    """The log holds a record that is not what was written (a checksum or framing that fails)."""


@dataclass
class _Segment:
    path: Path
    first: int  # number of its first record
    last: int  # number of its last record; first - 1 while empty
    size: int


def _array_bytes(values: np.ndarray) -> memoryview:
    flat = np.ascontiguousarray(values).reshape(-1)
    return memoryview(flat.view(np.uint8)) if flat.size else memoryview(b"")


def encode(rows: StepRows) -> list[bytes | memoryview]:
    """The record of one batch, as parts to write one after another (arrays are not copied)."""
    columns: list[dict] = []
    body: list[bytes | memoryview] = []
    for name, values in rows.columns.items():
        if isinstance(values, PacketColumn):
            keyframe = np.asarray(values.keyframe, np.bool_)
            columns.append({"name": name, "codec": values.codec, "sizes": [len(p) for p in values.packets]})
            body += [_array_bytes(keyframe), *values.packets]
        else:
            columns.append({"name": name, "dtype": values.dtype.str, "shape": list(values.shape)})
            body.append(_array_bytes(values))
    header = json.dumps(
        {
            "dataset": rows.dataset,
            "episode_id": rows.episode_id,
            "resource_id": rows.resource_id,
            "source": rows.source,
            "task": rows.task,
            "first_seq": rows.first_seq,
            "operators": list(rows.operators),
            "label": rows.label,
            "labelled_by": rows.labelled_by,
            "columns": columns,
        }
    ).encode()
    crc = zlib.crc32(header)
    for part in body:
        crc = zlib.crc32(part, crc)
    frame = FRAME.pack(MAGIC, len(header), sum(len(p) for p in body), crc)
    return [frame, header, *body]


def decode(header: bytes, body: bytearray) -> StepRows:
    """The batch of a record whose checksum held (its arrays share ``body``'s memory)."""
    meta = json.loads(header)
    columns: dict[str, np.ndarray | PacketColumn] = {}
    at = 0
    for column in meta["columns"]:
        if "codec" in column:
            sizes = column["sizes"]
            keyframe = np.frombuffer(body, np.bool_, len(sizes), at).copy()
            at += len(sizes)
            packets = []
            for size in sizes:
                packets.append(bytes(body[at : at + size]))
                at += size
            columns[column["name"]] = PacketColumn(column["codec"], tuple(packets), keyframe)
        else:
            dtype, shape = np.dtype(column["dtype"]), tuple(column["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            columns[column["name"]] = np.frombuffer(body, dtype, count, at).reshape(shape)
            at += count * dtype.itemsize
    if at != len(body):
        raise ValueError(f"columns cover {at} of {len(body)} body bytes")
    fields = {k: meta[k] for k in ("dataset", "episode_id", "resource_id", "source", "task", "first_seq")}
    fields.update(label=meta["label"], labelled_by=meta["labelled_by"], operators=tuple(meta["operators"]))
    return StepRows(columns=columns, **fields)


class IngestLog:
    """Append-only segments in ``folder``; one process appends (the gateway, under the store's writer lock)."""

    def __init__(self, folder: str | Path, segment_bytes: int = 64 << 20, durable: bool = True) -> None:
        self.folder = Path(folder)
        self.segment_bytes = segment_bytes
        self.durable = durable
        self.folder.mkdir(parents=True, exist_ok=True)
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._lock = threading.Lock()  # the writer appends and the compactor trims, each on its own thread
        self.dropped_tail_bytes = 0  # what a killed write left at the end, dropped on open
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            first = int(path.stem)
            self._segments.append(_Segment(path, first, first - 1, path.stat().st_size))

    @property
    def next_record(self) -> int:
        """The number the next appended record gets."""
        return self._segments[-1].last + 1 if self._segments else 0

    def replay(self) -> Iterator[tuple[int, StepRows]]:
        """Every record still in the log, in order, as (record number, batch). Must run once, before ``append``:
        it also learns where each segment ends and drops a torn last record."""
        for index, segment in enumerate(self._segments):
            last = index == len(self._segments) - 1
            for number, rows in self._read(segment, last):
                yield number, rows
                segment.last = number

    def _read(self, segment: _Segment, last: bool) -> Iterator[tuple[int, StepRows]]:
        number = segment.first
        with open(segment.path, "rb") as f:
            at = 0
            while at < segment.size:
                frame = f.read(FRAME.size)
                torn = len(frame) < FRAME.size
                if not torn:
                    magic, header_len, body_len, crc = FRAME.unpack(frame)
                    if magic != MAGIC or header_len > MAX_HEADER_BYTES or body_len > MAX_BODY_BYTES:
                        raise IngestLogError(f"{segment.path}: no record at byte {at} (bad framing)")
                    torn = at + FRAME.size + header_len + body_len > segment.size
                if torn:
                    if not last:
                        raise IngestLogError(f"{segment.path}: record at byte {at} is cut short mid-log")
                    self._drop_tail(segment, at)
                    return
                header = f.read(header_len)
                body = bytearray(body_len)
                f.readinto(body)
                if zlib.crc32(body, zlib.crc32(header)) != crc:
                    raise IngestLogError(f"{segment.path}: record at byte {at} fails its checksum; refused")
                try:
                    rows = decode(header, body)
                except (ValueError, KeyError, TypeError) as err:
                    raise IngestLogError(f"{segment.path}: record at byte {at} does not decode: {err}") from err
                yield number, rows
                number += 1
                at += FRAME.size + header_len + body_len

    def _drop_tail(self, segment: _Segment, at: int) -> None:
        log.warning(
            "ingest log: %s ends with %d bytes of a write that was cut short (never acked); dropped",
            segment.path.name,
            segment.size - at,
        )
        self.dropped_tail_bytes += segment.size - at
        os.truncate(segment.path, at)
        segment.size = at

    def append(self, batches: list[StepRows]) -> int:
        """Writes the batches' records, then one fsync; returns the last one's number. Durable when it returns."""
        with self._lock:
            return self._append(batches)

    def _append(self, batches: list[StepRows]) -> int:
        if not batches:
            return self.next_record - 1
        fd = self._writable()
        segment = self._segments[-1]
        parts = [part for rows in batches for part in encode(rows)]
        written = 0
        for start in range(0, len(parts), IOV_MAX):
            written += _write_all(fd, parts[start : start + IOV_MAX])
        if self.durable:
            os.fsync(fd)
        segment.size += written
        segment.last += len(batches)
        return segment.last

    def _writable(self) -> int:
        if self._segments and self._segments[-1].size >= self.segment_bytes:
            self._close_fd()
            self._segments.append(self._empty_segment())
        if self._fd is None:
            if not self._segments:
                self._segments.append(self._empty_segment())
            path = self._segments[-1].path
            created = not path.exists()
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if created and self.durable:
                fsync_path(self.folder)
        return self._fd

    def _empty_segment(self) -> _Segment:
        first = self.next_record
        return _Segment(self.folder / f"{first:016d}{SUFFIX}", first, first - 1, 0)

    def trim(self, upto: int) -> int:
        """Deletes segments whose records are all numbered <= ``upto`` (they are in the store), except the one being
        appended to; returns how many went."""
        with self._lock:
            return self._trim(upto)

    def _trim(self, upto: int) -> int:
        gone = 0
        while len(self._segments) > 1 and self._segments[0].last <= upto:
            self._segments.pop(0).path.unlink(missing_ok=True)
            gone += 1
        if len(self._segments) == 1 and self._segments[0].last <= upto and self._segments[0].size:
            self._close_fd()  # all of it is in the store: the next append starts a fresh segment
            segment = self._segments.pop()
            segment.path.unlink(missing_ok=True)
            self._segments.append(
                _Segment(segment.path.with_stem(f"{segment.last + 1:016d}"), segment.last + 1, segment.last, 0)
            )
            gone += 1
        return gone

    def bytes(self) -> int:
        """What the log holds on disk."""
        return sum(segment.size for segment in self._segments)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()


def _write_all(fd: int, parts: list[bytes | memoryview]) -> int:
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts)
    if done < total:  # a short write (rare on a regular file): write the rest part by part
        skip = done
        for part in parts:
            view = memoryview(part)[skip:] if skip < len(part) else b""
            skip = max(0, skip - len(part))
            while view:
                view = view[os.write(fd, view) :]
    return total
