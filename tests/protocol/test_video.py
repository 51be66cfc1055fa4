"""The camera codec: round trips per codec, keyframe spacing, no frame held back, random access, and a decoder
that refuses hostile packets with a CodecError naming the camera and the packet."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from protocol.arrays import CodecError
from protocol.video import (
    CODECS,
    MAX_CAMERA_SIDE,
    MIN_VIDEO_SIDE,
    VIDEO_CODECS,
    CameraDecoder,
    CameraEncoder,
    Packet,
    auto_codec,
    decode_frame,
    default_gop,
    max_packet_bytes,
    psnr,
)
from tests.factories import moving_scene

WIDTH, HEIGHT, FPS, GOP = 96, 64, 30, 10


def encode_all(codec: str, frames: np.ndarray, gop: int = GOP) -> list[Packet]:
    encoder = CameraEncoder(codec, frames.shape[2], frames.shape[1], FPS, gop=gop, camera="front")
    packets = []
    for frame in frames:
        out = encoder.encode(frame)
        assert len(out) == 1, f"{codec} held a frame back or split it: {len(out)} packets for one frame"
        packets += out
    assert encoder.flush() == []
    return packets


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return moving_scene(25)


@pytest.fixture(scope="module")
def streams(scene: np.ndarray) -> dict[str, list[Packet]]:
    return {codec: encode_all(codec, scene) for codec in CODECS}


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_keeps_the_picture_and_shrinks_it(codec, scene, streams):
    packets = streams[codec]
    decoded = CameraDecoder(codec, WIDTH, HEIGHT).decode(packets)
    assert len(decoded) == len(scene)
    assert all(d.shape == (HEIGHT, WIDTH, 3) and d.dtype == np.uint8 for d in decoded)
    quality = [psnr(a, b) for a, b in zip(scene, decoded, strict=True)]
    assert min(quality) >= 35, f"{codec}: worst frame {min(quality):.1f} dB"
    assert sum(len(p.data) for p in packets) < scene.nbytes / 5
    assert [p.pts for p in packets] == list(range(len(scene)))


@pytest.mark.parametrize("codec", VIDEO_CODECS)
def test_a_keyframe_opens_every_gop_and_each_segment_decodes_alone(codec, scene, streams):
    packets = streams[codec]
    assert [i for i, p in enumerate(packets) if p.keyframe] == list(range(0, len(scene), GOP))
    alone = CameraDecoder(codec, WIDTH, HEIGHT).decode(packets[GOP : 2 * GOP])
    from_start = CameraDecoder(codec, WIDTH, HEIGHT).decode(packets[: 2 * GOP])[GOP:]
    assert all(np.array_equal(a, b) for a, b in zip(alone, from_start, strict=True))


def test_jpeg_frames_are_all_keyframes(streams):
    assert all(p.keyframe for p in streams["jpeg"])
    assert CameraDecoder("jpeg", WIDTH, HEIGHT).decode(streams["jpeg"][7:9])[1].shape == (HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("codec", CODECS)
def test_decoder_continues_across_calls(codec, streams):
    decoder = CameraDecoder(codec, WIDTH, HEIGHT)
    first, rest = decoder.decode(streams[codec][:4]), decoder.decode(streams[codec][4:])
    whole = CameraDecoder(codec, WIDTH, HEIGHT).decode(streams[codec])
    assert all(np.array_equal(a, b) for a, b in zip(first + rest, whole, strict=True))


@pytest.mark.parametrize("codec", CODECS)
def test_odd_sized_camera_round_trips_at_its_own_size(codec):
    frames = moving_scene(4, height=45, width=67)
    decoded = CameraDecoder(codec, 67, 45).decode(encode_all(codec, frames))
    assert decoded[2].shape == (45, 67, 3) and psnr(frames[2], decoded[2]) >= 35


@pytest.mark.parametrize("codec", VIDEO_CODECS)
def test_segment_not_starting_at_a_keyframe_is_refused(codec, streams):
    with pytest.raises(CodecError, match=r"front\.packets\[0\]: .*does not start at a keyframe"):
        CameraDecoder(codec, WIDTH, HEIGHT, camera="front").decode(streams[codec][3:6])


@pytest.mark.parametrize("codec", VIDEO_CODECS)
def test_a_delta_frame_claiming_to_be_a_keyframe_is_refused(codec, streams):
    liar = dataclasses.replace(streams[codec][3], keyframe=True)
    with pytest.raises(CodecError, match=r"front\.packets\[0\]"):
        CameraDecoder(codec, WIDTH, HEIGHT, camera="front").decode([liar])
    # mid-stream too: a reader seeking to it later would decode garbage
    with pytest.raises(CodecError, match=r"front\.packets\[3\]\.keyframe: the packet says it is a keyframe"):
        CameraDecoder(codec, WIDTH, HEIGHT, camera="front").decode([*streams[codec][:3], liar])


@pytest.mark.parametrize("codec", CODECS)
def test_oversized_and_empty_packets_are_refused_before_decoding(codec, streams):
    decoder = CameraDecoder(codec, WIDTH, HEIGHT, camera="front")
    huge = Packet(streams[codec][0].data + bytes(max_packet_bytes(WIDTH, HEIGHT)), True, 0)
    with pytest.raises(CodecError, match=r"front\.packets\[0\]\.data: \d+ bytes exceeds the limit"):
        decoder.decode([huge])
    with pytest.raises(CodecError, match=r"front\.packets\[1\]\.data: is empty"):
        decoder.decode([streams[codec][0], Packet(b"", False, 1)])


@pytest.mark.parametrize("codec", CODECS)
def test_a_picture_larger_than_the_camera_is_refused(codec):
    big = encode_all(codec, moving_scene(1, height=256, width=320))
    # refused by libavcodec's pixel bound before it allocates the picture, not after decoding it
    with pytest.raises(CodecError, match=r"front\.packets\[0\]\.data: is not a valid"):
        CameraDecoder(codec, WIDTH, HEIGHT, camera="front").decode(big)
    small = encode_all(codec, moving_scene(1, height=32, width=48))
    with pytest.raises(CodecError, match=r"front\.packets\[0\]\.data: decoded to 48x32, the camera is 96x64"):
        CameraDecoder(codec, WIDTH, HEIGHT, camera="front").decode(small)


@pytest.mark.parametrize("codec", CODECS)
def test_garbage_and_corrupted_packets_raise_codec_error_only(codec, streams):
    """Random bytes, another codec's packets and bit-flipped packets: decoded frames or a CodecError, nothing else."""
    rng = random.Random(13)
    other = streams["jpeg" if codec != "jpeg" else "h264"]
    with pytest.raises(CodecError, match=r"cam\.packets\[0\]"):
        CameraDecoder(codec, WIDTH, HEIGHT, camera="cam").decode([Packet(rng.randbytes(3000), True, 0)])
    with pytest.raises(CodecError, match=r"cam\.packets\[0\]"):
        CameraDecoder(codec, WIDTH, HEIGHT, camera="cam").decode(other[:1])
    refused = 0
    for _ in range(30):
        packets = list(streams[codec][:GOP])
        victim = rng.randrange(len(packets))
        data = bytearray(packets[victim].data)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randint(1, len(data))]
        packets[victim] = dataclasses.replace(packets[victim], data=bytes(data))
        try:
            frames = CameraDecoder(codec, WIDTH, HEIGHT, camera="cam").decode(packets)
        except CodecError as exc:
            assert exc.field.startswith("cam.packets[")
            refused += 1
        else:
            assert len(frames) == len(packets) and all(f.shape == (HEIGHT, WIDTH, 3) for f in frames)
    assert refused > 0  # the damage is noticed at least sometimes; the point is that nothing else escapes


def test_after_an_error_the_decoder_waits_for_a_keyframe(streams):
    decoder = CameraDecoder("h264", WIDTH, HEIGHT)
    decoder.decode(streams["h264"][:2])
    with pytest.raises(CodecError):
        decoder.decode([Packet(b"\x00\x00\x00\x01garbage", False, 2)])
    with pytest.raises(CodecError, match="does not start at a keyframe"):
        decoder.decode(streams["h264"][3:4])
    assert len(decoder.decode(streams["h264"][GOP : GOP + 2])) == 2


@pytest.mark.parametrize("codec", CODECS)
def test_random_access_decodes_frame_i_from_the_keyframe_before_it(codec, streams):
    packets = streams[codec]
    data, keys = [p.data for p in packets], [p.keyframe for p in packets]
    whole = CameraDecoder(codec, WIDTH, HEIGHT).decode(packets)
    for index in (0, 7, GOP, 23):
        assert np.array_equal(decode_frame(codec, WIDTH, HEIGHT, data, keys, index), whole[index])


def test_random_access_refuses_what_it_cannot_decode(streams):
    data, keys = [p.data for p in streams["h264"]], [p.keyframe for p in streams["h264"]]
    with pytest.raises(CodecError, match=r"cam\.index: frame 25 is outside 0\.\.24"):
        decode_frame("h264", WIDTH, HEIGHT, data, keys, 25, camera="cam")
    with pytest.raises(CodecError, match=r"cam\.keyframes: no keyframe at or before frame 5"):
        decode_frame("h264", WIDTH, HEIGHT, data[1:], keys[1:], 5, camera="cam")
    with pytest.raises(CodecError, match=r"cam\.keyframes: 3 flags for 25 packets"):
        decode_frame("h264", WIDTH, HEIGHT, data, keys[:3], 1, camera="cam")


def test_encoder_refuses_a_frame_of_the_wrong_shape_or_type():
    encoder = CameraEncoder("h264", WIDTH, HEIGHT, FPS, camera="wrist")
    with pytest.raises(CodecError, match=r"wrist: frame of uint8 \[64, 95, 3\], expected uint8 \[64, 96, 3\]"):
        encoder.encode(np.zeros((HEIGHT, WIDTH - 1, 3), np.uint8))
    with pytest.raises(CodecError, match="wrist: frame of float32"):
        encoder.encode(np.zeros((HEIGHT, WIDTH, 3), np.float32))
    encoder.flush()
    with pytest.raises(CodecError, match="wrist: the encoder was flushed"):
        encoder.encode(np.zeros((HEIGHT, WIDTH, 3), np.uint8))


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("vp9", 64, 64, 30), r"wrist\.codec: unknown camera codec 'vp9'"),
        (("h264", 0, 64, 30), r"wrist\.width: must be 1 to"),
        (("h264", 64, MAX_CAMERA_SIDE + 1, 30), r"wrist\.height: must be 1 to"),
        (("h264", 64, 64, float("nan")), r"wrist\.fps: must be a number"),
        (("av1", 4, 4, 30), r"wrist: 4x4 is too small for AV1"),
    ],
)
def test_bad_camera_settings_name_the_field(args, field):
    with pytest.raises(CodecError, match=field):
        CameraEncoder(*args, camera="wrist")


def test_auto_rule():
    assert auto_codec((224, 224, 3), "uint8", 30) == "h264"
    assert auto_codec((MIN_VIDEO_SIDE, 640, 3), np.uint8, 2) == "h264"
    assert auto_codec((16, 16, 3), "uint8", 30) == "raw"  # the headers would outweigh the frame
    assert auto_codec((224, 224), "uint8", 30) == "raw"  # grey
    assert auto_codec((224, 224, 1), "uint16", 30) == "raw"  # depth
    assert auto_codec((224, 224, 3), "float32", 30) == "raw"
    with pytest.raises(CodecError, match="fps"):
        auto_codec((224, 224, 3), "uint8", 0)
    assert default_gop(30) == 60 and default_gop(0.2) == 1
