"""The edge's cameras on the way up: which codec each camera takes (--uplink-codec and the store's), encoding on the
spool writer's thread with one encoder per camera per episode, and a spool that resends the same bytes."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edge.camera_uplink import CameraUplink, UplinkCodecs, camera_columns
from edge.recorder import Step, StepRecorder
from edge.spool import Spool
from edge.tunnel_client import TunnelConfig
from hal.config import ConfigError
from hal.resource import ArraySpec, Capabilities
from protocol.arrays import CodecError
from protocol.steps import decode_batch, schema_for
from protocol.video import CameraDecoder, Packet, psnr
from tests.factories import moving_scene

H, W, HZ = 64, 96, 10
CAMERAS = {"obs.front": (H, W), "obs.wrist": (H, W)}


def codecs(choice: str, store: dict[str, str] | None) -> dict[str, str]:
    uplink = UplinkCodecs(choice, CAMERAS)
    if store is not None:
        uplink.welcomed(store)
    return {name: codec for name, (codec, _why) in uplink.choose().items()}


@pytest.mark.parametrize(
    ("choice", "store", "expected"),
    [
        ("auto", None, {"obs.front": "raw", "obs.wrist": "raw"}),  # the cloud has not said yet: raw is always taken
        ("auto", {"obs.front": "h264"}, {"obs.front": "h264", "obs.wrist": "raw"}),
        ("auto", {"obs.front": "av1", "obs.wrist": "h264"}, {"obs.front": "av1", "obs.wrist": "h264"}),
        ("raw", {"obs.front": "h264"}, {"obs.front": "raw", "obs.wrist": "raw"}),
        ("jpeg", {"obs.front": "h264"}, {"obs.front": "jpeg", "obs.wrist": "jpeg"}),
        ("h264", {"obs.front": "h264", "obs.wrist": "av1"}, {"obs.front": "h264", "obs.wrist": "raw"}),
    ],
)
def test_each_camera_takes_the_codec_the_flag_and_the_store_agree_on(choice, store, expected) -> None:
    assert codecs(choice, store) == expected


def test_a_bad_uplink_codec_is_refused_naming_the_field() -> None:
    with pytest.raises(CodecError) as err:
        UplinkCodecs("h265", CAMERAS)
    assert err.value.field == "uplink_codec"
    with pytest.raises(ConfigError) as config_err:
        TunnelConfig("127.0.0.1:7070", "p", uplink_codec="h265")
    assert config_err.value.path == "tunnel.uplink_codec"


def test_camera_columns_are_the_rgb_observations() -> None:
    caps = Capabilities(
        (
            ArraySpec("state", "float32", (3,)),
            ArraySpec("front", "uint8", (H, W, 3)),
            ArraySpec("depth", "uint16", (H, W, 1)),
        ),
        ArraySpec("action", "float32", (2,)),
        HZ,
        "arm",
    )
    assert camera_columns(caps) == {"obs.front": (H, W)}


def steps(episode: str, frames: np.ndarray) -> list[Step]:
    return [
        Step(
            episode,
            seq,
            "t",
            {
                "obs.front": frame,
                "obs.state": np.zeros(3, np.float32),
                "action": np.zeros(2, np.float32),
                "reward": np.float32(0),
                "done": np.bool_(seq == len(frames) - 1),
                "success": np.bool_(False),
                "intervention": np.bool_(False),
                "policy_version": np.int64(0),
                "t_mono_ns": np.int64(seq),
            },
        )
        for seq, frame in enumerate(frames)
    ]


SCHEMA = schema_for([("state", "float32", (3,)), ("front", "uint8", (H, W, 3))], ("float32", (2,)))


def record(recorder: StepRecorder, episode: str, frames: np.ndarray, per_batch: int) -> None:
    for i, one in enumerate(steps(episode, frames)):
        recorder.record(one)
        if (i + 1) % per_batch == 0:
            recorder.flush()
    recorder.flush()


def stored_frames(spool: Spool, episode: str) -> tuple[list[Packet], np.ndarray]:
    packets, keys = [], []
    for spooled in spool.pending(limit=1000):
        if spooled.episode_id != episode:
            continue
        column = decode_batch(spooled.batch, SCHEMA)["obs.front"]
        packets += [
            Packet(data, bool(key), len(packets) + i)
            for i, (data, key) in enumerate(zip(column.packets, column.keyframe, strict=True))
        ]
        keys += list(column.keyframe)
    return packets, np.array(keys)


def test_the_recorder_spools_encoded_frames_that_decode_to_what_the_camera_saw(tmp_path, caplog) -> None:
    uplink = UplinkCodecs("auto", {"obs.front": (H, W)})
    uplink.welcomed({"obs.front": "h264"})
    spool = Spool(tmp_path / "spool.db")
    recorder = StepRecorder(spool, on_spooled=lambda: None, interval_s=3600, cameras=CameraUplink(uplink, HZ))
    frames = moving_scene(30, H, W)
    with caplog.at_level(logging.INFO, logger="fleetloop.edge"):
        record(recorder, "ep-1", frames, per_batch=3)  # 10 batches: the stream continues across them
    recorder.close()
    packets, keys = stored_frames(spool, "ep-1")
    assert len(packets) == 30 and keys[0] and keys[20] and keys.sum() == 2  # gop = 2 s at 10 Hz
    decoded = CameraDecoder("h264", W, H).decode(packets)
    assert min(psnr(a, b) for a, b in zip(frames, decoded, strict=True)) >= 35
    raw_bytes = frames.nbytes
    assert sum(len(p.data) for p in packets) < 0.1 * raw_bytes
    said = [r.getMessage() for r in caplog.records if "front camera" in r.getMessage()]
    assert len(said) == 1 and "H.264" in said[0] and "as the store keeps it" in said[0] and "ms per frame" in said[0]


def test_a_codec_change_waits_for_the_next_episode_which_opens_on_a_keyframe(tmp_path) -> None:
    uplink = UplinkCodecs("auto", {"obs.front": (H, W)})
    spool = Spool(tmp_path / "spool.db")
    recorder = StepRecorder(spool, on_spooled=lambda: None, interval_s=3600, cameras=CameraUplink(uplink, HZ))
    frames = moving_scene(8, H, W)
    for one in steps("ep-1", frames)[:4]:
        recorder.record(one)
    recorder.flush()  # before any Welcome: raw
    uplink.welcomed({"obs.front": "h264"})  # mid-episode: this episode stays raw
    for one in steps("ep-1", frames)[4:]:
        recorder.record(one)
    recorder.flush()
    record(recorder, "ep-2", frames, per_batch=4)
    recorder.close()
    by_episode: dict[str, set[str]] = {}
    for spooled in spool.pending(limit=100):
        by_episode.setdefault(spooled.episode_id, set()).update(["video"] if spooled.batch.video else ["raw"])
    assert by_episode == {"ep-1": {"raw"}, "ep-2": {"video"}}
    _packets, keys = stored_frames(spool, "ep-2")
    assert keys[0]


def test_a_resend_after_an_edge_restart_sends_the_same_bytes(tmp_path) -> None:
    uplink = UplinkCodecs("h264", {"obs.front": (H, W)})
    uplink.welcomed({"obs.front": "h264"})
    spool = Spool(tmp_path / "spool.db")
    recorder = StepRecorder(spool, on_spooled=lambda: None, interval_s=3600, cameras=CameraUplink(uplink, HZ))
    record(recorder, "ep-1", moving_scene(12, H, W), per_batch=4)
    recorder.close()
    first_send = [s.batch.SerializeToString() for s in spool.pending(limit=100)]
    spool.close()
    reopened = Spool(tmp_path / "spool.db")  # the edge restarted: nothing was acked
    resend = [s.batch.SerializeToString() for s in reopened.pending(limit=100)]
    assert resend == first_send and len(first_send) == 3
    assert all(s.batch.video["obs.front"].codec == "h264" for s in reopened.pending(limit=100))
