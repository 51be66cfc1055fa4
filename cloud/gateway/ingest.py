"""Incoming steps: a batch from an edge is checked against its session's schema, then waits in the
``StoreWriter``, which writes the batches of all edges to the episode store together (group commit) and acks
each one after its durable write. Raw frames of a camera the store keeps encoded are encoded on the way in
(``cameras.StoreEncoder``), on the writer's thread."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from cloud.data.store import EpisodeStore, StepRows
from cloud.gateway.cameras import StoreEncoder, check_cameras, row_count
from cloud.gateway.sessions import Session
from protocol import tunnel_pb2 as pb
from protocol.steps import MAX_DECODED_BYTES, decode_batch, decode_operators

log = logging.getLogger("fleetloop.gateway")


class AckSink(Protocol):
    """Where the StoreWriter answers a batch: an edge's session, or another channel's own acks (phones)."""

    def ack(self, batch_id: int, episode_id: str, next_seq: int, steps: int) -> None:
        """The batch's ``steps`` are durably stored; the episode continues at ``next_seq``."""

    def refuse(self, batch_id: int, field: str, message: str) -> None:
        """The batch was not stored; ``field`` names what was wrong with it."""


@dataclass
class PendingBatch:
    """A batch waiting for the group commit, and where to answer it."""

    rows: StepRows
    batch_id: int
    sink: AckSink
    nbytes: int = 0


class StoreWriter:
    """Group commit: gathers batches from all edges and writes them to the store together."""

    def __init__(
        self,
        store: EpisodeStore,
        flush_rows: int,
        flush_delay_s: float,
        flush_bytes: int = 16 << 20,
        max_unwritten_bytes: int = 256 << 20,
        max_unwritten_bytes_per_sink: int | None = None,
    ) -> None:
        self.store = store
        self.flush_rows = flush_rows
        self.flush_bytes = flush_bytes
        self._bytes = 0
        self.flush_delay_s = flush_delay_s
        self._pending: list[PendingBatch] = []
        self._rows = 0
        self._oldest = 0.0
        self._wake = asyncio.Event()
        self.max_unwritten_bytes = max_unwritten_bytes
        # One tunnel's share: a device that floods waits alone, long before the last bound pauses every tunnel.
        self.max_unwritten_bytes_per_sink = max_unwritten_bytes_per_sink or max(1, max_unwritten_bytes // 4)
        self._unwritten = 0  # submitted and not yet written (pending or being written)
        self._unwritten_of: dict[int, int] = {}  # the same per sink (by id: a sink with bytes here is alive)
        self._progress = asyncio.Event()  # set, and replaced, each time a write ends
        self.waits_for_room = 0  # how often a reader had to wait: the store is the bottleneck
        self.waits_for_share = 0  # how often a reader waited for its own bytes: that device sends too fast
        self.encoder = StoreEncoder()  # its ``cameras`` say which datasets keep which cameras encoded

    def submit(self, item: PendingBatch) -> None:
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append(item)
        self._rows += row_count(item.rows)
        item.nbytes = sum(values.nbytes for values in item.rows.columns.values())
        self._bytes += item.nbytes
        self._unwritten += item.nbytes
        key = id(item.sink)
        self._unwritten_of[key] = self._unwritten_of.get(key, 0) + item.nbytes
        self._wake.set()

    def unwritten_of(self, sink: AckSink) -> int:
        """What ``sink``'s batches hold that is not yet in the store."""
        return self._unwritten_of.get(id(sink), 0)

    async def room(self, sink: AckSink | None = None) -> None:
        """Returns once the store has caught up enough to take more (backpressure for the readers): once ``sink``
        holds less than its share (``max_unwritten_bytes_per_sink``) and all sinks together less than
        ``max_unwritten_bytes``. Only the sink that sends too fast waits for its share."""
        if self._over_share(sink):
            self.waits_for_share += 1
        elif self._unwritten >= self.max_unwritten_bytes:
            self.waits_for_room += 1
        while self._over_share(sink) or self._unwritten >= self.max_unwritten_bytes:
            await self._progress.wait()

    def _over_share(self, sink: AckSink | None) -> bool:
        return sink is not None and self.unwritten_of(sink) >= self.max_unwritten_bytes_per_sink

    def _written(self, items: list[PendingBatch]) -> None:
        for item in items:
            self._unwritten -= item.nbytes
            key = id(item.sink)
            left = self._unwritten_of[key] - item.nbytes
            if left:
                self._unwritten_of[key] = left
            else:
                del self._unwritten_of[key]
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    def _is_full(self) -> bool:
        # Bigger group commits spread the store's fixed cost per write (partial chunks, fsyncs).
        return self._rows >= self.flush_rows or self._bytes >= self.flush_bytes

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            wait = self._oldest + self.flush_delay_s - time.monotonic()
            if not self._is_full() and wait > 0:
                try:
                    await asyncio.wait_for(self._full(), timeout=wait)
                except TimeoutError:
                    pass
            await self.flush()

    async def _full(self) -> None:
        while not self._is_full():
            self._wake.clear()
            await self._wake.wait()

    async def flush(self) -> None:
        items, self._pending, self._rows, self._bytes = self._pending, [], 0, 0
        if not items:
            return
        try:
            await self._flush(items)
        finally:
            self._written(items)

    async def _flush(self, items: list[PendingBatch]) -> None:
        accepted: list[PendingBatch] = []
        starts: list[int] = []  # where the store stands in each accepted item's episode before it
        expected: dict[str, int] = {}
        owners: dict[str, str] = {}
        for item in items:
            episode = item.rows.episode_id
            stored = self.store.episode(episode)
            owner = owners.get(episode, stored.resource_id if stored else item.rows.resource_id)
            if owner != item.rows.resource_id:
                self._refuse(item, "step_batch.episode_id", f"episode {episode} belongs to another resource")
                continue
            next_seq = expected.get(episode, self.store.next_seq(episode))
            if item.rows.first_seq > next_seq:
                self._refuse(
                    item,
                    "step_batch.first_seq",
                    f"episode {episode} continues at seq {next_seq}, got {item.rows.first_seq}",
                )
                continue
            owners[episode] = owner
            expected[episode] = max(next_seq, item.rows.first_seq + row_count(item.rows))
            accepted.append(item)
            starts.append(next_seq)
        if not accepted:
            return
        try:
            ack_points = await asyncio.to_thread(self._write, accepted, starts)
        except ValueError:
            self.encoder.forget(item.rows.episode_id for item in accepted)
            # The store refused the group (it writes all or nothing): write one by one to find the culprit.
            for item in accepted:
                try:
                    start = self.store.next_seq(item.rows.episode_id)
                    ack_points = await asyncio.to_thread(self._write, [item], [start])
                except ValueError as err:
                    field, _, message = str(err).partition(": ")
                    self._refuse(item, f"step_batch.{field}", message or str(err))
                else:
                    self._ack(item, ack_points)
            return
        except Exception:  # the store failed: nothing is acked, the edges keep their spools and resend
            self.encoder.forget(item.rows.episode_id for item in accepted)
            log.exception("writing %d batches to the episode store failed; edges will resend them", len(accepted))
            return
        for item in accepted:
            self._ack(item, ack_points)

    def _write(self, items: list[PendingBatch], starts: list[int]) -> dict[str, int]:
        """On the writer's thread: raw frames of cameras the store keeps encoded are encoded (``StoreEncoder``; rows
        the store holds dropped first), then one group commit. Returns episode_id -> next_seq, as ``store.write``."""
        for item, start in zip(items, starts, strict=True):
            if self.encoder.needs(item.rows):
                item.rows = self.encoder.prepare(item.rows, start)
        rows = [item.rows for item in items if row_count(item.rows)]
        ack_points = self.store.write(rows) if rows else {}
        for item in items:  # a batch the store held entirely: acked where its episode stands
            episode = item.rows.episode_id
            if episode not in ack_points:
                ack_points[episode] = self.store.next_seq(episode)
        return ack_points

    @staticmethod
    def _ack(item: PendingBatch, ack_points: dict[str, int]) -> None:
        episode_id = item.rows.episode_id
        item.sink.ack(item.batch_id, episode_id, ack_points[episode_id], row_count(item.rows))

    @staticmethod
    def _refuse(item: PendingBatch, field: str, message: str) -> None:
        log.warning("refused a batch from %s: %s: %s", item.rows.resource_id, field, message)
        item.sink.refuse(item.batch_id, field, message)


def step_rows(
    session: Session, batch: pb.StepBatch, max_batch_bytes: int, max_decoded_bytes: int = MAX_DECODED_BYTES
) -> StepRows:
    """The batch's rows, decoded against the session's schema; CodecError names the field that is wrong. Reads
    nothing of the session that changes while it is open, so it may run in the gateway's decode pool."""
    columns = decode_batch(batch, session.schema, max_batch_bytes, max_decoded_bytes)
    if batch.video:
        columns = check_cameras(columns, session.schema, session.cameras, batch.first_seq)
    return StepRows(
        dataset=session.resource.capabilities.embodiment,
        episode_id=batch.episode_id,
        resource_id=session.resource.id,
        source=session.resource.source,
        task=batch.task,
        first_seq=batch.first_seq,
        columns=columns,
        operators=decode_operators(batch, columns["intervention"]),
        label=batch.label.outcome,
        labelled_by=batch.label.by,
    )
