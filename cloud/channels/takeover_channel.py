"""The robots' takeover pages, on the phone channel's HTTPS port: ``/takeover/<robot id>`` is the page, its websocket
(``/takeover/<robot id>/ws``) carries an operator's commands down the robot's tunnel and its live view back.

Who may: an operator device (`fleetloop devices add NAME --kind operator`) proves itself with its token in the
page's hello. An operator whose record lists policies reaches only the robots that run one of them (checked at the
hello and at every command, since a robot's task may change); one with no list reaches every robot. The person is
recorded as ``browser:<operator id>`` with every step they drive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from pathlib import Path

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from cloud.channels.operator_access import OperatorAccess
from cloud.channels.phone_http import file_response
from cloud.channels.phone_messages import PhoneError
from cloud.channels.takeover_messages import (
    WHO_PREFIX,
    TakeoverHello,
    parse_command,
    parse_takeover_hello,
    robot_info,
    view_json,
)
from cloud.gateway.server import Gateway
from cloud.gateway.sessions import Session
from cloud.security.devices import DEVICE_ID, AuthError, Device
from protocol import tunnel_pb2 as pb
from protocol.sanitize import printable

log = logging.getLogger("fleetloop.takeover")

PREFIX = "/takeover/"
PAGE_DIR = Path(__file__).with_name("takeover_page")
SCRIPT = PREFIX + "-/takeover.js"  # "-" starts no robot id
MAX_COMMANDS_PER_S = 100  # a page sends about 20 a second while driving
MAX_WAITING = 64  # answers waiting for a slow page (its live views wait in one slot: the newest replaces)


class TakeoverPages:
    """A route of the phone channel's page server (``PageRoute``): the pages and their websockets."""

    title = "robot takeover pages (operator credential)"
    path_hint = PREFIX + "<robot id>"

    def __init__(self, gateway: Gateway, hello_timeout_s: float = 10.0) -> None:
        self.gateway = gateway
        self.relay = gateway.persons
        self.access = OperatorAccess(gateway)
        self.hello_timeout_s = hello_timeout_s
        self._cached: tuple[pb.LiveView | None, str] = (None, "")

    def handles(self, path: str) -> bool:
        return path.split("?", 1)[0].startswith(PREFIX)

    def page(self, connection: ServerConnection, request: Request) -> Response:
        path = request.path.split("?", 1)[0]
        if path == SCRIPT:
            return file_response(PAGE_DIR / "takeover.js", "text/javascript; charset=utf-8")
        robot_id = path.removeprefix(PREFIX).rstrip("/")
        if not DEVICE_ID.fullmatch(robot_id):
            return connection.respond(404, "not found: a robot's takeover page is at /takeover/<robot id>\n")
        return file_response(PAGE_DIR / "index.html", "text/html; charset=utf-8")

    def view(self, view: pb.LiveView) -> str:
        """The view as JSON, made once for every page that watches its robot."""
        if self._cached[0] is not view:
            self._cached = (view, view_json(view))
        return self._cached[1]

    async def serve(self, connection: ServerConnection) -> None:
        path = connection.request.path.split("?", 1)[0] if connection.request else ""
        robot_id = path.removeprefix(PREFIX).removesuffix("/ws")
        if not path.endswith("/ws") or not DEVICE_ID.fullmatch(robot_id):
            await connection.close(1008, "not a takeover page's websocket: /takeover/<robot id>/ws")
            return
        try:
            raw = await asyncio.wait_for(connection.recv(), timeout=self.hello_timeout_s)
            hello = parse_takeover_hello(raw)
            device = self.access.operator(hello.operator, hello.token)
            self.access.check_reach(device, robot_id)
        except (TimeoutError, websockets.ConnectionClosed):
            await connection.close(1008, "hello: the first message must be a hello")
            return
        except (PhoneError, AuthError) as err:
            log.warning("refused a takeover page for %s: %s", printable(robot_id), err)
            await _send(connection, {"type": "error", "field": err.field, "message": err.message})
            await connection.close(1008, err.field)
            return
        page = _Page(self, connection, robot_id, device, hello)
        await page.run()


class _Page:
    """One page connection: a ``Watcher`` of its robot for the relay, and the commands its person sends."""

    def __init__(
        self, pages: TakeoverPages, connection: ServerConnection, robot_id: str, device: Device, hello: TakeoverHello
    ) -> None:
        self.pages = pages
        self.connection = connection
        self.robot_id = robot_id
        self.device = device
        self.who = WHO_PREFIX + device.id
        self.session_id = uuid.uuid4().hex[:12]
        self.rate_hz = hello.rate_hz
        self.image_side = hello.image_side
        self.seq = 0
        self._window = (0.0, 0)  # (second it started, commands in it)
        self._answers: asyncio.Queue[dict] = asyncio.Queue(MAX_WAITING)
        self._view = ""
        self._wake = asyncio.Event()

    # ---- Watcher (called by the relay on the gateway's loop) ----------------------------------------------------

    def live_view(self, view: pb.LiveView) -> None:
        self._view = self.pages.view(view)
        self._wake.set()

    def refused(self, refused: pb.PersonRefused) -> None:
        self._answer({"type": "refused", "seq": refused.seq, "reason": refused.reason})

    def robot_connected(self, session: Session) -> None:
        self._answer(robot_info(session))

    # ---- the connection -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        relay = self.pages.relay
        session = relay.session(self.robot_id)
        welcome = {"type": "welcome", "who": self.who, "session": self.session_id, "robot": self.robot_id}
        await _send(self.connection, welcome)
        self._answer(robot_info(session) if session else {"type": "robot", "robot": self.robot_id, "connected": False})
        relay.watch(self.robot_id, self)
        log.info("%s opened the takeover page of %s", self.who, self.robot_id)
        sender = asyncio.create_task(self._send_loop())
        watch = self.pages.gateway.credentials
        held = watch.hold(self.device, f"takeover page of {self.robot_id}", self._revoked) if watch else None
        try:
            async for raw in self.connection:
                try:
                    self._command(raw)
                except (PhoneError, AuthError) as err:
                    log.warning("refused a command from %s for %s: %s", self.who, self.robot_id, err)
                    self._answer({"type": "error", "field": err.field, "message": err.message})
                    if err.field == "hello.token":
                        break
        except websockets.ConnectionClosed:
            pass
        finally:
            sender.cancel()
            if watch is not None and held is not None:
                watch.release(held)
            relay.unwatch(self.robot_id, self)
            if self.seq:  # its person's commands stop here: a driving person's robot holds now
                left = pb.PersonCommand(who=self.who, session=self.session_id, seq=self.seq + 1, left=True)
                relay.command(self.robot_id, left)
            log.info("%s closed the takeover page of %s", self.who, self.robot_id)

    async def _revoked(self, message: str) -> None:
        """Its operator's credential was revoked (``CredentialWatch``): the page is told why, and closes."""
        await _send(self.connection, {"type": "error", "field": "hello.token", "message": message})
        await self.connection.close(1008, "hello.token")

    def _command(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            raise PhoneError("command", "must be a JSON text message")
        now = time.monotonic()
        started, count = self._window
        self._window = (now, 1) if now - started >= 1.0 else (started, count + 1)
        if self._window[1] > MAX_COMMANDS_PER_S:
            raise PhoneError("command", f"more than {MAX_COMMANDS_PER_S} commands a second")
        self.pages.access.check_current(self.device)
        session = self.pages.relay.session(self.robot_id)
        action_dim = math.prod(session.resource.capabilities.action.shape) if session is not None else None
        command = parse_command(raw, self.who, self.session_id, action_dim)
        if command.seq <= self.seq:
            raise PhoneError("command.seq", f"must rise: {command.seq} after {self.seq}")
        self.seq = command.seq
        if session is None:
            raise PhoneError("robot", f"{self.robot_id} is not connected; the page reconnects it when it is")
        self.pages.access.check_reach(self.device, self.robot_id)
        self.pages.relay.command(self.robot_id, command)

    def _answer(self, message: dict) -> None:
        try:
            self._answers.put_nowait(message)
        except asyncio.QueueFull:  # a page that does not read: drop the oldest answer
            self._answers.get_nowait()
            self._answers.put_nowait(message)
        self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while not self._answers.empty():
                await _send(self.connection, self._answers.get_nowait())
            view, self._view = self._view, ""
            if view:
                await _send_text(self.connection, view)


async def _send(connection: ServerConnection, message: dict) -> None:
    await _send_text(connection, json.dumps(message))


async def _send_text(connection: ServerConnection, text: str) -> None:
    try:
        await connection.send(text)
    except websockets.ConnectionClosed:
        pass
