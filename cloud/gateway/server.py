"""The cloud gateway: serves every edge's tunnel, stores their steps, pushes policy versions.

grpc.aio serves any number of long-lived streams (a thread-pool server serves only as many
as it has threads). Each stream gets a Session: a reader task that validates what the edge
sends, an outgoing queue, and a policy sender that always pushes the newest version. The jobs
live beside this module (sessions, ingest, push, remote_inference, control); the Gateway wires them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from cloud.data.ingest_log import IngestLog
from cloud.data.store import EpisodeStore, StepRows
from cloud.data.version_registry import PolicyRegistry
from cloud.gateway.bounds import COPY_INLINE_BYTES, INLINE_BYTES, DecodePool, LimitError, StreamLimits, StreamSlot
from cloud.gateway.cameras import Camera, check_uplink, column_spec, new_dataset_codecs, stored_cameras
from cloud.gateway.config import GatewayConfig
from cloud.gateway.control import FleetControl
from cloud.gateway.fleet import Backlog, FleetScheduler, Requirements, Task
from cloud.gateway.ingest import PendingBatch, StoreWriter, step_rows, wire_of
from cloud.gateway.internal_errors import InternalErrors
from cloud.gateway.malloc import reuse_large_buffers
from cloud.gateway.person_relay import PersonRelay
from cloud.gateway.push import PolicyPusher
from cloud.gateway.remote_inference import infer
from cloud.gateway.rollouts import Rollouts
from cloud.gateway.sessions import Admission, Session, admit, checks_credentials
from cloud.gateway.tasks import record_tasks
from cloud.security.devices import AuthError
from cloud.security.revocation import CredentialWatch
from cloud.serving.inference import InferenceServer
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from protocol.arrays import CodecError
from protocol.incidents import internal_error
from protocol.limits import case_twin, check_applied, check_heartbeat, check_rejected
from protocol.steps import MAX_STEPS_PER_BATCH, decoded_bytes, only_copies

log = logging.getLogger("fleetloop.gateway")
Decoded = StepRows | CodecError | None  # a step batch's rows made while parsing it, or why they are refused
TUNNEL_SERVICE = "fleetloop.v1.Tunnel"
STOP_DRAIN_S = 30.0  # on stop, how long the store may take to take in what the ingest log holds


def _serialize(message: pb.CloudMessage | bytes) -> bytes:
    """A CloudMessage's bytes; a policy piece is queued serialized already (made once for every edge)."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("gateway task %s failed", task.get_name(), exc_info=task.exception())


class Gateway(pb_grpc.TunnelServicer):
    def __init__(self, config: GatewayConfig, store: EpisodeStore, registry: PolicyRegistry) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.sessions: dict[str, Session] = {}
        self.fleet = FleetScheduler(lost_after_s=config.lost_after_s, on_assign=self._on_assign, allows=self._may_take)
        for task in config.tasks:
            self.fleet.add_task(task)
        self._record_tasks: tuple[Task, ...] = ()
        self._sync_record_tasks()
        self.inference = InferenceServer(registry, threads=config.inference_threads)
        self.writer = StoreWriter(
            store,
            config.flush_rows,
            config.flush_delay_s,
            config.flush_bytes,
            config.max_unwritten_bytes,
            config.max_unwritten_bytes_per_tunnel,
            config.max_uncompacted_bytes,
            IngestLog(config.ingest_log, durable=True) if config.ingest_log is not None else None,
        )
        # Which version each robot gets: with --canary, a new one goes to a share first; without, the newest, unless a
        # canary rolled it back while they were on.
        self.rollouts = Rollouts(config, registry, store, self.sessions)
        self.pusher = PolicyPusher(config, registry, self.sessions, chooser=self.rollouts)
        self.persons = PersonRelay(self.sessions)  # the takeover pages' people and the robots they watch
        # Closes a revoked device's tunnel (and, shared with the takeover pages, an operator's page) within 0.1 s.
        self.credentials = CredentialWatch(config.devices) if config.devices is not None else None
        self.on_applied: list[Callable[[str, pb.PolicyApplied], None]] = []
        self.streams = StreamLimits(config.max_streams, config.max_pending_hellos, config.max_streams_per_device)
        self.decoder = DecodePool(config.decode_workers)
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task] = []
        self.port = config.port

    async def start(self) -> int:
        reuse_large_buffers()  # the process is the gateway's: its camera batches reuse freed memory
        await self.writer.replay()  # before any hello: where logged episodes continue
        self._server = grpc.aio.server(options=self.config.grpc_options(), interceptors=(InternalErrors(),))
        self._add_tunnel(self._server)
        canary = self.rollouts if self.config.canary else None
        control = FleetControl(self.fleet, self.sessions, self.config.devices, canary)
        pb_grpc.add_FleetControlServicer_to_server(control, self._server)
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert and self.config.tls_key:
            credentials = grpc.ssl_server_credentials([(self.config.tls_key, self.config.tls_cert)])
            self.port = self._server.add_secure_port(address, credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.host}:{self.config.port}")
        await self._server.start()
        jobs = [self.writer.run(), self.pusher.watch_registry(), self._watch_fleet()]
        self._tasks = [asyncio.create_task(coro) for coro in jobs + ([self.rollouts.watch()] if canary else [])]
        log.info(
            "gateway listening on %s:%d (%s, %s)",
            self.config.host,
            self.port,
            "TLS" if self.config.tls_cert else "plain text",
            "device credentials required" if checks_credentials(self.config.devices) else "no credentials checked",
        )
        if self.config.devices is not None and checks_credentials(self.config.devices):
            loose = [
                d.id for d in self.config.devices.devices() if d.kind == "robot" and not d.revoked and not d.datasets
            ]
            if loose:  # devices files from before records listed datasets: say how to let them in again
                log.warning(
                    "%s will be refused: the record names no dataset it may record into (no --embodiment or --policy); "
                    "bind it with `fleetloop devices allow <id> --embodiment <dataset>`",
                    ", ".join(loose),
                )
        return self.port

    def _add_tunnel(self, server: grpc.aio.Server) -> None:
        """Serves Tunnel.Connect with its requests as bytes, so each is size-checked before it is parsed (and large
        ones parsed in the decode pool) instead of parsed by gRPC on the event loop."""
        connect = grpc.stream_stream_rpc_method_handler(
            self.Connect, request_deserializer=None, response_serializer=_serialize
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TUNNEL_SERVICE, {"Connect": connect}),))

    async def stop(self, grace_s: float = 1.0) -> None:
        writing = self._tasks[:1]  # the writer's goes on until the store holds what was acked
        for task in self._tasks[1:]:
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
        await self.writer.flush()  # acked while the tunnels are still open
        if self._server is not None:
            await self._server.stop(grace_s)
        if not await self.writer.drain(STOP_DRAIN_S):
            log.warning("the episode store is still behind the ingest log; the next start moves the rest there")
        for task in writing:
            task.cancel()
        self.writer.log.close()
        self.writer.compactor.close()
        self.decoder.close()

    async def Connect(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CloudMessage]:
        """One edge's tunnel. Its messages arrive as bytes (see ``_add_tunnel``): each is size-checked before it is
        parsed, and large ones are parsed and decoded in the decode pool."""
        try:
            slot = self.streams.open(context.peer())
        except LimitError as err:
            log.warning("refused a connection: %s", err)
            message, status = self._refusal(err)
            yield message
            await context.abort(status, str(err))
            return
        with slot:
            async for message in self._serve_stream(slot, request_iterator.__aiter__(), context):
                yield message

    async def _serve_stream(
        self, slot: StreamSlot, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CloudMessage]:
        try:
            first = await self._first_message(slot, requests, context)
            session = self._open_session(first, slot)
        except (CodecError, AuthError, LimitError) as err:
            if not slot.evicted.is_set():  # evictions are logged together (StreamLimits), not one line each
                log.warning("refused a connection: %s", err)
            message, status = self._refusal(err)
            yield message
            await context.abort(status, str(err))
            return
        held = None
        if session.device is not None and self.credentials is not None:
            held = self.credentials.hold(session.device, "tunnel", session.end_revoked)
        tasks = [
            asyncio.create_task(self._read(session, requests)),
            asyncio.create_task(self.pusher.send_policies(session)),
        ]
        for task in tasks:
            task.add_done_callback(_log_failure)
        try:
            while True:
                message = await session.out.get()
                if message is None:
                    break
                yield message
                if isinstance(message, bytes):  # a policy piece (the only messages queued serialized)
                    session.bulk_credits.release()
        finally:
            session.closed = True
            if held is not None and self.credentials is not None:
                self.credentials.release(held)
            for task in tasks:
                task.cancel()
            if self.sessions.get(session.resource.id) is session:
                del self.sessions[session.resource.id]
                self.fleet.disconnected(session.resource.id)
            per_step = session.batch_bytes / max(1, session.steps_received)
            log.info(
                "%s disconnected (%d steps stored this session, %.0f bytes per step on the wire)",
                session.resource.id,
                session.steps_stored,
                per_step,
            )

    async def _first_message(
        self, slot: StreamSlot, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> pb.EdgeMessage:
        """The stream's first message, at most ``max_hello_bytes`` (refused unparsed past that); CodecError if it is
        no EdgeMessage, LimitError if the stream was closed to make room for newer ones before it arrived."""
        read = asyncio.ensure_future(requests.__anext__())
        evicted = asyncio.ensure_future(slot.evicted.wait())
        try:
            await asyncio.wait((read, evicted), timeout=self.config.hello_timeout_s, return_when=FIRST_COMPLETED)
        finally:
            evicted.cancel()
            arrived = read.done() and not read.cancelled() and read.exception() is None
            read.cancel()
        if slot.evicted.is_set():
            raise LimitError(
                "hello",
                f"no hello came before {self.config.max_pending_hellos} newer tunnels opened (max_pending_hellos); "
                "send the hello as soon as the stream opens",
            )
        if not arrived:  # the time ran out, the stream ended, or its transport failed
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "hello: the first message must be a hello")
        raw = read.result()
        slot.hear()
        limit = self.config.max_hello_bytes
        if len(raw) > limit:
            raise CodecError("hello", f"{len(raw)} bytes, over the limit of {limit} (max_hello_bytes)")
        try:
            return await self.decoder.run(len(raw), lambda: pb.EdgeMessage.FromString(raw))
        except DecodeError as err:  # bytes that are no EdgeMessage: only this stream ends
            raise CodecError("hello", "the first message is not an EdgeMessage") from err

    @staticmethod
    def _refusal(err: CodecError | AuthError | LimitError) -> tuple[pb.CloudMessage, grpc.StatusCode]:
        """The error that refuses a stream, and the status it ends with."""
        if isinstance(err, LimitError):
            code, status = err.code, grpc.StatusCode.RESOURCE_EXHAUSTED
        elif isinstance(err, AuthError):
            code, status = "unauthenticated", grpc.StatusCode.UNAUTHENTICATED
        else:
            code, status = "invalid_argument", grpc.StatusCode.INVALID_ARGUMENT
        return pb.CloudMessage(error=pb.Error(code=code, field=err.field, message=err.message)), status

    def _open_session(self, first: pb.EdgeMessage, slot: StreamSlot) -> Session:
        admitted = admit(first, self.config.devices)
        hello, resource = first.hello, admitted.resource
        step_bytes, limit = decoded_bytes(admitted.schema), self.config.max_decoded_bytes
        if step_bytes > limit:  # not one of its batches could ever be stored
            raise CodecError(
                "hello.resource.capabilities",
                f"one step decodes to {step_bytes} bytes, over the limit of {limit} per message (max_decoded_bytes)",
            )
        slot.admit(admitted.device.id if admitted.device else resource.id)
        cameras = self._ensure_dataset(admitted)
        check_uplink(hello.uplink_codec, cameras)
        previous = self.sessions.get(resource.id)
        if previous is not None:  # a reconnect supersedes the old stream
            previous.closed = True
            previous.out.put_nowait(None)
        session = Session(
            resource=resource,
            remote=hello.remote_inference,
            device=admitted.device,
            policy_name=admitted.policy_name,
            schema=admitted.schema,
            cameras=cameras,
            outcome_policy=admitted.outcome_policy,
        )
        for name, version in (
            (admitted.policy_name, hello.policy_version),
            (admitted.outcome_policy, hello.outcome_version),
        ):
            if name:  # what it holds already is not sent again
                held = session.subscription(name)
                held.sent_version = held.applied_version = version
        self.sessions[resource.id] = session
        stored = [
            pb.EpisodeProgress(episode_id=p.episode_id, next_seq=self.writer.next_seq(p.episode_id)) for p in hello.held
        ]
        session.send(
            pb.CloudMessage(
                welcome=pb.Welcome(
                    session_id=session.session_id,
                    stored=stored,
                    max_batch_bytes=self.config.max_batch_bytes,
                    learner_key=verifier.raw() if (verifier := self.registry.verifier) is not None else b"",
                    store_codecs={name: camera.codec for name, camera in cameras.items()},
                )
            )
        )
        self.persons.opened(session)
        policy_name, caps = admitted.policy_name, resource.capabilities
        # Open loopback mode only: with credentials, tasks come from --tasks or the device records, never a hello.
        if not self.config.tasks and admitted.device is None and policy_name not in self.fleet.tasks:
            self.fleet.add_task(
                Task(policy_name, policy_name, requires=Requirements(embodiment=caps.embodiment), count=0)
            )
        self.fleet.register(resource)  # assigns a task if one fits: see _on_assign
        if self.fleet.task_of(resource.id) is None:
            log.info("%s has no task that fits it; it holds still", resource.id)
            session.policy_name = ""  # it receives a policy only with a task
            session.send_assignment(None)
        if admitted.outcome_policy:  # its episodes are judged whatever its task
            self.pusher.offer_latest(session, admitted.outcome_policy)
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

    def _ensure_dataset(self, admitted: Admission) -> dict[str, Camera]:
        """The store's dataset for the resource's embodiment, made on its first hello (its cameras kept as
        ``--store-codec`` says); refuses another shape. Returns its encoded camera columns."""
        caps = admitted.resource.capabilities
        embodiment, datasets = caps.embodiment, self.store.datasets()
        twin = case_twin(embodiment, datasets)
        if twin is not None:
            raise CodecError("hello.resource.capabilities.embodiment", f"differs only in case from the dataset {twin}")
        if embodiment in datasets:  # its cameras stay as they were first kept
            codecs = {name: cam.codec for name, cam in stored_cameras(self.store, embodiment, caps.control_hz).items()}
        else:
            codecs = new_dataset_codecs(admitted.schema, caps.control_hz, self.config.store_codec)
        specs = {k: column_spec(dtype, shape, codecs.get(k, "")) for k, (dtype, shape) in admitted.schema.items()}
        try:
            self.store.ensure_dataset(embodiment, specs)
        except ValueError as err:  # another robot of this embodiment stored steps of another shape
            raise CodecError(
                "hello.resource.capabilities", f"do not match the stored dataset {embodiment}: {err}"
            ) from err
        cameras = stored_cameras(self.store, embodiment, caps.control_hz)
        self.writer.encoder.cameras[embodiment] = cameras
        return cameras

    async def _read(self, session: Session, requests: AsyncIterator[bytes]) -> None:
        """Reads the edge's messages one at a time: the next is read only once this one is handled (decoded, queued
        for the store), so a device that sends faster than the gateway decodes is held back by flow control."""
        try:
            async for raw in requests:
                message, rows = await self._parse(session, raw)
                kind = message.WhichOneof("body")
                try:
                    await self._handle(session, message, kind, rows, raw)
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
        except Exception:  # a failure of ours: the edge hears an incident id, the log has the details
            message = internal_error(log, f"reading the tunnel of {session.resource.id}")
            session.send(pb.CloudMessage(error=pb.Error(code="internal", field="edge_message", message=message)))
        finally:
            session.out.put_nowait(None)

    async def _parse(self, session: Session, raw: bytes) -> tuple[pb.EdgeMessage, Decoded]:
        """The message; for a large step batch also its rows (or why they are refused), made in the same hop to the
        decode pool (a hop costs as much as parsing a camera batch)."""
        if len(raw) <= INLINE_BYTES:
            return pb.EdgeMessage.FromString(raw), None
        if len(raw) <= COPY_INLINE_BYTES:
            message = pb.EdgeMessage.FromString(raw)
            if message.WhichOneof("body") == "steps" and only_copies(message.steps):
                self.decoder.inline += 1
                return message, self._decode_steps(session, message, len(raw))
            return message, None  # a batch with zlib or encoded frames is decoded in the pool (_receive_batch)
        return await self.decoder.run(len(raw), lambda: self._parse_and_decode(session, raw))

    def _parse_and_decode(self, session: Session, raw: bytes) -> tuple[pb.EdgeMessage, Decoded]:
        """In the decode pool: DecodeError if the bytes are no EdgeMessage."""
        message = pb.EdgeMessage.FromString(raw)
        if message.WhichOneof("body") != "steps":
            return message, None
        return message, self._decode_steps(session, message, len(raw))

    def _decode_steps(self, session: Session, message: pb.EdgeMessage, size: int) -> Decoded:
        config = self.config
        try:  # the message's size bounds its batch's (merged or unknown fields only add bytes): no walk to count them
            return step_rows(session, message.steps, config.max_batch_bytes, config.max_decoded_bytes, size)
        except CodecError as err:
            return err

    async def _handle(
        self, session: Session, message: pb.EdgeMessage, kind: str | None, rows: Decoded, raw: bytes
    ) -> None:
        if kind == "steps":
            await self._receive_batch(session, message.steps, rows, raw)
            await self.writer.room(session)  # a slow store slows this tunnel's uploads, not memory or the others
        elif kind == "applied":
            self._applied(session, message.applied)
        elif kind == "infer":
            await infer(session, message.infer, self.inference, self.config, self.decoder)
        elif kind == "rejected":
            check_rejected(message.rejected)
            self.pusher.on_rejected(session, message.rejected)
        elif kind == "heartbeat":
            check_heartbeat(message.heartbeat)
            self.fleet.seen(session.resource.id)
            beat = message.heartbeat
            backlog = Backlog(beat.backlog_steps, beat.backlog_bytes, beat.backlog_oldest_s)
            self.fleet.reported(session.resource.id, beat.state, backlog)
            session.send(pb.CloudMessage(heartbeat=pb.Heartbeat(mono_ns=time.monotonic_ns())))
        elif kind in ("live_view", "person_refused"):
            self.persons.receive(session, message)
        elif kind == "hello":
            raise CodecError("hello", "this stream already said hello; open a new stream to start over")
        else:
            raise CodecError("body", "the message is empty (an unknown or missing body)")

    def _applied(self, session: Session, applied: pb.PolicyApplied) -> None:
        """The edge swapped in a version of its policy or of its outcome classifier."""
        check_applied(applied)
        name = applied.policy_name
        if name not in (session.policy_name, session.outcome_policy) and name not in session.subscriptions:
            # Nothing it was sent: no state is made for it (a hostile edge cannot grow the session with names).
            log.warning(
                "%s says it applied %s v%d, which it was never sent", session.resource.id, name, applied.version
            )
            return
        session.subscription(name).applied_version = applied.version
        what = "judges success with" if name == session.outcome_policy else "now runs"
        if name == session.policy_name:
            self.fleet.seen(session.resource.id, policy_version=applied.version)
        rid, version, size = session.resource.id, applied.version, applied.received_bytes
        log.info("%s %s %s v%d (its update was %d bytes)", rid, what, name, version, size)
        for callback in self.on_applied:
            callback(session.resource.id, applied)

    async def _receive_batch(self, session: Session, batch: pb.StepBatch, decoded: Decoded, raw: bytes) -> None:
        """``decoded``: the rows (or why they are refused) when ``_parse`` made them already; ``raw``: the message as
        it came (the ingest log keeps it as it is)."""
        config = self.config
        size = len(raw)
        try:
            if isinstance(decoded, CodecError):
                raise decoded
            if decoded is None:
                # What decoding reads and makes; an invalid num_steps is refused before anything is decoded.
                cost = size + decoded_bytes(session.schema, min(max(batch.num_steps, 0), MAX_STEPS_PER_BATCH))
                cost += INLINE_BYTES if batch.video else 0  # encoded frames are decoded only in the pool
                decoded = await self.decoder.run(
                    cost, lambda: step_rows(session, batch, config.max_batch_bytes, config.max_decoded_bytes)
                )
        except CodecError as err:
            log.warning("refused a batch from %s: %s", session.resource.id, err)
            session.refuse(batch.batch_id, err.field, err.message)
            return
        rows = decoded
        wire = wire_of(raw, batch, rows, session.schema)
        self.writer.submit(PendingBatch(rows=rows, batch_id=batch.batch_id, sink=session, wire=wire))
        session.batch_bytes += size
        session.steps_received += batch.num_steps
        self.fleet.seen(
            session.resource.id,
            steps=batch.num_steps,
            interventions=int(rows.columns["intervention"].sum()),
            policy_version=int(rows.columns["policy_version"][-1]),
        )

    def _on_assign(self, resource_id: str, task: Task | None) -> None:
        """The scheduler gave a resource a task (or took it away): tell its edge and push the task's policy."""
        session = self.sessions.get(resource_id)
        if session is None:
            return
        session.policy_name = task.policy_name if task else ""
        session.send_assignment(task)
        if task and not session.may_run(task.policy_name):
            log.warning(
                "%s was given task %s, but its credential does not allow policy %s; it gets no weights",
                resource_id,
                task.name,
                task.policy_name,
            )
        if task:
            self.pusher.offer_latest(session, task.policy_name)

    def _may_take(self, resource_id: str, task: Task) -> bool:
        """Whether the scheduler may give ``task`` to the resource: its credential allows the task's policy."""
        session = self.sessions.get(resource_id)
        return session is None or session.may_run(task.policy_name)

    def _sync_record_tasks(self) -> None:
        """With credentials and no --tasks, the tasks are the device records' (``record_tasks``), made again whenever
        the records change."""
        devices = self.config.devices
        if self.config.tasks or devices is None or not checks_credentials(devices):
            return
        tasks = record_tasks(devices.devices())
        if tasks != self._record_tasks:
            self._record_tasks = tasks
            self.fleet.set_tasks(tasks)
            names = ", ".join(f"{t.name} ({t.requires.embodiment})" for t in tasks) or "none"
            log.info("tasks from the device records: %s", names)

    async def _watch_fleet(self) -> None:
        while True:
            self.fleet.check()
            try:
                if self.config.devices is not None:
                    self.config.devices.reload()  # revocation does not hang on it (CredentialWatch checks by id)
                self._sync_record_tasks()
            except ValueError as err:  # a broken devices file: keep the last good one, say so
                log.error("%s", err)
            await asyncio.sleep(min(0.5, self.config.lost_after_s / 4))


class Service(Protocol):
    """What the cloud runs beside the gateway on the gateway's parts (the phone channel, the openpi endpoint)."""

    async def start(self) -> int:
        """Listen; the port it listens on."""
        ...

    async def stop(self) -> None: ...


ServiceFactory = Callable[[Gateway], Service]  # a service made from the gateway it runs beside


async def serve(
    config: GatewayConfig,
    store: EpisodeStore,
    registry: PolicyRegistry,
    stop: asyncio.Event | None = None,
    services: tuple[ServiceFactory, ...] = (),
) -> None:
    """``services``: each makes a ``Service`` from the gateway; they start after the gateway and stop before it."""
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
