"""One device must never stall the rest: an attacker holding one legitimate credential sends decompression bombs,
oversized and endless messages, streams and inference requests at a real gateway on loopback, while a good robot
streams steps at 10 Hz. The gateway runs on an event loop of its own thread; the devices are gRPC clients."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import EpisodeStore
from cloud.gateway.config import GatewayConfig
from cloud.gateway.fleet import Requirements, Task
from cloud.gateway.server import Gateway
from cloud.security.devices import DeviceRegistry
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from protocol.arrays import encode_array
from protocol.steps import encode_batch
from tests.e2e.raw_edge import RESOURCE, ByteStream, good_columns, hello

GOOD = dataclasses.replace(RESOURCE, id="good-1")
CAMERAS = 8
CAMERA = (1024, 1024)  # 1 MiB of uint8 per camera and step
BOMB = ResourceInfo(
    id="attacker-1",
    kind="robot",
    source="sim",
    capabilities=Capabilities(
        observation=(
            ArraySpec("state", "float32", (4,)),
            *(ArraySpec(f"cam{i}", "uint8", CAMERA) for i in range(CAMERAS)),
        ),
        action=ArraySpec("action", "float32", (2,)),
        control_hz=10.0,
        embodiment="bomb_arm",
    ),
)
OPEN_CHANNEL = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 128 << 20)]


class GatewayThread:
    """The real gateway on loopback, its event loop on a thread of its own (as `fleetloop cloud` runs it), with a
    probe that measures how late the loop runs a 5 ms sleep (its worst stall) and a record of who was marked lost."""

    def __init__(
        self, root: Path, devices: DeviceRegistry, store_type: type[EpisodeStore] = EpisodeStore, **config
    ) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.store = store_type(root / "store")
        self.registry = signing_registry(DataLayout(root))  # the learner's: versions it publishes are signed
        self.gateway = Gateway(GatewayConfig(port=0, devices=devices, **config), self.store, self.registry)
        self.lost: list[str] = []
        self.worst_stall_s = 0.0
        check = self.gateway.fleet.check
        self.gateway.fleet.check = lambda: self._record(check())
        port = self.call(self.gateway.start())
        self.target = f"127.0.0.1:{port}"
        self._probe = asyncio.run_coroutine_threadsafe(self._measure_stalls(), self.loop)

    def _record(self, lost: list[str]) -> list[str]:
        self.lost.extend(lost)
        return lost

    async def _measure_stalls(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.005)
            self.worst_stall_s = max(self.worst_stall_s, time.monotonic() - started - 0.005)

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def stored_next_seq(self, episode_id: str) -> int:
        """Where the store's copy of the episode ends, once it holds everything acked (acks come from the log)."""
        assert self.call(self.gateway.writer.drain(20))
        return self.store.next_seq(episode_id)

    def stop(self) -> None:
        self._probe.cancel()
        self.call(self.gateway.stop(0.2))
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def devices(tmp_path: Path) -> tuple[DeviceRegistry, dict[str, str]]:
    registry = DeviceRegistry(tmp_path / "devices.json")
    datasets = ("panda_pick_cube", "bomb_arm")  # the attacker's records bind its datasets like any robot's
    return registry, {name: registry.add(name, embodiments=datasets) for name in ("good-1", "good-2", "attacker-1")}


@pytest.fixture
def serve(tmp_path: Path, devices) -> Iterator:
    """``serve(**config)``: a gateway with these GatewayConfig fields (and ``store_type``), stopped after the test."""
    started: list[GatewayThread] = []

    def start(store_type: type[EpisodeStore] = EpisodeStore, **config) -> GatewayThread:
        started.append(GatewayThread(tmp_path / f"cloud{len(started)}", devices[0], store_type, **config))
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop()


class PacedRobot:
    """A well-behaved robot: one step every 0.1 s and a heartbeat every ``heartbeat_every`` steps (0.5 s); it notes
    when acks and heartbeat answers arrive, and when it sent each heartbeat."""

    def __init__(self, target: str, token: str, heartbeat_every: int = 5) -> None:
        self.heartbeat_every = heartbeat_every
        self.beats_sent: list[float] = []
        self.beats_heard: list[float] = []
        self.outgoing: queue.Queue = queue.Queue()
        self.outgoing.put(hello(GOOD, token=token))
        self.channel = grpc.insecure_channel(target, options=OPEN_CHANNEL)
        self.heard: list[float] = []  # when each ack or heartbeat answer arrived
        self.acked = 0
        self.errors: list[pb.Error] = []
        self.welcomed = threading.Event()
        self.sent = 0
        responses = pb_grpc.TunnelStub(self.channel).Connect(iter(self.outgoing.get, None))
        threading.Thread(target=self._read, args=(responses,), daemon=True).start()
        assert self.welcomed.wait(10), "the good robot was not welcomed"

    def _read(self, responses) -> None:
        try:
            for message in responses:
                kind = message.WhichOneof("body")
                if kind == "welcome":
                    self.welcomed.set()
                elif kind in ("ack", "heartbeat"):
                    self.heard.append(time.monotonic())
                    if kind == "heartbeat":
                        self.beats_heard.append(self.heard[-1])
                    self.acked = max(self.acked, message.ack.next_seq) if kind == "ack" else self.acked
                elif kind == "error":
                    self.errors.append(message.error)
        except grpc.RpcError:
            pass

    def stream(self, seconds: float) -> None:
        """Streams for ``seconds`` at 10 Hz, then waits (up to 5 s) for the last ack."""
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            batch = encode_batch("good-episode", self.sent, good_columns(1), batch_id=self.sent + 1)
            self.outgoing.put(pb.EdgeMessage(steps=batch))
            self.sent += 1
            if self.sent % self.heartbeat_every == 0:
                self.beats_sent.append(time.monotonic())
                self.outgoing.put(pb.EdgeMessage(heartbeat=pb.Heartbeat(mono_ns=time.monotonic_ns())))
            time.sleep(max(0.0, start + self.sent * 0.1 - time.monotonic()))
        deadline = time.monotonic() + 5
        while self.acked < self.sent and time.monotonic() < deadline:
            time.sleep(0.05)

    def worst_heartbeat_s(self) -> float:
        """The longest a heartbeat waited for its answer (the gateway answers them in order)."""
        if len(self.beats_heard) < len(self.beats_sent):
            return float("inf")
        return max(heard - sent for sent, heard in zip(self.beats_sent, self.beats_heard, strict=False))

    def worst_gap_s(self) -> float:
        return float(np.diff(self.heard).max()) if len(self.heard) > 1 else float("inf")

    def close(self) -> None:
        self.outgoing.put(None)
        self.channel.close()


def bomb_batch(steps: int, bad_action: bool = True) -> bytes:
    """A batch whose camera columns are zlib of zeros: about 1 KB on the wire per MiB they inflate to. With
    ``bad_action`` its action column has the wrong dtype, so it is refused after its cameras are decoded."""
    cameras = zlib.compress(bytes(steps * CAMERA[0] * CAMERA[1]), 9)
    columns = {
        "obs.state": np.zeros((steps, 4), np.float32),
        "action": np.zeros((steps, 2), np.float64 if bad_action else np.float32),
        **{key: value for key, value in good_columns(steps).items() if key not in ("obs.state", "action")},
    }
    batch = encode_batch("bomb", 0, columns, batch_id=666)
    for i in range(CAMERAS):
        batch.columns[f"obs.cam{i}"].CopyFrom(
            pb.Array(dtype="|u1", shape=[steps, *CAMERA], data=cameras, compression="zlib")
        )
    return pb.EdgeMessage(steps=batch).SerializeToString()


def infer_bomb(request_id: int) -> bytes:
    camera = pb.Array(dtype="|u1", shape=list(CAMERA), data=zlib.compress(bytes(CAMERA[0] * CAMERA[1]), 9))
    camera.compression = "zlib"
    request = pb.InferenceRequest(request_id=request_id)
    request.observation["state"].CopyFrom(encode_array(np.zeros(4, np.float32)))
    for i in range(CAMERAS):
        request.observation[f"cam{i}"].CopyFrom(camera)
    return pb.EdgeMessage(infer=request).SerializeToString()


def attacker(target: str, token: str, resource: ResourceInfo = BOMB, **fields) -> ByteStream:
    stream = ByteStream(grpc.insecure_channel(target, options=OPEN_CHANNEL))
    stream.send(hello(resource, token=token, **fields).SerializeToString())
    return stream


def errors(stream: ByteStream) -> list[pb.Error]:
    return [answer.error for answer in stream.answers if answer.HasField("error")]


def flood(stop: threading.Event, target: str, token: str) -> None:
    """Everything at once from one credential: bombs and an inference flood on its tunnel, oversized first messages
    and streams that never say hello on fresh connections."""
    streams = [attacker(target, token, remote_inference=True)]
    bomb, oversize = bomb_batch(32), hello(BOMB, token="x" * (20 << 20)).SerializeToString()
    request_id = 0
    while not stop.is_set():
        for _ in range(4):
            streams[0].send(bomb)
        for _ in range(16):
            request_id += 1
            streams[0].send(infer_bomb(request_id))
        extra = ByteStream(grpc.insecure_channel(target, options=OPEN_CHANNEL), timeout_s=10)
        extra.send(oversize)
        streams += [extra, ByteStream(grpc.insecure_channel(target, options=OPEN_CHANNEL), timeout_s=10)]
        stop.wait(0.3)
    for stream in streams:
        stream.cancel()


def test_a_good_robot_misses_no_heartbeat_and_loses_no_step_while_another_device_floods(serve, devices) -> None:
    """Attack: with one robot's credential, send decompression bombs (1 MB of zlib that inflates to 256 MB),
    remote-inference requests by the dozen, 20 MB first messages and streams that never say hello, all at once,
    hoping to stall the gateway's event loop so every other robot is marked lost and its steps are dropped."""
    cloud = serve(lost_after_s=2.0, max_pending_hellos=8, max_streams=32)
    tokens = devices[1]
    robot = PacedRobot(cloud.target, tokens["good-1"])
    stop = threading.Event()
    attack = threading.Thread(target=flood, args=(stop, cloud.target, tokens["attacker-1"]), daemon=True)
    attack.start()
    try:
        robot.stream(4.0)
    finally:
        stop.set()
        attack.join(10)
        robot.close()
    print(f"worst gap between answers {robot.worst_gap_s():.3f} s, worst loop stall {cloud.worst_stall_s:.3f} s")
    assert "good-1" not in cloud.lost
    assert robot.worst_gap_s() < 1.0, f"the good robot heard nothing for {robot.worst_gap_s():.2f} s"
    assert not robot.errors
    assert cloud.stored_next_seq("good-episode") == robot.sent  # every step it sent is stored


def test_a_decompression_bomb_is_refused_before_it_is_inflated(serve, devices) -> None:
    """Attack: send a step batch whose eight camera columns are each 32 KB of zlib that inflates to the 32 MB a
    column may hold: 256 MB of memory and CPU on the gateway for a third of a megabyte on the wire."""
    cloud = serve()
    stream = attacker(cloud.target, devices[1]["attacker-1"])
    stream.send(bomb_batch(32))
    assert stream.wait_for(lambda answers: any(a.HasField("error") for a in answers), 10)
    (error,) = errors(stream)
    assert error.field == "step_batch" and "max_decoded_bytes" in error.message, error
    stream.cancel()


def test_a_robot_whose_one_step_inflates_past_the_bound_is_refused_at_its_hello(serve, devices) -> None:
    """Attack: declare 32 cameras of 4096x4096x2 bytes, so that every remote-inference request (one observation,
    no batch around it) inflates to 1 GB from a few kilobytes of zlib."""
    cloud = serve()
    huge = dataclasses.replace(
        BOMB.capabilities,
        observation=tuple(ArraySpec(f"cam{i}", "uint16", (4096, 4096)) for i in range(32)),
    )
    stream = attacker(cloud.target, devices[1]["attacker-1"], dataclasses.replace(BOMB, capabilities=huge))
    assert stream.wait_for(lambda answers: bool(answers), 10) and stream.finish(5)
    (error,) = errors(stream)
    assert error.field == "hello.resource.capabilities" and "max_decoded_bytes" in error.message, error
    assert stream.code == grpc.StatusCode.INVALID_ARGUMENT


def test_large_messages_are_decoded_off_the_event_loop(serve, devices) -> None:
    """Attack: on a gateway configured for big image batches (300 MB decoded per message), send batches that
    inflate to 256 MB each, back to back, so that decoding them holds the event loop that serves every tunnel."""
    cloud = serve(max_decoded_bytes=300 << 20)
    stream = attacker(cloud.target, devices[1]["attacker-1"])
    bomb = bomb_batch(32)
    for _ in range(3):
        stream.send(bomb)
    assert stream.wait_for(lambda answers: len([a for a in answers if a.HasField("error")]) == 3, 30)
    assert all(error.field == "step_batch.columns[action].dtype" for error in errors(stream))  # decoded, then refused
    print(f"worst loop stall {cloud.worst_stall_s:.3f} s")
    # Decoded on the loop, one such batch held it 2.5 s or more here; off it, the worst stall was about 0.1 s alone
    # and up to 0.2 s beside busy tests (the GIL the decoding threads share): 1 s parts the two cases on a loaded CI.
    assert cloud.worst_stall_s < 1.0, f"the event loop stalled {cloud.worst_stall_s:.2f} s"
    stream.cancel()


def test_an_inference_flood_is_refused_past_the_tunnels_queue_and_others_are_served(serve, devices) -> None:
    """Attack: queue a hundred remote-inference requests at once, so the shared inference server works through
    them before any other robot's request, and its memory grows with every request sent."""
    from policies.factory import make_policy
    from policies.weights import policy_to_bytes

    # With credentials on, tasks come from --tasks or the records (these list no policy): every Panda runs one.
    cloud = serve(
        tasks=(Task("pick", "panda_pick_cube", requires=Requirements(embodiment="panda_pick_cube"), count=0),)
    )
    state = {"state": {"shape": [21], "dtype": "float32"}}
    cloud.registry.publish(
        "panda_pick_cube", policy_to_bytes(make_policy("mlp", {"observation": state, "action_dim": 4}))
    )
    tokens = devices[1]
    flood = attacker(
        cloud.target, tokens["attacker-1"], dataclasses.replace(RESOURCE, id="attacker-1"), remote_inference=True
    )
    good = attacker(cloud.target, tokens["good-2"], dataclasses.replace(RESOURCE, id="good-2"), remote_inference=True)
    assert flood.wait_for(lambda a: any(m.HasField("welcome") for m in a), 10)
    assert good.wait_for(lambda a: any(m.HasField("welcome") for m in a), 10)
    observation = encode_array(np.zeros(21, np.float32))

    def request(request_id: int) -> bytes:
        message = pb.InferenceRequest(request_id=request_id)
        message.observation["state"].CopyFrom(observation)
        return pb.EdgeMessage(infer=message).SerializeToString()

    def replies(stream: ByteStream) -> list[pb.InferenceReply]:
        return [m.actions for m in stream.answers if m.HasField("actions")]

    for i in range(100):
        flood.send(request(i))
    for i in range(5):  # the good robot's requests, one at a time, while the flood is answered
        good.send(request(i))
        assert good.wait_for(lambda a, n=i + 1: len(replies(good)) == n, 5), "the good robot's request waited"
    assert not any(reply.error for reply in replies(good))
    assert flood.wait_for(lambda a: len(replies(flood)) == 100, 10)  # every request is answered, none left hanging
    refused = [reply for reply in replies(flood) if "max_inference_queue" in reply.error]
    print(f"{len(refused)} of 100 flooding requests refused")
    # The base refused none; how many are served while the rest arrive depends on the machine's load (49 of 100 were
    # refused once at load 15, with a lone request served at once since continuous batching).
    assert len(refused) >= 25, f"only {len(refused)} of 100 refused"
    flood.cancel()
    good.cancel()


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def silent_stream(target: str) -> ByteStream:
    """A stream on a connection of its own that never says hello."""
    return ByteStream(grpc.insecure_channel(target, options=OPEN_CHANNEL), timeout_s=10)


def test_streams_that_never_say_hello_make_room_for_newer_ones_and_streams_past_the_total_are_refused(
    serve, devices
) -> None:
    """Attack: open stream after stream without ever sending a hello, each holding a slot and buffers for ten
    seconds, until the gateway has no room (or memory) left for anyone."""
    cloud = serve(max_pending_hellos=2)
    robot = PacedRobot(cloud.target, devices[1]["good-1"])
    waiting = [silent_stream(cloud.target) for _ in range(2)]
    assert wait_until(lambda: cloud.gateway.streams.pending == 2, 5)
    newest = silent_stream(cloud.target)  # the oldest silent one is closed for it: no more than 2 ever wait
    # the two were opened on channels of their own, so either may have reached the gateway first
    assert wait_until(lambda: any(stream.ended.is_set() for stream in waiting), 10)
    closed = [stream for stream in waiting if stream.ended.is_set()]
    assert len(closed) == 1 and closed[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert errors(closed[0])[0].field == "hello" and "max_pending_hellos" in errors(closed[0])[0].message
    assert cloud.gateway.streams.pending == 2 and not newest.ended.is_set()
    robot.stream(0.5)  # the robot admitted before goes on
    assert cloud.stored_next_seq("good-episode") == robot.sent
    for stream in (*waiting, newest):
        stream.cancel()
    robot.close()

    crowded = serve(max_streams=2)
    robot = PacedRobot(crowded.target, devices[1]["good-1"])
    waiting = [silent_stream(crowded.target)]
    time.sleep(0.3)
    refused = silent_stream(crowded.target)
    assert refused.finish(5) and refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert errors(refused)[0].field == "connect" and "max_streams" in errors(refused)[0].message
    waiting[0].cancel()
    robot.close()


def test_an_oversized_first_message_is_refused_by_size_before_it_is_parsed(serve, devices) -> None:
    """Attack: open a stream and send, before any hello was admitted, a 20 MB message (a hello with a 20 MB token)
    and a 40 MB one, which the gateway would otherwise take in and parse for anyone who can reach its port."""
    cloud = serve()
    stream = silent_stream(cloud.target)
    stream.send(hello(BOMB, token="x" * (40 << 20)).SerializeToString())
    assert stream.finish(5) and stream.code == grpc.StatusCode.RESOURCE_EXHAUSTED  # past the transport's limit
    stream = silent_stream(cloud.target)
    stream.send(hello(BOMB, token="x" * (20 << 20)).SerializeToString())
    assert stream.finish(5) and stream.code == grpc.StatusCode.INVALID_ARGUMENT
    (error,) = errors(stream)
    assert error.field == "hello" and "max_hello_bytes" in error.message, error
    admitted = attacker(cloud.target, devices[1]["attacker-1"])
    admitted.send(pb.EdgeMessage(heartbeat=pb.Heartbeat(mono_ns=1)).SerializeToString())
    assert admitted.wait_for(lambda a: any(m.HasField("heartbeat") for m in a), 5)
    admitted.send(bytes(40 << 20))  # after the hello too: no message past a batch's size is taken in
    assert admitted.finish(5) and admitted.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_phone_cannot_open_episodes_without_limit(serve, devices, capsys) -> None:
    """Attack: a paired phone sends `start` for episode after episode and never stops one, so the cloud holds an
    open episode (and its steps) for each in memory until it restarts."""
    import json
    import re

    from websockets.asyncio.client import connect

    from cloud.channels.phone_channel import PhoneChannel, PhoneChannelConfig

    cloud = serve()
    channel = PhoneChannel(PhoneChannelConfig(), cloud.gateway)
    port = cloud.call(channel.start())
    (pairing,) = re.findall(r"phone pairing token: (\S+)", capsys.readouterr().out)

    async def phone() -> list[dict]:
        async with connect(f"ws://127.0.0.1:{port}/phone") as ws:
            capabilities = {"camera": True, "gripper": True}
            await ws.send(
                json.dumps({"type": "hello", "phone_id": "phone-1", "pair": pairing, "capabilities": capabilities})
            )
            assert json.loads(await ws.recv())["type"] == "welcome"
            answers = []
            for i in range(10):
                await ws.send(json.dumps({"type": "start", "episode_id": f"e{i}"}))
                await ws.send(json.dumps({"type": "ping"}))
                while (answer := json.loads(await asyncio.wait_for(ws.recv(), 5)))["type"] != "pong":
                    answers.append(answer)
            return answers

    try:
        answers = asyncio.run(phone())
    finally:
        cloud.call(channel.stop())
    assert [answer["field"] for answer in answers] == ["start.episode_id"] * 2
    assert "max_open_episodes" in answers[0]["message"]
    assert len(channel.phones["phone-1"].episodes) == 8


def test_a_phone_hello_past_its_size_is_refused_unread(serve, capsys) -> None:
    """Attack: without any credential, open the phone channel and send an 8 MB "hello" of JSON, again and again,
    so the cloud parses megabytes of JSON on its event loop for anyone who can reach the port."""
    import json

    import websockets
    from websockets.asyncio.client import connect

    from cloud.channels.phone_channel import PhoneChannel, PhoneChannelConfig

    cloud = serve()
    channel = PhoneChannel(PhoneChannelConfig(), cloud.gateway)
    port = cloud.call(channel.start())
    capsys.readouterr()

    async def phone() -> int | None:
        async with connect(f"ws://127.0.0.1:{port}/phone", max_size=None) as ws:
            await ws.send(json.dumps({"type": "hello", "phone_id": "p" * ((8 << 20) - 1000)}))
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
            return None

    try:
        code = asyncio.run(phone())
    finally:
        cloud.call(channel.stop())
    assert code == 1009  # "message too big": closed before the frame was read, let alone parsed


def test_a_robot_is_welcomed_at_once_while_silent_streams_fill_every_pending_place(serve, devices, caplog) -> None:
    """Attack: hold all 32 places for tunnels that have not said hello yet with streams that never speak, and
    open a new one whenever one ends, so that every robot that connects is refused (or waits out the 30 s hello
    timeout) and the whole fleet is locked out with no credential at all."""
    cloud = serve(hello_timeout_s=30.0)
    limit = cloud.gateway.config.max_pending_hellos
    silent = [silent_stream(cloud.target) for _ in range(limit + 4)]
    assert wait_until(lambda: cloud.gateway.streams.pending == limit, 10)
    stop = threading.Event()

    def reopen() -> None:  # the attacker keeps opening silent streams while the robot connects
        while not stop.wait(0.05):
            silent.append(silent_stream(cloud.target))

    attack = threading.Thread(target=reopen, daemon=True)
    caplog.set_level(logging.WARNING, "fleetloop.gateway")
    attack.start()
    try:
        started = time.monotonic()
        robot = PacedRobot(cloud.target, devices[1]["good-1"])  # it asserts a welcome within 10 s
        welcomed_after = time.monotonic() - started
        robot.stream(1.0)
    finally:
        stop.set()
        attack.join(5)
    print(f"welcomed after {welcomed_after:.3f} s beside {len(silent)} silent streams")
    assert welcomed_after < cloud.gateway.config.hello_timeout_s / 3
    assert not robot.errors and cloud.stored_next_seq("good-episode") == robot.sent
    assert cloud.gateway.streams.pending <= limit
    lines = [r.getMessage() for r in caplog.records if "not introduced themselves" in r.getMessage()]
    assert len(lines) == 1, lines  # said once for all the streams closed, not a line each
    assert not [r for r in caplog.records if "refused a connection" in r.getMessage()]
    robot.close()
    for stream in silent:
        stream.cancel()


class SlowStore(EpisodeStore):
    """A real store on a disk that writes 1 MiB/s: what a busy or networked disk does under a flood."""

    def write(self, batches):
        time.sleep(sum(v.nbytes for rows in batches for v in rows.columns.values()) / (1 << 20))
        return super().write(batches)


def test_a_device_that_floods_steps_past_its_share_waits_alone_and_nothing_is_lost(serve, devices) -> None:
    """Attack: with one robot's credential, send steps far faster than the store writes them (a few MB at once
    on a slow disk), so the gateway's unwritten bytes reach their bound and it stops reading every robot's
    tunnel: their heartbeats go unanswered and their steps wait behind the flood."""
    # each tunnel's share of what is not yet in the store: a quarter of max_uncompacted_bytes, 256 KiB
    cloud = serve(store_type=SlowStore, max_unwritten_bytes=1 << 20, max_uncompacted_bytes=1 << 20, flush_bytes=1 << 18)
    tokens = devices[1]
    robot = PacedRobot(cloud.target, tokens["good-1"], heartbeat_every=1)
    flood = attacker(cloud.target, tokens["attacker-1"], dataclasses.replace(RESOURCE, id="attacker-1"))
    assert flood.wait_for(lambda a: any(m.HasField("welcome") for m in a), 10)
    steps, batches = 3000, 8  # about 400 kB a batch, 3 MB in all: some 3 s of writing
    for i in range(batches):
        flood.send(
            pb.EdgeMessage(
                steps=encode_batch("flood", i * steps, good_columns(steps), batch_id=i + 1)
            ).SerializeToString()
        )
    try:
        robot.stream(3.0)
    finally:
        robot.close()
    print(f"worst heartbeat answer {robot.worst_heartbeat_s():.3f} s")
    assert robot.worst_heartbeat_s() < 0.3, f"a heartbeat of the good robot waited {robot.worst_heartbeat_s():.2f} s"
    assert cloud.gateway.writer.waits_for_share > 0  # the flood was held back, alone
    assert not robot.errors and cloud.stored_next_seq("good-episode") == robot.sent
    acked = lambda answers: len([a for a in answers if a.HasField("ack")]) == batches  # noqa: E731
    assert flood.wait_for(acked, 15) and cloud.stored_next_seq("flood") == batches * steps  # nothing lost
    flood.cancel()
