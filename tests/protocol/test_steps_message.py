"""steps_message: a spooled StepBatch's bytes sent as an EdgeMessage without parsing or re-serializing them."""

import numpy as np
import pytest

from protocol import tunnel_pb2 as pb
from protocol.steps import batch_of_message, encode_batch, steps_message


@pytest.mark.parametrize("batch_id", [0, 1, 127, 128, 300, 2**40 + 5, 2**63 - 1, -1])
def test_the_bytes_parse_as_the_batch_with_its_id(batch_id: int) -> None:
    batch = encode_batch("ep-1", 40, {"reward": np.arange(3, dtype=np.float32)}, task="pick")
    batch.batch_id = 99  # spooled with an id already: the appended one wins
    message = pb.EdgeMessage.FromString(steps_message(batch.SerializeToString(), batch_id))
    assert message.WhichOneof("body") == "steps"
    expected = pb.StepBatch()
    expected.CopyFrom(batch)
    expected.batch_id = batch_id
    assert message.steps == expected


def test_an_empty_batch_still_carries_its_id() -> None:
    message = pb.EdgeMessage.FromString(steps_message(b"", 7))
    assert message.steps.batch_id == 7 and message.WhichOneof("body") == "steps"


@pytest.mark.parametrize("batch_id", [0, 300, 2**40 + 5])
@pytest.mark.parametrize("size", [10, 200, 70_000])  # the length's varint takes 1, 2 and 3 bytes
def test_the_batch_is_found_again_inside_its_message(batch_id: int, size: int) -> None:
    batch = encode_batch("ep-1", 0, {"pad": np.zeros((1, size), np.uint8)}).SerializeToString()
    message = steps_message(batch, batch_id)
    assert bytes(batch_of_message(message, batch_id)) == batch
    with pytest.raises(ValueError, match="not the bytes of a steps message"):
        batch_of_message(message + b"\x00", batch_id)  # a byte past its end
