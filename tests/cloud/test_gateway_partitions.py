"""A gateway's ingest path (log, acks, compactor) over its partition of a shared store: an episode another gateway
began is taken on where that one's rows end, a resend of rows it holds is acked without storing them again, and a
batch past what this gateway can see is refused, naming the field, until the other gateway's rows are there."""

from __future__ import annotations

import asyncio

import numpy as np

from cloud.data.partitions import Partitions, partition_root
from cloud.data.shared_partition import SharedPartition
from cloud.data.store import EpisodeStore, StepRows
from cloud.data.store_union import StoreUnion
from cloud.gateway.ingest import PendingBatch, StoreWriter
from tests.cloud.test_store_writer import session
from tests.factories import step_columns, store_schema


def rows(first_seq: int, n: int) -> StepRows:
    state = np.arange(first_seq, first_seq + n, dtype=np.float32)[:, None] + np.zeros((n, 3), np.float32)
    return StepRows("d", "ep", "r1", "sim", "pick", first_seq, step_columns(n, state=state))


def test_a_gateway_takes_on_an_episode_where_the_other_gateways_rows_end(tmp_path) -> None:
    base = tmp_path / "store"
    with EpisodeStore(partition_root(base, "a")) as other:
        other.ensure_dataset("d", store_schema())
        other.write([rows(0, 10)])
        own = EpisodeStore(partition_root(base, "b"))
        shared = SharedPartition(own, Partitions(base, exclude="b"), refresh_s=60)

        async def scenario() -> list:
            shared.ensure_dataset("d", store_schema())
            writer = StoreWriter(shared, flush_rows=10_000, flush_delay_s=0.01)
            runner = asyncio.create_task(writer.run())
            edge = session()
            assert writer.next_seq("ep") == 10 and writer.owner("ep") == "r1"  # what the welcome says it holds
            writer.submit(PendingBatch(rows=rows(5, 10), batch_id=1, sink=edge))  # 5-9 are gw-a's already
            writer.submit(PendingBatch(rows=rows(30, 5), batch_id=2, sink=edge))  # past anything stored
            await asyncio.sleep(0.3)
            assert await writer.drain(timeout_s=10)
            runner.cancel()
            return [edge.out.get_nowait() for _ in range(2)]

        answers = asyncio.run(scenario())
        ack = next(a.ack for a in answers if a.HasField("ack"))
        error = next(a.error for a in answers if a.HasField("error"))
        assert (ack.batch_id, ack.next_seq) == (1, 15)
        assert error.field == "step_batch.first_seq" and "continues at seq 15" in error.message
        assert own.episode("ep").num_steps == 5  # 10-14: nothing gw-a holds is stored twice
        union = StoreUnion(base)
        seqs = union.read("d", ["seq"])["seq"][union.row_indices("d", "ep")]
        np.testing.assert_array_equal(seqs, np.arange(15))
        union.close()
        shared.close()
