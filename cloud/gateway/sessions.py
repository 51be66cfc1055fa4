"""One edge's tunnel as the gateway holds it (``Session``), and who may open one: the hello's checks and the
device credentials behind them (authentication; revocation is cloud/security/revocation.py's)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from cloud.data.version_registry import PolicyVersion
from cloud.gateway.cameras import Camera
from cloud.gateway.fleet import Task
from cloud.security.devices import Device, DeviceRegistry
from hal.resource import RESOURCE_KINDS, SOURCES, ResourceInfo
from protocol import PROTOCOL_VERSION
from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError
from protocol.limits import check_capabilities, check_hello
from protocol.steps import Schema, check_id, quoted, schema_for

log = logging.getLogger("fleetloop.gateway")

MAX_UNREAD_MESSAGES = 4096  # answers waiting for one edge to read them (acks, heartbeats, policy pieces)


@dataclass
class Subscription:
    """What one edge holds of one policy name it receives versions of (the policy it runs, its outcome classifier):
    the newest version offered to it, the last one sent and the one it applied."""

    offer: PolicyVersion | None = None
    sent_version: int = 0
    applied_version: int = 0
    needs_full: bool = False  # it could not apply a delta: its next update is a full snapshot
    full_sent: int = 0  # the last version sent as a full snapshot: refused too, it is not sent again
    bad_versions: set[int] = field(default_factory=set)  # versions it rolled back from or refused as unusable
    refused: str = ""  # why it keeps off the last of them, in words (the fleet view shows it)

    def keep_off(self, name: str, version: int, reason: str) -> None:
        """``version`` of ``name`` is never offered again (``reason``, printable, is what the fleet view shows)."""
        self.bad_versions.add(version)
        self.refused = f"{name} v{version}: {reason}"


@dataclass
class Session:
    resource: ResourceInfo
    policy_name: str  # the policy it runs: follows its task
    schema: Schema
    cameras: dict[str, Camera] = field(default_factory=dict)  # its dataset's encoded camera columns
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    bulk_credits: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(8))
    device: Device | None = None  # its credential, when the cloud checks credentials
    remote: bool = False  # its policy runs in the cloud (remote inference): it gets action chunks, not weights
    outcome_policy: str = ""  # the reward classifier that judges its episodes ("" for none): weights, always
    subscriptions: dict[str, Subscription] = field(default_factory=dict)  # by policy name
    offered: asyncio.Event = field(default_factory=asyncio.Event)
    steps_stored: int = 0
    steps_received: int = 0
    batch_bytes: int = 0  # the StepBatch bytes it sent (what its cameras cost on the wire)
    batches_refused: int = 0
    inference_waiting: int = 0  # remote-inference requests queued or in a forward pass (max_inference_queue)
    inference_refused: int = 0
    closed: bool = False

    def send(self, message: pb.CloudMessage | bytes) -> None:
        """Queues a message for the edge; bytes are a policy piece serialized already (``protocol.policy_chunks``)."""
        if self.closed:
            return
        if self.out.qsize() >= MAX_UNREAD_MESSAGES:  # it sends but never reads: end it rather than grow memory
            log.warning(
                "%s does not read its tunnel (%d answers waiting); closing it", self.resource.id, MAX_UNREAD_MESSAGES
            )
            self.send_end()
            return
        self.out.put_nowait(message)

    def end_revoked(self, message: str) -> None:
        """Its credential was revoked (``CredentialWatch``): it is told why, then its stream ends."""
        self.send(pb.CloudMessage(error=pb.Error(code="unauthenticated", field="hello.token", message=message)))
        self.send_end()

    def send_end(self) -> None:
        """Ends the stream after what is queued."""
        if not self.closed:
            self.out.put_nowait(None)
            self.closed = True

    def ack(self, batch_id: int, episode_id: str, next_seq: int, steps: int) -> None:
        """The StoreWriter stored a batch of this edge's (``AckSink``): its spool may let the steps go."""
        self.steps_stored += steps
        self.send(pb.CloudMessage(ack=pb.Ack(batch_id=batch_id, episode_id=episode_id, next_seq=next_seq)))

    def refuse(self, batch_id: int, field: str, message: str) -> None:
        """A batch of this edge's was not stored (``AckSink``); the error names the field."""
        self.batches_refused += 1
        self.send(
            pb.CloudMessage(error=pb.Error(code="invalid_argument", field=field, batch_id=batch_id, message=message))
        )

    def send_assignment(self, task: Task | None, paused: bool = False) -> None:
        """Tells the edge its task (None: hold still) and the policy it runs."""
        self.send(
            pb.CloudMessage(
                assignment=pb.Assignment(
                    task=task.name if task else "",
                    policy_name=self.policy_name,
                    instruction=task.instruction if task else "",
                    paused=paused,
                )
            )
        )

    def may_run(self, policy_name: str) -> bool:
        return self.device is None or self.device.may_run(policy_name)

    def receives(self) -> list[str]:
        """The policy names whose weights go down this tunnel now: its policy's (unless that runs in the cloud or it
        has none) and its outcome classifier's."""
        names = [] if self.remote or not self.policy_name else [self.policy_name]
        return names + ([self.outcome_policy] if self.outcome_policy else [])

    def subscription(self, policy_name: str) -> Subscription:
        """What it holds of ``policy_name`` (a fresh record, nothing held, the first time that name is asked)."""
        return self.subscriptions.setdefault(policy_name, Subscription())

    def refusals(self) -> str:
        """The versions it keeps off, one per name, in words ("" when none)."""
        return "; ".join(held.refused for held in self.subscriptions.values() if held.refused)

    def offer_version(self, version: PolicyVersion) -> None:
        name = version.policy_name
        if name not in self.receives() or not self.may_run(name):  # weights only for edges that run them
            return
        held = self.subscription(name)
        if version.version in held.bad_versions:
            return
        if version.version > max(held.sent_version, held.offer.version if held.offer else 0):
            held.offer = version
            self.offered.set()

    def roll_back(self, bad: int, to: PolicyVersion, reason: str) -> bool:
        """Version ``bad`` of ``to``'s policy was rolled back: never offered again, and an edge that was sent it is
        told so over its tunnel (``PolicyRollback``) and sent ``to`` again, which it then applies although it is
        older. False when it was never sent ``bad`` (an offer not yet sent is withdrawn)."""
        name = to.policy_name
        held = self.subscription(name)
        held.keep_off(name, bad, reason)
        if held.offer is not None and held.offer.version >= bad:
            held.offer = None
        if max(held.sent_version, held.applied_version) < bad:
            return False
        rollback = pb.PolicyRollback(policy_name=name, version=bad, to_version=to.version, reason=reason[:1000])
        self.send(pb.CloudMessage(rollback=rollback))
        held.sent_version, held.offer = 0, to  # sent as a full snapshot: a delta runs forwards only
        self.offered.set()
        return True


def check_resource(resource: pb.Resource) -> ResourceInfo:
    """A hello's resource, within protocol/limits.py's bounds; errors name the field."""
    check_id(resource.id, "hello.resource.id")
    if resource.kind not in RESOURCE_KINDS:
        raise CodecError("hello.resource.kind", f"must be one of {RESOURCE_KINDS}, got {quoted(resource.kind)}")
    if resource.source not in SOURCES:
        raise CodecError("hello.resource.source", f"must be one of {SOURCES}, got {quoted(resource.source)}")
    check_capabilities(resource.capabilities, "hello.resource.capabilities")
    return ResourceInfo.from_proto(resource)


@dataclass(frozen=True)
class Admission:
    """A hello that passed every check: who is connecting, with which credential, to run which policy."""

    resource: ResourceInfo
    device: Device | None
    policy_name: str
    schema: Schema
    outcome_policy: str = ""  # the reward classifier it asks for beside its policy


def admit(first: pb.EdgeMessage, devices: DeviceRegistry | None) -> Admission:
    """Checks a stream's first message: a hello within bounds, of this protocol, from a known device allowed
    the policy (and the outcome classifier) it asks for. Raises CodecError or AuthError naming the field."""
    if not first.HasField("hello"):
        raise CodecError("hello", "the first message must be a hello")
    hello = first.hello
    check_hello(hello)  # size and count limits (protocol/limits.py) before anything acts on it
    if hello.protocol_version != PROTOCOL_VERSION:
        raise CodecError(
            "hello.protocol_version",
            f"this gateway speaks protocol {PROTOCOL_VERSION}, the edge {hello.protocol_version}: run the same "
            "fleetloop release on the edge and in the cloud",
        )
    resource = check_resource(hello.resource)
    policy_name = hello.policy_name or resource.capabilities.embodiment
    device = authenticate(devices, resource, hello.token)
    if device is not None:  # the record binds what the hello may claim: kind, source, dataset, policies
        asked = (("hello.policy_name", policy_name), ("hello.outcome_policy", hello.outcome_policy))
        device.check_robot_hello(resource.kind, resource.source, resource.capabilities.embodiment, asked)
    if hello.outcome_policy == policy_name:  # its versions would be taken for the policy's, and the other way round
        raise CodecError("hello.outcome_policy", f"names the policy it runs ({policy_name}); give the classifier's")
    caps = resource.capabilities
    schema = schema_for([(s.name, s.dtype, s.shape) for s in caps.observation], (caps.action.dtype, caps.action.shape))
    return Admission(resource, device, policy_name, schema, hello.outcome_policy)


def checks_credentials(devices: DeviceRegistry | None) -> bool:
    return devices is not None and devices.enabled


def authenticate(devices: DeviceRegistry | None, resource: ResourceInfo, token: str) -> Device | None:
    """The resource's device when credentials are checked (None when they are not); AuthError when refused."""
    if devices is None or not checks_credentials(devices):
        return None
    return devices.authenticate(resource.id, token)
