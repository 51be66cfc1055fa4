"""The phone channel: phones stream demonstrations over websockets into the episode store.

A phone is a resource of kind ``phone`` (a camera, a 6-DoF pose, a gripper width). It pairs once with a
one-time pairing token that `fleetloop cloud` prints, and gets its own credential back; it then records
episodes whose steps land in the same store as the robots' steps, with source ``phone``. The wire protocol
(messages, units, frames, pairing) is documented in docs/phone-protocol.md; this module is its server.

Durability: the cloud holds an open episode's steps in memory and writes the whole episode through the
gateway's StoreWriter (group commit) when the phone stops it; the ack follows the durable write. The
phone keeps every step it sent until that ack, and resends the unacked episode after a drop: steps are
merged by seq here and the store skips rows it already holds, so ``(episode_id, seq)`` stays unique and a
resend is harmless. A discarded episode is dropped from memory and never reaches the store.

Closing the loop: before writing a stopped episode, the cloud asks the current ``phone`` policy what it would have
done from each step and stores how far that was from what the demonstrator did (``cloud.serving.foresight``); the
learner draws the steps where the foresight was wrong more often.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
import secrets
import ssl
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from cloud.data.store import ColumnSpec, StepRows
from cloud.gateway.ingest import PendingBatch
from cloud.gateway.server import Gateway
from cloud.security.devices import AuthError, DeviceRegistry
from cloud.serving import foresight
from cloud.serving.inference import InferenceJob
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from protocol.arrays import CodecError
from protocol.steps import check_id, schema_for

log = logging.getLogger("fleetloop.phone")

DATASET = "phone"  # the dataset (embodiment) every phone's episodes go to
PAIR_PREFIX = "pair_"
PHONE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a phone id is also its device id
MAX_FRAME_BYTES = 8 << 20  # one websocket message
MAX_IMAGE_PIXELS = 4096 * 4096  # a bigger JPEG is refused before it is decoded
MAX_SEQ = 1_000_000
BATCH_STEPS = 256  # an episode goes to the StoreWriter in batches of this many steps
HEADER = struct.Struct(">I")  # a binary step frame: header length, JSON header, JPEG bytes
POLICY = "phone"  # the policy whose predicted trajectory a phone's foresight request is answered with
FORESIGHT_TIMEOUT_S = 10.0
SCORE_TIMEOUT_S = 20.0  # scoring a stopped episode's foresight may delay its ack this long; unscored steps: NaN
SCORE_BATCH = 16  # steps scored per inference request burst (the inference server's batch size)
PAGE_DIR = Path(__file__).with_name("phone_page")  # the phone page, served over plain HTTP(S) on the same port
CA_PATH = "/phone/ca.pem"  # over TLS: the CA certificate (public), for a phone to install and trust
PAGE_FILES = {  # URL path -> (file, content type)
    "/phone": ("index.html", "text/html; charset=utf-8"),
    "/phone/": ("index.html", "text/html; charset=utf-8"),
    "/phone/phone.js": ("phone.js", "text/javascript; charset=utf-8"),
}


@dataclass(frozen=True)
class PhoneChannelConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    image_height: int = 224  # camera frames are stored as uint8 HxWx3 at this size
    image_width: int = 224
    max_episode_bytes: int = 512 << 20  # decoded steps one phone may hold open, over all its open episodes
    hello_timeout_s: float = 10.0
    store_timeout_s: float = 60.0  # no durable write by then: the phone is told to resend
    credentials: Path | None = None  # where paired phones' credentials go when the cloud has no devices file
    tls_cert: Path | None = None  # PEM files: serve wss:// instead of ws://
    tls_ca: Path | None = None  # the CA that signed tls_cert: served at /phone/ca.pem for phones to install
    tls_key: Path | None = None
    public_host: str = ""  # the host named in the pairing URL (default: host)


class PhoneError(Exception):
    """A message was refused; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class _Step:
    t_mono_ns: int
    pose: np.ndarray  # (7,) float32: x y z qx qy qz qw
    gripper: float
    image: np.ndarray  # (H, W, 3) uint8

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + 64


@dataclass
class _OpenEpisode:
    episode_id: str
    task: str
    steps: dict[int, _Step] = field(default_factory=dict)
    nbytes: int = 0


@dataclass
class _Phone:
    """What the cloud holds for one phone across its connections."""

    phone_id: str
    resource: ResourceInfo
    token_sha256: str = ""
    connection: ServerConnection | None = None
    episodes: dict[str, _OpenEpisode] = field(default_factory=dict)

    @property
    def held_bytes(self) -> int:
        return sum(e.nbytes for e in self.episodes.values())


class StoreAcks:
    """The phone channel's ``AckSink``: the StoreWriter's acks and refusals resolve the futures of the batches a
    stopped episode waits on."""

    def __init__(self) -> None:
        self.steps_stored = 0
        self.batches_refused = 0
        self.waiting: dict[int, asyncio.Future] = {}
        self._next_id = 0

    def expect(self) -> tuple[int, asyncio.Future]:
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[self._next_id] = future
        return self._next_id, future

    def ack(self, batch_id: int, episode_id: str, next_seq: int, steps: int) -> None:
        self.steps_stored += steps
        future = self.waiting.pop(batch_id, None)
        if future is not None and not future.done():
            future.set_result(next_seq)

    def refuse(self, batch_id: int, field: str, message: str) -> None:
        self.batches_refused += 1
        future = self.waiting.pop(batch_id, None)
        if future is not None and not future.done():
            future.set_exception(PhoneError(field.removeprefix("step_batch."), message))


def phone_capabilities(height: int, width: int, control_hz: float) -> Capabilities:
    return Capabilities(
        observation=(
            ArraySpec("image", "|u1", (height, width, 3)),
            ArraySpec("pose", "<f4", (7,)),  # position xyz (m), quaternion xyzw
            ArraySpec("gripper", "<f4", (1,)),  # gripper width (m)
        ),
        action=ArraySpec("action", "<f4", (8,)),  # the next step's pose and gripper width
        control_hz=control_hz,
        embodiment=DATASET,
        cameras=("camera",),
    )


class PhoneChannel:
    def __init__(self, config: PhoneChannelConfig, gateway: Gateway) -> None:
        self.config = config
        self.gateway = gateway
        self.store = gateway.store
        self.writer = gateway.writer
        devices = gateway.config.devices
        # Paired phones' credentials: the cloud's devices file when it has one (so `fleetloop devices revoke`
        # works on phones), else a file of their own, so pairing a phone does not turn credentials on for robots.
        self.credentials = (
            devices
            if devices is not None and devices.enabled
            else DeviceRegistry(config.credentials or Path("phone-devices.json"))
        )
        self.phones: dict[str, _Phone] = {}
        self.acks = StoreAcks()
        self._pairing = ""
        self._server = None
        self.port = config.port
        observation = phone_capabilities(config.image_height, config.image_width, 1).observation
        self.schema = schema_for([(s.name, s.dtype, s.shape) for s in observation], ("<f4", (8,)))
        self.schema.update(foresight.COLUMNS)
        self.scored = True  # False for a phone dataset made before foresight errors were stored

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> int:
        if DATASET in self.store.datasets() and foresight.ERROR_COLUMN not in self.store.schema(DATASET):
            # A store from before foresight errors: keep adding to it as it is, without them.
            self.scored = False
            self.schema = {k: v for k, v in self.schema.items() if k not in foresight.COLUMNS}
            log.warning(
                "the store's phone dataset predates foresight errors: phone demonstrations are stored without "
                "them and sampled evenly (a new data root stores them)"
            )
        self.store.ensure_dataset(DATASET, {k: ColumnSpec(d, s) for k, (d, s) in self.schema.items()})
        context = None
        if self.config.tls_cert and self.config.tls_key:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        self._server = await serve(
            self._serve,
            self.config.host,
            self.config.port,
            ssl=context,
            process_request=self._page,
            max_size=MAX_FRAME_BYTES,
            ping_interval=5,
            ping_timeout=10,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "phone channel listening on %s://%s:%d (frames stored as %dx%d)",
            "wss" if context else "ws",
            self.config.host,
            self.port,
            self.config.image_height,
            self.config.image_width,
        )
        self._new_pairing_token()
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _new_pairing_token(self) -> None:
        """A fresh one-time pairing token, printed on stdout (never logged): one phone pairs with it."""
        self._pairing = PAIR_PREFIX + secrets.token_urlsafe(16)
        host = self.config.public_host or self.config.host
        scheme = "https" if self.config.tls_cert and self.config.tls_key else "http"
        url = f"{scheme}://{host}:{self.port}/phone?pair={self._pairing}"
        lines = [f"phone pairing token: {self._pairing}", f"phone pairing URL: {url}"]
        if scheme == "https" and self.config.tls_ca is not None:
            ca = f"{scheme}://{host}:{self.port}{CA_PATH}"
            lines.append(f"a phone trusts this cloud once it installs its CA from {ca} (or accepts the warning)")
        lines.append(f"scan to pair a phone: {url}")
        print("\n".join((*lines, pairing_qr(url))), flush=True)  # one write: the token comes with its QR code

    # ---- the phone page (plain HTTP GET on the websocket's port) ---------------------------------------------

    def _page(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answers a plain GET (no websocket upgrade) with the phone page's files (and, over TLS, the CA
        certificate a phone installs to trust the cloud); an upgrade goes on to the websocket handshake."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        path = request.path.split("?", 1)[0]
        if path == CA_PATH and self.config.tls_ca is not None:
            file, content_type = self.config.tls_ca, "application/x-x509-ca-cert"
        elif path in PAGE_FILES:
            name, content_type = PAGE_FILES[path]
            file = PAGE_DIR / name
        else:
            return connection.respond(404, "not found: the phone page is at /phone\n")
        body = file.read_bytes()
        headers = Headers(
            [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
        )
        return Response(200, "OK", headers, body)

    # ---- one connection --------------------------------------------------------------------------------------

    async def _serve(self, connection: ServerConnection) -> None:
        try:
            raw = await asyncio.wait_for(connection.recv(), timeout=self.config.hello_timeout_s)
        except (TimeoutError, websockets.ConnectionClosed):
            await connection.close(1008, "hello: the first message must be a hello")
            return
        try:
            phone, reply = self._hello(raw)
        except (PhoneError, AuthError) as err:
            log.warning("refused a phone: %s", err)
            await self._send(connection, {"type": "error", "field": err.field, "message": err.message})
            await connection.close(1008, err.field)
            return
        previous, phone.connection = phone.connection, connection
        if previous is not None:  # a reconnect supersedes the old connection
            await previous.close(1000, "superseded by a new connection of this phone")
        await self._send(connection, reply)
        keepalive = asyncio.create_task(self._keepalive(phone, connection))
        try:
            async for message in connection:
                try:
                    await self._handle(phone, connection, message)
                except PhoneError as err:
                    log.warning("refused a message from %s: %s", phone.phone_id, err)
                    await self._send(connection, {"type": "error", "field": err.field, "message": err.message})
        except websockets.ConnectionClosed:
            pass
        finally:
            keepalive.cancel()
            if phone.connection is connection:
                phone.connection = None
                self.gateway.fleet.disconnected(phone.phone_id)
            log.info("%s disconnected (%d open episode(s) held for its resend)", phone.phone_id, len(phone.episodes))

    async def _keepalive(self, phone: _Phone, connection: ServerConnection) -> None:
        """While the socket lives (websockets pings it) the phone is seen; a revoked credential closes it."""
        while True:
            self.gateway.fleet.seen(phone.phone_id)
            self.credentials.reload()
            device = self.credentials.get(phone.phone_id)
            if device is None or device.revoked or device.token_sha256 != phone.token_sha256:
                log.warning("%s: its credential was revoked; closing its connection", phone.phone_id)
                message = f"the credential of {phone.phone_id!r} was revoked"
                await self._send(connection, {"type": "error", "field": "hello.token", "message": message})
                await connection.close(1008, "hello.token")
                return
            await asyncio.sleep(0.5)

    @staticmethod
    async def _send(connection: ServerConnection, message: dict) -> None:
        try:
            await connection.send(json.dumps(message))
        except websockets.ConnectionClosed:
            pass

    # ---- hello and pairing -----------------------------------------------------------------------------------

    def _hello(self, raw: str | bytes) -> tuple[_Phone, dict]:
        hello = _json(raw, "hello")
        if hello.get("type") != "hello":
            raise PhoneError("type", "the first message must be a hello")
        phone_id = hello.get("phone_id")
        if not isinstance(phone_id, str) or not PHONE_ID.match(phone_id):
            raise PhoneError("hello.phone_id", "must be 1-64 letters, digits, '_', '.', '-'")
        if phone_id in self.gateway.sessions:
            raise PhoneError("hello.phone_id", f"{phone_id!r} is a connected robot's id")
        caps = hello.get("capabilities")
        if not isinstance(caps, dict):
            raise PhoneError("hello.capabilities", "must be an object with camera, pose and gripper")
        for name in ("camera", "gripper"):
            if not caps.get(name):
                raise PhoneError(f"hello.capabilities.{name}", "is required (a phone streams camera and gripper)")
        tracked = caps.get("pose", True)
        if not isinstance(tracked, bool):
            raise PhoneError("hello.capabilities.pose", f"must be true or false, got {tracked!r}")
        rate = caps.get("rate_hz", 10)
        if not _number(rate) or not 0.1 <= rate <= 240:
            raise PhoneError("hello.capabilities.rate_hz", f"must be a number in 0.1..240, got {rate!r}")
        pair, token = hello.get("pair"), hello.get("token")
        issued = ""
        if pair is not None:
            if not isinstance(pair, str) or not secrets.compare_digest(pair.encode(), self._pairing.encode()):
                raise PhoneError("hello.pair", "not the current pairing token (each is used once; see the cloud)")
            existing = self.credentials.get(phone_id)
            if existing is not None and not existing.revoked:
                raise PhoneError("hello.phone_id", f"{phone_id!r} is already paired: connect with its token")
            issued = self.credentials.add(phone_id, kind="phone")
            self._new_pairing_token()  # this one is used up
            log.info("%s paired; the next phone needs the new pairing token", phone_id)
            device = self.credentials.get(phone_id)
        elif token is not None:
            if not isinstance(token, str):
                raise PhoneError("hello.token", "must be a string")
            device = self.credentials.authenticate(phone_id, token)
        else:
            raise PhoneError("hello.pair", "a hello needs a pairing token (pair) or the phone's credential (token)")
        if device.kind != "phone":
            raise PhoneError("hello.phone_id", f"{phone_id!r} is registered as a {device.kind}")
        resource = ResourceInfo(
            phone_id,
            "phone",
            phone_capabilities(self.config.image_height, self.config.image_width, float(rate)),
            source="phone",
        )
        phone = self.phones.get(phone_id)
        if phone is None:
            phone = self.phones[phone_id] = _Phone(phone_id, resource)
        phone.resource, phone.token_sha256 = resource, device.token_sha256
        self.gateway.fleet.register(resource)
        pose_note = "" if tracked else "; no pose tracking (no WebXR): it sends the identity pose"
        log.info("%s connected (phone, %.0f Hz%s)", phone_id, rate, pose_note)
        reply = {
            "type": "welcome",
            "phone_id": phone_id,
            "image": {"height": self.config.image_height, "width": self.config.image_width},
            "open_episodes": sorted(phone.episodes),
        }
        if issued:
            reply["token"] = issued
        return phone, reply

    # ---- messages after the hello ----------------------------------------------------------------------------

    async def _handle(self, phone: _Phone, connection: ServerConnection, raw: str | bytes) -> None:
        self.gateway.fleet.seen(phone.phone_id)
        if isinstance(raw, bytes):
            header, jpeg = _binary(raw)
            if header.get("type", "step") == "foresight":
                await self._send(connection, await self._foresight(header, jpeg))
            else:
                await self._step(phone, header, jpeg)
            return
        message = _json(raw, "message")
        kind = message.get("type")
        if kind == "start":
            episode_id = _episode_id(message, "start")
            task = message.get("task", "")
            if not isinstance(task, str):
                raise PhoneError("start.task", "must be a string")
            check(lambda: check_id(task, "start.task", required=False))
            stored = self._stored(phone, episode_id, "start")
            if stored:
                await self._send(connection, {"type": "ack", "episode_id": episode_id, "next_seq": stored})
                return
            if episode_id not in phone.episodes:
                phone.episodes[episode_id] = _OpenEpisode(episode_id, task)
        elif kind == "stop":
            episode_id = _episode_id(message, "stop")
            next_seq = await self._stop(phone, message, episode_id)
            await self._send(connection, {"type": "ack", "episode_id": episode_id, "next_seq": next_seq})
        elif kind == "discard":
            episode_id = _episode_id(message, "discard")
            if self._stored(phone, episode_id, "discard"):
                raise PhoneError("discard.episode_id", f"episode {episode_id} is already stored")
            dropped = phone.episodes.pop(episode_id, None)
            held = len(dropped.steps) if dropped else 0
            log.info("%s discarded episode %s (%d steps)", phone.phone_id, episode_id, held)
            await self._send(connection, {"type": "discarded", "episode_id": episode_id})
        elif kind == "ping":
            await self._send(connection, {"type": "pong", "t_mono_ns": time.monotonic_ns()})
        elif kind == "hello":
            raise PhoneError("type", "this connection already said hello; open a new one to start over")
        else:
            raise PhoneError(
                "type", f"must be start, stop, discard or ping (steps and foresight are binary frames), got {kind!r}"
            )

    async def _foresight(self, header: dict, jpeg: bytes) -> dict:
        """Visual foresight: the current phone policy's predicted end-effector positions for this frame and pose
        (its action chunk's x y z), through the shared batched inference server. No policy: no points."""
        latest = await asyncio.to_thread(self.gateway.registry.latest, POLICY)
        if latest is None:
            return {"type": "foresight", "version": 0, "points": []}
        pose = _pose(header.get("pose"), "foresight.pose")
        gripper = header.get("gripper")
        if not _number(gripper) or not 0 <= gripper <= 1:
            raise PhoneError("foresight.gripper", f"must be a width in metres, 0..1, got {gripper!r}")
        if not jpeg:
            raise PhoneError("foresight.image", "the frame carries no JPEG after its header")
        try:
            image = await asyncio.to_thread(_decode_jpeg, jpeg, self.config.image_height, self.config.image_width)
        except PhoneError as err:
            raise PhoneError("foresight.image", err.message) from None
        observation = {"image": image, "pose": pose, "gripper": np.array([gripper], dtype=np.float32)}
        try:
            actions, version, error = await asyncio.wait_for(self._predict(observation), FORESIGHT_TIMEOUT_S)
        except TimeoutError:
            raise PhoneError("foresight", "the policy did not answer in time") from None
        if error:
            raise PhoneError("foresight", f"the {POLICY} policy failed: {error}")
        chunk = np.asarray(actions, dtype=np.float64).reshape(-1, actions.shape[-1])
        if chunk.shape[1] < 3:
            raise PhoneError("foresight", f"the {POLICY} policy's actions have {chunk.shape[1]} values, not x y z ...")
        points = [[round(float(v), 5) for v in row[:3]] for row in chunk if np.isfinite(row[:3]).all()]
        return {"type": "foresight", "version": int(version), "points": points}

    def _predict(self, observation: dict[str, np.ndarray]) -> asyncio.Future:
        """The phone policy's action chunk for one observation, through the shared batched inference server:
        a future of (actions, version, error)."""
        answer: asyncio.Future = asyncio.get_running_loop().create_future()

        def reply(actions, version: int, error: str, batch_size: int) -> None:
            if not answer.done():
                answer.set_result((actions, version, error))

        self.gateway.inference.submit(POLICY, InferenceJob(observation, reply))
        return answer

    async def _score(self, steps: list[_Step], actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per step, how far the current phone policy's predicted trajectory was from the demonstration (metres)
        and the version asked; NaN and 0 where no policy answered (none published, failed, or too slow)."""
        errors = np.full(len(steps), np.nan, np.float32)
        versions = np.zeros(len(steps), np.int64)
        if not self.scored or await asyncio.to_thread(self.gateway.registry.latest, POLICY) is None:
            return errors, versions
        started = time.monotonic()
        deadline = started + SCORE_TIMEOUT_S
        late = 0
        # A batch at a time: live foresight requests (this phone's and others') queue between these batches
        # instead of behind a whole episode.
        for first in range(0, len(steps), SCORE_BATCH):
            batch = steps[first : first + SCORE_BATCH]
            futures = [
                self._predict({"image": s.image, "pose": s.pose, "gripper": np.array([s.gripper], np.float32)})
                for s in batch
            ]
            done, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
            for index, future in enumerate(futures, start=first):
                if future not in done:
                    continue
                chunk, version, error = future.result()
                if error or chunk is None or np.shape(chunk)[-1] < 3 or not np.isfinite(chunk).all():
                    continue
                errors[index] = foresight.step_error(chunk, actions, index)
                versions[index] = version
            if pending:  # out of time: this batch's stragglers and every later step stay unscored
                late = len(steps) - first - len(done)
                break
        scored = np.isfinite(errors)
        if late or not scored.all():
            log.warning("foresight scored %d of %d steps (%d too late)", scored.sum(), len(steps), late)
        if scored.any():
            log.info(
                "foresight of phone v%d was off by %.3f m on average (worst %.3f m) over %d steps (%.1f s)",
                versions[scored].max(),
                errors[scored].mean(),
                errors[scored].max(),
                scored.sum(),
                time.monotonic() - started,
            )
        return errors, versions

    async def _step(self, phone: _Phone, header: dict, jpeg: bytes) -> None:
        if header.get("type", "step") != "step":
            raise PhoneError("step.type", "a binary frame holds a step or a foresight request")
        episode_id = _episode_id(header, "step")
        seq = header.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < MAX_SEQ:
            raise PhoneError("step.seq", f"must be an integer in 0..{MAX_SEQ - 1}, got {seq!r}")
        t_mono_ns = header.get("t_mono_ns")
        if not isinstance(t_mono_ns, int) or isinstance(t_mono_ns, bool) or not 0 <= t_mono_ns < 2**63:
            raise PhoneError("step.t_mono_ns", f"must be a non-negative integer (ns), got {t_mono_ns!r}")
        pose = _pose(header.get("pose"))
        gripper = header.get("gripper")
        if not _number(gripper) or not 0 <= gripper <= 1:
            raise PhoneError("step.gripper", f"must be a width in metres, 0..1, got {gripper!r}")
        if not jpeg:
            raise PhoneError("step.image", "the frame carries no JPEG after its header")
        episode = phone.episodes.get(episode_id)
        if episode is None:
            if self._stored(phone, episode_id, "step"):
                return  # a resend of an episode already stored: nothing to do, its stop gets the ack
            raise PhoneError("step.episode_id", f"episode {episode_id} is not open: send start first")
        if seq in episode.steps:
            return  # a resend: (episode_id, seq) is kept once
        image = await asyncio.to_thread(_decode_jpeg, jpeg, self.config.image_height, self.config.image_width)
        step = _Step(t_mono_ns, pose, float(gripper), image)
        if phone.held_bytes + step.nbytes > self.config.max_episode_bytes:
            raise PhoneError("step", f"over {self.config.max_episode_bytes >> 20} MB held open: stop the episode")
        episode.steps[seq] = step
        episode.nbytes += step.nbytes

    def _stored(self, phone: _Phone, episode_id: str, what: str) -> int:
        """The episode's stored next_seq if it is in the store (0 if not); refuses another resource's episode."""
        record = self.store.episode(episode_id)
        if record is None:
            return 0
        if record.resource_id != phone.phone_id:
            raise PhoneError(f"{what}.episode_id", f"episode {episode_id} belongs to another resource")
        return record.next_seq

    async def _stop(self, phone: _Phone, message: dict, episode_id: str) -> int:
        num_steps = message.get("num_steps")
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= MAX_SEQ:
            raise PhoneError("stop.num_steps", f"must be the episode's step count, 1..{MAX_SEQ}, got {num_steps!r}")
        success = message.get("success", False)
        if not isinstance(success, bool):
            raise PhoneError("stop.success", "must be true or false")
        stored = self._stored(phone, episode_id, "stop")
        episode = phone.episodes.get(episode_id)
        if episode is None:
            if stored >= num_steps:
                return stored  # the ack was lost on a dropped link: say it again
            raise PhoneError("stop.episode_id", f"episode {episode_id} is not open: send start and its steps")
        missing = [seq for seq in range(num_steps) if seq not in episode.steps]
        if missing:
            raise PhoneError("stop.num_steps", f"steps missing: resend seq {_ranges(missing)}")
        extra = sorted(seq for seq in episode.steps if seq >= num_steps)
        if extra:
            raise PhoneError("stop.num_steps", f"{num_steps} steps, but seq {extra[0]} was sent")
        steps = [episode.steps[seq] for seq in range(num_steps)]
        columns = self._columns(steps, success)
        if self.scored:
            errors, versions = await self._score(steps, columns["action"])
            columns[foresight.ERROR_COLUMN], columns[foresight.VERSION_COLUMN] = errors, versions
        waits = []
        for first in range(0, num_steps, BATCH_STEPS):
            await self.writer.room()
            batch_id, future = self.acks.expect()
            rows = StepRows(
                dataset=DATASET,
                episode_id=episode_id,
                resource_id=phone.phone_id,
                source="phone",
                task=episode.task,
                first_seq=first,
                columns={name: values[first : first + BATCH_STEPS] for name, values in columns.items()},
            )
            self.writer.submit(PendingBatch(rows=rows, batch_id=batch_id, sink=self.acks))
            waits.append(future)
        try:
            acked = await asyncio.wait_for(asyncio.gather(*waits), timeout=self.config.store_timeout_s)
        except TimeoutError:
            raise PhoneError("stop", "the store did not confirm the write in time: resend the episode") from None
        phone.episodes.pop(episode_id, None)
        self.gateway.fleet.seen(phone.phone_id, steps=num_steps, interventions=num_steps, policy_version=0)
        log.info("%s stored episode %s (%d steps)", phone.phone_id, episode_id, num_steps)
        return max(acked)

    def _columns(self, steps: list[_Step], success: bool) -> dict[str, np.ndarray]:
        """The step batch: observations as recorded; action = the next step's pose and gripper (the last holds)."""
        n = len(steps)
        pose = np.stack([s.pose for s in steps]).astype("<f4")
        gripper = np.array([[s.gripper] for s in steps], dtype="<f4")
        target = np.concatenate([pose, gripper], axis=1)
        action = np.concatenate([target[1:], target[-1:]], axis=0)
        done = np.zeros(n, bool)
        done[-1] = True
        last_success = np.zeros(n, bool)
        last_success[-1] = success
        return {
            "obs.image": np.stack([s.image for s in steps]),
            "obs.pose": pose,
            "obs.gripper": gripper,
            "action": action,
            "reward": last_success.astype("<f4"),
            "done": done,
            "success": last_success,
            "intervention": np.ones(n, bool),  # a person demonstrates every step
            "policy_version": np.zeros(n, "<i8"),
            "t_mono_ns": np.array([s.t_mono_ns for s in steps], dtype="<i8"),
        }


# ---- the pairing QR code ---------------------------------------------------------------------------------------

QR_BORDER = 2  # light modules around the code (its quiet zone)
QR_BLOCKS = " ▀▄█"  # two modules a character: (upper light, lower light) -> " ", "▀", "▄", "█"


def qr_modules(url: str) -> list[list[bool]]:
    """The QR code of ``url`` (qrcode's smallest version that fits, error correction M), True = dark module."""
    import qrcode

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0)
    qr.add_data(url)
    qr.make(fit=True)
    return [[bool(m) for m in row] for row in qr.get_matrix()]


def pairing_qr(url: str) -> str:
    """``url`` as a QR code in text, two module rows a line with half blocks, drawn light-on-dark for a dark
    terminal: a dark module is a blank, a light one (and the quiet zone) is block glyph."""
    modules = qr_modules(url)
    size = len(modules) + 2 * QR_BORDER

    def light(row: int, col: int) -> int:
        row, col = row - QR_BORDER, col - QR_BORDER
        inside = 0 <= row < len(modules) and 0 <= col < len(modules)
        return 0 if inside and modules[row][col] else 1

    def cell(row: int, col: int) -> str:  # past the last row (an odd count) is quiet zone too
        return QR_BLOCKS[light(row, col) | light(row + 1, col) << 1]

    return "\n".join("".join(cell(row, col) for col in range(size)) for row in range(0, size, 2))


# ---- checks ----------------------------------------------------------------------------------------------------


def check(function) -> None:
    try:
        function()
    except CodecError as err:
        raise PhoneError(err.field, err.message) from None


def _json(raw: str | bytes, what: str) -> dict:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PhoneError(what, f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise PhoneError(what, "must be a JSON object")
    return value


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _episode_id(message: dict, what: str) -> str:
    episode_id = message.get("episode_id")
    if not isinstance(episode_id, str):
        raise PhoneError(f"{what}.episode_id", "must be a string")
    check(lambda: check_id(episode_id, f"{what}.episode_id"))
    return episode_id


def _binary(frame: bytes) -> tuple[dict, bytes]:
    """A binary frame: 4-byte big-endian header length, the JSON header, then JPEG bytes."""
    if len(frame) < HEADER.size:
        raise PhoneError("step", "a binary frame starts with a 4-byte header length")
    (length,) = HEADER.unpack_from(frame)
    if length > len(frame) - HEADER.size:
        raise PhoneError("step.header_length", f"{length} exceeds the frame's {len(frame) - HEADER.size} bytes")
    return _json(frame[HEADER.size : HEADER.size + length], "step"), frame[HEADER.size + length :]


def _pose(value, field: str = "step.pose") -> np.ndarray:
    if not isinstance(value, list) or len(value) != 7 or not all(_number(v) for v in value):
        raise PhoneError(field, "must be 7 finite numbers: x y z (m), qx qy qz qw")
    pose = np.array(value, dtype=np.float64)
    if np.abs(pose[:3]).max() > 1000:
        raise PhoneError(field, "position is over 1 km from the origin")
    norm = float(np.linalg.norm(pose[3:]))
    if abs(norm - 1) > 0.01:
        raise PhoneError(field, f"the quaternion must be a unit quaternion, its norm is {norm:.4f}")
    pose[3:] /= norm
    return pose.astype(np.float32)


def _decode_jpeg(data: bytes, height: int, width: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise PhoneError("step.image", f"{image.width}x{image.height} is over {MAX_IMAGE_PIXELS} pixels")
            image.draft("RGB", (width, height))  # JPEG decodes straight to a smaller scale when it can
            rgb = image.convert("RGB")
            if rgb.size != (width, height):
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise PhoneError("step.image", f"not a JPEG image: {err}") from None


def _ranges(seqs: list[int]) -> str:
    parts, start = [], seqs[0]
    for previous, current in zip(seqs, [*seqs[1:], None], strict=True):
        if current != previous + 1 if current is not None else True:
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = current
    return ", ".join(parts[:10]) + (" ..." if len(parts) > 10 else "")
