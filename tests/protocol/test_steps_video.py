"""Encoded cameras in step batches: the edge's builder and the gateway's checker round trip, and hostile entries are
refused with the field that is wrong (``step_batch.video[obs.front].packets[3]``)."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.arrays import CodecError, encode_array
from protocol.steps import decode_batch, encode_batch, schema_for
from protocol.video import CameraEncoder, PacketColumn, max_packet_bytes
from tests.factories import moving_scene, step_columns

H, W, N = 64, 96, 6
SCHEMA = schema_for([("state", "float32", (3,)), ("front", "uint8", (H, W, 3))], ("float32", (2,)))
FIELD = "step_batch.video[obs.front]"


def encoded(codec: str = "h264", n: int = N) -> PacketColumn:
    encoder = CameraEncoder(codec, W, H, 10, gop=4, camera="obs.front")
    packets = [p for frame in moving_scene(n, H, W) for p in encoder.encode(frame)]
    return PacketColumn(codec, tuple(p.data for p in packets), np.array([p.keyframe for p in packets]))


def batch(codec: str = "h264"):
    return encode_batch("ep", 0, step_columns(N), video={"obs.front": encoded(codec)})


@pytest.mark.parametrize("codec", ["h264", "av1", "jpeg"])
def test_encoded_camera_round_trips_without_decoding(codec: str) -> None:
    sent = encoded(codec)
    message = encode_batch("ep", 0, step_columns(N), video={"obs.front": sent})
    assert "obs.front" not in message.columns
    got = decode_batch(message, SCHEMA)["obs.front"]
    assert isinstance(got, PacketColumn)
    assert got.codec == codec and got.packets == sent.packets
    np.testing.assert_array_equal(got.keyframe, sent.keyframe)
    assert got.keyframe[0] and (codec == "jpeg" or not got.keyframe[1])


def test_a_raw_camera_still_travels_in_columns() -> None:
    frames = moving_scene(N, H, W)
    columns = decode_batch(encode_batch("ep", 0, {**step_columns(N), "obs.front": frames}), SCHEMA)
    np.testing.assert_array_equal(columns["obs.front"], frames)


def _set_packet(b, i: int, data: bytes) -> None:
    b.video["obs.front"].packets[i] = data


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: setattr(b.video["obs.front"], "codec", "h265"), f"{FIELD}.codec"),
        (lambda b: b.video["obs.front"].packets.pop(), f"{FIELD}.packets"),
        (lambda b: b.video["obs.front"].keyframe.append(True), f"{FIELD}.keyframe"),
        (lambda b: _set_packet(b, 3, b""), f"{FIELD}.packets[3]"),
        (lambda b: _set_packet(b, 3, bytes(max_packet_bytes(W, H) + 1)), f"{FIELD}.packets[3]"),
        (lambda b: b.columns["obs.front"].CopyFrom(encode_array(moving_scene(N, H, W))), FIELD),
        (lambda b: b.video["obs.side"].CopyFrom(b.video["obs.front"]), "step_batch.video[obs.side]"),
        (lambda b: b.video["obs.state"].CopyFrom(b.video["obs.front"]), "step_batch.video[obs.state]"),
        (lambda b: b.video["obs.front"].ClearField("packets"), f"{FIELD}.packets"),
    ],
)
def test_hostile_video_entries_are_refused_by_field(mutate, field: str) -> None:
    message = batch()
    mutate(message)
    if "obs.state" in message.video:
        del message.columns["obs.state"]  # the camera-shaped check, not the both-ways check, must answer
    with pytest.raises(CodecError) as err:
        decode_batch(message, SCHEMA)
    assert err.value.field == field


def test_a_jpeg_frame_that_claims_to_need_another_is_refused() -> None:
    message = batch("jpeg")
    message.video["obs.front"].keyframe[2] = False
    with pytest.raises(CodecError) as err:
        decode_batch(message, SCHEMA)
    assert err.value.field == f"{FIELD}.keyframe[2]"


def test_of_encoded_cameras_only_keyframes_count_towards_the_decoded_bound() -> None:
    """The bound on what a message decodes to guards what is inflated at ingest: raw arrays, and the keyframes the
    gateway decodes alone to check them; not the delta frames it stores as they came."""
    raw_bytes = N * H * W * 3
    limit = raw_bytes  # below raw frames plus the other columns
    with pytest.raises(CodecError, match="max_decoded_bytes"):
        decode_batch(
            encode_batch("ep", 0, {**step_columns(N), "obs.front": moving_scene(N, H, W)}), SCHEMA, max_decoded=limit
        )
    assert isinstance(decode_batch(batch(), SCHEMA, max_decoded=limit)["obs.front"], PacketColumn)  # 2 keyframes
    with pytest.raises(CodecError, match="max_decoded_bytes"):  # every frame a keyframe: all decoded at ingest
        decode_batch(batch("jpeg"), SCHEMA, max_decoded=limit)
