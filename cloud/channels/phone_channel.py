"""The phone channel: phones stream demonstrations over websockets into the episode store.

A phone is a resource of kind ``phone`` (a camera, a 6-DoF pose, a gripper width). It pairs once with a
one-time pairing token that `fleetloop cloud` prints, and gets its own credential back; it then records
episodes whose steps land in the same store as the robots' steps, with source ``phone``. The wire protocol
(messages, units, frames, pairing) is documented in docs/phone-protocol.md; this module is its server, and its
jobs live beside it: ``phone_messages`` (the wire format and its checks), ``phone_ingest`` (open episodes into
the store), ``phone_foresight``, ``phone_pairing`` and ``phone_http`` (the page).

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
import json
import logging
import ssl
import time
from pathlib import Path
from typing import Annotated

import websockets
from pydantic import Field
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from cloud.channels.phone_foresight import PhoneForesight
from cloud.channels.phone_http import CA_PATH, PageRoute, page_response
from cloud.channels.phone_ingest import OpenEpisode, Phone, PhoneIngest
from cloud.channels.phone_messages import (
    MAX_FRAME_BYTES,
    PhoneError,
    as_phone_error,
    episode_id_of,
    json_object,
    parse_hello,
    phone_capabilities,
    split_binary_frame,
)
from cloud.channels.phone_pairing import is_pairing_token, new_pairing_token, pairing_qr
from cloud.gateway.server import Gateway
from cloud.security.certs import ca_fingerprint
from cloud.security.devices import AuthError, Device, DeviceRegistry
from cloud.security.revocation import CredentialWatch
from hal.config import CodeConfig, Name
from hal.resource import ResourceInfo
from protocol.sanitize import printable
from protocol.steps import check_id

log = logging.getLogger("fleetloop.phone")


ImageSide = Annotated[int, Field(ge=8, le=2048)]  # pixels
# A connection's first message (a hello, a few hundred bytes of JSON): anything bigger is refused unread, before
# anyone was admitted (websockets closes with 1009). Admitted phones and takeover pages may send MAX_FRAME_BYTES.
MAX_HELLO_FRAME_BYTES = 64 << 10


class PhoneChannelConfig(CodeConfig):
    config_name = "phone"

    host: Name = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0: any free port
    image_height: ImageSide = 224  # camera frames are stored as uint8 HxWx3 at this size
    image_width: ImageSide = 224
    # decoded steps one phone may hold open, over all its open episodes
    max_episode_bytes: Annotated[int, Field(ge=1)] = 512 << 20
    # episodes one phone may hold open at once (recording, or waiting for its resend after a dropped link)
    max_open_episodes: Annotated[int, Field(ge=1)] = 8
    hello_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    store_timeout_s: Annotated[float, Field(gt=0)] = 60.0  # no durable write by then: the phone is told to resend
    credentials: Path | None = None  # where paired phones' credentials go when the cloud has no devices file
    pairing_ttl_s: Annotated[float, Field(gt=0)] = 600.0  # a pairing token unused this long pairs no phone
    tls_cert: Path | None = None  # PEM files: serve wss:// instead of ws://
    tls_ca: Path | None = None  # the CA that signed tls_cert: served at /phone/ca.pem for phones to install
    tls_key: Path | None = None
    public_host: str = ""  # the host named in the pairing URL (default: host)


class PhoneChannel:
    """``routes``: other pages served on the same port (a robot's takeover page), each by its paths."""

    def __init__(self, config: PhoneChannelConfig, gateway: Gateway, routes: tuple[PageRoute, ...] = ()) -> None:
        self.config = config
        self.gateway = gateway
        self.routes = routes
        devices = gateway.config.devices
        # Paired phones' credentials: the cloud's devices file when it has one (so `fleetloop devices revoke`
        # works on phones), else a file of their own, so pairing a phone does not turn credentials on for robots.
        self.credentials = (
            devices
            if devices is not None and devices.enabled
            else DeviceRegistry(config.credentials or Path("phone-devices.json"))
        )
        # Closes a revoked phone's socket: the gateway's watch when the phones' credentials are the cloud's.
        watch = gateway.credentials if self.credentials is devices else None
        self.revocations = watch or CredentialWatch(self.credentials)
        self.phones: dict[str, Phone] = {}
        self._pairing = ""
        self._pairing_expires = 0.0  # time.monotonic() past which the pairing token pairs no phone
        self._server = None
        self.port = config.port
        image_size = (config.image_height, config.image_width)
        self.foresight = PhoneForesight(gateway.registry, gateway.inference, image_size)
        self.ingest = PhoneIngest(
            gateway.store,
            gateway.writer,
            gateway.fleet,
            self.foresight,
            image_size,
            config.max_episode_bytes,
            config.store_timeout_s,
        )

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> int:
        self.ingest.ensure_dataset()
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
            max_size=MAX_HELLO_FRAME_BYTES,  # raised to MAX_FRAME_BYTES once a connection is admitted
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
        scheme = "https" if context else "http"
        for route in self.routes:
            host = self.config.public_host or self.config.host
            log.info("%s at %s://%s:%d%s", route.title, scheme, host, self.port, route.path_hint)
        self._new_pairing_token()
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _new_pairing_token(self) -> None:
        """A fresh one-time pairing token, printed on stdout (never logged): one phone pairs with it."""
        self._pairing = new_pairing_token()
        self._pairing_expires = time.monotonic() + self.config.pairing_ttl_s
        host = self.config.public_host or self.config.host
        scheme = "https" if self.config.tls_cert and self.config.tls_key else "http"
        url = f"{scheme}://{host}:{self.port}/phone?pair={self._pairing}"
        lines = [
            f"phone pairing token: {self._pairing}",
            f"phone pairing URL: {url}",
            f"it pairs one phone within {self.config.pairing_ttl_s / 60:g} minutes",
        ]
        if scheme == "https" and self.config.tls_ca is not None:
            ca = f"{scheme}://{host}:{self.port}{CA_PATH}"
            lines.append(f"a phone trusts this cloud once it installs its CA from {ca} (or accepts the warning)")
            fingerprint = ca_fingerprint(self.config.tls_ca)
            lines.append(f"the CA's SHA-256 fingerprint (the phone page shows it too: they must match): {fingerprint}")
        lines.append(f"scan to pair a phone: {url}")
        print("\n".join((*lines, pairing_qr(url))), flush=True)  # one write: the token comes with its QR code

    # ---- the phone page (plain HTTP GET on the websocket's port) ---------------------------------------------

    def _page(self, connection: ServerConnection, request: Request) -> Response | None:
        route = self._route(request.path)
        if route is not None and request.headers.get("Upgrade", "").lower() != "websocket":
            return route.page(connection, request)
        return page_response(connection, request, self.config.tls_ca)

    def _route(self, path: str) -> PageRoute | None:
        return next((route for route in self.routes if route.handles(path)), None)

    # ---- one connection --------------------------------------------------------------------------------------

    async def _serve(self, connection: ServerConnection) -> None:
        route = self._route(connection.request.path if connection.request else "")
        if route is not None:
            connection.protocol.max_message_size = MAX_FRAME_BYTES  # its own messages are checked by the route
            await route.serve(connection)
            return
        try:
            raw = await asyncio.wait_for(connection.recv(), timeout=self.config.hello_timeout_s)
        except (TimeoutError, websockets.ConnectionClosed):
            await connection.close(1008, "hello: the first message must be a hello")
            return
        try:
            phone, device, reply = self._hello(raw)
        except (PhoneError, AuthError) as err:
            log.warning("refused a phone: %s", err)
            await self._send(connection, {"type": "error", "field": err.field, "message": err.message})
            await connection.close(1008, err.field)
            return
        connection.protocol.max_message_size = MAX_FRAME_BYTES  # admitted: its steps carry JPEG frames
        previous, phone.connection = phone.connection, connection
        if previous is not None:  # a reconnect supersedes the old connection
            await previous.close(1000, "superseded by a new connection of this phone")
        await self._send(connection, reply)
        keepalive = asyncio.create_task(self._keepalive(phone))
        held = self.revocations.hold(device, "phone connection", lambda why: self._revoked(connection, why))
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
            self.revocations.release(held)
            if phone.connection is connection:
                phone.connection = None
                self.gateway.fleet.disconnected(phone.phone_id)
            log.info("%s disconnected (%d open episode(s) held for its resend)", phone.phone_id, len(phone.episodes))

    async def _keepalive(self, phone: Phone) -> None:
        """While the socket lives (websockets pings it) the phone is seen."""
        while True:
            self.gateway.fleet.seen(phone.phone_id)
            await asyncio.sleep(0.5)

    async def _revoked(self, connection: ServerConnection, message: str) -> None:
        """Its credential was revoked (``CredentialWatch``): it is told why, and its socket closes."""
        await self._send(connection, {"type": "error", "field": "hello.token", "message": message})
        await connection.close(1008, "hello.token")

    @staticmethod
    async def _send(connection: ServerConnection, message: dict) -> None:
        try:
            await connection.send(json.dumps(message))
        except websockets.ConnectionClosed:
            pass

    # ---- hello and pairing -----------------------------------------------------------------------------------

    def _hello(self, raw: str | bytes) -> tuple[Phone, Device, dict]:
        hello = parse_hello(raw, self.gateway.sessions)
        phone_id, rate = hello.phone_id, hello.rate_hz
        issued = ""
        if hello.pair is not None:
            if not is_pairing_token(hello.pair, self._pairing):
                raise PhoneError("hello.pair", "not the current pairing token (each is used once; see the cloud)")
            if time.monotonic() > self._pairing_expires:
                self._new_pairing_token()  # on the cloud's terminal, seen by whoever runs it
                raise PhoneError("hello.pair", "the pairing token expired; the cloud printed a new one")
            existing = self.credentials.get(phone_id)
            if existing is not None and not existing.revoked:
                raise PhoneError("hello.phone_id", f"{phone_id!r} is already paired: connect with its token")
            try:
                issued = self.credentials.add(phone_id, kind="phone")
            except ValueError as err:  # a revoked id (ids are never reused), one that differs only in case
                raise PhoneError("hello.phone_id", str(err).removeprefix("id: ")) from None
            self._new_pairing_token()  # this one is used up
            log.info("%s paired; the next phone needs the new pairing token", printable(phone_id))
            device = self.credentials.get(phone_id)
        else:
            device = self.credentials.authenticate(phone_id, hello.token or "")
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
            phone = self.phones[phone_id] = Phone(phone_id, resource)
        phone.resource = resource
        self.gateway.fleet.register(resource)
        pose_note = "" if hello.tracked else "; no pose tracking (no WebXR): it sends the identity pose"
        log.info("%s connected (phone, %.0f Hz%s)", printable(phone_id), rate, pose_note)
        reply = {
            "type": "welcome",
            "phone_id": phone_id,
            "image": {"height": self.config.image_height, "width": self.config.image_width},
            "open_episodes": sorted(phone.episodes),
        }
        if issued:
            reply["token"] = issued
        return phone, device, reply

    def _check_room(self, phone: Phone) -> None:
        """Refuses a new episode while the phone holds ``max_open_episodes`` open (each costs the cloud memory)."""
        limit = self.config.max_open_episodes
        if len(phone.episodes) >= limit:
            raise PhoneError(
                "start.episode_id",
                f"{len(phone.episodes)} episodes are open, the limit (max_open_episodes) is {limit}: "
                "stop or discard one first",
            )

    # ---- messages after the hello ----------------------------------------------------------------------------

    async def _handle(self, phone: Phone, connection: ServerConnection, raw: str | bytes) -> None:
        self.gateway.fleet.seen(phone.phone_id)
        if isinstance(raw, bytes):
            header, jpeg = split_binary_frame(raw)
            if header.get("type", "step") == "foresight":
                await self._send(connection, await self.foresight.answer(header, jpeg))
            else:
                await self.ingest.add_step(phone, header, jpeg)
            return
        message = json_object(raw, "message")
        kind = message.get("type")
        if kind == "start":
            episode_id = episode_id_of(message, "start")
            task = message.get("task", "")
            if not isinstance(task, str):
                raise PhoneError("start.task", "must be a string")
            as_phone_error(lambda: check_id(task, "start.task", required=False))
            stored = self.ingest.stored(phone, episode_id, "start")
            if stored:
                await self._send(connection, {"type": "ack", "episode_id": episode_id, "next_seq": stored})
                return
            if episode_id not in phone.episodes:
                self._check_room(phone)
                phone.episodes[episode_id] = OpenEpisode(episode_id, task)
        elif kind == "stop":
            episode_id = episode_id_of(message, "stop")
            next_seq = await self.ingest.stop(phone, message, episode_id)
            await self._send(connection, {"type": "ack", "episode_id": episode_id, "next_seq": next_seq})
        elif kind == "discard":
            episode_id = episode_id_of(message, "discard")
            if self.ingest.stored(phone, episode_id, "discard"):
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
