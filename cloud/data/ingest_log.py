"""The gateway's ingest log: accepted batches appended as records, one fsync per group, before they are acked.

A batch is durable once its record is fsync'd here; a compactor moves it into the episode store later, off the ack
path, and then trims the log. On start the log is replayed into the store (the store skips rows it already has, by
(episode_id, seq)), so a gateway killed between the ack and the store write loses nothing.

Layout under ``folder``: segment files ``<first record number, 16 digits>.log``. A batch that came off a tunnel as it
is stored (no JPEG frames decoded on the way) is logged as it came, its message's bytes untouched::

    b"FLG3" | header length u32 | body length u64 | record number u64 | xxh3_64 u64 | header (JSON) | body

(xxh3_64 of the number, header and body; the header holds the batch's dataset, resource, source and the schema its
message is decoded against; the body is the ``EdgeMessage`` as received). Logging a batch then costs a checksum at
several GB/s and one write, not a second encoding. Any other batch (a phone's, or one whose JPEG frames were decoded)
is logged as its columns::

    b"FLG2" | header length u32 | body length u64 | record number u64 | crc32 u32 | header (JSON) | body

(crc32 of the number, header and body). The header holds the batch's fields and, per column, how to cut its bytes out
of the body: an array's dtype and shape, or an encoded camera's codec and packet sizes (its keyframe flags are in the
body). No pickle: a record is read back with json and numpy only.

Segments are recycled: one the store holds entirely becomes a spare (``<floor>.<k>.spare``) that a later segment is
renamed from and overwritten in place, its pages still in the page cache; writing into fresh page cache pages costs
several times more CPU than overwriting cached ones (on this project's VMs the copy into new pages was half of the
gateway's CPU in bench (a)). Past a segment's records lie the bytes of its earlier use: a record ends the segment
unless it carries the next number (numbers only grow, across spares too) and its checksum holds. A record with the
right number whose checksum fails, or which is cut short, at the end of the last segment is a write killed midway
(never acked) and dropped; anywhere else it is refused (``IngestLogError`` naming file and offset), as is a gap in the
numbers between segments. Records of the first format (``FLG1``, no number, never in a recycled file) still replay.
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
from typing import BinaryIO

import numpy as np
import xxhash
from google.protobuf.message import DecodeError

from cloud.data.files import fsync_path
from cloud.data.store import StepRows
from protocol import tunnel_pb2 as pb
from protocol.file_writes import write_all
from protocol.steps import Schema, decode_batch, decode_operators
from protocol.video import PacketColumn

log = logging.getLogger("fleetloop")

WIRE_MAGIC, WIRE_FRAME = b"FLG3", struct.Struct("<4sIQQQ")  # magic, header/body length, record number, xxh3_64
MAGIC = b"FLG2"
FRAME = struct.Struct("<4sIQQI")  # magic, header length, body length, record number, crc32
NUMBER = struct.Struct("<Q")
FIRST_MAGIC, FIRST_FRAME = b"FLG1", struct.Struct("<4sIQI")  # the first format: no number, crc32 of header and body
MAX_HEADER_BYTES = 16 << 20
MAX_BODY_BYTES = 1 << 34
SUFFIX = ".log"
SPARE = ".spare"


class IngestLogError(RuntimeError):
    """The log holds a record that is not what was written (a checksum, framing or numbering that fails)."""


@dataclass
class _Segment:
    path: Path
    first: int  # number of its first record
    last: int  # number of its last record; first - 1 while empty
    size: int  # bytes of its records (the file may go on with those of its earlier use)


@dataclass
class _Frame:
    """A record's frame as read: ``number`` is None for the first format (its number is its place)."""

    header_len: int
    body_len: int
    number: int | None
    crc: int
    size: int  # the frame's own bytes
    wire: bool = False  # the body is the batch's EdgeMessage as received (FLG3)

    def checksum(self, number: int, header: bytes, body: bytearray) -> int:
        if self.wire:
            return _wire_checksum(number, header, body)
        seed = 0 if self.number is None else zlib.crc32(NUMBER.pack(number))
        return zlib.crc32(body, zlib.crc32(header, seed))

    def decode(self, header: bytes, body: bytearray) -> StepRows:
        return decode_wire(header, body) if self.wire else decode(header, body)


def _frame(head: bytes) -> _Frame | None:
    """The frame at the start of ``head``; None if none is there (the end of what this use of the file wrote)."""
    if head[:4] == WIRE_MAGIC and len(head) >= WIRE_FRAME.size:
        _, header_len, body_len, number, crc = WIRE_FRAME.unpack_from(head)
        frame = _Frame(header_len, body_len, number, crc, WIRE_FRAME.size, wire=True)
    elif head[:4] == MAGIC and len(head) >= FRAME.size:
        _, header_len, body_len, number, crc = FRAME.unpack_from(head)
        frame = _Frame(header_len, body_len, number, crc, FRAME.size)
    elif head[:4] == FIRST_MAGIC and len(head) >= FIRST_FRAME.size:
        _, header_len, body_len, crc = FIRST_FRAME.unpack_from(head)
        frame = _Frame(header_len, body_len, None, crc, FIRST_FRAME.size)
    else:
        return None
    return frame if header_len <= MAX_HEADER_BYTES and body_len <= MAX_BODY_BYTES else None


def _array_bytes(values: np.ndarray) -> memoryview:
    flat = np.ascontiguousarray(values).reshape(-1)
    return memoryview(flat.view(np.uint8)) if flat.size else memoryview(b"")


def encode(rows: StepRows, number: int) -> list[bytes | memoryview]:
    """Record ``number`` of one batch, as parts to write one after another (arrays are not copied)."""
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
    crc = zlib.crc32(header, zlib.crc32(NUMBER.pack(number)))
    for part in body:
        crc = zlib.crc32(part, crc)
    frame = FRAME.pack(MAGIC, len(header), sum(len(p) for p in body), number, crc)
    return [frame, header, *body]


@dataclass(frozen=True)
class Wire:
    """A batch as it came off a tunnel: the ``EdgeMessage`` its rows were decoded from, unchanged, and the schema they
    were decoded against."""

    message: bytes
    schema: Schema


def _wire_checksum(number: int, header: bytes, body: bytes | bytearray | memoryview) -> int:
    hasher = xxhash.xxh3_64(NUMBER.pack(number))
    hasher.update(header)
    hasher.update(body)
    return hasher.intdigest()


def encode_wire(rows: StepRows, wire: Wire, number: int) -> list[bytes | memoryview]:
    """Record ``number`` of a batch logged as it came (its message is not copied)."""
    schema = {name: [dtype, list(shape)] for name, (dtype, shape) in wire.schema.items()}
    fields = {"dataset": rows.dataset, "resource_id": rows.resource_id, "source": rows.source, "schema": schema}
    header = json.dumps(fields).encode()
    crc = _wire_checksum(number, header, wire.message)
    return [WIRE_FRAME.pack(WIRE_MAGIC, len(header), len(wire.message), number, crc), header, wire.message]


def batch_rows(batch: pb.StepBatch, columns: dict, dataset: str, resource_id: str, source: str) -> StepRows:
    """The rows of a batch whose ``columns`` were decoded (``decode_batch``) from it."""
    return StepRows(
        dataset=dataset,
        episode_id=batch.episode_id,
        resource_id=resource_id,
        source=source,
        task=batch.task,
        first_seq=batch.first_seq,
        columns=columns,
        operators=decode_operators(batch, columns["intervention"]),
        label=batch.label.outcome,
        labelled_by=batch.label.by,
    )


def decode_wire(header: bytes, body: bytearray) -> StepRows:
    """The batch of a wire record whose checksum held, decoded as the gateway decoded it before logging it."""
    meta = json.loads(header)
    schema = {name: (dtype, tuple(shape)) for name, (dtype, shape) in meta["schema"].items()}
    batch = pb.EdgeMessage.FromString(body).steps
    columns = decode_batch(batch, schema, MAX_BODY_BYTES, MAX_BODY_BYTES, len(body))
    return batch_rows(batch, columns, meta["dataset"], meta["resource_id"], meta["source"])


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

    def __init__(
        self, folder: str | Path, segment_bytes: int = 64 << 20, durable: bool = True, spare_segments: int = 4
    ) -> None:
        self.folder = Path(folder)
        self.segment_bytes = segment_bytes
        self.durable = durable
        self.spare_segments = spare_segments  # retired segments kept for reuse (their pages stay cached)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._lock = threading.Lock()  # the writer appends and the compactor trims, each on its own thread
        self.dropped_tail_bytes = 0  # what a killed write left at the end, dropped on open
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            first = int(path.stem)
            self._segments.append(_Segment(path, first, first - 1, path.stat().st_size))
        self._scanned = not self._segments  # where the last segment's records end is known
        self._spares: list[Path] = []
        self._floor = 0  # no record ever written here has this number or a higher one
        self._retired = 0  # spares named so far (a spare's name is unique through it)
        for path in sorted(self.folder.glob(f"*{SPARE}")):
            floor, retired = (int(part) for part in path.name.split(".")[:2])
            self._floor, self._retired = max(self._floor, floor), max(self._retired, retired)
            self._spares.append(path)

    @property
    def next_record(self) -> int:
        """The number the next appended record gets."""
        return self._segments[-1].last + 1 if self._segments else self._floor

    def replay(self) -> Iterator[tuple[int, StepRows]]:
        """Every record still in the log, in order, as (record number, batch). Must run once, before ``append``:
        it also learns where each segment's records end and drops a torn last record."""
        for index, segment in enumerate(self._segments):
            if index and segment.first != self._segments[index - 1].last + 1:
                missing = f"{self._segments[index - 1].last + 1}..{segment.first - 1}"
                raise IngestLogError(f"{segment.path}: records {missing} are missing before it")
            for number, rows in self._read(segment, index == len(self._segments) - 1):
                yield number, rows
                segment.last = number
        self._scanned = True

    def _read(self, segment: _Segment, last: bool) -> Iterator[tuple[int, StepRows]]:
        number, at = segment.first, 0
        with open(segment.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while at < size:
                f.seek(at)
                frame = _frame(f.read(WIRE_FRAME.size))
                if frame is None or frame.number not in (None, number):
                    break  # the bytes of the file's earlier use, or never written
                end = at + frame.size + frame.header_len + frame.body_len
                if end > size:
                    if not last:
                        raise IngestLogError(f"{segment.path}: record at byte {at} is cut short mid-log")
                    self._drop_tail(segment, at, size)
                    return
                f.seek(at + frame.size)
                header, body = f.read(frame.header_len), bytearray(frame.body_len)
                f.readinto(body)
                if frame.checksum(number, header, body) != frame.crc:
                    if not last or _record_at(f, end, number + 1):
                        raise IngestLogError(f"{segment.path}: record at byte {at} fails its checksum; refused")
                    self._drop_tail(segment, at, size)
                    return
                try:
                    rows = frame.decode(header, body)
                except (ValueError, KeyError, TypeError, DecodeError) as err:
                    raise IngestLogError(f"{segment.path}: record at byte {at} does not decode: {err}") from err
                yield number, rows
                number += 1
                at = end
        segment.size = at

    def _drop_tail(self, segment: _Segment, at: int, size: int) -> None:
        log.warning(
            "ingest log: %s ends with %d bytes of a write that was cut short (never acked); dropped",
            segment.path.name,
            size - at,
        )
        self.dropped_tail_bytes += size - at
        os.truncate(segment.path, at)
        segment.size = at

    def append(self, batches: list[StepRows], wires: list[Wire | None] | None = None) -> int:
        """Writes the batches' records, then one fdatasync; returns the last one's number. Durable when it
        returns. ``wires``: per batch, the message it came in (logged as it is), or None (logged as its columns)."""
        with self._lock:
            return self._append(batches, wires or [None] * len(batches))

    def _append(self, batches: list[StepRows], wires: list[Wire | None]) -> int:
        if not batches:
            return self.next_record - 1
        if not self._scanned:
            for _ in self.replay():
                pass
        fd = self._writable()
        segment = self._segments[-1]
        parts = []
        for i, (rows, wire) in enumerate(zip(batches, wires, strict=True)):
            number = segment.last + 1 + i
            parts += encode(rows, number) if wire is None else encode_wire(rows, wire, number)
        written = write_all(fd, parts, segment.size)
        if self.durable:
            os.fdatasync(fd)  # the data and the file's size: what reading it back needs
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
            named = not path.exists()
            if named and self._spares:
                os.replace(self._spares.pop(), path)  # overwritten in place: its pages are still cached
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            if named and self.durable:  # the segment's name survives a power loss before its first record is acked
                fsync_path(self.folder)
        return self._fd

    def _empty_segment(self) -> _Segment:
        first = self.next_record
        return _Segment(self.folder / f"{first:016d}{SUFFIX}", first, first - 1, 0)

    def trim(self, upto: int) -> int:
        """Retires segments whose records are all numbered <= ``upto`` (they are in the store), except the one being
        appended to; returns how many went."""
        with self._lock:
            return self._trim(upto)

    def _trim(self, upto: int) -> int:
        self._floor = max(self._floor, self.next_record)
        gone = 0
        while len(self._segments) > 1 and self._segments[0].last <= upto:
            self._retire(self._segments.pop(0).path)
            gone += 1
        if len(self._segments) == 1 and self._segments[0].last <= upto and self._segments[0].size:
            self._close_fd()  # all of it is in the store: the next append starts a fresh segment
            segment = self._segments.pop()
            self._retire(segment.path)
            self._segments.append(
                _Segment(segment.path.with_stem(f"{segment.last + 1:016d}"), segment.last + 1, segment.last, 0)
            )
            gone += 1
        return gone

    def _retire(self, path: Path) -> None:
        """Keeps a segment the store holds as a spare, or deletes it when there are spares enough. A spare's name
        carries the floor of record numbers, so numbering never restarts below what its stale records hold."""
        if len(self._spares) >= self.spare_segments:
            path.unlink(missing_ok=True)
            return
        self._retired += 1
        spare = self.folder / f"{self._floor:016d}.{self._retired}{SPARE}"
        os.replace(path, spare)
        self._spares.append(spare)

    def bytes(self) -> int:
        """What the log's records take on disk (spares not counted)."""
        return sum(segment.size for segment in self._segments)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()


def _record_at(f: BinaryIO, at: int, number: int) -> bool:
    """Whether record ``number`` (or one of the first format) starts at byte ``at``: a record that follows one whose
    checksum fails makes that one a corruption, not a torn end."""
    f.seek(at)
    frame = _frame(f.read(WIRE_FRAME.size))
    return frame is not None and frame.number in (None, number)
