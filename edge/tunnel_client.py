"""The edge side of the tunnel: one stream the edge opens, kept open and reopened with backoff.

Uploads what the spool holds (a window of batches in flight), drops from the spool what the
cloud acks, and assembles pushed policy versions, checking their digest before loading.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import grpc
from pydantic import Field, model_validator

from edge.backlog import BACKLOG_WARN_S, BacklogWatch
from edge.learner_key import LearnerKey
from edge.spool import Backlog, SpoolStore
from hal.config import CodeConfig, Name, invalid
from hal.resource import ResourceInfo
from policies.signing import StreamCheck, UnsignedVersion
from policies.tensor_view import Buffer, HashedBuffer
from policies.version_digest import digest_matches
from protocol import PROTOCOL_VERSION
from protocol import tunnel_pb2 as pb
from protocol.channel import open_channel
from protocol.limits import POLICY_NAME
from protocol.link_errors import link_failure
from protocol.policy_chunks import PolicyPiece, read_cloud_message
from protocol.sanitize import printable
from protocol.steps import steps_message

log = logging.getLogger("fleetloop.tunnel")

MAX_POLICY_BYTES = 8 << 30

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A ping in flight (e.g. a BDP probe) otherwise waits 60 s for its ack, and keepalive pings wait behind it.
    ("grpc.http2.ping_timeout_ms", 10_000),
]
# No message from the cloud for this long (its heartbeat replies come every heartbeat_s) and the session is
# dropped and reopened: a link that silently stops carrying packets keeps TCP open and gRPC's keepalive
# alone may take a minute to notice.
SILENCE_TIMEOUT_S = 15.0
LINK_DOWN_REMINDER_S = 60.0  # while the link stays down for the same reason, one line a minute
CONNECT = "/fleetloop.v1.Tunnel/Connect"


def _serialize(message: pb.EdgeMessage | bytes) -> bytes:
    """A message's bytes; spooled step batches are queued as the bytes of their EdgeMessage already."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class TunnelConfig(CodeConfig):
    """Where and as whom the edge connects, and how it paces the link."""

    config_name = "tunnel"

    target: Name  # host:port of the cloud gateway
    policy_name: Name  # the policy it asks for until the cloud assigns one
    token: str = Field(default="", repr=False)  # this device's credential
    ca: str | None = None  # the CA that signed the gateway's certificate: TLS; None: plain text (loopback only)
    # The learner's public key (PEM) that signs every version; None: learner.pub beside ``ca``, else the Welcome's.
    learner_key: str | None = None
    remote_inference: bool = False  # the policy runs in the cloud; observations go up, actions come down
    # The reward classifier whose versions it receives beside its policy's, to judge its episodes ("" for none).
    outcome_policy: str = ""
    # How cameras travel up: "auto" (as the store keeps each), "raw", "h264", "av1", "jpeg" (edge/camera_uplink.py).
    uplink_codec: Literal["auto", "raw", "h264", "av1", "jpeg"] = "auto"
    window_batches: Annotated[int, Field(ge=1)] = 32  # spooled batches in flight before waiting for an ack
    heartbeat_s: Annotated[float, Field(gt=0)] = 2.0
    silence_timeout_s: Annotated[float, Field(gt=0)] = SILENCE_TIMEOUT_S
    # The oldest unacked step waited this long: the edge says the link is slower than the robot (edge/backlog.py).
    backlog_warn_s: Annotated[float, Field(gt=0)] = BACKLOG_WARN_S

    @model_validator(mode="after")
    def _outcome_policy_is_another_name(self) -> TunnelConfig:
        if self.outcome_policy and not POLICY_NAME.fullmatch(self.outcome_policy):
            raise invalid(
                "must be 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)", "outcome_policy"
            )
        if self.outcome_policy == self.policy_name:  # the tunnel tells their versions apart by name
            raise invalid(
                f"names the policy it runs ({self.policy_name}); give the reward classifier's", "outcome_policy"
            )
        return self

    # The address and the policy by position too (``TunnelConfig("127.0.0.1:7070", "pick")``).
    def __init__(self, target: str, policy_name: str, **fields: Any) -> None:
        super().__init__(target=target, policy_name=policy_name, **fields)


class TunnelClient:
    """The edge's one stream to the cloud, on its own thread. The callbacks run on that thread: ``on_policy``
    (verified weights of its policy), ``on_outcome`` (those of its outcome classifier), ``on_assignment``,
    ``on_emergency_stop``, ``on_actions`` (remote inference replies) and ``on_person`` (a takeover page's
    ``person`` commands and ``watch`` requests)."""

    def __init__(
        self,
        config: TunnelConfig,
        resource: ResourceInfo,
        spool: SpoolStore,
        on_policy: Callable[[str, int, Buffer], None],
        current_version: Callable[[], int] = lambda: 0,
        on_assignment: Callable[[pb.Assignment], None] | None = None,
        on_emergency_stop: Callable[[pb.EmergencyStop], None] | None = None,
        on_actions: Callable[[pb.InferenceReply], None] | None = None,
        on_person: Callable[[pb.CloudMessage], None] | None = None,
        on_outcome: Callable[[str, int, bytes], None] | None = None,
        outcome_version: Callable[[], int] = lambda: 0,
        on_store_codecs: Callable[[dict[str, str]], None] | None = None,
        on_rollback: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """``on_store_codecs``: told, at each Welcome, how the store keeps each camera column (column -> codec)."""
        self.config = config
        self.target = config.target
        self.resource = resource
        self.spool = spool
        self.policy_name = config.policy_name  # follows the cloud's assignments
        self.on_policy = on_policy
        self.current_version = current_version
        self.on_assignment = on_assignment
        self.on_emergency_stop = on_emergency_stop
        self.on_actions = on_actions
        self.on_person = on_person
        self.on_outcome = on_outcome
        self.outcome_version = outcome_version
        self.on_store_codecs = on_store_codecs
        self.on_rollback = on_rollback  # (name, bad, to): the cloud rolled a version back (``PolicyRollback``)
        self.silence_timeout_s = max(config.silence_timeout_s, 3 * config.heartbeat_s)
        self.connected = threading.Event()
        self.last_heard = 0.0  # monotonic time of the last message from the cloud (heartbeat replies included)
        self.acked_steps = 0
        self.errors: list[pb.Error] = []
        self.refused: pb.Error | None = None  # the cloud refused this edge's credential or hello: no point retrying
        self.waiting_for = ""  # what the robot waits for (protocol.limits.EDGE_STATES), in every heartbeat
        self._stop = threading.Event()
        self._down_since: float | None = None  # when the link went down (None while up, or before the first try)
        self._down_why, self._down_said_at = "", 0.0
        self._wake = threading.Event()
        self._outgoing: queue.Queue[pb.EdgeMessage | bytes | None] | None = None
        self._thread = threading.Thread(target=self._run, name="tunnel", daemon=True)
        self._incoming: _IncomingPolicy | None = None
        # Each version's tensors are hashed here as its pieces arrive, beside the receiving thread (hashlib lets go of
        # the GIL), once: those digests make the version's digest (policies.version_digest) and are checked against
        # the learner's signature when it loads, so neither hashes 200 MB again after its last piece.
        self._tensor_hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-digests")
        self.learner_key = LearnerKey.from_files(config.learner_key, config.ca)
        self.backlog_watch = BacklogWatch(config.backlog_warn_s)
        self.backlog = Backlog(0, 0, 0.0)  # as last counted for a heartbeat

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        outgoing = self._outgoing
        if outgoing is not None:
            outgoing.put(None)
        self._thread.join(timeout=5)
        self._tensor_hasher.shutdown(wait=False, cancel_futures=True)

    def link_up(self, timeout_s: float) -> bool:
        """Connected, and the cloud answered within ``timeout_s`` (a frozen peer keeps TCP open but stays silent)."""
        return self.connected.is_set() and time.monotonic() - self.last_heard < timeout_s

    def wake(self) -> None:
        """New steps were spooled."""
        self._wake.set()

    def report_applied(self, policy_name: str, version: int, received_bytes: int = 0) -> None:
        self.send(
            pb.EdgeMessage(
                applied=pb.PolicyApplied(
                    policy_name=policy_name,
                    version=version,
                    applied_mono_ns=time.monotonic_ns(),
                    received_bytes=received_bytes,
                )
            )
        )

    def report_waiting(self, waiting_for: str) -> None:
        """What the robot waits for now ("" once it works again): said at once, and again in every heartbeat (so a
        cloud that missed it, or a new session, hears it too)."""
        self.waiting_for = waiting_for
        # The backlog as last counted: the control thread calls this, and counting reads the spool's database.
        self.send(pb.EdgeMessage(heartbeat=self._heartbeat(self.backlog)))

    def _heartbeat(self, backlog: Backlog | None = None) -> pb.Heartbeat:
        """``backlog``: None counts it afresh (the upload thread, every ``heartbeat_s``) and logs a change worth it."""
        if backlog is None:
            backlog = self.backlog = self.spool.backlog()
            self.backlog_watch.update(backlog)
        return pb.Heartbeat(
            mono_ns=time.monotonic_ns(),
            state=self.waiting_for,
            backlog_steps=backlog.steps,
            backlog_bytes=backlog.bytes,
            backlog_oldest_s=backlog.oldest_s,
        )

    def send_infer(self, request: pb.InferenceRequest) -> bool:
        """Queues an observation for remote inference; False when the link is down."""
        return self.send(pb.EdgeMessage(infer=request))

    def report_rejected(self, policy_name: str, version: int, reason: str, bad: bool = False) -> None:
        rejected = pb.PolicyRejected(policy_name=policy_name, version=version, reason=reason[:1000], bad=bad)
        self.send(pb.EdgeMessage(rejected=rejected))

    def send(self, message: pb.EdgeMessage) -> bool:
        """Queues a message on the open session; False when there is none (the link is down)."""
        outgoing = self._outgoing  # set once the cloud's welcome arrived, cleared when the session ends
        if outgoing is None:
            return False
        outgoing.put(message)
        return True

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._session()
            except grpc.RpcError as err:
                if not self._stop.is_set():
                    self._link_down(link_failure(self.target, err))  # which of UNAVAILABLE's causes
            except Exception:
                log.exception("tunnel session failed")
            if time.monotonic() - started > 10:
                backoff = 0.2
            delay = backoff * (0.5 + random.random())  # jitter, so a fleet does not reconnect in lockstep
            backoff = min(backoff * 2, 5.0)
            self._stop.wait(delay)

    def _link_down(self, why: str) -> None:
        """Says the link is down once, again when the reason changes, and then once a minute while it stays down
        (retries come every few seconds: one line each would bury everything else in the log)."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        elif why == self._down_why and now - self._down_said_at < LINK_DOWN_REMINDER_S:
            return
        if why == self._down_why:
            down_s = now - self._down_since
            log.warning("still no link to the cloud at %s after %.0f s (%s); retrying", self.target, down_s, why)
        else:
            log.warning("link to the cloud at %s lost (%s); steps stay in the spool", self.target, why)
        self._down_why, self._down_said_at = why, now

    def _link_up(self) -> None:
        after = "" if self._down_since is None else f" after {time.monotonic() - self._down_since:.0f} s without one"
        self._down_since, self._down_why = None, ""
        log.info(
            "connected to the cloud at %s%s; %d spooled steps to upload", self.target, after, self.spool.counts()[1]
        )

    def _session(self) -> None:
        outgoing: queue.Queue[pb.EdgeMessage | bytes | None] = queue.Queue()
        outgoing.put(self._hello())

        def requests() -> Iterator[pb.EdgeMessage | bytes]:
            while (message := outgoing.get()) is not None:
                yield message

        with open_channel(self.target, self.config.ca, options=CHANNEL_OPTIONS) as channel:
            connect = channel.stream_stream(
                CONNECT, request_serializer=_serialize, response_deserializer=read_cloud_message
            )
            responses = connect(requests())
            in_flight: dict[int, int] = {}
            refused: set[int] = set()  # batches the cloud refused: not sent again in this session
            sender: threading.Thread | None = None
            ended = threading.Event()
            threading.Thread(
                target=self._watch_silence, args=(responses, ended), name="tunnel-silence", daemon=True
            ).start()
            try:
                for message in responses:
                    self.last_heard = time.monotonic()
                    if isinstance(message, PolicyPiece):  # a pushed version's piece, its data not copied
                        self._receive_policy_chunk(message.chunk, message.data)
                        continue
                    kind = message.WhichOneof("body")
                    if kind == "welcome":
                        self.learner_key.welcomed(message.welcome.learner_key)
                        if self.on_store_codecs is not None:
                            self.on_store_codecs(dict(message.welcome.store_codecs))
                        for progress in message.welcome.stored:
                            self.spool.ack(progress.episode_id, progress.next_seq)
                        self._outgoing = outgoing
                        self.connected.set()
                        self._link_up()
                        sender = threading.Thread(target=self._upload, args=(outgoing, in_flight, refused), daemon=True)
                        sender.start()
                    elif kind == "ack":
                        ack = message.ack
                        # Marked before the pop below, so the uploader never sees a batch neither in flight nor acked
                        # (it would send it again); the spool's trimmer deletes it off this thread.
                        self.spool.ack_later(ack.episode_id, ack.next_seq)
                        steps = in_flight.pop(ack.batch_id, 0)
                        self.acked_steps += steps
                        if self.config.window_batches - len(in_flight) >= self._refill:
                            self._wake.set()  # not per ack: the uploader refills a quarter of the window at a time
                    elif kind == "policy":
                        self._receive_policy_chunk(message.policy)
                    elif kind == "rollback":
                        self._rolled_back(message.rollback)
                    elif kind == "actions":
                        if self.on_actions:
                            self.on_actions(message.actions)
                    elif kind == "assignment":
                        self.policy_name = message.assignment.policy_name or self.policy_name
                        if self.on_assignment:
                            self.on_assignment(message.assignment)
                    elif kind in ("person", "watch"):
                        if self.on_person:
                            self.on_person(message)
                    elif kind == "emergency_stop":
                        if self.on_emergency_stop:
                            self.on_emergency_stop(message.emergency_stop)
                    elif kind == "error":
                        if in_flight.pop(message.error.batch_id, None) is not None:
                            refused.add(message.error.batch_id)
                        self._on_error(message.error)
            finally:
                ended.set()
                self.connected.clear()
                self._outgoing = None
                outgoing.put(None)
                self._wake.set()
                if sender is not None:
                    sender.join(timeout=2)

    def _hello(self) -> pb.EdgeMessage:
        """The first message of a session: who this edge is, what it runs, and how far each held episode got."""
        held = [pb.EpisodeProgress(episode_id=e, next_seq=s) for e, s in self.spool.held().items()]
        hello = pb.Hello(
            resource=self.resource.to_proto(),
            token=self.config.token,
            policy_name=self.policy_name,
            policy_version=self.current_version(),
            held=held,
            protocol_version=PROTOCOL_VERSION,
            remote_inference=self.config.remote_inference,
            outcome_policy=self.config.outcome_policy,
            outcome_version=self.outcome_version() if self.config.outcome_policy else 0,
            uplink_codec=self.config.uplink_codec,
        )
        return pb.EdgeMessage(hello=hello)

    def _on_error(self, error: pb.Error) -> None:
        self.errors.append(error)
        log.error("the cloud refused %s: %s", printable(error.field), printable(error.message, 500))
        # Refused before the welcome (the hello: a capability clash, a protocol version) or a credential refused
        # at any time: the same hello would be refused again, so stop. A bound the cloud reached (too many tunnels
        # open: "resource_exhausted") passes: the edge reconnects after its backoff.
        if error.code == "unauthenticated" or (not self.connected.is_set() and error.code != "resource_exhausted"):
            self.refused = error
            self._stop.set()

    def _watch_silence(self, call: grpc.Future, ended: threading.Event) -> None:
        """Dead-peer detection: cancels the call once the cloud has said nothing for ``silence_timeout_s``."""
        opened = time.monotonic()
        while not ended.wait(0.5):
            silent = time.monotonic() - max(opened, self.last_heard)
            if silent > self.silence_timeout_s:
                log.warning(
                    "the cloud at %s has said nothing for %.0f s; dropping the link and reconnecting",
                    self.target,
                    silent,
                )
                call.cancel()
                return

    @property
    def _refill(self) -> int:
        """How many window slots free up before the uploader asks the spool for more."""
        return max(1, self.config.window_batches // 4)

    def _upload(self, outgoing: queue.Queue, in_flight: dict[int, int], refused: set[int]) -> None:
        """Sends spooled batches in the spool's upload order (urgent episodes first, each episode in seq order),
        keeping at most ``window_batches`` unacked. The order is chosen as the window frees, so an intervention
        spooled behind a long backlog waits for at most one window, not for the backlog. The window is refilled a
        quarter at a time, not per ack: each refill asks the spool for the upload order, and asking per ack cost as
        much CPU as reading the batches themselves."""
        sent = 0
        last_heartbeat = 0.0 if self.waiting_for else time.monotonic()  # a new session hears at once what it waits for
        while self.connected.is_set() and not self._stop.is_set():
            room = self.config.window_batches - len(in_flight)
            batches = []
            if room >= self._refill:
                skip = set(in_flight.copy()) | refused  # copy: the reader thread pops acks meanwhile
                batches = self.spool.next_to_send(skip, room, turn=sent)
            for spooled in batches:
                in_flight[spooled.row_id] = spooled.num_steps
                # as spooled: no parse, no re-serialize (a segment spool keeps the message itself)
                outgoing.put(spooled.message or steps_message(spooled.payload, spooled.row_id))
                sent += 1
            if time.monotonic() - last_heartbeat > self.config.heartbeat_s:
                outgoing.put(pb.EdgeMessage(heartbeat=self._heartbeat()))
                last_heartbeat = time.monotonic()
            if not batches:
                self._wake.wait(0.5)
                self._wake.clear()

    def _rolled_back(self, rollback: pb.PolicyRollback) -> None:
        """The cloud rolled back a version of this edge's policy: its runtime may take the older one next."""
        name, bad, to = rollback.policy_name, rollback.version, rollback.to_version
        if name != self.policy_name or not 0 < to < bad or self.on_rollback is None:
            log.error("ignoring a rollback of %s v%d to v%d: not this edge's policy, or not to an older version",
                      printable(name), bad, to)  # fmt: skip
            return
        log.warning("the cloud rolled back %s v%d (%s)", name, bad, printable(rollback.reason))
        self.on_rollback(name, bad, to)

    def _receive_policy_chunk(self, chunk: pb.PolicyChunk, data: Buffer | None = None) -> None:
        """The next piece of a pushed version (``data``: its bytes when read apart from ``chunk``). Hashed and
        buffered as pieces arrive, so a large version is ready as soon as its last piece is in."""
        if chunk.offset == 0:
            if not 0 < chunk.total_bytes <= MAX_POLICY_BYTES:
                log.error(
                    "policy %s v%d announces %d bytes; refusing it", chunk.policy_name, chunk.version, chunk.total_bytes
                )
                self._incoming = None
                return
            self._incoming = _IncomingPolicy(
                chunk.policy_name,
                chunk.version,
                chunk.sha256,
                HashedBuffer(chunk.total_bytes),
                StreamCheck(None, chunk.policy_name, chunk.version, chunk.total_bytes),
            )
        incoming = self._incoming
        if incoming is None or (incoming.name, incoming.version, incoming.received) != (
            chunk.policy_name,
            chunk.version,
            chunk.offset,
        ):
            log.error("policy %s v%d arrived out of order; waiting for a fresh push", chunk.policy_name, chunk.version)
            self._incoming = None
            return
        if data is None:
            data = chunk.data  # read once: each read of a protobuf bytes field is a fresh copy of the piece
        end = chunk.offset + len(data)
        if end > len(incoming.buffer):
            log.error("policy %s v%d is longer than announced; dropping it", chunk.policy_name, chunk.version)
            self._incoming = None
            return
        incoming.buffer[chunk.offset : end] = data
        incoming.received = end
        view = memoryview(incoming.buffer)[chunk.offset : end]  # never written again: the hashers read it
        incoming.hashed.append(self._tensor_hasher.submit(incoming.tensors.update, view))
        if end < len(incoming.buffer):
            return
        self._incoming = None
        if not incoming.take_digests():  # the tunnel is stopping
            return
        # A version sent while it was still being published carries its digest on its last piece only (sent once
        # the registry holds it durably); no version completes without one.
        if not digest_matches(incoming.buffer, chunk.sha256 or incoming.sha256, incoming.buffer.digests):
            log.error("policy %s v%d failed its checksum; keeping the current policy", incoming.name, incoming.version)
            return
        what = "reward classifier" if incoming.name == self.config.outcome_policy else "policy"
        try:  # before anything past the header is parsed: a version the learner did not sign goes no further
            self.learner_key.check(incoming.buffer, incoming.name, incoming.version)
        except UnsignedVersion as err:
            log.error("refusing %s %s v%d: %s; keeping the current one", what, incoming.name, incoming.version, err)
            self.report_rejected(incoming.name, incoming.version, str(err), bad=True)
            return
        log.info("received %s %s v%d (%.1f MB)", what, incoming.name, incoming.version, len(incoming.buffer) / 1e6)
        self._route(incoming.name, incoming.version, incoming.buffer)

    def _route(self, name: str, version: int, weights: bytearray) -> None:
        """By the version's name: the outcome classifier's never reach the policy runtime, nor the other way round.
        The policy's buffer is handed on as it is (no copy of a large model); nothing here writes to it again."""
        if not self.config.outcome_policy or name != self.config.outcome_policy:
            self.on_policy(name, version, weights)
        elif self.on_outcome is not None:
            self.on_outcome(name, version, bytes(weights))
        else:
            log.error("%s v%d came as this edge's outcome classifier, but nothing here judges outcomes", name, version)


@dataclass
class _IncomingPolicy:
    name: str
    version: int
    sha256: str  # the version's digest (policies.version_digest), when its first piece carried it
    buffer: HashedBuffer
    tensors: StreamCheck  # each tensor's digest, taken on the hashing thread as pieces arrive
    hashed: list[Future] = field(default_factory=list)
    received: int = 0

    def take_digests(self) -> bool:
        """Once every piece is in: the tensors' digests onto the buffer (left off when the bytes are no safetensors
        file: its digest does not match, or loading it says so). False when the tunnel stopped meanwhile."""
        try:
            for done in self.hashed:
                done.result()
            self.tensors.finish()
        except CancelledError:
            return False
        except UnsignedVersion:
            return True
        self.buffer.digests = dict(self.tensors.digests)
        return True
