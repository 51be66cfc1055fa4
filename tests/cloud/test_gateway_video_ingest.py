"""Encoded cameras through a real gateway on loopback into a real store: H.264 from the edge is stored as it came,
raw and JPEG frames are encoded into the store's codec, hostile packets are refused by field while the gateway goes
on, and a hello that says it sends another video codec is refused naming --uplink-codec."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np

from cloud.data.ingest_log import IngestLog
from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.gateway.config import GatewayConfig
from cloud.gateway.server import Gateway
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from protocol import PROTOCOL_VERSION
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from protocol.steps import encode_batch
from protocol.video import CameraEncoder, PacketColumn, psnr
from tests.factories import moving_scene, step_columns

H, W, HZ = 64, 96, 10
RESOURCE = ResourceInfo(
    "cam-1",
    "robot",
    Capabilities(
        (ArraySpec("state", "float32", (3,)), ArraySpec("front", "uint8", (H, W, 3))),
        ArraySpec("action", "float32", (2,)),
        HZ,
        "cam_arm",
    ),
    source="sim",
)
FRAMES = moving_scene(12, H, W)


def encoded(codec: str, frames: np.ndarray) -> PacketColumn:
    encoder = CameraEncoder(codec, W, H, HZ, gop=6)
    packets = [p for frame in frames for p in encoder.encode(frame)]
    return PacketColumn(codec, tuple(p.data for p in packets), np.array([p.keyframe for p in packets]))


def batches(codec: str, episode: str = "ep-1", per_batch: int = 4) -> list[pb.StepBatch]:
    column = encoded(codec, FRAMES) if codec != "raw" else None
    out = []
    for first in range(0, len(FRAMES), per_batch):
        n = min(per_batch, len(FRAMES) - first)
        columns = step_columns(n, state=3, action=2)
        if column is None:
            out.append(encode_batch(episode, first, {**columns, "obs.front": FRAMES[first : first + n]}))
        else:
            out.append(encode_batch(episode, first, columns, video={"obs.front": column[first : first + n]}))
    return out


class Run:
    """A gateway on loopback over a store whose writes are recorded, and one edge's stream to it."""

    def __init__(self, root: Path, store_codec: str = "auto") -> None:
        self.store = EpisodeStore(root / "store")
        self.written: list = []
        write = self.store.write
        self.store.write = lambda rows: (self.written.extend(rows), write(rows))[1]  # type: ignore[method-assign]
        self.config = GatewayConfig(port=0, store_codec=store_codec)
        self.registry = PolicyRegistry(root / "registry")

    def talk(self, uplink: str, sent: list[pb.StepBatch]) -> list[pb.CloudMessage]:
        """The hello's answer, then each batch's answer (an ack or an error), in order."""

        async def run() -> list[pb.CloudMessage]:
            gateway = Gateway(self.config, self.store, self.registry)
            port = await gateway.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    return await self._stream(channel, uplink, sent)
            finally:
                await gateway.stop()

        return asyncio.run(run())

    @staticmethod
    async def _stream(channel, uplink: str, sent: list[pb.StepBatch]) -> list[pb.CloudMessage]:
        call = pb_grpc.TunnelStub(channel).Connect()
        hello = pb.Hello(resource=RESOURCE.to_proto(), protocol_version=PROTOCOL_VERSION, uplink_codec=uplink)
        await call.write(pb.EdgeMessage(hello=hello))
        answers = [await _answer(call, ("welcome", "error"))]
        if answers[0].HasField("error"):
            return answers
        for i, batch in enumerate(sent):
            batch.batch_id = i + 1
            await call.write(pb.EdgeMessage(steps=batch))
            answers.append(await _answer(call, ("ack", "error")))
        await call.done_writing()
        return answers


async def _answer(call, kinds: tuple[str, ...]) -> pb.CloudMessage:
    while True:
        message = await asyncio.wait_for(call.read(), timeout=30)
        assert message is not grpc.aio.EOF, "the gateway ended the stream"
        if message.WhichOneof("body") in kinds:
            return message


def stored_frames(store: EpisodeStore) -> np.ndarray:
    return store.read("cam_arm", ["obs.front"])["obs.front"]


def test_h264_from_the_edge_is_stored_as_it_came(tmp_path) -> None:
    run = Run(tmp_path)
    sent = batches("h264")
    answers = run.talk("h264", sent)
    assert dict(answers[0].welcome.store_codecs) == {"obs.front": "h264"}
    assert [a.ack.next_seq for a in answers[1:]] == [4, 8, 12]
    stored = [p for rows in run.written for p in rows.columns["obs.front"].packets]
    assert stored == [p for b in sent for p in b.video["obs.front"].packets]  # not re-encoded
    assert min(psnr(a, b) for a, b in zip(FRAMES, stored_frames(run.store), strict=True)) >= 35


def test_raw_and_jpeg_frames_are_encoded_into_the_stores_codec(tmp_path) -> None:
    for codec, episode in (("raw", "ep-raw"), ("jpeg", "ep-jpeg")):
        run = Run(tmp_path / codec)
        answers = run.talk(codec, batches(codec, episode))
        assert [a.ack.next_seq for a in answers[1:]] == [4, 8, 12], answers
        columns = [rows.columns["obs.front"] for rows in run.written]
        assert all(isinstance(c, PacketColumn) and c.codec == "h264" for c in columns)
        keys = np.concatenate([c.keyframe for c in columns])
        assert keys[0] and keys.sum() == 1  # one stream across the three batches (gop: 2 s at 10 Hz)
        assert min(psnr(a, b) for a, b in zip(FRAMES, stored_frames(run.store), strict=True)) >= 30


def test_a_store_that_keeps_cameras_raw_says_so_and_takes_jpeg(tmp_path) -> None:
    run = Run(tmp_path, store_codec="raw")
    answers = run.talk("jpeg", batches("jpeg"))
    assert dict(answers[0].welcome.store_codecs) == {}
    assert [a.ack.next_seq for a in answers[1:]] == [4, 8, 12]
    assert isinstance(run.written[0].columns["obs.front"], np.ndarray)


def test_another_video_codec_is_refused_at_hello_naming_the_flag(tmp_path) -> None:
    run = Run(tmp_path)
    (answer,) = run.talk("av1", [])
    assert answer.error.field == "hello.uplink_codec" and "--uplink-codec" in answer.error.message


def test_a_forged_keyframe_is_refused_by_packet_and_the_episode_goes_on(tmp_path) -> None:
    run = Run(tmp_path)
    good = batches("h264")
    forged = pb.StepBatch()
    forged.CopyFrom(good[0])
    forged.video["obs.front"].packets[0] = b"\x00\x00\x00\x01\x65" + bytes(300)
    answers = run.talk("h264", [forged, *good])
    assert answers[1].error.field == "step_batch.video[obs.front].packets[0]"
    assert [a.ack.next_seq for a in answers[2:]] == [4, 8, 12]


def test_the_ingest_log_keeps_a_batch_as_its_message_unless_its_frames_were_decoded(tmp_path, monkeypatch) -> None:
    logged: dict[str, list] = {}
    append = IngestLog.append

    def recording(self, rows, wires=None):
        for batch, wire in zip(rows, wires or [None] * len(rows), strict=True):
            logged.setdefault(batch.episode_id, []).append(wire)
        return append(self, rows, wires)

    monkeypatch.setattr(IngestLog, "append", recording)
    for codec in ("h264", "raw", "jpeg"):
        sent = batches(codec, f"ep-{codec}")
        answers = Run(tmp_path / codec).talk(codec, sent)
        assert [a.ack.next_seq for a in answers[1:]] == [4, 8, 12], answers
        wires = logged[f"ep-{codec}"]
        if codec == "jpeg":  # its frames were decoded to arrays on the way in: the record holds those
            assert wires == [None, None, None]
            continue
        assert all(wire is not None for wire in wires)
        kept = [pb.EdgeMessage.FromString(wire.message).steps for wire in wires]
        assert kept == sent  # the message as it came, batch ids included
