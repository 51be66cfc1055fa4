import numpy as np
import pytest

from protocol.arrays import CodecError, encode_array
from protocol.steps import decode_batch, encode_batch, schema_for
from tests.factories import step_columns

SCHEMA = schema_for([("state", "float32", (3,))], ("float32", (2,)))


def columns(n: int = 4) -> dict[str, np.ndarray]:
    return step_columns(n, state=3, action=np.ones((n, 2)))


def test_round_trip() -> None:
    decoded = decode_batch(encode_batch("ep", 0, columns(), task="t"), SCHEMA)
    for name, values in columns().items():
        np.testing.assert_array_equal(decoded[name], values)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.columns.pop("reward"), "step_batch.columns[reward]"),
        (
            lambda b: b.columns["action"].CopyFrom(encode_array(np.ones((4, 2), np.float64))),
            "step_batch.columns[action].dtype",
        ),
        (
            lambda b: b.columns["obs.state"].CopyFrom(encode_array(np.zeros((4, 5), np.float32))),
            "step_batch.columns[obs.state].shape",
        ),
        (
            lambda b: b.columns["action"].CopyFrom(encode_array(np.full((4, 2), np.nan, np.float32))),
            "step_batch.columns[action].data",
        ),
        (lambda b: b.columns["extra"].CopyFrom(encode_array(np.zeros(4))), "step_batch.columns[extra]"),
        (lambda b: setattr(b, "episode_id", ""), "step_batch.episode_id"),
        (lambda b: setattr(b, "num_steps", 0), "step_batch.num_steps"),
        (lambda b: setattr(b, "first_seq", -1), "step_batch.first_seq"),
    ],
)
def test_refusals_name_the_field(mutate, field: str) -> None:
    batch = encode_batch("ep", 0, columns())
    mutate(batch)
    with pytest.raises(CodecError) as err:
        decode_batch(batch, SCHEMA)
    assert err.value.field == field


def test_oversized_batch_is_refused() -> None:
    with pytest.raises(CodecError) as err:
        decode_batch(encode_batch("ep", 0, columns(4096)), SCHEMA, max_bytes=10_000)
    assert err.value.field == "step_batch"
