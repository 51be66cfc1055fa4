"""The edge's durable spool on append-only segment files: the contract of ``edge.spool.Spool`` (read its docstring:
upload order, urgent episodes promoted whole, nothing dropped), at a fraction of its CPU per byte.

Each batch is one record appended to the current segment (``edge/segment_log.py``: a frame with its episode, seqs,
priority and a checksum) with a plain write and no fsync: like SQLite's ``synchronous=NORMAL`` in WAL mode, a batch
survives a killed process from the moment ``append`` returns (it is in the kernel's page cache), not a power loss.
An in-memory index (batches in append order per priority, and per episode in seq order) drives ``next_to_send``; an
upload reads a batch's bytes back with one ``pread``. An ack drops the batches it covers from the index and appends
a few bytes to ``acks.log`` (no fsync either: after a crash a batch acked just before is sent again, and the cloud
drops what it holds); a segment whose batches are all acked becomes a spare that a later segment is written over.

On open the index is rebuilt by scanning the segments: a torn last record is cut off, batches that ``acks.log``
covers are left out, and an episode with any urgent batch is urgent whole (the batch that promoted it is written
urgent, and it is acked only after every earlier batch of its episode, so the promotion outlives a restart).
``open_spool`` is where the edge gets its spool: it moves the rows of an old SQLite spool file into the log first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Collection
from pathlib import Path

from edge import segment_log as files
from edge.spool import AUTONOMOUS, URGENT, Backlog, Spool, SpooledBatch, is_urgent, upload_order
from protocol import tunnel_pb2 as pb
from protocol.file_writes import write_all
from protocol.steps import batch_of_message, steps_message_parts

log = logging.getLogger("fleetloop")

SEGMENT_BYTES = 32 << 20
ACKS_REWRITE_BYTES = 1 << 20  # acks.log is rewritten with one record per live episode past this size


class _Entry:
    """One spooled batch in the index; ``gone`` once acked (the queues drop it lazily)."""

    __slots__ = ("row_id", "episode_id", "first_seq", "num_steps", "priority", "spooled_at", "segment", "offset",
                 "length", "framed", "nbytes", "gone")  # fmt: skip

    def __init__(self, record: files.Record, segment: _Segment) -> None:
        self.row_id, self.episode_id, self.first_seq = record.number, record.episode_id, record.first_seq
        self.num_steps, self.priority, self.spooled_at = record.num_steps, record.priority, record.spooled_at
        self.segment, self.offset, self.length, self.gone = segment, record.offset, record.length, False
        self.framed = record.framed
        self.nbytes = record.batch_bytes


class _Segment:
    def __init__(self, path: Path, first: int, size: int, read_only: bool = False) -> None:
        self.path, self.first, self.size = path, first, size
        self.fd = os.open(path, os.O_RDONLY) if read_only else os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.live = 0  # batches not yet acked
        self.episodes: set[str] = set()  # whose records it holds (acks.log keeps their acks while it exists)


class SegmentSpool:
    """``Spool``'s interface on the files of ``folder``; one process writes it (the edge). ``read_only`` opens it to
    look (``counts``, ``held``, ``pending``) beside that process: it changes no file, and acks and appends fail."""

    def __init__(
        self, folder: str | Path, segment_bytes: int = SEGMENT_BYTES, spare_segments: int = 2, read_only: bool = False
    ) -> None:
        self.folder = Path(folder)
        self.read_only = read_only
        if not read_only:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.segment_bytes, self.spare_segments = segment_bytes, spare_segments
        self._lock = threading.Lock()
        self._queues: dict[int, deque[_Entry]] = {URGENT: deque(), AUTONOMOUS: deque()}
        self._all: deque[_Entry] = deque()  # append order, for ``pending`` and the oldest's age
        self._episodes: dict[str, deque[_Entry]] = {}  # seq order
        self._urgent: set[str] = set()
        self._bytes = self._batches = self._steps = 0
        self._spares, self._floor, self._retired = files.spares(self.folder)
        self._floor = max(self._floor, 1)  # row ids start at 1, as SQLite's do (``pending`` starts after 0)
        self._acked = files.read_acks(self.folder / files.ACKS)
        self._segments: list[_Segment] = []
        for first, path in files.segments(self.folder):
            self._load_segment(path, first)
        self._acks_fd: int | None = None
        if not read_only:
            for segment in self._segments[:-1]:
                if not segment.live:
                    self._retire(segment)
            self._acks_fd = self._rewrite_acks()

    def _load_segment(self, path: Path, first: int) -> None:
        try:
            records, end = files.scan(path, first, cut=not self.read_only)
            segment = _Segment(path, first, end, self.read_only)
        except FileNotFoundError:
            if not self.read_only:
                raise
            return  # the edge beside retired it meanwhile: all of it was acked
        self._segments.append(segment)
        for record in records:
            segment.episodes.add(record.episode_id)  # acked or not: its ack is kept while the record is on disk
            if record.first_seq + record.num_steps > self._acked.get(record.episode_id, 0):
                self._add(_Entry(record, segment))
        self._floor = max(self._floor, first + len(records))

    @property
    def size_bytes(self) -> int:
        """Payload bytes spooled and not yet acked (in memory: no disk access)."""
        return self._bytes

    def append(self, batch: pb.StepBatch) -> None:
        self._append(batch.episode_id, batch.first_seq, batch.num_steps, batch.SerializeToString(), is_urgent(batch))

    def _append(
        self, episode_id: str, first_seq: int, num_steps: int, payload: bytes, urgent: bool, spooled_at: float = 0.0
    ) -> None:
        with self._lock:
            episode = self._episodes.get(episode_id)
            if urgent and episode_id not in self._urgent:
                self._promote(episode_id)
            if episode and any(e.first_seq == first_seq for e in _tail(episode, first_seq)):
                return  # spooled already (a promotion it carried holds in memory only)
            priority = URGENT if episode_id in self._urgent else AUTONOMOUS
            segment = self._writable()
            number, now = self._floor, spooled_at or time.time()
            message = steps_message_parts(payload, number)  # spooled as it will be sent: no copy at upload
            parts = files.frame(number, episode_id, first_seq, num_steps, priority, now, message)
            offset = segment.size + len(parts[0]) + len(parts[1])
            segment.size += write_all(segment.fd, parts, segment.size)
            self._floor += 1
            length = sum(len(part) for part in message)
            record = files.Record(
                number,
                episode_id,
                first_seq,
                num_steps,
                priority,
                now,
                offset,
                length,
                framed=True,
                batch_bytes=len(payload),
            )
            self._add(_Entry(record, segment))

    def _add(self, entry: _Entry) -> None:
        """Indexes a batch (appended, or scanned at open) that no ack covers."""
        if entry.priority == URGENT and entry.episode_id not in self._urgent:
            self._promote(entry.episode_id)  # its earlier batches were written autonomous
        episode = self._episodes.setdefault(entry.episode_id, deque())
        if episode and entry.first_seq <= episode[-1].first_seq:
            if any(e.first_seq == entry.first_seq for e in _tail(episode, entry.first_seq)):
                return  # the same batch twice (an old spool moved in again after a crash midway)
            episode.append(entry)  # out of seq order (not how the recorder writes): sorted back
            self._episodes[entry.episode_id] = deque(sorted(episode, key=lambda e: e.first_seq))
        else:
            episode.append(entry)
        entry.segment.live += 1
        entry.segment.episodes.add(entry.episode_id)
        self._bytes, self._batches, self._steps = (
            self._bytes + entry.nbytes,
            self._batches + 1,
            self._steps + entry.num_steps,
        )
        self._all.append(entry)
        self._queues[URGENT if entry.episode_id in self._urgent else AUTONOMOUS].append(entry)

    def _promote(self, episode_id: str) -> None:
        """Moves an episode's spooled batches into the urgent queue, keeping both queues in append order."""
        self._urgent.add(episode_id)
        moved = [e for e in self._episodes.get(episode_id, ()) if not e.gone]
        if not moved:
            return
        for entry in moved:
            entry.priority = URGENT
        autonomous = self._queues[AUTONOMOUS]
        self._queues[AUTONOMOUS] = deque(e for e in autonomous if e.episode_id != episode_id and not e.gone)
        urgent = [e for e in self._queues[URGENT] if not e.gone]
        self._queues[URGENT] = deque(sorted(urgent + moved, key=lambda e: e.row_id))

    def _writable(self) -> _Segment:
        if self.read_only:
            raise PermissionError(f"spool {self.folder} was opened read-only")
        if self._segments and self._segments[-1].size < self.segment_bytes:
            return self._segments[-1]
        if self._segments and not self._segments[-1].live:
            self._retire(self._segments.pop())
        path = files.segment_path(self.folder, self._floor)
        if self._spares:
            os.replace(self._spares.pop(), path)  # written over in place: its pages are still cached
        self._segments.append(_Segment(path, self._floor, 0))
        return self._segments[-1]

    def _retire(self, segment: _Segment) -> None:
        """Keeps a segment whose batches are all acked as a spare, or deletes it when there are spares enough."""
        os.close(segment.fd)
        if segment in self._segments:
            self._segments.remove(segment)
        if len(self._spares) >= self.spare_segments:
            segment.path.unlink(missing_ok=True)
            return
        self._retired += 1
        spare = files.spare_path(self.folder, self._floor, self._retired)
        os.replace(segment.path, spare)
        self._spares.append(spare)

    def pending(self, after_row_id: int = 0, limit: int = 64) -> list[SpooledBatch]:
        """Spooled batches in the order they were recorded, starting after ``after_row_id``."""
        with self._lock:
            chosen = [e for e in self._all if not e.gone and e.row_id > after_row_id][:limit]
            return [self._read(e) for e in chosen]

    def next_to_send(self, skip: Collection[int], limit: int, turn: int = 0) -> list[SpooledBatch]:
        """``Spool.next_to_send``: urgent episodes first, oldest first, one slot in ``AUTONOMOUS_SHARE`` to the
        oldest autonomous batch; none in ``skip`` nor acked."""
        if limit <= 0:
            return []
        with self._lock:
            chosen = upload_order(self._unsent(URGENT, skip, limit), self._unsent(AUTONOMOUS, skip, limit), limit, turn)
            return [self._read(e) for e in chosen]

    def _unsent(self, priority: int, skip: Collection[int], limit: int) -> list[_Entry]:
        queue = self._queues[priority]
        while queue and queue[0].gone:
            queue.popleft()
        chosen: list[_Entry] = []
        passed = 0
        for entry in queue:
            if len(chosen) >= limit:
                break
            if entry.gone:
                passed += 1
            elif entry.row_id not in skip:
                chosen.append(entry)
        if passed > 1024 and passed * 2 > len(queue):  # acked out of order behind an older batch: compacted
            self._queues[priority] = deque(e for e in queue if not e.gone)
        return chosen

    def _read(self, entry: _Entry) -> SpooledBatch:
        data = os.pread(entry.segment.fd, entry.length, entry.offset)
        if len(data) != entry.length:
            raise OSError(f"spool: {entry.segment.path} ends before batch {entry.row_id}'s bytes")
        if not entry.framed:  # the first format: the bare batch
            return SpooledBatch(entry.row_id, entry.episode_id, entry.first_seq, entry.num_steps, data)
        payload = batch_of_message(data, entry.row_id)
        return SpooledBatch(entry.row_id, entry.episode_id, entry.first_seq, entry.num_steps, payload, message=data)

    def backlog(self) -> Backlog:
        """Steps and bytes waiting for an ack, and the age of the oldest (0 when none)."""
        with self._lock:
            oldest = self._oldest()
            return Backlog(self._steps, self._bytes, max(0.0, time.time() - oldest.spooled_at) if oldest else 0.0)

    def _oldest(self) -> _Entry | None:
        while self._all and self._all[0].gone:
            self._all.popleft()
        return self._all[0] if self._all else None

    def ack(self, episode_id: str, next_seq: int) -> int:
        """Drops the batches of an episode that the cloud holds entirely; returns how many."""
        with self._lock:
            if self._acks_fd is None:
                raise PermissionError(f"spool {self.folder} was opened read-only")
            if next_seq > self._acked.get(episode_id, 0):
                self._acked[episode_id] = next_seq
                os.write(self._acks_fd, files.ack_record(episode_id, next_seq))
            episode = self._episodes.get(episode_id, deque())
            freed = 0
            while episode and episode[0].first_seq + episode[0].num_steps <= next_seq:
                self._drop(episode.popleft())
                freed += 1
            if not episode:
                self._episodes.pop(episode_id, None)
                self._urgent.discard(episode_id)
            self._oldest()  # lets go of the acked ones at its head
            return freed

    def ack_later(self, episode_id: str, next_seq: int) -> None:
        """``ack``: here it is as cheap as the upload needs (an index update and a few bytes appended)."""
        self.ack(episode_id, next_seq)

    def _drop(self, entry: _Entry) -> None:
        entry.gone = True
        self._bytes, self._batches, self._steps = (
            self._bytes - entry.nbytes,
            self._batches - 1,
            self._steps - entry.num_steps,
        )
        segment = entry.segment
        segment.live -= 1
        if not segment.live and segment is not self._segments[-1]:
            self._retire(segment)
            if self._acks_fd is not None and os.fstat(self._acks_fd).st_size > ACKS_REWRITE_BYTES:
                os.close(self._acks_fd)
                self._acks_fd = self._rewrite_acks()

    def _rewrite_acks(self) -> int:
        """Keeps the acks of the episodes whose records are still on disk (the others can never be read again);
        returns the new file, open to append."""
        kept = set().union(*(s.episodes for s in self._segments))
        self._acked = {e: s for e, s in self._acked.items() if e in kept}
        files.rewrite_acks(self.folder / files.ACKS, self._acked)
        return os.open(self.folder / files.ACKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def held(self) -> dict[str, int]:
        """Episode id -> lowest spooled seq, for the resume handshake."""
        with self._lock:
            return {e: batches[0].first_seq for e, batches in self._episodes.items() if batches}

    def counts(self) -> tuple[int, int]:
        """(batches, steps) still waiting for an ack."""
        return self._batches, self._steps

    def sync(self) -> None:
        """Flushes every segment to the disk (``append`` alone survives a killed process, not a power loss)."""
        with self._lock:
            for segment in self._segments:
                os.fsync(segment.fd)

    def close(self) -> None:
        with self._lock:
            for segment in self._segments:
                os.close(segment.fd)
            self._segments = []
            if self._acks_fd is not None:
                os.close(self._acks_fd)
                self._acks_fd = None


def _tail(episode: deque[_Entry], first_seq: int) -> list[_Entry]:
    """The batches of an episode that could have ``first_seq`` (those from the end back to it: appends come in seq
    order, so usually just the last)."""
    found = []
    for entry in reversed(episode):
        found.append(entry)
        if entry.first_seq < first_seq:
            break
    return found


def open_spool(path: str | Path, read_only: bool = False) -> SegmentSpool:
    """The edge's spool for ``path`` (``<name>.db`` as before): the segment log in ``<name>.spool/``. A SQLite spool
    left at ``path`` by an older edge is moved in first (its rows in their order, priorities and ages kept; the file
    is deleted once its rows are in the log, so a crash midway moves them again and the duplicates are dropped)."""
    path = Path(path)
    spool = SegmentSpool(path.with_suffix(".spool"), read_only=read_only)
    if path.is_file() and not read_only:
        _move_in(spool, path)
    return spool


def _move_in(spool: SegmentSpool, path: Path) -> None:
    old = Spool(path)
    moved = after = 0
    try:
        while rows := old.pending_with_order(after_row_id=after, limit=256):
            for b, priority, spooled_at in rows:
                spool._append(b.episode_id, b.first_seq, b.num_steps, b.payload, priority == URGENT, spooled_at)
            after, moved = rows[-1][0].row_id, moved + len(rows)
        spool.sync()  # the rows leave the old file only once they are in the log for good
    finally:
        old.close()
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        (path.parent / name).unlink(missing_ok=True)
    log.info("spool: moved %d batches from the old spool %s into %s", moved, path, spool.folder)
