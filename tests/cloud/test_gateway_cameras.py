"""The gateway's camera columns: the codec a new dataset keeps its cameras in, the hello's uplink codec, the checks
of encoded frames from a (hostile) device, and raw frames encoded into the store's codec at write time."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.data.store import StepRows
from cloud.gateway.cameras import Camera, StoreEncoder, check_cameras, check_uplink, new_dataset_codecs
from protocol.arrays import CodecError
from protocol.steps import schema_for
from protocol.video import CameraDecoder, CameraEncoder, Packet, PacketColumn, psnr
from tests.factories import moving_scene, step_columns

H, W, HZ = 64, 96, 10
SCHEMA = schema_for(
    [("state", "float32", (3,)), ("front", "uint8", (H, W, 3)), ("tiny", "uint8", (16, 16, 3))], ("float32", (2,))
)
H264 = {"obs.front": Camera("h264", H, W, HZ)}
FIELD = "step_batch.video[obs.front]"


def encoded(codec: str, frames: np.ndarray, gop: int = 4) -> PacketColumn:
    encoder = CameraEncoder(codec, W, H, HZ, gop=gop)
    packets = [p for frame in frames for p in encoder.encode(frame)]
    return PacketColumn(codec, tuple(p.data for p in packets), np.array([p.keyframe for p in packets]))


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"obs.front": "h264"}), ("raw", {}), ("h264", {"obs.front": "h264"}), ("av1", {"obs.front": "av1"})],
)
def test_a_new_dataset_keeps_its_rgb_cameras_as_store_codec_says(choice, expected) -> None:
    assert new_dataset_codecs(SCHEMA, HZ, choice) == expected  # a 16x16 camera stays raw: headers outweigh it


def test_an_edge_that_says_it_sends_another_video_codec_is_refused_at_hello() -> None:
    with pytest.raises(CodecError) as err:
        check_uplink("av1", H264)
    assert err.value.field == "hello.uplink_codec" and "--uplink-codec auto" in err.value.message
    for fine in ("", "auto", "raw", "jpeg", "h264"):
        check_uplink(fine, H264)
    with pytest.raises(CodecError):
        check_uplink("x" * 1000, H264)


def test_frames_in_the_stores_codec_pass_as_they_came() -> None:
    column = encoded("h264", moving_scene(6, H, W))
    checked = check_cameras({"obs.front": column}, SCHEMA, H264, first_seq=0)
    assert checked["obs.front"] is column


def test_jpeg_frames_are_decoded_for_the_store() -> None:
    frames = moving_scene(3, H, W)
    checked = check_cameras({"obs.front": encoded("jpeg", frames)}, SCHEMA, {}, first_seq=5)  # a raw column
    assert checked["obs.front"].shape == (3, H, W, 3) and psnr(frames, checked["obs.front"]) >= 30


def _garbage_keyframe(column: PacketColumn) -> PacketColumn:
    return PacketColumn(column.codec, (b"\x00\x00\x01" + bytes(200), *column.packets[1:]), column.keyframe)


def _delta_claimed_keyframe(column: PacketColumn) -> PacketColumn:
    keys = column.keyframe.copy()
    keys[1] = True
    return PacketColumn(column.codec, column.packets, keys)


@pytest.mark.parametrize(
    ("hostile", "first_seq", "field"),
    [
        (lambda c: encoded("av1", moving_scene(6, H, W)), 0, f"{FIELD}.codec"),
        (lambda c: c[1:], 1, f"{FIELD}.packets[3]"),  # a batch may open on a delta; packet 3 is a keyframe (gop 4)
        (lambda c: c[1:], 0, f"{FIELD}.keyframe[0]"),  # an episode may not
        (_garbage_keyframe, 0, f"{FIELD}.packets[0]"),
        (_delta_claimed_keyframe, 0, f"{FIELD}.packets[1]"),
    ],
)
def test_hostile_frames_are_refused_by_packet(hostile, first_seq: int, field: str) -> None:
    column = hostile(encoded("h264", moving_scene(8, H, W)))
    if field.endswith("packets[3]"):
        column = PacketColumn("h264", (*column.packets[:3], b"\x00" * 50, *column.packets[4:]), column.keyframe)
    with pytest.raises(CodecError) as err:
        check_cameras({"obs.front": column}, SCHEMA, H264, first_seq=first_seq)
    assert err.value.field == field


def rows(first_seq: int, frames: np.ndarray, episode: str = "ep", done: bool = False) -> StepRows:
    n = len(frames)
    columns = {**step_columns(n, done_at_end=done), "obs.front": frames}
    return StepRows("arm", episode, "robot-1", "sim", "t", first_seq, columns)


def test_raw_frames_are_encoded_in_one_stream_across_batches_and_start_fresh_after_a_gap() -> None:
    encoder = StoreEncoder()
    encoder.cameras["arm"] = H264
    frames = moving_scene(12, H, W)
    a = encoder.prepare(rows(0, frames[:4]), start=0)
    b = encoder.prepare(rows(4, frames[4:8]), start=4)
    column_a, column_b = a.columns["obs.front"], b.columns["obs.front"]
    assert column_a.keyframe.tolist() == [True, False, False, False] and not column_b.keyframe[0]
    packets = [
        Packet(d, bool(k), i)
        for i, (d, k) in enumerate(
            zip(column_a.packets + column_b.packets, [*column_a.keyframe, *column_b.keyframe], strict=True)
        )
    ]
    decoded = CameraDecoder("h264", W, H).decode(packets)
    assert min(psnr(x, y) for x, y in zip(frames[:8], decoded, strict=True)) >= 35
    # Rows 6..11 after the store took 0..7 from this stream: rows below 8 are dropped, the stream goes on.
    c = encoder.prepare(rows(6, frames[6:]), start=8)
    assert c.first_seq == 8 and len(c.columns["action"]) == 4 and not c.columns["obs.front"].keyframe.any()
    # The same rows again while the store holds only 0..5 (that write failed): they open on a fresh keyframe.
    d = encoder.prepare(rows(6, frames[6:]), start=6)
    assert d.first_seq == 6 and d.columns["obs.front"].keyframe.tolist()[:2] == [True, False]
    encoder.forget(["ep"])  # its write failed: the next batch starts fresh even where it follows on
    e = encoder.prepare(rows(12, frames[:2]), start=12)
    assert e.columns["obs.front"].keyframe[0]


def test_only_raw_frames_of_an_encoded_column_need_the_encoder() -> None:
    encoder = StoreEncoder()
    encoder.cameras["arm"] = H264
    assert encoder.needs(rows(0, moving_scene(2, H, W)))
    passed = rows(0, moving_scene(2, H, W))
    passed.columns["obs.front"] = encoded("h264", moving_scene(2, H, W))
    assert not encoder.needs(passed)
    assert not StoreEncoder().needs(rows(0, moving_scene(2, H, W)))  # a dataset that keeps it raw
