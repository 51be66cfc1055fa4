"""Incoming steps: a batch from an edge is checked against its session's schema, then waits in the
``StoreWriter``, which appends the batches of all edges to the ingest log together (group commit, one fsync) and
acks each one right after that fsync. The ``Compactor`` then moves them into the episode store off the ack path
(raw frames of a camera the store keeps encoded are encoded there, ``cameras.StoreEncoder``); on start the log is
replayed into the store first."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloud.data.ingest_log import IngestLog, Wire, batch_rows
from cloud.data.store import EpisodeStore, StepRows
from cloud.gateway.cameras import StoreEncoder, check_cameras, row_count, stored_cameras
from cloud.gateway.compactor import Compactor, Logged
from cloud.gateway.sessions import Session
from protocol import tunnel_pb2 as pb
from protocol.steps import MAX_DECODED_BYTES, Schema, decode_batch
from protocol.video import PacketColumn

log = logging.getLogger("fleetloop.gateway")

REPLAY_FPS = 30.0
LOG_FOLDER = "@ingest-log"  # under the store's root; '@' keeps it apart from every dataset name


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
    wire: Wire | None = None  # the message the rows came in, logged as it is (None: logged as the rows)


class StoreWriter:
    """Group commit into the ingest log, acks after its fsync; the compactor moves batches on into the store."""

    def __init__(
        self,
        store: EpisodeStore,
        flush_rows: int,
        flush_delay_s: float,
        flush_bytes: int = 16 << 20,
        max_unwritten_bytes: int = 256 << 20,
        max_unwritten_bytes_per_sink: int | None = None,
        max_uncompacted_bytes: int = 512 << 20,
        ingest_log: IngestLog | None = None,
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
        # Acked (in the log) but not yet in the store: past this every tunnel waits, so a slow store pushes back.
        self.max_uncompacted_bytes = max_uncompacted_bytes
        # One tunnel's share of what is not yet in the store: a device that floods waits alone, long before the last
        # bound pauses every tunnel.
        self.max_unwritten_bytes_per_sink = max_unwritten_bytes_per_sink or max(1, max_uncompacted_bytes // 4)
        self._unwritten = 0  # submitted and not yet durable (pending or being logged)
        self._unwritten_of: dict[int, int] = {}  # the same per sink (by id: a sink with bytes here is alive)
        self._progress = asyncio.Event()  # set, and replaced, each time a write ends
        self.waits_for_room = 0  # how often a reader had to wait: the log or the store is the bottleneck
        self.waits_for_share = 0  # how often a reader waited for its own bytes: that device sends too fast
        self.encoder = StoreEncoder()  # its ``cameras`` say which datasets keep which cameras encoded
        if ingest_log is None and not isinstance(store.root, Path):
            raise ValueError(f"ingest_log: the store at {store.root} is on object storage; give a local folder")
        self.log = ingest_log or IngestLog(store.root / LOG_FOLDER, durable=store.durable)
        # The compactor gathers while the log is busy, up to half the backlog bound: a burst is acked at the wire's
        # pace and moved into the store once it pauses (its encoding and store writes would take the cores that the
        # acks need); a flood past its share waits, the log goes quiet, and the compactor starts.
        self.compactor = Compactor(store, self.encoder, self.log, self._moved, write_bytes=max_uncompacted_bytes // 2)
        # episode -> (next seq, resource) of episodes with acked rows still on their way to the store
        self._logged: dict[str, tuple[int, str]] = {}

    def next_seq(self, episode_id: str) -> int:
        """Where the episode continues: past its rows in the store and those acked and still in the log."""
        logged = self._logged.get(episode_id)
        return max(self.store.next_seq(episode_id), logged[0] if logged else 0)

    def owner(self, episode_id: str) -> str | None:
        """The resource whose episode it is, once any of its rows is acked (in the store or still in the log)."""
        stored = self.store.owner(episode_id)
        if stored is not None:
            return stored
        logged = self._logged.get(episode_id)
        return logged[1] if logged else None

    def _owner(self, rows: StepRows) -> str:
        return self.owner(rows.episode_id) or rows.resource_id

    async def replay(self) -> int:
        """Queues what the log holds for the store (a gateway killed before compacting it); returns how many
        batches. Call before serving: it learns where logged episodes continue."""
        records = await asyncio.to_thread(lambda: list(self.log.replay()))
        for dataset in {rows.dataset for _, rows in records} & set(self.store.datasets()):
            # until a robot of the dataset says its rate (its hello), keyframes of frames encoded here follow this one
            self.encoder.cameras.setdefault(dataset, stored_cameras(self.store, dataset, REPLAY_FPS))
        for number, rows in records:
            self._log_progress(rows)
            self.compactor.add(Logged(number, [rows]))
        if records:
            steps = sum(row_count(rows) for _, rows in records)
            log.info(
                "ingest log: %d acked batches (%d steps) not yet in the store; moving them there", len(records), steps
            )
        return len(records)

    def _log_progress(self, rows: StepRows) -> None:
        seq = self._logged.get(rows.episode_id, (0, ""))[0]
        self._logged[rows.episode_id] = (max(seq, rows.first_seq + row_count(rows)), rows.resource_id)

    def _moved(self, taken: list[Logged]) -> None:
        """The compactor wrote a group into the store: its tunnels' bytes are off their share, episodes it has caught
        up on are forgotten, waiting readers wake."""
        for logged in taken:
            for key, rows in zip(logged.owners, logged.batches, strict=False):  # none when replayed
                self._release(key, rows.nbytes)
        caught_up = [e for e, (seq, _) in self._logged.items() if self.store.next_seq(e) >= seq]
        for episode in caught_up:
            del self._logged[episode]
        self._wake_readers()

    def submit(self, item: PendingBatch) -> None:
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append(item)
        self._rows += row_count(item.rows)
        item.nbytes = item.rows.nbytes
        self._bytes += item.nbytes
        self._unwritten += item.nbytes
        key = id(item.sink)
        self._unwritten_of[key] = self._unwritten_of.get(key, 0) + item.nbytes
        self._wake.set()

    def unwritten_of(self, sink: AckSink) -> int:
        """What ``sink``'s batches hold that is not yet in the store (not yet logged, or logged and not compacted)."""
        return self._unwritten_of.get(id(sink), 0)

    async def room(self, sink: AckSink | None = None) -> None:
        """Returns once the writer has caught up enough to take more (backpressure for the readers): once ``sink``
        holds less than its share (``max_unwritten_bytes_per_sink``), all sinks together less than
        ``max_unwritten_bytes``, and the store is less than ``max_uncompacted_bytes`` behind the log. Only the sink
        that sends too fast waits for its share."""
        if self._over_share(sink):
            self.waits_for_share += 1
        elif self._over_total():
            self.waits_for_room += 1
        while self._over_share(sink) or self._over_total():
            await self._progress.wait()

    def _over_total(self) -> bool:
        return self._unwritten >= self.max_unwritten_bytes or self.compactor.backlog_bytes >= self.max_uncompacted_bytes

    def _over_share(self, sink: AckSink | None) -> bool:
        return sink is not None and self.unwritten_of(sink) >= self.max_unwritten_bytes_per_sink

    def _written(self, items: list[PendingBatch], logged: set[int]) -> None:
        """``items`` are durable (those in ``logged``, by id) or refused: off the total; a logged one stays on its
        tunnel's share until the store holds it (``_moved``)."""
        for item in items:
            self._unwritten -= item.nbytes
            if id(item) not in logged:
                self._release(id(item.sink), item.nbytes)
        self._wake_readers()

    def _release(self, key: int, nbytes: int) -> None:
        left = self._unwritten_of[key] - nbytes
        if left:
            self._unwritten_of[key] = left
        else:
            del self._unwritten_of[key]

    def _wake_readers(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    def _is_full(self) -> bool:
        # Bigger group commits spread the log's fsync over more batches.
        return self._rows >= self.flush_rows or self._bytes >= self.flush_bytes

    async def run(self) -> None:
        compacting = asyncio.create_task(self.compactor.run())
        try:
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
        finally:
            compacting.cancel()

    async def _full(self) -> None:
        while not self._is_full():
            self._wake.clear()
            await self._wake.wait()

    async def flush(self) -> None:
        items, self._pending, self._rows, self._bytes = self._pending, [], 0, 0
        if not items:
            return
        logged: set[int] = set()
        try:
            await self._flush(items, logged)
        finally:
            self._written(items, logged)

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Logs what waits, then waits until the store holds everything acked; False if ``timeout_s`` passed."""
        await self.flush()
        return await self.compactor.drain(timeout_s)

    def _accept(self, items: list[PendingBatch]) -> list[PendingBatch]:
        """The batches that may be logged; each other one is refused, naming its field."""
        accepted: list[PendingBatch] = []
        expected: dict[str, int] = {}
        owners: dict[str, str] = {}
        for item in items:
            episode = item.rows.episode_id
            owner = owners.get(episode) or self._owner(item.rows)
            if owner != item.rows.resource_id:
                self._refuse(item, "step_batch.episode_id", f"episode {episode} belongs to another resource")
                continue
            next_seq = expected.get(episode, self.next_seq(episode))
            if item.rows.first_seq > next_seq:
                self._refuse(
                    item,
                    "step_batch.first_seq",
                    f"episode {episode} continues at seq {next_seq}, got {item.rows.first_seq}",
                )
                continue
            try:
                self.store.check(item.rows, self.encoder.cameras.get(item.rows.dataset, {}))
            except ValueError as err:
                field, _, message = str(err).partition(": ")
                self._refuse(item, f"step_batch.{field}", message or str(err))
                continue
            owners[episode] = owner
            expected[episode] = max(next_seq, item.rows.first_seq + row_count(item.rows))
            accepted.append(item)
        return accepted

    async def _flush(self, items: list[PendingBatch], logged: set[int]) -> None:
        accepted = self._accept(items)
        if not accepted:
            return
        # Rows the store or the log already hold (a resend) are not logged again; a batch of only those is acked.
        fresh = [
            item
            for item in accepted
            if item.rows.first_seq + row_count(item.rows) > self.next_seq(item.rows.episode_id)
        ]
        try:
            number = await asyncio.to_thread(self.log.append, [item.rows for item in fresh], [i.wire for i in fresh])
        except Exception:  # the log failed: nothing is acked, the edges keep their spools and resend
            log.exception("writing %d batches to the ingest log failed; edges will resend them", len(fresh))
            return
        for item in fresh:
            self._log_progress(item.rows)
        if fresh:
            owners = [id(item.sink) for item in fresh]
            self.compactor.add(Logged(number, [item.rows for item in fresh], owners=owners))
            logged.update(id(item) for item in fresh)
        for item in accepted:
            self._ack(item)

    def _ack(self, item: PendingBatch) -> None:
        episode_id = item.rows.episode_id
        item.sink.ack(item.batch_id, episode_id, self.next_seq(episode_id), row_count(item.rows))

    @staticmethod
    def _refuse(item: PendingBatch, field: str, message: str) -> None:
        log.warning("refused a batch from %s: %s: %s", item.rows.resource_id, field, message)
        item.sink.refuse(item.batch_id, field, message)


def step_rows(
    session: Session,
    batch: pb.StepBatch,
    max_batch_bytes: int,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
    size: int | None = None,
) -> StepRows:
    """The batch's rows, decoded against the session's schema; CodecError names the field that is wrong. Reads
    nothing of the session that changes while it is open, so it may run in the gateway's decode pool. ``size``: the
    batch's bytes or an upper bound (``decode_batch``)."""
    columns = decode_batch(batch, session.schema, max_batch_bytes, max_decoded_bytes, size)
    if batch.video:
        columns = check_cameras(columns, session.schema, session.cameras, batch.first_seq)
    resource = session.resource
    return batch_rows(batch, columns, resource.capabilities.embodiment, resource.id, resource.source)


def wire_of(message: bytes, batch: pb.StepBatch, rows: StepRows, schema: Schema) -> Wire | None:
    """How the ingest log may keep a batch: as the message it came in, unless its rows are not what that message
    decodes to (JPEG frames decoded on the way in)."""
    if any(not isinstance(rows.columns[name], PacketColumn) for name in batch.video):
        return None
    return Wire(message, schema)
