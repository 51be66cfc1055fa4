"""The edge's durable spool: steps wait here, on disk, until the cloud acks them.

SQLite in WAL mode: a row is committed before it is offered for upload, so a killed edge
process restarts with every step it had spooled. Rows leave only on an ack.

``size_bytes`` (the payload bytes waiting for an ack) is kept in memory, so the recorder can bound the
spool without querying the database: see ``StepRecorder(max_spool_bytes=...)``.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from protocol import tunnel_pb2 as pb


@dataclass(frozen=True)
class SpooledBatch:
    row_id: int
    episode_id: str
    first_seq: int
    num_steps: int
    batch: pb.StepBatch


class Spool:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL survives a killed process (the contract here); FULL would also survive power loss.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (row_id INTEGER PRIMARY KEY AUTOINCREMENT, episode_id TEXT NOT NULL,"
            " first_seq INTEGER NOT NULL, num_steps INTEGER NOT NULL, payload BLOB NOT NULL,"
            " UNIQUE(episode_id, first_seq))"
        )
        self._lock = threading.Lock()
        (self._bytes,) = self._db.execute("SELECT COALESCE(SUM(length(payload)), 0) FROM batches").fetchone()

    @property
    def size_bytes(self) -> int:
        """Payload bytes spooled and not yet acked (in memory: no disk access)."""
        return self._bytes

    def append(self, batch: pb.StepBatch) -> None:
        payload = batch.SerializeToString()
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO batches (episode_id, first_seq, num_steps, payload) VALUES (?, ?, ?, ?)",
                (batch.episode_id, batch.first_seq, batch.num_steps, payload),
            )
            if cursor.rowcount > 0:
                self._bytes += len(payload)

    def pending(self, after_row_id: int = 0, limit: int = 64) -> list[SpooledBatch]:
        """Spooled batches in the order they were recorded, starting after ``after_row_id``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT row_id, episode_id, first_seq, num_steps, payload FROM batches WHERE row_id > ?"
                " ORDER BY row_id LIMIT ?",
                (after_row_id, limit),
            ).fetchall()
        out = []
        for row_id, episode_id, first_seq, num_steps, payload in rows:
            batch = pb.StepBatch()
            batch.ParseFromString(payload)
            out.append(SpooledBatch(row_id, episode_id, first_seq, num_steps, batch))
        return out

    def ack(self, episode_id: str, next_seq: int) -> int:
        """Drops the batches of an episode that the cloud holds entirely; returns how many."""
        with self._lock:
            freed = self._db.execute(
                "DELETE FROM batches WHERE episode_id = ? AND first_seq + num_steps <= ? RETURNING length(payload)",
                (episode_id, next_seq),
            ).fetchall()
            self._bytes -= sum(size for (size,) in freed)
            return len(freed)

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
        with self._lock:
            self._db.close()
