"""The edge's durable spool: steps wait here, on disk, until the cloud acks them.

SQLite in WAL mode: a row is committed before it is offered for upload, so a killed edge
process restarts with every step it had spooled. Rows leave only on an ack.

``size_bytes`` (the payload bytes waiting for an ack) is kept in memory, so the recorder can bound the
spool without querying the database: see ``StepRecorder(max_spool_bytes=...)``.

Upload order on a thin link (``next_to_send``): every batch carries a priority, URGENT for an episode in which a
person intervened, drove or gave a verdict, AUTONOMOUS otherwise; an episode is promoted whole (all its spooled
batches) the moment one of its batches is urgent, so an episode's batches always share one priority and leave in
seq order (the cloud's ack says "every step below next_seq is stored", and encoded cameras need earlier packets).
Across episodes urgent ones go first, oldest first; one slot in ``AUTONOMOUS_SHARE`` still goes to the oldest
autonomous batch, so autonomous backlog drains even while people keep intervening. Nothing is ever dropped to make
room: a bounded spool holds the robot still instead (``StepRecorder(max_spool_bytes=...)``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

from protocol import tunnel_pb2 as pb
from protocol.arrays import decode_array

URGENT, AUTONOMOUS = 0, 1  # a batch's upload priority (lower goes first)
AUTONOMOUS_SHARE = 4  # with both kinds waiting, one batch in this many is the oldest autonomous one
PAGE_BYTES = 65536  # SQLite's largest page


@dataclass(frozen=True)
class SpooledBatch:
    row_id: int
    episode_id: str
    first_seq: int
    num_steps: int
    payload: bytes | memoryview  # the serialized StepBatch as spooled
    # The EdgeMessage that uploads it (``protocol.steps.steps_message`` of ``payload`` and ``row_id``) where the spool
    # keeps it so, sent as it is; empty: the upload frames ``payload``.
    message: bytes = b""

    @cached_property
    def batch(self) -> pb.StepBatch:
        """The batch, parsed (only when asked: the upload never needs it)."""
        return pb.StepBatch.FromString(self.payload)


@dataclass(frozen=True)
class Backlog:
    """What waits for an ack: steps, payload bytes, and how long the oldest has waited (0 when none)."""

    steps: int
    bytes: int
    oldest_s: float


class SpoolStore(Protocol):
    """What the edge needs of a spool: ``Spool`` (SQLite) and ``edge.segment_spool.SegmentSpool`` (segment files)."""

    @property
    def size_bytes(self) -> int: ...
    def append(self, batch: pb.StepBatch) -> None: ...
    def pending(self, after_row_id: int = 0, limit: int = 64) -> list[SpooledBatch]: ...
    def next_to_send(self, skip: Collection[int], limit: int, turn: int = 0) -> list[SpooledBatch]: ...
    def backlog(self) -> Backlog: ...
    def ack(self, episode_id: str, next_seq: int) -> int: ...
    def ack_later(self, episode_id: str, next_seq: int) -> None: ...
    def held(self) -> dict[str, int]: ...
    def counts(self) -> tuple[int, int]: ...
    def close(self) -> None: ...


def upload_order[T](urgent: list[T], autonomous: list[T], limit: int, turn: int) -> list[T]:
    """Up to ``limit`` of the oldest urgent and autonomous batches, urgent first except that every slot
    ``AUTONOMOUS_SHARE - 1`` (mod ``AUTONOMOUS_SHARE``, counted from ``turn``) takes the oldest autonomous one."""
    chosen: list[T] = []
    while len(chosen) < limit and (urgent or autonomous):
        share = (turn + len(chosen)) % AUTONOMOUS_SHARE == AUTONOMOUS_SHARE - 1
        source = autonomous if (share and autonomous) or not urgent else urgent
        chosen.append(source.pop(0))
    return chosen


def is_urgent(batch: pb.StepBatch) -> bool:
    """A person touched this batch: an intervention step, a step a person drove, or a verdict on the episode."""
    if batch.operators or batch.label.outcome:
        return True
    column = batch.columns.get("intervention")
    if column is None:
        return False
    try:
        return bool(decode_array(column, "step_batch.columns[intervention]").any())
    except ValueError:  # the edge wrote it itself; a column it cannot read is the cloud's to refuse
        return False


class Spool:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # Big pages for a new spool (an existing one keeps its own): a camera batch spans a few pages, not hundreds,
        # so reading and dropping it walks a short overflow chain. Only takes effect before the first table exists.
        self._db.execute(f"PRAGMA page_size={PAGE_BYTES}")
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL survives a killed process (the contract here); FULL would also survive power loss.
        self._db.execute("PRAGMA synchronous=NORMAL")
        _no_zeroed_pages(self._db)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (row_id INTEGER PRIMARY KEY AUTOINCREMENT, episode_id TEXT NOT NULL,"
            " first_seq INTEGER NOT NULL, num_steps INTEGER NOT NULL, payload BLOB NOT NULL,"
            " UNIQUE(episode_id, first_seq))"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(batches)")}
        if "priority" not in columns:  # a spool written before uploads had an order: its batches count as autonomous
            self._db.execute(f"ALTER TABLE batches ADD COLUMN priority INTEGER NOT NULL DEFAULT {AUTONOMOUS}")
            self._db.execute("ALTER TABLE batches ADD COLUMN spooled_at REAL NOT NULL DEFAULT 0")
        self._db.execute("CREATE INDEX IF NOT EXISTS batches_order ON batches (priority, row_id)")
        self._lock = threading.Lock()
        (self._bytes,) = self._db.execute("SELECT COALESCE(SUM(length(payload)), 0) FROM batches").fetchone()
        self._path = str(path)
        # ack_later: episode -> next_seq acked and not yet deleted (the uploader skips what it covers), and the thread
        # that deletes it on a connection of its own, so the upload never waits for a delete
        self._acked_to: dict[str, int] = {}
        self._acked_lock = threading.Lock()
        self._trim_wake = threading.Event()
        self._trimmer: threading.Thread | None = None
        self._closing = False

    @property
    def size_bytes(self) -> int:
        """Payload bytes spooled and not yet acked (in memory: no disk access)."""
        return self._bytes

    def append(self, batch: pb.StepBatch) -> None:
        payload = batch.SerializeToString()
        urgent = is_urgent(batch)
        with self._lock:
            if not urgent:  # an episode already promoted stays urgent: its batches must keep one priority
                urgent = (
                    self._db.execute(
                        "SELECT 1 FROM batches WHERE episode_id = ? AND priority = ? LIMIT 1",
                        (batch.episode_id, URGENT),
                    ).fetchone()
                    is not None
                )
            elif self._db.execute("SELECT 1 FROM batches WHERE episode_id = ? LIMIT 1", (batch.episode_id,)).fetchone():
                self._db.execute("UPDATE batches SET priority = ? WHERE episode_id = ?", (URGENT, batch.episode_id))
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO batches (episode_id, first_seq, num_steps, payload, priority, spooled_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    batch.episode_id,
                    batch.first_seq,
                    batch.num_steps,
                    payload,
                    URGENT if urgent else AUTONOMOUS,
                    time.time(),
                ),
            )
            if cursor.rowcount > 0:
                self._bytes += len(payload)

    def pending(self, after_row_id: int = 0, limit: int = 64) -> list[SpooledBatch]:
        """Spooled batches in the order they were recorded, starting after ``after_row_id``."""
        return [spooled for spooled, _, _ in self.pending_with_order(after_row_id, limit)]

    def pending_with_order(self, after_row_id: int, limit: int) -> list[tuple[SpooledBatch, int, float]]:
        """``pending``, each batch with its priority and when it was spooled (0: before ages were kept)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT row_id, episode_id, first_seq, num_steps, payload, priority, spooled_at FROM batches"
                " WHERE row_id > ? ORDER BY row_id LIMIT ?",
                (after_row_id, limit),
            ).fetchall()
        return [(_spooled(*row[:5]), row[5], row[6]) for row in rows]

    def next_to_send(self, skip: Collection[int], limit: int, turn: int = 0) -> list[SpooledBatch]:
        """Up to ``limit`` batches to upload next, not in ``skip`` (in flight, or refused this session) nor acked:
        urgent episodes first, oldest first, except that slot ``turn % AUTONOMOUS_SHARE == AUTONOMOUS_SHARE - 1``
        (counted from ``turn``, the number of batches the caller sent so far) takes the oldest autonomous batch."""
        if limit <= 0:
            return []
        return self._load(
            upload_order(self._unsent(URGENT, skip, limit), self._unsent(AUTONOMOUS, skip, limit), limit, turn)
        )

    def _unsent(self, priority: int, skip: Collection[int], limit: int) -> list[int]:
        """The oldest ``limit`` row ids of ``priority`` neither in ``skip`` nor acked (read page by page: the ones
        left out are at most the window, the refused and what the trimmer has not yet deleted)."""
        with self._acked_lock:
            acked_to = dict(self._acked_to)
        chosen: list[int] = []
        after, page = 0, limit + len(skip) + len(acked_to)
        while len(chosen) < limit:
            with self._lock:
                rows = self._db.execute(
                    "SELECT row_id, episode_id, first_seq + num_steps FROM batches WHERE priority = ? AND row_id > ?"
                    " ORDER BY row_id LIMIT ?",
                    (priority, after, page),
                ).fetchall()
            chosen += [i for i, episode, end in rows if i not in skip and end > acked_to.get(episode, 0)]
            if len(rows) < page:
                break
            after = rows[-1][0]
        return chosen[:limit]

    def _load(self, row_ids: list[int]) -> list[SpooledBatch]:
        """The batches of ``row_ids``, in that order (one that an ack dropped meanwhile is left out)."""
        if not row_ids:
            return []
        marks = ",".join("?" * len(row_ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT row_id, episode_id, first_seq, num_steps, payload FROM batches WHERE row_id IN ({marks})",
                row_ids,
            ).fetchall()
        by_id = {row[0]: _spooled(*row) for row in rows}
        return [by_id[i] for i in row_ids if i in by_id]

    def backlog(self) -> Backlog:
        """Steps and bytes waiting for an ack, and the age of the oldest (a spool from before ages: 0)."""
        with self._lock:
            steps, oldest = self._db.execute(
                "SELECT COALESCE(SUM(num_steps), 0), MIN(NULLIF(spooled_at, 0)) FROM batches"
            ).fetchone()
        age = max(0.0, time.time() - oldest) if oldest else 0.0
        return Backlog(int(steps), self._bytes, age)

    def ack(self, episode_id: str, next_seq: int) -> int:
        """Drops the batches of an episode that the cloud holds entirely; returns how many."""
        with self._lock:
            freed = _drop_acked(self._db, {episode_id: next_seq})
            self._bytes -= sum(freed)
            return len(freed)

    def ack_later(self, episode_id: str, next_seq: int) -> None:
        """``ack``, without waiting for the delete: the batches it covers are no longer offered for upload at once,
        and leave the disk on the spool's trimmer thread (``close`` finishes what it has not done)."""
        with self._acked_lock:
            if next_seq <= self._acked_to.get(episode_id, 0):
                return
            self._acked_to[episode_id] = next_seq
            if self._trimmer is None:
                self._trimmer = threading.Thread(target=self._trim, name="spool-trimmer", daemon=True)
                self._trimmer.start()
        self._trim_wake.set()

    def _trim(self) -> None:
        # Its own connection: in WAL mode the uploader's reads go on while this one deletes.
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        _no_zeroed_pages(db)
        try:
            while True:
                self._trim_wake.wait()
                self._trim_wake.clear()
                with self._acked_lock:
                    acked = dict(self._acked_to)
                if not acked and self._closing:
                    return
                if acked:
                    self._delete_acked(db, acked)
                if self._closing:
                    self._trim_wake.set()  # one more turn: returns once nothing is left
        finally:
            db.close()

    def _delete_acked(self, db: sqlite3.Connection, acked: dict[str, int]) -> None:
        freed = sum(_drop_acked(db, acked))
        with self._lock:
            self._bytes -= freed
        with self._acked_lock:
            for episode_id, next_seq in acked.items():
                if self._acked_to.get(episode_id) == next_seq:  # nothing newer came meanwhile
                    del self._acked_to[episode_id]

    def held(self) -> dict[str, int]:
        """Episode id -> lowest spooled seq, for the resume handshake."""
        with self._lock:
            rows = self._db.execute("SELECT episode_id, MIN(first_seq) FROM batches GROUP BY episode_id").fetchall()
        return dict(rows)

    def counts(self) -> tuple[int, int]:
        """(batches, steps) still waiting for an ack."""
        with self._lock:
            batches, steps = self._db.execute("SELECT COUNT(*), COALESCE(SUM(num_steps), 0) FROM batches").fetchone()
        return int(batches), int(steps)

    def close(self) -> None:
        with self._acked_lock:
            self._closing = True
            trimmer = self._trimmer
        if trimmer is not None:  # what was acked leaves the disk before the spool closes
            self._trim_wake.set()
            trimmer.join()
        with self._lock:
            self._db.close()


def _drop_acked(db: sqlite3.Connection, acked: dict[str, int]) -> list[int]:
    """Deletes the batches each episode's ``next_seq`` covers, in one transaction (with 64 KiB pages each commit
    writes every page it touched to the WAL, so a commit per episode wrote ~6 pages per batch dropped); returns the
    payload sizes freed."""
    freed: list[int] = []
    db.execute("BEGIN")
    try:
        for episode_id, next_seq in acked.items():
            rows = db.execute(
                "DELETE FROM batches WHERE episode_id = ? AND first_seq + num_steps <= ? RETURNING length(payload)",
                (episode_id, next_seq),
            ).fetchall()
            freed += [size for (size,) in rows]
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return freed


def _no_zeroed_pages(db: sqlite3.Connection) -> None:
    """Deleted rows are zeroed on the pages that hold them but freed overflow pages are left as they are (SQLite's
    "fast" secure delete; some builds zero every freed page): zeroing them wrote a dropped batch's whole size again
    to the WAL and then to the file. Freed pages are reused by the next batches spooled."""
    db.execute("PRAGMA secure_delete=FAST")


def _spooled(row_id: int, episode_id: str, first_seq: int, num_steps: int, payload: bytes) -> SpooledBatch:
    return SpooledBatch(row_id, episode_id, first_seq, num_steps, payload)
