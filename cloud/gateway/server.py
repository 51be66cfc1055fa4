"""The cloud gateway: serves every edge's tunnel, stores their steps, pushes policy versions.

grpc.aio serves any number of long-lived streams (a thread-pool server serves only as many
as it has threads). Each stream gets a Session: a reader task that validates what the edge
sends, an outgoing queue, and a policy sender that always pushes the newest version.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
from cloud.data.version_registry import PolicyRegistry, PolicyVersion
from cloud.gateway.fleet import FleetScheduler, Requirements, Task
from cloud.security.devices import AuthError, Device, DeviceRegistry
from cloud.serving.inference import InferenceJob, InferenceServer
from hal.resource import RESOURCE_KINDS, SOURCES, ResourceInfo
from policies.updates import WireState, build_update, delta_names
from policies.weights import read_metadata, sha256_hex
from protocol import PROTOCOL_VERSION
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from protocol.arrays import CodecError, encode_array
from protocol.limits import check_applied, check_capabilities, check_heartbeat, check_hello, check_rejected
from protocol.steps import MAX_BATCH_BYTES, Schema, check_id, decode_batch, decode_observation, quoted, schema_for

log = logging.getLogger("fleetloop.gateway")

GRPC_MESSAGE_LIMIT = 64 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
    ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # gRPC's default waits 60 s for a ping's ack: a dead edge's stream would linger that long.
    ("grpc.http2.ping_timeout_ms", 10_000),
]


MAX_UNREAD_MESSAGES = 4096  # answers waiting for one edge to read them (acks, heartbeats, policy pieces)


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 7070
    # Device credentials; None (or no devices file) accepts any device, which the CLI allows on loopback only.
    devices: DeviceRegistry | None = field(default=None, compare=False)
    tls_cert: bytes | None = None  # PEM server certificate and key: serve TLS instead of plain text
    tls_key: bytes | None = field(default=None, repr=False)
    max_batch_bytes: int = MAX_BATCH_BYTES
    wire_dtype: str = "float32"  # "bfloat16" halves the bytes of float weights on the wire
    max_delta_versions: int = 10  # an edge further behind gets a full snapshot
    max_delta_fraction: float = 0.5  # a delta bigger than this share of the model goes as a full snapshot
    flush_rows: int = 1024  # write to the store once this many rows wait...
    flush_bytes: int = 16 << 20  # ...or this many bytes (a few image chunks per column)...
    # Steps received but not yet in the store, over all edges: past this, the gateway stops reading the tunnels
    # (HTTP/2 flow control then slows the edges, whose spools absorb it on disk) instead of growing memory.
    max_unwritten_bytes: int = 256 << 20
    flush_delay_s: float = 0.1  # ...or the oldest has waited this long
    policy_chunk_bytes: int = 1 << 20
    registry_poll_s: float = 0.05  # reads one small JSON file per policy
    hello_timeout_s: float = 10.0
    lost_after_s: float = 5.0  # a resource silent this long is lost and its task goes to another
    tasks: tuple[Task, ...] = ()  # none: every resource runs the policy it asks for (one task per policy)


@dataclass
class Session:
    resource: ResourceInfo
    policy_name: str
    schema: Schema
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    bulk_credits: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(8))
    device: Device | None = None  # its credential, when the cloud checks credentials
    needs_full: bool = False  # it could not apply a delta: its next update is a full snapshot
    remote: bool = False  # its policy runs in the cloud (remote inference): it gets action chunks, not weights
    bad_versions: set[int] = field(default_factory=set)  # versions it rolled back from
    offer: PolicyVersion | None = None
    offered: asyncio.Event = field(default_factory=asyncio.Event)
    sent_version: int = 0
    applied_version: int = 0
    steps_stored: int = 0
    batches_refused: int = 0
    closed: bool = False

    def send(self, message: pb.CloudMessage) -> None:
        if self.closed:
            return
        if self.out.qsize() >= MAX_UNREAD_MESSAGES:  # it sends but never reads: end it rather than grow memory
            log.warning(
                "%s does not read its tunnel (%d answers waiting); closing it", self.resource.id, MAX_UNREAD_MESSAGES
            )
            self.send_end()
            return
        self.out.put_nowait(message)

    def send_end(self) -> None:
        """Ends the stream after what is queued."""
        if not self.closed:
            self.out.put_nowait(None)
            self.closed = True

    def may_run(self, policy_name: str) -> bool:
        return self.device is None or not self.device.policies or policy_name in self.device.policies

    def offer_version(self, version: PolicyVersion) -> None:
        if self.remote or not self.may_run(version.policy_name):  # weights only for edges that run them
            return
        if version.version in self.bad_versions:
            return
        if version.version > max(self.sent_version, self.offer.version if self.offer else 0):
            self.offer = version
            self.offered.set()


@dataclass
class _Pending:
    rows: StepRows
    batch_id: int
    session: Session
    nbytes: int = 0


class StoreWriter:
    """Group commit: gathers batches from all edges and writes them to the store together."""

    def __init__(
        self,
        store: EpisodeStore,
        flush_rows: int,
        flush_delay_s: float,
        flush_bytes: int = 16 << 20,
        max_unwritten_bytes: int = 256 << 20,
    ) -> None:
        self.store = store
        self.flush_rows = flush_rows
        self.flush_bytes = flush_bytes
        self._bytes = 0
        self.flush_delay_s = flush_delay_s
        self._pending: list[_Pending] = []
        self._rows = 0
        self._oldest = 0.0
        self._wake = asyncio.Event()
        self.max_unwritten_bytes = max_unwritten_bytes
        self._unwritten = 0  # submitted and not yet written (pending or being written)
        self._room = asyncio.Event()
        self._room.set()
        self.waits_for_room = 0  # how often a reader had to wait: the store is the bottleneck

    def submit(self, item: _Pending) -> None:
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append(item)
        self._rows += len(item.rows.columns["action"])
        item.nbytes = sum(values.nbytes for values in item.rows.columns.values())
        self._bytes += item.nbytes
        self._unwritten += item.nbytes
        if self._unwritten >= self.max_unwritten_bytes:
            self._room.clear()
        self._wake.set()

    async def room(self) -> None:
        """Returns once the store has caught up enough to take more (backpressure for the readers)."""
        if not self._room.is_set():
            self.waits_for_room += 1
            await self._room.wait()

    def _written(self, items: list[_Pending]) -> None:
        self._unwritten -= sum(item.nbytes for item in items)
        if self._unwritten < self.max_unwritten_bytes:
            self._room.set()

    def _is_full(self) -> bool:
        # Bigger group commits spread the store's fixed cost per write (partial chunks, fsyncs).
        return self._rows >= self.flush_rows or self._bytes >= self.flush_bytes

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            wait = self._oldest + self.flush_delay_s - time.monotonic()
            if not self._is_full() and wait > 0:
                try:
                    await asyncio.wait_for(self._full(), timeout=wait)
                except TimeoutError:
                    pass
            await self.flush()

    async def _full(self) -> None:
        while not self._is_full():
            self._wake.clear()
            await self._wake.wait()

    async def flush(self) -> None:
        items, self._pending, self._rows, self._bytes = self._pending, [], 0, 0
        if not items:
            return
        try:
            await self._flush(items)
        finally:
            self._written(items)

    async def _flush(self, items: list[_Pending]) -> None:
        accepted: list[_Pending] = []
        expected: dict[str, int] = {}
        owners: dict[str, str] = {}
        for item in items:
            episode = item.rows.episode_id
            stored = self.store.episode(episode)
            owner = owners.get(episode, stored.resource_id if stored else item.rows.resource_id)
            if owner != item.rows.resource_id:
                self._refuse(item, "step_batch.episode_id", f"episode {episode} belongs to another resource")
                continue
            next_seq = expected.get(episode, self.store.next_seq(episode))
            if item.rows.first_seq > next_seq:
                self._refuse(
                    item,
                    "step_batch.first_seq",
                    f"episode {episode} continues at seq {next_seq}, got {item.rows.first_seq}",
                )
                continue
            owners[episode] = owner
            expected[episode] = max(next_seq, item.rows.first_seq + len(item.rows.columns["action"]))
            accepted.append(item)
        if not accepted:
            return
        try:
            ack_points = await asyncio.to_thread(self.store.write, [item.rows for item in accepted])
        except ValueError:
            # The store refused the group (it writes all or nothing): write one by one to find the culprit.
            for item in accepted:
                try:
                    ack_points = await asyncio.to_thread(self.store.write, [item.rows])
                except ValueError as err:
                    field, _, message = str(err).partition(": ")
                    self._refuse(item, f"step_batch.{field}", message or str(err))
                else:
                    self._ack(item, ack_points)
            return
        except Exception:  # the store failed: nothing is acked, the edges keep their spools and resend
            log.exception("writing %d batches to the episode store failed; edges will resend them", len(accepted))
            return
        for item in accepted:
            self._ack(item, ack_points)

    @staticmethod
    def _ack(item: _Pending, ack_points: dict[str, int]) -> None:
        item.session.steps_stored += len(item.rows.columns["action"])
        item.session.send(
            pb.CloudMessage(
                ack=pb.Ack(
                    batch_id=item.batch_id, episode_id=item.rows.episode_id, next_seq=ack_points[item.rows.episode_id]
                )
            )
        )

    @staticmethod
    def _refuse(item: _Pending, field: str, message: str) -> None:
        item.session.batches_refused += 1
        log.warning("refused a batch from %s: %s: %s", item.rows.resource_id, field, message)
        item.session.send(
            pb.CloudMessage(
                error=pb.Error(code="invalid_argument", field=field, batch_id=item.batch_id, message=message)
            )
        )


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("gateway task %s failed", task.get_name(), exc_info=task.exception())


def check_resource(resource: pb.Resource) -> ResourceInfo:
    """A hello's resource, within protocol/limits.py's bounds; errors name the field."""
    check_id(resource.id, "hello.resource.id")
    if resource.kind not in RESOURCE_KINDS:
        raise CodecError("hello.resource.kind", f"must be one of {RESOURCE_KINDS}, got {quoted(resource.kind)}")
    if resource.source not in SOURCES:
        raise CodecError("hello.resource.source", f"must be one of {SOURCES}, got {quoted(resource.source)}")
    check_capabilities(resource.capabilities, "hello.resource.capabilities")
    return ResourceInfo.from_proto(resource)


class Gateway(pb_grpc.TunnelServicer):
    def __init__(self, config: GatewayConfig, store: EpisodeStore, registry: PolicyRegistry) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.sessions: dict[str, Session] = {}
        self.fleet = FleetScheduler(lost_after_s=config.lost_after_s, on_assign=self._on_assign)
        for task in config.tasks:
            self.fleet.add_task(task)
        self.inference = InferenceServer(registry)
        self.writer = StoreWriter(
            store, config.flush_rows, config.flush_delay_s, config.flush_bytes, config.max_unwritten_bytes
        )
        self._weights: tuple[tuple[str, int], bytes] | None = None  # the last version read, shared by all edges
        self._wire_states: dict[tuple[str, int], WireState] = {}
        self._updates: dict[tuple[str, int, int], tuple[bytes, str, str, int]] = {}  # shared by edges on one base
        self.on_applied: list[Callable[[str, pb.PolicyApplied], None]] = []
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task] = []
        self.port = config.port

    async def start(self) -> int:
        self._server = grpc.aio.server(options=GRPC_OPTIONS)
        pb_grpc.add_TunnelServicer_to_server(self, self._server)
        pb_grpc.add_FleetControlServicer_to_server(FleetControl(self), self._server)
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert and self.config.tls_key:
            credentials = grpc.ssl_server_credentials([(self.config.tls_key, self.config.tls_cert)])
            self.port = self._server.add_secure_port(address, credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.host}:{self.config.port}")
        await self._server.start()
        self._tasks = [
            asyncio.create_task(coro) for coro in (self.writer.run(), self._watch_registry(), self._watch_fleet())
        ]
        log.info(
            "gateway listening on %s:%d (%s, %s)",
            self.config.host,
            self.port,
            "TLS" if self.config.tls_cert else "plain text",
            "device credentials required" if self._checks_credentials() else "no credentials checked",
        )
        return self.port

    async def stop(self, grace_s: float = 1.0) -> None:
        for task in self._tasks:
            task.cancel()
        await self.inference.close()
        stats = self.inference.stats
        if stats.forward_passes:
            log.info(
                "remote inference: %d forward passes answered %d requests (passes by batch size: %s)",
                stats.forward_passes,
                stats.requests,
                ", ".join(f"{size}: {count}" for size, count in sorted(stats.batch_sizes.items())),
            )
        await self.writer.flush()
        if self._server is not None:
            await self._server.stop(grace_s)

    async def Connect(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.EdgeMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CloudMessage]:
        requests = request_iterator.__aiter__()
        try:
            first = await asyncio.wait_for(requests.__anext__(), timeout=self.config.hello_timeout_s)
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "hello: the first message must be a hello")
        except Exception as err:  # bytes that are no EdgeMessage: only this stream ends
            log.warning("refused a connection: its first message is not an EdgeMessage (%s)", type(err).__name__)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello: the first message is not an EdgeMessage")
        try:
            session = self._open_session(first)
        except (CodecError, AuthError) as err:
            code = "unauthenticated" if isinstance(err, AuthError) else "invalid_argument"
            log.warning("refused a connection: %s", err)
            yield pb.CloudMessage(error=pb.Error(code=code, field=err.field, message=err.message))
            status = grpc.StatusCode.UNAUTHENTICATED if code == "unauthenticated" else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(status, str(err))
            return
        tasks = [asyncio.create_task(self._read(session, requests)), asyncio.create_task(self._send_policies(session))]
        for task in tasks:
            task.add_done_callback(_log_failure)
        try:
            while True:
                message = await session.out.get()
                if message is None:
                    break
                yield message
                if message.HasField("policy"):
                    session.bulk_credits.release()
        finally:
            session.closed = True
            for task in tasks:
                task.cancel()
            if self.sessions.get(session.resource.id) is session:
                del self.sessions[session.resource.id]
                self.fleet.disconnected(session.resource.id)
            log.info("%s disconnected (%d steps stored this session)", session.resource.id, session.steps_stored)

    def _open_session(self, first: pb.EdgeMessage) -> Session:
        if not first.HasField("hello"):
            raise CodecError("hello", "the first message must be a hello")
        hello = first.hello
        check_hello(hello)  # size and count limits (protocol/limits.py) before anything acts on it
        if hello.protocol_version != PROTOCOL_VERSION:
            raise CodecError(
                "hello.protocol_version", f"this gateway speaks {PROTOCOL_VERSION}, got {hello.protocol_version}"
            )
        resource = check_resource(hello.resource)
        device = self._authenticate(resource, hello.token)
        policy_name = hello.policy_name or resource.capabilities.embodiment
        if device is not None and device.policies and policy_name not in device.policies:
            raise AuthError("hello.policy_name", f"{resource.id!r} may run only {', '.join(device.policies)}")
        caps = resource.capabilities
        schema = schema_for(
            [(s.name, s.dtype, s.shape) for s in caps.observation], (caps.action.dtype, caps.action.shape)
        )
        try:
            self.store.ensure_dataset(
                caps.embodiment, {k: ColumnSpec(dtype, shape) for k, (dtype, shape) in schema.items()}
            )
        except ValueError as err:  # another robot of this embodiment stored steps of another shape
            raise CodecError(
                "hello.resource.capabilities", f"do not match the stored dataset {caps.embodiment}: {err}"
            ) from err
        previous = self.sessions.get(resource.id)
        if previous is not None:  # a reconnect supersedes the old stream
            previous.closed = True
            previous.out.put_nowait(None)
        session = Session(
            resource=resource,
            remote=hello.remote_inference,
            device=device,
            policy_name=policy_name,
            schema=schema,
            sent_version=hello.policy_version,
            applied_version=hello.policy_version,
        )
        self.sessions[resource.id] = session
        stored = [
            pb.EpisodeProgress(episode_id=p.episode_id, next_seq=self.store.next_seq(p.episode_id)) for p in hello.held
        ]
        session.send(
            pb.CloudMessage(
                welcome=pb.Welcome(
                    session_id=session.session_id,
                    stored=stored,
                    max_batch_bytes=self.config.max_batch_bytes,
                )
            )
        )
        if not self.config.tasks and policy_name not in self.fleet.tasks:
            self.fleet.add_task(
                Task(policy_name, policy_name, requires=Requirements(embodiment=caps.embodiment), count=0)
            )
        self.fleet.register(resource)  # assigns a task if one fits: see _on_assign
        if self.fleet.task_of(resource.id) is None:
            log.info("%s has no task that fits it; it holds still", resource.id)
            session.policy_name = ""  # it receives a policy only with a task
            session.send(pb.CloudMessage(assignment=pb.Assignment(task="")))
        log.info(
            "%s connected (%s %s, %.0f Hz, policy %s v%d); it holds %d unacked episodes",
            resource.id,
            resource.source,
            caps.embodiment,
            caps.control_hz,
            policy_name,
            hello.policy_version,
            len(hello.held),
        )
        return session

    def _checks_credentials(self) -> bool:
        return self.config.devices is not None and self.config.devices.enabled

    def _authenticate(self, resource: ResourceInfo, token: str) -> Device | None:
        if not self._checks_credentials():
            return None
        device = self.config.devices.authenticate(resource.id, token)
        if device.kind != resource.kind:
            raise AuthError("hello.resource.kind", f"{resource.id!r} is registered as a {device.kind}")
        return device

    def _drop_revoked(self) -> None:
        """Closes the streams of devices whose credential was revoked or removed since they connected."""
        devices = self.config.devices
        if devices is None or not devices.reload():
            return
        for session in list(self.sessions.values()):
            if session.device is None:
                continue
            current = devices.get(session.device.id)
            if current is not None and not current.revoked and current.token_sha256 == session.device.token_sha256:
                continue
            log.warning("%s: its credential was revoked; closing its tunnel", session.resource.id)
            session.send(
                pb.CloudMessage(
                    error=pb.Error(
                        code="unauthenticated",
                        field="hello.token",
                        message=f"the credential of {session.resource.id!r} was revoked",
                    )
                )
            )
            session.send_end()

    async def _read(self, session: Session, requests: AsyncIterator[pb.EdgeMessage]) -> None:
        try:
            async for message in requests:
                kind = message.WhichOneof("body")
                try:
                    if kind == "steps":
                        self._receive_batch(session, message.steps)
                        await self.writer.room()  # a slow store slows the uploads, not memory
                    elif kind == "applied":
                        check_applied(message.applied)
                        session.applied_version = message.applied.version
                        self.fleet.seen(session.resource.id, policy_version=message.applied.version)
                        log.info(
                            "%s now runs %s v%d (its update was %d bytes)",
                            session.resource.id,
                            message.applied.policy_name,
                            message.applied.version,
                            message.applied.received_bytes,
                        )
                        for callback in self.on_applied:
                            callback(session.resource.id, message.applied)
                    elif kind == "infer":
                        self._infer(session, message.infer)
                    elif kind == "rejected":
                        check_rejected(message.rejected)
                        self._on_rejected(session, message.rejected)
                    elif kind == "heartbeat":
                        check_heartbeat(message.heartbeat)
                        self.fleet.seen(session.resource.id)
                        session.send(pb.CloudMessage(heartbeat=pb.Heartbeat(mono_ns=time.monotonic_ns())))
                    elif kind == "hello":
                        raise CodecError("hello", "this stream already said hello; open a new stream to start over")
                    else:
                        raise CodecError("body", "the message is empty (an unknown or missing body)")
                except CodecError as err:
                    log.warning("refused a %s message from %s: %s", kind or "empty", session.resource.id, err)
                    session.send(
                        pb.CloudMessage(error=pb.Error(code="invalid_argument", field=err.field, message=err.message))
                    )
        except DecodeError as err:  # bytes that are no EdgeMessage at all: say so, and end this stream only
            log.warning("%s sent bytes that are not an EdgeMessage: %s", session.resource.id, err)
            session.send(
                pb.CloudMessage(
                    error=pb.Error(code="invalid_argument", field="edge_message", message=f"not an EdgeMessage: {err}")
                )
            )
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            session.out.put_nowait(None)

    def _infer(self, session: Session, request: pb.InferenceRequest) -> None:
        """Remote inference: queued for the next batched forward pass; the reply goes down this tunnel."""
        if not session.remote:
            raise CodecError("infer", "this edge runs its policy itself (say remote_inference in the hello)")
        if not session.policy_name:
            session.send(
                pb.CloudMessage(actions=pb.InferenceReply(request_id=request.request_id, error="no task: hold still"))
            )
            return
        observation = decode_observation(request, session.schema, self.config.max_batch_bytes)

        def reply(actions, version: int, error: str, batch_size: int) -> None:
            answer = pb.InferenceReply(
                request_id=request.request_id, policy_version=version, error=error, batch_size=batch_size
            )
            if actions is not None:
                answer.actions.CopyFrom(encode_array(actions))
            session.send(pb.CloudMessage(actions=answer))

        self.inference.submit(session.policy_name, InferenceJob(observation, reply))

    def _receive_batch(self, session: Session, batch: pb.StepBatch) -> None:
        try:
            columns = decode_batch(batch, session.schema, self.config.max_batch_bytes)
        except CodecError as err:
            session.batches_refused += 1
            log.warning("refused a batch from %s: %s", session.resource.id, err)
            session.send(
                pb.CloudMessage(
                    error=pb.Error(
                        code="invalid_argument", field=err.field, message=err.message, batch_id=batch.batch_id
                    )
                )
            )
            return
        rows = StepRows(
            dataset=session.resource.capabilities.embodiment,
            episode_id=batch.episode_id,
            resource_id=session.resource.id,
            source=session.resource.source,
            task=batch.task,
            first_seq=batch.first_seq,
            columns=columns,
        )
        self.writer.submit(_Pending(rows=rows, batch_id=batch.batch_id, session=session))
        self.fleet.seen(
            session.resource.id,
            steps=batch.num_steps,
            interventions=int(columns["intervention"].sum()),
            policy_version=int(columns["policy_version"][-1]),
        )

    def _on_assign(self, resource_id: str, task: Task | None) -> None:
        """The scheduler gave a resource a task (or took it away): tell its edge and push the task's policy."""
        session = self.sessions.get(resource_id)
        if session is None:
            return
        session.policy_name = task.policy_name if task else ""
        session.send(
            pb.CloudMessage(
                assignment=pb.Assignment(
                    task=task.name if task else "",
                    policy_name=session.policy_name,
                    instruction=task.instruction if task else "",
                )
            )
        )
        if task and not session.may_run(task.policy_name):
            log.warning(
                "%s was given task %s, but its credential does not allow policy %s; it gets no weights",
                resource_id,
                task.name,
                task.policy_name,
            )
        latest = self.registry.latest(task.policy_name) if task else None
        if latest is not None:
            session.offer_version(latest)

    async def _watch_fleet(self) -> None:
        while True:
            self.fleet.check()
            try:
                self._drop_revoked()
            except ValueError as err:  # a broken devices file: keep the last good one, say so
                log.error("%s", err)
            await asyncio.sleep(min(0.5, self.config.lost_after_s / 4))

    async def _watch_registry(self) -> None:
        known: dict[str, int] = {}
        while True:
            for policy_name in {s.policy_name for s in self.sessions.values() if s.policy_name}:
                try:
                    latest = await asyncio.to_thread(self.registry.latest, policy_name)
                except Exception:  # one unreadable policy must not stop the pushes of all the others
                    log.exception("cannot read the registry entry of policy %s; retrying", policy_name)
                    continue
                if latest is None or latest.version <= known.get(policy_name, 0):
                    continue
                known[policy_name] = latest.version
                targets = [s for s in self.sessions.values() if s.policy_name == policy_name]
                log.info("policy %s v%d published; pushing to %d edge(s)", policy_name, latest.version, len(targets))
                for session in targets:
                    session.offer_version(latest)
            await asyncio.sleep(self.config.registry_poll_s)

    async def _read_weights(self, version: PolicyVersion) -> bytes:
        key = (version.policy_name, version.version)
        if self._weights is None or self._weights[0] != key:
            self._weights = (key, await asyncio.to_thread(self.registry.read, *key))
        return self._weights[1]

    def _on_rejected(self, session: Session, rejected: pb.PolicyRejected) -> None:
        """The edge could not apply an update (e.g. a delta on a base it dropped): send it a full snapshot."""
        if rejected.bad:  # it misbehaved on the robot, which rolled back: never offer it to this edge again
            session.bad_versions.add(rejected.version)
            log.error(
                "%s rolled back from %s v%d (%s); a newer version will reach it when one is published",
                session.resource.id,
                rejected.policy_name,
                rejected.version,
                rejected.reason[:200],
            )
            return
        log.warning(
            "%s could not apply %s v%d (%s); sending a full snapshot",
            session.resource.id,
            rejected.policy_name,
            rejected.version,
            rejected.reason[:200],
        )
        session.needs_full = True
        session.sent_version = min(session.sent_version, session.applied_version)
        session.offer = None  # offer the newest version again, from scratch
        latest = self.registry.latest(rejected.policy_name) if rejected.policy_name == session.policy_name else None
        if latest is not None:
            session.offer_version(latest)

    async def _wire_state(self, version: PolicyVersion) -> WireState:
        key = (version.policy_name, version.version)
        state = self._wire_states.get(key)
        if state is None:
            weights = await self._read_weights(version)
            state = await asyncio.to_thread(WireState.from_weights, weights, version.version, self.config.wire_dtype)
            self._wire_states[key] = state
            while len(self._wire_states) > 3:  # a target and a base or two; each holds a whole model
                self._wire_states.pop(next(iter(self._wire_states)))
        return state

    async def _architecture(self, version: PolicyVersion) -> tuple[str, str] | None:
        """A version's policy type and config, from its file's header alone; None when it is gone."""
        try:
            header = await asyncio.to_thread(self.registry.read_header, version.policy_name, version.version)
            metadata = read_metadata(header)
        except (FileNotFoundError, ValueError):
            return None
        return metadata.get("type", ""), metadata.get("config", "")

    async def _delta_base(self, version: PolicyVersion, base_version: int) -> tuple[WireState, WireState] | None:
        """(target, base) wire states when a delta from ``base_version`` can carry ``version``, else None."""
        if not base_version or not 0 < version.version - base_version <= self.config.max_delta_versions:
            return None
        base = PolicyVersion(version.policy_name, base_version, "", 0, 0.0)
        if await self._architecture(base) != await self._architecture(version):
            return None  # another architecture (or pruned): seen from the headers, so nothing is hashed
        target = await self._wire_state(version)
        try:
            base_state = await self._wire_state(base)
        except FileNotFoundError:  # pruned from the registry since
            return None
        if delta_names(target, base_state, self.config.max_delta_fraction) is None:
            return None  # most of the bytes changed
        return target, base_state

    async def _update_for(self, version: PolicyVersion, base_version: int) -> tuple[bytes, str, str, int]:
        """(payload, sha256, kind, base version): a delta against what the edge holds when possible."""
        key = (version.policy_name, version.version, base_version)
        if key in self._updates:
            return self._updates[key]
        delta_from = await self._delta_base(version, base_version)
        if delta_from is None and self.config.wire_dtype == "float32":
            # A float32 snapshot is the registry file as it is: no second serialization and hash of the whole
            # model (for a 50M-parameter policy, most of a second before the first chunk leaves).
            update = (await self._read_weights(version), version.sha256, "full", 0)
        else:
            target, base_state = delta_from or (await self._wire_state(version), None)
            built = await asyncio.to_thread(build_update, target, base_state, self.config.max_delta_fraction)
            update = (built.payload, sha256_hex(built.payload), built.kind, built.base_version)
        self._updates[key] = update
        while len(self._updates) > 8:
            self._updates.pop(next(iter(self._updates)))
        return update

    async def _send_policies(self, session: Session) -> None:
        """Pushes the newest offered version; versions superseded before they were sent are skipped."""
        while not session.closed:
            await session.offered.wait()
            session.offered.clear()
            version = session.offer
            if version is None or version.version <= session.sent_version:
                continue
            base_version = 0 if session.needs_full else session.applied_version
            data, sha256, kind, base_version = await self._update_for(version, base_version)
            session.needs_full = False
            if kind == "delta":
                log.info(
                    "pushing %s v%d to %s as a delta on v%d: %.2f MB instead of %.2f MB",
                    version.policy_name,
                    version.version,
                    session.resource.id,
                    base_version,
                    len(data) / 1e6,
                    version.size_bytes / 1e6,
                )
            published = time.monotonic_ns()
            step = self.config.policy_chunk_bytes
            for offset in range(0, max(len(data), 1), step):
                await session.bulk_credits.acquire()
                session.send(
                    pb.CloudMessage(
                        policy=pb.PolicyChunk(
                            policy_name=version.policy_name,
                            version=version.version,
                            sha256=sha256,
                            total_bytes=len(data),
                            offset=offset,
                            data=data[offset : offset + step],
                            published_mono_ns=published,
                            kind=kind,
                            base_version=base_version,
                        )
                    )
                )
            session.sent_version = version.version


class FleetControl(pb_grpc.FleetControlServicer):
    """What `fleetloop fleet` asks: the fleet's state, and operator commands."""

    ACTIONS = ("pause", "resume", "drain", "stop", "estop", "release")

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _check_operator(self, context: grpc.aio.ServicerContext) -> None:
        """With device credentials on, only an operator device may look at or command the fleet."""
        if not self.gateway._checks_credentials():
            return
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        token = header.removeprefix("Bearer ").strip()
        device = self.gateway.config.devices.identify(token) if token else None
        if device is None or device.kind != "operator":
            why = "no credential given" if not token else "not the credential of an operator device"
            log.warning("refused a fleet control call: %s", why)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"authorization: {why}")

    async def Status(self, request: pb.FleetStatusRequest, context) -> pb.FleetStatus:  # noqa: N802
        await self._check_operator(context)
        now = self.gateway.fleet.clock()
        return pb.FleetStatus(
            members=[
                pb.FleetMember(
                    resource=m.resource.to_proto(),
                    state=str(m.state),
                    task=m.task,
                    policy_version=m.policy_version,
                    steps=m.steps,
                    interventions=m.interventions,
                    seconds_since_seen=now - m.last_seen,
                )
                for m in sorted(self.gateway.fleet.members.values(), key=lambda m: m.resource.id)
            ]
        )

    async def Command(self, request: pb.FleetCommand, context) -> pb.FleetCommandReply:  # noqa: N802
        await self._check_operator(context)
        fleet = self.gateway.fleet
        if request.action not in self.ACTIONS:
            return pb.FleetCommandReply(ok=False, message=f"action: must be one of {self.ACTIONS}")
        if request.resource_id not in fleet.members:
            return pb.FleetCommandReply(ok=False, message=f"resource_id: no resource {request.resource_id!r}")
        session = self.gateway.sessions.get(request.resource_id)
        reason = request.reason or "operator"
        if request.action in ("estop", "release"):
            if session is None:
                return pb.FleetCommandReply(ok=False, message=f"{request.resource_id} is not connected")
            session.send(
                pb.CloudMessage(emergency_stop=pb.EmergencyStop(reason=reason, release=request.action == "release"))
            )
            log.warning(
                "%s: emergency stop %s (%s)",
                request.resource_id,
                "released" if request.action == "release" else "sent",
                reason,
            )
            return pb.FleetCommandReply(ok=True, message=f"{request.action} sent to {request.resource_id}")
        getattr(fleet, request.action)(request.resource_id)
        if session is not None and request.action in ("pause", "resume"):
            task = fleet.task_of(request.resource_id)
            session.send(
                pb.CloudMessage(
                    assignment=pb.Assignment(
                        task=task.name if task else "",
                        policy_name=session.policy_name,
                        instruction=task.instruction if task else "",
                        paused=request.action == "pause",
                    )
                )
            )
        state = fleet.members[request.resource_id].state
        return pb.FleetCommandReply(ok=True, message=f"{request.resource_id} is now {state}")


async def serve(
    config: GatewayConfig,
    store: EpisodeStore,
    registry: PolicyRegistry,
    stop: asyncio.Event | None = None,
    services: tuple[Callable[[Gateway], Any], ...] = (),
) -> None:
    """``services``: each makes, from the gateway, something with async start() and stop() that runs beside it
    (e.g. the phone channel); they start after the gateway and stop before it."""
    gateway = Gateway(config, store, registry)
    await gateway.start()
    started = []
    try:
        for make in services:
            service = make(gateway)
            await service.start()
            started.append(service)
        await (stop or asyncio.Event()).wait()
    finally:
        for service in reversed(started):
            await service.stop()
        await gateway.stop()
