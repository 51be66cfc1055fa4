"""Malformed batches are refused with an error naming the field; the other edge's stream goes on."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import pytest

from cloud.data.store import EpisodeStore
from hal.resource import ArraySpec
from protocol import tunnel_pb2 as pb
from protocol.arrays import encode_array
from protocol.steps import encode_batch
from tests.e2e.fleet import Fleet, wait_until
from tests.e2e.raw_edge import RESOURCE, ByteStream, RawEdge, good_columns

pytestmark = pytest.mark.cloud("--max-batch-mb", "1")  # every test here, on a cloud with a 1 MB batch limit


def mutated(mutate) -> pb.StepBatch:
    batch = encode_batch("bad-episode", 0, good_columns(), batch_id=7)
    mutate(batch)
    return batch


CASES = [
    (
        lambda b: b.columns["action"].CopyFrom(encode_array(np.zeros((5, 4), np.float64))),
        "step_batch.columns[action].dtype",
    ),
    (
        lambda b: b.columns["obs.state"].CopyFrom(encode_array(np.zeros((5, 20), np.float32))),
        "step_batch.columns[obs.state].shape",
    ),
    (
        lambda b: b.columns["obs.state"].CopyFrom(encode_array(np.full((5, 21), np.nan, np.float32))),
        "step_batch.columns[obs.state].data",
    ),
    (lambda b: b.columns.pop("intervention"), "step_batch.columns[intervention]"),
    (lambda b: b.ClearField("episode_id"), "step_batch.episode_id"),
    # 4 MB: past the 1 MB batch limit, refused by field; within the transport's limit (a hello's 8 MB), so read.
    (lambda b: b.columns["obs.state"].CopyFrom(encode_array(np.zeros((5, 21 * 10_000), np.float32))), "step_batch"),
    (lambda b: b.label.CopyFrom(pb.EpisodeLabel(outcome="success", by="ana")), "step_batch.label"),  # not its end
    (lambda b: b.label.CopyFrom(pb.EpisodeLabel(outcome="great", by="ana")), "step_batch.label.outcome"),
]


def test_malformed_batches_are_refused_by_field_and_other_edges_go_on(fleet: Fleet) -> None:
    fleet.start_edge("robot-1")
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)

    def stored() -> int:
        store.refresh()
        return store.committed_rows("panda_pick_cube") if "panda_pick_cube" in store.datasets() else 0

    wait_until(lambda: stored() > 0, 90, "the well-behaved edge's first steps")
    raw = RawEdge(fleet.target)
    try:
        for mutate, field in CASES:
            reply = raw.send(mutated(mutate))
            assert reply is not None and reply.WhichOneof("body") == "error", f"no error for {field}"
            assert reply.error.field == field
            assert reply.error.batch_id == 7
        # A device cannot write into another device's episode.
        theirs = store.episodes("panda_pick_cube")[0].episode_id
        reply = raw.send(encode_batch(theirs, 0, good_columns(), batch_id=9))
        assert reply.WhichOneof("body") == "error" and reply.error.field == "step_batch.episode_id"
        # The stream that sent garbage still works for good data.
        reply = raw.send(encode_batch("good-episode", 0, good_columns(), batch_id=8))
        assert reply.WhichOneof("body") == "ack" and reply.ack.next_seq == 5
        # A message past the transport limit closes only that stream.
        huge = encode_batch("huge", 0, {**good_columns(), "obs.state": np.zeros((5, 21), np.float32)})
        huge.columns["pad"].CopyFrom(encode_array(np.zeros(70 << 20, np.uint8)))
        assert raw.send(huge) is None
        assert raw.status.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        raw.close()

    before = stored()
    wait_until(lambda: stored() > before + 20, 30, "the well-behaved edge to keep streaming")
    assert fleet.processes["cloud"].poll() is None
    episodes = [e.episode_id for e in store.episodes("panda_pick_cube")]
    assert "bad-episode" not in episodes and "huge" not in episodes and "good-episode" in episodes


def test_garbage_hellos_and_conflicting_schemas_are_refused_by_field(fleet: Fleet) -> None:
    with grpc.insecure_channel(fleet.target) as channel:
        garbage = ByteStream(channel, timeout_s=10)
        garbage.send(b"\xff\x00not a protobuf")
        assert garbage.finish(10)
        assert garbage.code == grpc.StatusCode.INVALID_ARGUMENT
        assert garbage.details.startswith("hello:")

    # A robot that claims an embodiment whose stored steps have another shape.
    first = RawEdge(fleet.target)  # creates the panda_pick_cube dataset with a 21-wide state
    assert first.incoming.get(timeout=30).WhichOneof("body") == "welcome"
    first.close()
    clash = dataclasses.replace(
        RESOURCE,
        id="clash-1",
        capabilities=dataclasses.replace(RESOURCE.capabilities, observation=(ArraySpec("state", "float32", (9,)),)),
    )
    edge = RawEdge(fleet.target, clash)
    try:
        reply = edge.incoming.get(timeout=30)
        assert reply.WhichOneof("body") == "error"
        assert reply.error.field == "hello.resource.capabilities"
        assert "panda_pick_cube" in reply.error.message
    finally:
        edge.close()
    assert fleet.processes["cloud"].poll() is None
