"""A person's label on the wire: checked like every other field, hostile values refused by name."""

from __future__ import annotations

import pytest

from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError
from protocol.limits import WAITING_FOR_RESET, check_heartbeat
from protocol.steps import decode_batch, encode_batch, schema_for
from tests.factories import step_columns

SCHEMA = schema_for([("state", "float32", (3,))], ("float32", (2,)))


def last_batch(success: bool = True, done: bool = True, **label) -> pb.StepBatch:
    columns = step_columns(4, done_at_end=done, success_at_end=success)
    return encode_batch("ep", 0, columns, label=pb.EpisodeLabel(**label) if label else None)


def test_the_label_travels_with_the_batch_that_ends_the_episode() -> None:
    batch = pb.StepBatch.FromString(last_batch(outcome="success", by="ana@arm-1").SerializeToString())
    decode_batch(batch, SCHEMA)
    assert (batch.label.outcome, batch.label.by) == ("success", "ana@arm-1")
    plain = encode_batch("ep", 0, step_columns(4))  # an older edge's batch: no label
    decode_batch(plain, SCHEMA)
    assert not plain.HasField("label")


@pytest.mark.parametrize(
    ("batch", "field", "says"),
    [
        (last_batch(outcome="great", by="ana"), "step_batch.label.outcome", "must be one of"),
        (last_batch(outcome="success", by=""), "step_batch.label.by", "is missing"),
        (last_batch(outcome="success", by="a\nb"), "step_batch.label.by", "printable"),
        (last_batch(done=False, success=False, outcome="failure", by="ana"), "step_batch.label", "ends its episode"),
        (last_batch(success=False, outcome="success", by="ana"), "step_batch.label.outcome", "success is False"),
        (last_batch(success=True, outcome="failure", by="ana"), "step_batch.label.outcome", "success is True"),
    ],
)
def test_hostile_person_fields_are_refused_naming_the_field(batch: pb.StepBatch, field: str, says: str) -> None:
    with pytest.raises(CodecError) as err:
        decode_batch(batch, SCHEMA)
    assert err.value.field == field and says in err.value.message


def test_a_discarded_episode_may_end_either_way() -> None:
    for success in (True, False):
        decode_batch(last_batch(success=success, outcome="discarded", by="ana"), SCHEMA)


def test_a_heartbeat_says_only_what_the_fleet_knows() -> None:
    check_heartbeat(pb.Heartbeat(mono_ns=1, state=WAITING_FOR_RESET))
    check_heartbeat(pb.Heartbeat(mono_ns=1))
    with pytest.raises(CodecError) as err:
        check_heartbeat(pb.Heartbeat(mono_ns=1, state="on fire\x00"))
    assert err.value.field == "heartbeat.state"
