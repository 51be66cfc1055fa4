"""Several gateways' partitions of one store: each writes its own, an episode continues across them at the right
seq and is read whole and once; the union only grows at its end, so the learner's index stays incremental."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.data.partitions import Partitions, partition_names, partition_root
from cloud.data.shared_partition import SharedPartition
from cloud.data.store import EpisodeStore, StepRows
from cloud.data.store_union import StoreUnion
from cloud.learning.sampler import load_steps
from cloud.learning.step_index import StepIndex
from cloud.learning.streaming import FrameCache, FrameStream, Request
from tests.factories import step_columns, store_schema


def rows(episode_id: str, first_seq: int, n: int, resource: str = "arm-1", done: bool = False) -> StepRows:
    state = np.arange(first_seq, first_seq + n, dtype=np.float32)[:, None] + np.zeros((n, 3), np.float32)
    columns = step_columns(n, state=state, done_at_end=done, intervention=False)
    return StepRows("toy", episode_id, resource, "sim", "pick", first_seq, columns)


def gateway(base, name: str) -> SharedPartition:
    own = EpisodeStore(partition_root(base, name))
    own.ensure_dataset("toy", store_schema())
    return SharedPartition(own, Partitions(base, exclude=name), refresh_s=60)


def seqs_of(union: StoreUnion, episode_id: str) -> list[int]:
    rows_ = union.row_indices("toy", episode_id)
    return union.read("toy", ["seq"])["seq"][rows_].tolist()


def test_an_episode_moved_to_another_gateway_continues_there_and_reads_whole(tmp_path) -> None:
    base = tmp_path / "store"
    a, b = gateway(base, "a"), gateway(base, "b")
    a.write([rows("ep", 0, 10), rows("only-a", 0, 4, done=True)])
    b.others.refresh()
    assert b.next_seq("ep") == 10  # b never held it: it learns where it continues from a's partition
    assert b.episode("ep").resource_id == "arm-1"
    acked = b.write([rows("ep", 5, 10, done=True)])  # a resend from seq 5: 5-9 are a's already
    assert acked == {"ep": 15}
    assert b.own.episode("ep").num_steps == 5  # b stored 10-14 only
    union = StoreUnion(base)
    assert partition_names(base) == ["a", "b"]
    assert union.committed_rows("toy") == 19
    assert seqs_of(union, "ep") == list(range(15))
    record = union.episode("ep")
    assert (record.num_steps, record.next_seq, record.done) == (15, 15, True)
    index = union.read("toy", ["episode_index"])["episode_index"]
    assert sorted(set(index.tolist())) == [0, 1]  # one index per episode, whichever partition holds its rows
    for store in (a, b, union):
        store.close()


def test_a_step_both_gateways_stored_is_read_once(tmp_path) -> None:
    """The race a lost ack leaves: a moved a logged batch into its partition after b had taken the resend."""
    base = tmp_path / "store"
    a, b = gateway(base, "a"), gateway(base, "b")
    a.write([rows("ep", 0, 10)])
    b.own.write([rows("ep", 5, 10)], {"ep": 5})  # b took 5-14 before it could see a's 5-9
    union = StoreUnion(base)
    assert seqs_of(union, "ep") == list(range(15))
    assert union.committed_rows("toy") == 15 and union.episode("ep").num_steps == 15
    state = union.read("toy", ["obs.state", "seq"])
    np.testing.assert_array_equal(state["obs.state"][:, 0], state["seq"])  # every step its own content
    for store in (a, b, union):
        store.close()


def test_the_union_grows_at_its_end_and_the_step_index_reads_only_new_rows(tmp_path) -> None:
    base = tmp_path / "store"
    a = gateway(base, "a")
    a.write([rows("ep-a", 0, 6)])
    union = StoreUnion(base)
    index = StepIndex(union)
    first = index.table("toy", ["obs.state"]).columns["seq"].copy()
    b = gateway(base, "b")  # a second gateway starts while the learner runs
    b.write([rows("ep-b", 0, 4)])
    a.write([rows("ep-a", 6, 3, done=True)])
    union.refresh()
    read_before = index.rows_read
    table = index.table("toy", ["obs.state"])
    held_columns = read_before // 6
    assert index.rows_read - read_before == 7 * held_columns  # the 7 new rows of each column it holds, once
    np.testing.assert_array_equal(table.columns["seq"][: len(first)], first)  # old rows keep their numbers
    want = load_steps(union, "toy", ["obs.state"])
    np.testing.assert_array_equal(table.next_row, want.next_row)
    episode_a = union.episode("ep-a").index
    chain = np.flatnonzero(table.columns["episode_index"] == episode_a)
    assert table.next_row[chain[5]] == chain[6]  # seq 5 (read first round) links to seq 6 (this round)
    for store in (a, b, union):
        store.close()


def test_frames_are_fetched_by_partition_as_a_loader_worker_would(tmp_path) -> None:
    base = tmp_path / "store"
    a, b = gateway(base, "a"), gateway(base, "b")
    a.write([rows("ep", 0, 300)])
    b.others.refresh()
    b.write([rows("ep", 300, 50)])
    union = StoreUnion(base)
    picked = np.array([349, 0, 299, 300, 5])
    want = union.read("toy", ["obs.state"])["obs.state"][picked]
    np.testing.assert_array_equal(FrameCache(union, 1 << 20).rows("toy", "obs.state", picked), want)
    stream = FrameStream(union, 1 << 20, workers=0)
    stream._rows.cache = None  # as in a worker: it opens the partitions it is sent to, by their roots
    (got,) = list(stream.fetch([Request("toy", (("state", "obs.state", picked),))]))
    np.testing.assert_array_equal(got["state"].numpy(), want)
    for store in (a, b, union):
        store.close()


def test_a_second_gateway_with_the_same_id_is_refused(tmp_path) -> None:
    base = tmp_path / "store"
    a = gateway(base, "a")
    with pytest.raises(RuntimeError):
        EpisodeStore(partition_root(base, "a"))
    a.close()


def test_a_new_partition_gets_the_dataset_as_the_others_keep_it(tmp_path) -> None:
    base = tmp_path / "store"
    a = gateway(base, "a")
    own = EpisodeStore(partition_root(base, "b"))
    b = SharedPartition(own, Partitions(base, exclude="b"), refresh_s=60)
    assert b.datasets() == ["toy"]
    with pytest.raises(ValueError, match="obs.state"):
        b.ensure_dataset("toy", store_schema(state_dim=4))
    b.ensure_dataset("toy", store_schema())
    assert own.schema("toy") == a.own.schema("toy")
    a.close()
    b.close()


def test_readers_opened_before_any_gateway_wrote_see_the_partitions_once_they_appear(tmp_path) -> None:
    base = tmp_path / "store"
    union = StoreUnion(base)
    early = EpisodeStore(partition_root(base, "a"), read_only=True)
    a = gateway(base, "a")
    a.write([rows("ep", 0, 5)])
    union.refresh()
    early.refresh()
    assert union.committed_rows("toy") == 5 and early.committed_rows("toy") == 5
    for store in (a, union, early):
        store.close()


def test_an_episode_read_partition_by_partition_against_its_seq_order_is_whole_and_linked(tmp_path) -> None:
    """It began on gateway b and moved to a; a fresh reader takes a's rows (the later seqs) first."""
    base = tmp_path / "store"
    a, b = gateway(base, "a"), gateway(base, "b")
    b.write([rows("ep", 0, 6)])
    a.others.refresh()
    a.write([rows("ep", 6, 4, done=True)])
    union = StoreUnion(base)
    assert union.read("toy", ["seq"])["seq"].tolist() == [6, 7, 8, 9, 0, 1, 2, 3, 4, 5]
    record = union.episode("ep")
    assert (record.num_steps, record.last_seq, record.done) == (10, 9, True)
    assert seqs_of(union, "ep") == list(range(10))
    table = StepIndex(union).table("toy", ["obs.state"])
    assert table.next_row.tolist() == [1, 2, 3, -1, 5, 6, 7, 8, 9, 0]  # seq 5 (row 9) -> seq 6 (row 0)
    for store in (a, b, union):
        store.close()
