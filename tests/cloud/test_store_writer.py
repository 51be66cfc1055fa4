"""The gateway's group-commit writer: acks once the ingest log holds a batch; a slow log or a slow store slows the
readers instead of growing memory."""

from __future__ import annotations

import asyncio
import threading

from cloud.data.ingest_log import IngestLog
from cloud.data.store import EpisodeStore
from cloud.gateway.ingest import PendingBatch, StoreWriter
from cloud.gateway.sessions import Session
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from protocol.steps import schema_for
from tests.factories import episode_rows, step_columns, store_schema


class GatedStore(EpisodeStore):
    """A real store whose writes wait for the test to open a gate (a store that has fallen behind)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def write(self, batches):
        self.gate.wait(timeout=10)
        return super().write(batches)


class GatedLog(IngestLog):
    """A real ingest log whose appends wait for the test to open a gate (a slow disk)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def append(self, batches, wires=None):
        self.gate.wait(timeout=10)
        return super().append(batches, wires)


def session() -> Session:
    caps = Capabilities(
        observation=(ArraySpec("state", "float32", (3,)),),
        action=ArraySpec("action", "float32", (2,)),
        control_hz=10,
        embodiment="d",
    )
    resource = ResourceInfo(id="r1", kind="robot", capabilities=caps, source="sim")
    return Session(
        resource=resource, policy_name="d", schema=schema_for([("state", "float32", (3,))], ("float32", (2,)))
    )


def test_acks_come_from_the_log_and_readers_wait_while_the_store_is_behind_until_it_caught_up(tmp_path) -> None:
    async def scenario() -> None:
        store = GatedStore(tmp_path / "store")
        store.ensure_dataset("d", store_schema())
        columns = step_columns(100)  # 100 rows of 3 + 2 floats and 5 small columns: about 4.4 kB
        size = sum(v.nbytes for v in columns.values())
        writer = StoreWriter(store, flush_rows=10_000, flush_delay_s=0.01, max_uncompacted_bytes=3 * size)
        runner = asyncio.create_task(writer.run())
        owner = session()
        for i in range(3):
            rows = episode_rows("d", f"e{i}", columns)
            writer.submit(PendingBatch(rows=rows, batch_id=i, sink=owner))
        await asyncio.sleep(0.3)
        acks = [owner.out.get_nowait().ack for _ in range(3)]  # durable in the log: acked while the store waits
        assert sorted(a.batch_id for a in acks) == [0, 1, 2] and all(a.next_seq == 100 for a in acks)
        assert store.committed_rows("d") == 0 and writer.next_seq("e1") == 100
        room = asyncio.create_task(writer.room())
        await asyncio.sleep(0.3)
        assert not room.done(), "a reader went on although the store is three batches behind"
        assert writer.waits_for_room == 1
        store.gate.set()
        await asyncio.wait_for(room, timeout=10)
        assert store.committed_rows("d") == 300 and store.next_seq("e2") == 100
        await writer.room()  # room again: no wait
        assert writer.waits_for_room == 1
        runner.cancel()

    asyncio.run(scenario())


def test_a_sink_past_its_share_waits_alone_and_goes_on_once_its_bytes_are_logged(tmp_path) -> None:
    async def scenario() -> None:
        store = EpisodeStore(tmp_path / "store")
        store.ensure_dataset("d", store_schema())
        columns = step_columns(100)
        size = sum(v.nbytes for v in columns.values())
        ingest_log = GatedLog(tmp_path / "log")
        writer = StoreWriter(
            store,
            flush_rows=10_000,
            flush_delay_s=0.01,
            max_unwritten_bytes=10 * size,
            max_unwritten_bytes_per_sink=2 * size,
            ingest_log=ingest_log,
        )
        runner = asyncio.create_task(writer.run())
        flooder, other = session(), session()
        for i in range(2):
            writer.submit(PendingBatch(rows=episode_rows("d", f"f{i}", columns), batch_id=i, sink=flooder))
        writer.submit(PendingBatch(rows=episode_rows("d", "o", columns), batch_id=9, sink=other))
        waiting = asyncio.create_task(writer.room(flooder))
        await asyncio.wait_for(writer.room(other), timeout=1)  # under its share and the total: no wait
        await asyncio.sleep(0.2)
        assert not waiting.done(), "the sink that filled its share went on while the log is behind"
        assert writer.waits_for_share == 1 and writer.waits_for_room == 0
        assert writer.unwritten_of(flooder) == 2 * size and writer.unwritten_of(other) == size
        ingest_log.gate.set()
        await asyncio.wait_for(waiting, timeout=10)
        assert writer.unwritten_of(flooder) == 0 and writer.unwritten_of(other) == 0
        assert sorted(flooder.out.get_nowait().ack.batch_id for _ in range(2)) == [0, 1]
        assert other.out.get_nowait().ack.batch_id == 9
        runner.cancel()

    asyncio.run(scenario())


class StoreHeldMidWrite(EpisodeStore):
    """A real store whose writes stop halfway, holding the store's lock, until the test opens a gate."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate, self.writing = threading.Event(), threading.Event()

    def _append(self, *args, **kwargs):
        self.writing.set()
        self.gate.wait(timeout=10)
        return super()._append(*args, **kwargs)


def test_batches_are_acked_while_the_compactor_holds_the_store_mid_write(tmp_path) -> None:
    """The ack path asks the store whose an episode is; that must not wait for the store's lock, which a compaction
    holds through its writes and fsyncs (the whole event loop would stall with it)."""

    async def scenario() -> None:
        store = StoreHeldMidWrite(tmp_path / "store")
        store.ensure_dataset("d", store_schema())
        columns = step_columns(10)
        writer = StoreWriter(store, flush_rows=10_000, flush_delay_s=0.01)
        writer.compactor.delay_s = writer.compactor.max_delay_s = 0.0  # compact each batch at once
        runner = asyncio.create_task(writer.run())
        owner = session()
        writer.submit(PendingBatch(rows=episode_rows("d", "e0", columns), batch_id=0, sink=owner))
        assert (await asyncio.wait_for(owner.out.get(), 5)).ack.batch_id == 0
        assert await asyncio.to_thread(store.writing.wait, 5), "the compactor did not start writing"
        writer.submit(PendingBatch(rows=episode_rows("d", "e1", columns), batch_id=1, sink=owner))
        ack = await asyncio.wait_for(owner.out.get(), 2)
        assert ack.ack.batch_id == 1 and store.committed_rows("d") == 0, "acked only after the store write ended"
        store.gate.set()
        assert await writer.drain(10) and store.committed_rows("d") == 20
        runner.cancel()
        writer.compactor.close()

    asyncio.run(scenario())
