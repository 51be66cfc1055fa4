"""Moving acked batches from the gateway's ingest log into the episode store, off the ack path.

Batches arrive here once their log record is fsync'd (they are acked already). The compactor gathers what has queued
while the log is being appended to (until the log has been quiet for ``delay_s``, the backlog reached ``write_bytes`` or
the oldest batch waited ``max_delay_s``; longer in a burst): a store write, and the encoding of raw frames before it,
holds a core and the GIL that the ack path needs, and bigger writes rewrite fewer partly filled chunks. It writes the
group to the store in one commit (cameras the store keeps encoded are encoded first), then trims the log up to the last
record the store now holds. A failing store is retried: acked batches are never dropped, only a batch the store itself
refuses (logged as an error).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from cloud.data.ingest_log import IngestLog
from cloud.data.store import EpisodeStore, StepRows
from cloud.gateway.cameras import StoreEncoder, row_count

log = logging.getLogger("fleetloop.gateway")
RETRY_S = 1.0
COMPACTOR_NICE = 10  # added to the gateway's niceness for the compactor's thread


@dataclass
class Logged:
    """Batches of one log append: the last record's number, when they were acked, their bytes."""

    number: int
    batches: list[StepRows]
    acked_at: float = field(default_factory=time.monotonic)
    nbytes: int = 0
    owners: list[int] = field(default_factory=list)  # the sink (by id) each batch came from; none when replayed


def _yield_to_acks() -> None:
    """The compactor's thread runs at a lower CPU priority than the ack path: on a busy machine the tunnels' reads
    and the log's group commits come first, and the store catches up when they leave a core free (the share and
    ``max_uncompacted_bytes`` bound how far behind it may fall)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COMPACTOR_NICE)
    except OSError:  # not allowed here: it runs at the ack path's priority
        pass


class Compactor:
    """Writes logged batches into ``store`` (one task; its writes run on its own thread, below the ack path's CPU
    priority)."""

    def __init__(
        self,
        store: EpisodeStore,
        encoder: StoreEncoder,
        ingest_log: IngestLog | None,
        on_progress: Callable[[list[Logged]], None],
        delay_s: float = 0.05,
        write_bytes: int = 64 << 20,
        max_delay_s: float = 1.0,
        # A burst (the last second's appends past ``burst_bytes_per_s``) waits longer: quiet then means the uplink
        # paused, longer than a gap between group commits or than edges take to connect (with 50 ms a burst's first
        # megabytes went to the store while the rest of it waited behind their encoding), and the store trails a
        # sustained burst by ``burst_max_delay_s`` at most. A robot's trickle is moved within ``delay_s``.
        burst_bytes_per_s: float = 8e6,
        burst_delay_s: float = 0.2,
        burst_max_delay_s: float = 3.0,
    ) -> None:
        self.store = store
        self.encoder = encoder
        self.log = ingest_log
        self.on_progress = on_progress
        self.delay_s = delay_s
        self.write_bytes = write_bytes
        self.max_delay_s = max_delay_s
        self.burst_bytes_per_s = burst_bytes_per_s
        self.burst_delay_s = burst_delay_s
        self.burst_max_delay_s = burst_max_delay_s
        self._recent: deque[tuple[float, int]] = deque()  # (when, bytes) of the last second's appends
        self._recent_bytes = 0
        self._last_added = 0.0  # when the log last took a group (monotonic)
        self._queue: deque[Logged] = deque()
        self.backlog_bytes = 0  # acked, not yet in the store
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()  # one group write at a time (the task's, or a drain's)
        self.lags_s: deque[float] = deque(maxlen=100_000)  # ack -> visible in the store, per batch
        self.refused_batches = 0  # acked batches the store refused: an error in the log names each
        self.failures = 0  # group writes that failed and were retried
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="store-compactor", initializer=_yield_to_acks)

    def add(self, logged: Logged) -> None:
        logged.nbytes = sum(rows.nbytes for rows in logged.batches)
        self._queue.append(logged)
        self.backlog_bytes += logged.nbytes
        self._last_added = time.monotonic()
        self._recent.append((self._last_added, logged.nbytes))
        self._recent_bytes += logged.nbytes
        self._wake.set()

    def in_burst(self, now: float) -> bool:
        """Whether the last second's appends came faster than ``burst_bytes_per_s``."""
        while self._recent and self._recent[0][0] < now - 1.0:
            self._recent_bytes -= self._recent.popleft()[1]
        return self._recent_bytes > self.burst_bytes_per_s

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Writes everything queued into the store now; False if the store failed or ``timeout_s`` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._queue or self._writing.locked():  # queued, or taken by a write under way
                    if not await self.compact_once():
                        return False
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                continue
            while (wait := self._gather_s()) > 0:
                await asyncio.sleep(min(wait, self.delay_s))  # rechecked: the backlog may pass write_bytes meanwhile
            if not await self.compact_once():
                await asyncio.sleep(RETRY_S)
                self._wake.set()

    def _gather_s(self) -> float:
        """How much longer to gather before writing: 0 once the log has been quiet for ``delay_s``, the backlog
        reached ``write_bytes``, or the oldest batch waited ``max_delay_s`` (in a burst: the burst's own delays)."""
        if not self._queue or self.backlog_bytes >= self.write_bytes:
            return 0.0
        now = time.monotonic()
        burst = self.in_burst(now)
        quiet = self._last_added + (self.burst_delay_s if burst else self.delay_s) - now
        oldest = self._queue[0].acked_at + (self.burst_max_delay_s if burst else self.max_delay_s) - now
        return max(0.0, min(quiet, oldest))

    async def compact_once(self) -> bool:
        """Writes what is queued (up to ``write_bytes``) into the store; False if the store failed (kept queued)."""
        async with self._writing:
            taken = self._take()
            if not taken:
                return True
            try:
                await asyncio.get_running_loop().run_in_executor(self._thread, self._write_and_trim, taken)
            except Exception:  # the store failed: keep the batches (they are acked) and try again
                self.failures += 1
                log.exception("writing %d acked batches into the episode store failed; retrying", len(taken))
                self._queue.extendleft(reversed(taken))
                return False
            self._done(taken)
            return True

    def _take(self) -> list[Logged]:
        taken, size = [], 0
        while self._queue and (not taken or size < self.write_bytes):
            logged = self._queue.popleft()
            taken.append(logged)
            size += logged.nbytes
        return taken

    def _done(self, taken: list[Logged]) -> None:
        now = time.monotonic()
        for logged in taken:
            self.backlog_bytes -= logged.nbytes
            self.lags_s.extend([now - logged.acked_at] * len(logged.batches))
        if self._queue:
            self._wake.set()
        self.on_progress(taken)

    def _write_and_trim(self, taken: list[Logged]) -> None:
        self.write([rows for logged in taken for rows in logged.batches])
        if self.log is not None:  # what the store now holds leaves the log
            self.log.trim(taken[-1].number)

    def write(self, batches: list[StepRows]) -> dict[str, int]:
        """On a worker thread: one group commit; a group the store refuses is written batch by batch, and each
        batch it still refuses is dropped with an error. Returns episode_id -> next_seq in the store."""
        try:
            return self.write_group(batches)
        except ValueError:
            pass  # one of them is refused (the store writes all or nothing): find which
        for rows in batches:
            try:
                self.write_group([rows])
            except ValueError as err:
                self.refused_batches += 1
                log.error(
                    "the episode store refused acked steps %d.. of episode %s from %s, which are lost: %s",
                    rows.first_seq,
                    rows.episode_id,
                    rows.resource_id,
                    err,
                )
        return {rows.episode_id: self.store.next_seq(rows.episode_id) for rows in batches}

    def write_group(self, batches: list[StepRows]) -> dict[str, int]:
        """Raw frames of cameras the store keeps encoded are encoded (rows the store holds dropped first), then one
        group commit. Returns episode_id -> next_seq, as ``store.write``."""
        expected: dict[str, int] = {}
        prepared = []
        try:
            for rows in batches:
                start = expected.get(rows.episode_id, self.store.next_seq(rows.episode_id))
                expected[rows.episode_id] = max(start, rows.first_seq + row_count(rows))
                prepared.append(self.encoder.prepare(rows, start) if self.encoder.needs(rows) else rows)
            kept = [rows for rows in prepared if row_count(rows)]
            ack_points = self.store.write(kept) if kept else {}
        except Exception:
            self.encoder.forget(rows.episode_id for rows in batches)
            raise
        for rows in batches:  # a batch the store held entirely: where its episode stands
            ack_points.setdefault(rows.episode_id, self.store.next_seq(rows.episode_id))
        return ack_points

    def close(self) -> None:
        """Lets the compactor's thread end (a write under way finishes first)."""
        self._thread.shutdown(wait=False)

    def lag_percentiles(self) -> tuple[float, float]:
        """Ack-to-store lag p50 and p99 in seconds over the recent batches (0, 0 before any)."""
        if not self.lags_s:
            return 0.0, 0.0
        p50, p99 = np.percentile(np.fromiter(self.lags_s, float), [50, 99])
        return float(p50), float(p99)
