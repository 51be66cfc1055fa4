"""Who drove which steps: carried by a step batch, checked at the gateway, kept by the store with the rows."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from cloud.data.store import EpisodeStore
from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError
from protocol.steps import decode_operators
from tests.factories import episode_rows, step_columns, store_schema


def test_the_store_keeps_who_drove_each_step_and_a_reader_sees_it_once_committed(tmp_path) -> None:
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("toy", store_schema())
    people = ("", "browser:alice", "browser:alice", "", "keyboard@arm", "browser:alice")
    rows = episode_rows("toy", "e1", step_columns(6, intervention=np.array([bool(p) for p in people])))
    store.write([replace(rows, operators=people)])
    again = episode_rows("toy", "e1", step_columns(8, intervention=True))  # a resend with two more steps
    store.write([replace(again, operators=("x",) * 6 + ("browser:bob",) * 2)])  # rows 0-5 are stored: skipped
    store.write([episode_rows("toy", "e2", step_columns(3, intervention=False))])  # the policy's: no names
    expected = {1: "browser:alice", 2: "browser:alice", 4: "keyboard@arm", 5: "browser:alice"}
    expected.update({6: "browser:bob", 7: "browser:bob"})
    assert store.drivers("toy", "e1") == expected
    assert store.drivers("toy", "e2") == {}
    reader = EpisodeStore(tmp_path / "store", read_only=True)
    assert reader.drivers("toy", "e1") == expected
    store.close()
    reopened = EpisodeStore(tmp_path / "store")
    assert reopened.drivers("toy", "e1") == expected


def test_a_store_from_before_the_operators_file_reads_as_nobody(tmp_path) -> None:
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("toy", store_schema())
    store.write([episode_rows("toy", "e1", step_columns(4))])
    store.close()
    commit = tmp_path / "store" / "toy" / "commit.json"
    old = json.loads(commit.read_text())
    del old["operators_bytes"]
    commit.write_text(json.dumps(old))
    assert EpisodeStore(tmp_path / "store", read_only=True).drivers("toy", "e1") == {}


def batch(*operators: str) -> pb.StepBatch:
    return pb.StepBatch(episode_id="e", num_steps=3, operators=operators)


def test_a_batch_s_operators_are_checked_by_field() -> None:
    intervention = np.array([True, True, False])
    assert decode_operators(batch(), intervention) == ()
    assert decode_operators(batch("browser:alice", "browser:alice", ""), intervention) == ("browser:alice",) * 2 + ("",)
    for operators, field in (
        (("browser:alice",), "step_batch.operators"),
        (("a", "b\x1b[31m", ""), "step_batch.operators[1]"),
        (("a", "a", "a"), "step_batch.operators[2]"),  # a name on a step no person drove
        (("a", "x" * 200, ""), "step_batch.operators[1]"),
    ):
        with pytest.raises(CodecError) as err:
            decode_operators(batch(*operators), intervention)
        assert err.value.field == field
