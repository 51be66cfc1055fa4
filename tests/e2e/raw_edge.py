"""Hand-driven tunnel streams for tests that play a misbehaving edge against a real gateway."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import numpy as np

from hal.resource import ArraySpec, Capabilities, ResourceInfo
from protocol import PROTOCOL_VERSION
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from tests.factories import step_columns

# The same embodiment and schema as the simulated Panda the well-behaved edges run.
RESOURCE = ResourceInfo(
    id="intruder-1",
    kind="robot",
    source="sim",
    capabilities=Capabilities(
        observation=(ArraySpec("state", "float32", (21,)),),
        action=ArraySpec("action", "float32", (4,), (-1, -1, -1, 0), (1, 1, 1, 2)),
        control_hz=10.0,
        embodiment="panda_pick_cube",
    ),
)
CONNECT = "/fleetloop.v1.Tunnel/Connect"


def good_columns(n: int = 5) -> dict[str, np.ndarray]:
    return step_columns(n, state=21, action=4)


def hello(resource: ResourceInfo = RESOURCE, **fields) -> pb.EdgeMessage:
    return pb.EdgeMessage(hello=pb.Hello(resource=resource.to_proto(), protocol_version=PROTOCOL_VERSION, **fields))


class RawEdge:
    """A hand-driven tunnel stream: sends what the test says, collects what the cloud answers."""

    def __init__(self, target: str, resource: ResourceInfo = RESOURCE, **hello_fields) -> None:
        self.outgoing: queue.Queue = queue.Queue()
        self.incoming: queue.Queue = queue.Queue()
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 128 << 20)])
        self.outgoing.put(hello(resource, **hello_fields))
        self.responses = pb_grpc.TunnelStub(self.channel).Connect(iter(self.outgoing.get, None))
        self.status: grpc.RpcError | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.responses:
                self.incoming.put(message)
        except grpc.RpcError as err:
            self.status = err
            self.incoming.put(None)

    def send(self, batch: pb.StepBatch) -> pb.CloudMessage | None:
        self.outgoing.put(pb.EdgeMessage(steps=batch))
        while True:
            message = self.incoming.get(timeout=30)
            if message is None or message.WhichOneof("body") in ("ack", "error"):
                return message

    def received(self, kind: str, timeout_s: float, until=None) -> list[pb.CloudMessage]:
        """Every message of ``kind`` that arrives within ``timeout_s`` (or until ``until(message)`` holds)."""
        got, deadline = [], time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.incoming.get(timeout=left)
            except queue.Empty:
                break
            if message is None:
                break
            if message.WhichOneof("body") == kind:
                got.append(message)
                if until is not None and until(message):
                    break
        return got

    def close(self) -> None:
        self.outgoing.put(None)
        self.channel.close()


def last_policy_chunk(message: pb.CloudMessage) -> bool:
    chunk = message.policy
    return chunk.offset + len(chunk.data) >= chunk.total_bytes


class ByteStream:
    """One tunnel stream at the byte level: whatever bytes the test sends go on the wire as they are.

    Sends through a generic stream-stream call with identity serializers; answers are parsed as
    CloudMessages. ``finish`` half-closes and waits, with a deadline, for the cloud to end the stream.
    """

    def __init__(self, channel: grpc.Channel, timeout_s: float = 30.0) -> None:
        self.outgoing: queue.Queue = queue.Queue()
        self.answers: list[pb.CloudMessage] = []
        self.ended = threading.Event()
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self._lock = threading.Condition()
        call = channel.stream_stream(CONNECT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        self._call = call(iter(self.outgoing.get, None), timeout=timeout_s)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for raw in self._call:
                with self._lock:
                    self.answers.append(pb.CloudMessage.FromString(raw))
                    self._lock.notify_all()
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            self.code, self.details = err.code(), err.details() or ""
        finally:
            with self._lock:
                self.ended.set()
                self._lock.notify_all()

    def send(self, data: bytes) -> None:
        self.outgoing.put(data)

    def wait_for(self, condition, timeout_s: float) -> bool:
        """Waits until ``condition(answers)`` holds or the stream ended; False when neither came in time."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not condition(self.answers) and not self.ended.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def finish(self, timeout_s: float) -> bool:
        """Half-closes; True when the cloud ended the stream within ``timeout_s``."""
        self.outgoing.put(None)
        self.ended.wait(timeout_s)
        return self.ended.is_set()

    def cancel(self) -> None:
        self._call.cancel()
