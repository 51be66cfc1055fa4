"""The files of the edge's segment spool (``edge/segment_spool.py``): append-only segments of framed batches, spare
segments kept for reuse, and a log of acks.

A segment ``<first record number, 16 digits>.seg`` holds records one after another::

    b"FSP2" | priority u8 | pad | episode length u16 | record number u64 | first_seq i64 | num_steps u32
            | payload length u32 | spooled_at f64 | xxh3_64 u64 | episode id | payload

The payload is the ``EdgeMessage`` that uploads the batch (``protocol.steps.steps_message`` of the serialized
StepBatch, its batch_id the record number), so an upload reads it and sends it with no copy between. xxh3_64 covers the
frame before it, the episode id and the payload: at ~20 GB/s, where the crc32 of the first format was half of what
spooling a camera batch cost. Records of the first format (``FSP1``: a crc32 u32 in the checksum's place, the payload
the bare StepBatch) are still read. A segment whose
records are all acked becomes a spare (``<floor>.<k>.spare``) that a later segment is renamed from and overwritten in
place (its pages are still in the page cache; writing into pages the process never touched costs several times more, see
``cloud/data/ingest_log.py``). Past a segment's records lie the bytes of its earlier use: a record ends the segment
unless it carries the next number (numbers only grow, across spares too) and its checksum holds. A record with the right
number that is cut short or fails its checksum is a write that a killed process left half done: it and what follows are
cut off.

``acks.log`` holds ``b"FSA1" | episode length u16 | next_seq i64 | crc32 u32 | episode id`` records, appended per ack
and rewritten small now and then; a torn last one is ignored (a batch acked but still spooled is sent again, and the
cloud drops what it holds).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash

from protocol.steps import batch_of_message

log = logging.getLogger("fleetloop")

MAGIC, FIRST_MAGIC = b"FSP2", b"FSP1"
FRAME = struct.Struct(
    "<4sBxHQqIId"
)  # magic, priority, episode length, number, first_seq, num_steps, length, spooled_at
CHECKSUM = struct.Struct("<Q")  # xxh3_64
CRC = struct.Struct("<I")  # the first format's crc32
HEAD = FRAME.size + CHECKSUM.size
FIRST_HEAD = FRAME.size + CRC.size
ACK_MAGIC = b"FSA1"
ACK = struct.Struct("<4sHqI")  # magic, episode length, next_seq, crc32 (of the episode id and next_seq)
SUFFIX, SPARE, ACKS = ".seg", ".spare", "acks.log"


@dataclass(frozen=True)
class Record:
    """A record as scanned: where its payload lies in its segment (``offset``, ``length``)."""

    number: int
    episode_id: str
    first_seq: int
    num_steps: int
    priority: int
    spooled_at: float
    offset: int
    length: int
    framed: bool  # the payload is the EdgeMessage that uploads the batch (False: the bare StepBatch, FSP1)
    batch_bytes: int  # the serialized StepBatch's bytes


def frame(number: int, episode_id: str, first_seq: int, num_steps: int, priority: int, spooled_at: float,
          payload: Sequence[bytes]) -> list[bytes]:  # fmt: skip
    """Record ``number``'s parts, to write one after another; ``payload``: the parts of its payload."""
    episode = episode_id.encode()
    length = sum(len(part) for part in payload)
    head = FRAME.pack(MAGIC, priority, len(episode), number, first_seq, num_steps, length, spooled_at)
    return [head + CHECKSUM.pack(_checksum(head, episode, *payload)), episode, *payload]


def _checksum(head: bytes, *parts: bytes) -> int:
    hasher = xxhash.xxh3_64(head)
    for part in parts:
        hasher.update(part)
    return hasher.intdigest()


def _holds(head: bytes, body: bytes) -> bool:
    """Whether a record's checksum holds (``head``: its frame and checksum; ``body``: its episode id and payload)."""
    if head[:4] == MAGIC:
        (expected,) = CHECKSUM.unpack_from(head, FRAME.size)
        return _checksum(head[: FRAME.size], body) == expected
    (crc,) = CRC.unpack_from(head, FRAME.size)
    return zlib.crc32(body, zlib.crc32(head[: FRAME.size])) == crc


def scan(path: Path, first: int, cut: bool = True) -> tuple[list[Record], int]:
    """The records of segment ``path`` (numbered from ``first``) and the byte where they end; a torn last record is
    cut off the file (when ``cut``: not by a reader beside the edge that writes it)."""
    records: list[Record] = []
    at = 0
    with open(path, "r+b" if cut else "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while at + FIRST_HEAD <= size:
            f.seek(at)
            head = f.read(HEAD)
            if len(head) < FRAME.size:
                break
            magic, priority, episode_len, number, first_seq, num_steps, length, spooled_at = FRAME.unpack_from(head)
            if magic not in (MAGIC, FIRST_MAGIC) or number != first + len(records):
                return records, at  # the bytes of the file's earlier use, or never written
            head_len = HEAD if magic == MAGIC else FIRST_HEAD
            head = head[:head_len]
            end = at + head_len + episode_len + length
            if end > size or len(head) < head_len:
                break
            f.seek(at + head_len)
            body = f.read(episode_len + length)
            if not _holds(head, body):
                break
            episode = body[:episode_len].decode(errors="replace")
            offset = at + head_len + episode_len
            framed = magic == MAGIC
            try:
                batch_bytes = len(batch_of_message(body[episode_len:], number)) if framed else length
            except (ValueError, IndexError):  # not the message this spool writes: as if torn
                break
            records.append(
                Record(number, episode, first_seq, num_steps, priority, spooled_at, offset, length, framed, batch_bytes)
            )
            at = end
        if cut and at < size and _torn(f, at, size, first + len(records)):
            log.warning("spool: %s ends with %d bytes of a write cut short (never uploaded); cut off", path.name,
                        size - at)  # fmt: skip
            f.truncate(at)
    return records, at


def _torn(f, at: int, size: int, number: int) -> bool:  # noqa: ANN001 (an open binary file)
    """Whether a record numbered ``number`` starts at ``at`` (the rest being a write cut short), as opposed to the
    stale bytes of the file's earlier use."""
    f.seek(at)
    head = f.read(FRAME.size)
    if len(head) < 12:
        return any(head[:4] == magic[: len(head[:4])] for magic in (MAGIC, FIRST_MAGIC))  # even the number cut short
    return head[:4] in (MAGIC, FIRST_MAGIC) and struct.unpack_from("<Q", head, 8)[0] == number


def ack_record(episode_id: str, next_seq: int) -> bytes:
    episode = episode_id.encode()
    return ACK.pack(ACK_MAGIC, len(episode), next_seq, _ack_crc(episode, next_seq)) + episode


def _ack_crc(episode: bytes, next_seq: int) -> int:
    return zlib.crc32(episode, zlib.crc32(struct.pack("<q", next_seq)))


def read_acks(path: Path) -> dict[str, int]:
    """Episode id -> the highest next_seq acked, from ``acks.log`` (a torn last record ends it)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    acked: dict[str, int] = {}
    for episode, next_seq in _ack_records(data):
        acked[episode] = max(next_seq, acked.get(episode, next_seq))
    return acked


def _ack_records(data: bytes) -> Iterator[tuple[str, int]]:
    at = 0
    while at + ACK.size <= len(data):
        magic, episode_len, next_seq, crc = ACK.unpack_from(data, at)
        episode = data[at + ACK.size : at + ACK.size + episode_len]
        if magic != ACK_MAGIC or len(episode) < episode_len:
            return
        if _ack_crc(episode, next_seq) != crc:
            return
        yield episode.decode(errors="replace"), next_seq
        at += ACK.size + episode_len


def rewrite_acks(path: Path, acked: dict[str, int]) -> None:
    """Replaces ``acks.log`` with one record per episode (renamed into place: a killed process leaves the old one)."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(b"".join(ack_record(e, s) for e, s in acked.items()))
    os.replace(temporary, path)


def segment_path(folder: Path, first: int) -> Path:
    return folder / f"{first:016d}{SUFFIX}"


def spare_path(folder: Path, floor: int, k: int) -> Path:
    return folder / f"{floor:016d}.{k}{SPARE}"


def spares(folder: Path) -> tuple[list[Path], int, int]:
    """The spare segments in ``folder``, the floor of record numbers they carry and the highest spare count."""
    paths, floor, count = [], 0, 0
    for path in sorted(folder.glob(f"*{SPARE}")):
        try:
            named_floor, k = (int(part) for part in path.name.split(".")[:2])
        except ValueError:
            continue  # not one of ours
        floor, count = max(floor, named_floor), max(count, k)
        paths.append(path)
    return paths, floor, count


def segments(folder: Path) -> list[tuple[int, Path]]:
    """(first record number, path) of each segment in ``folder``, in order."""
    found = []
    for path in folder.glob(f"*{SUFFIX}"):
        if path.stem.isdigit():
            found.append((int(path.stem), path))
    return sorted(found)
