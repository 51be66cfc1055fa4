"""The fleet dashboard, on the phone channel's HTTPS port: ``/dashboard`` is the page, its websocket
(``/dashboard/ws``) carries the live fleet, the learning curves and the episode browser to it, and its operator's
commands (pause, resume, drain, stop, e-stop, release; promote or roll back a canary version) to the fleet.

Who may: an operator device, with its token in the page's hello (as on the takeover pages); one whose record lists
policies sees and commands only the robots running one of them. Cross-site requests: the page keeps no cookie, so
another site's page cannot act with the operator's rights (it would need the token), and a websocket whose Origin is
not this page's own is refused before its hello. An emergency stop goes at once; stopping a robot's task, releasing an
emergency stop, promoting a canary version to every robot and rolling one back ask the person to confirm, and the
server takes them only when confirmed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from cloud.channels import dashboard_views as views
from cloud.channels.operator_access import OperatorAccess
from cloud.channels.phone_http import file_response
from cloud.channels.phone_messages import PhoneError
from cloud.data.rollout_records import rollout_states
from cloud.data.store_union import StoreUnion
from cloud.gateway.control import ACTIONS, FleetControl
from cloud.gateway.server import Gateway
from cloud.security.devices import AuthError, Device
from protocol.sanitize import printable

log = logging.getLogger("fleetloop.dashboard")

PREFIX = "/dashboard"
SOCKET = PREFIX + "/ws"
PAGE_DIR = Path(__file__).with_name("dashboard_page")
FILES = {  # URL path -> (file, content type)
    PREFIX: ("index.html", "text/html; charset=utf-8"),
    PREFIX + "/": ("index.html", "text/html; charset=utf-8"),
    PREFIX + "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
}
# Taken only with "confirmed": true (the page asked the person first): taking a robot's task away, letting an
# e-stopped robot move again, sending a briefly tested version to every robot, undoing a version. An emergency stop
# itself is never delayed by a question.
CONFIRMED = ("stop", "release", "promote", "rollback")
MAX_MESSAGE_BYTES = 4096  # a page sends hellos, commands and requests, all small


class DashboardPages:
    """A route of the phone channel's page server (``PageRoute``): the dashboard page and its websockets."""

    title = "fleet dashboard (operator credential)"
    path_hint = PREFIX

    def __init__(
        self,
        gateway: Gateway,
        store: StoreUnion,
        update_s: float = 1.0,
        curves_every_s: float = 5.0,
        hello_timeout_s: float = 10.0,
        canary: Callable[[str], str] = lambda _robot: "",
        runs: Path | None = None,
    ) -> None:
        self.gateway = gateway
        self.store = store  # every gateway's partition, read only
        self.access = OperatorAccess(gateway)
        self.control = FleetControl(gateway.fleet, gateway.sessions, gateway.config.devices)
        self.update_s = update_s
        self.hello_timeout_s = hello_timeout_s
        self.runs = runs  # the learner's TensorBoard runs (``<root>/runs``): the training loss curves
        self.canary = canary  # robot -> its rollout role ("canary", "incumbent" or ""); canary rollouts fill it
        self.curves = _Reread(self._read_curves, curves_every_s, {})  # per dataset: its policy's curves
        self.rollouts = _Reread(lambda: rollout_states(gateway.registry), curves_every_s, {})  # per policy

    def handles(self, path: str) -> bool:
        path = path.split("?", 1)[0]
        return path == PREFIX or path.startswith(PREFIX + "/")

    def page(self, connection: ServerConnection, request: Request) -> Response:
        found = FILES.get(request.path.split("?", 1)[0])
        if found is None:
            return connection.respond(404, "not found: the dashboard is at /dashboard\n")
        name, content_type = found
        return file_response(PAGE_DIR / name, content_type)

    async def serve(self, connection: ServerConnection) -> None:
        request = connection.request
        path = request.path.split("?", 1)[0] if request else ""
        if path != SOCKET:
            await connection.close(1008, f"not the dashboard's websocket: {SOCKET}")
            return
        origin = request.headers.get("Origin") if request else None
        if origin is not None and urlsplit(origin).netloc != request.headers.get("Host"):
            log.warning("refused a dashboard connection from another site's page (Origin %s)", printable(origin))
            await connection.close(1008, "origin: the dashboard answers its own page only")
            return
        connection.protocol.max_message_size = MAX_MESSAGE_BYTES
        try:
            device = self.access.operator(*_hello(await asyncio.wait_for(connection.recv(), self.hello_timeout_s)))
        except (TimeoutError, websockets.ConnectionClosed):
            await connection.close(1008, "hello: the first message must be a hello")
            return
        except (PhoneError, AuthError) as err:
            log.warning("refused a dashboard: %s", err)
            await _send(connection, {"type": "error", "field": err.field, "message": err.message})
            await connection.close(1008, err.field)
            return
        await _Board(self, connection, device).run()

    def _read_curves(self) -> dict[str, dict]:
        """Per dataset, its policy's learning curves: per version from the store, training losses from the learner's
        TensorBoard run."""
        self.store.refresh()
        names = self.store.datasets()
        versions = views.curves(self.store, names)
        return {
            name: {"versions": versions[name], "losses": views.losses(self.runs, name) if self.runs else {}}
            for name in names
        }


class _Reread[T]:
    """A value read on a worker thread at most every ``every_s``, shared by every open dashboard (one read at a
    time: pages that ask meanwhile get its result)."""

    def __init__(self, read: Callable[[], T], every_s: float, empty: T) -> None:
        self.read, self.every_s, self.value = read, every_s, empty
        self._at = -math.inf
        self._lock = asyncio.Lock()

    async def get(self) -> T:
        async with self._lock:
            if time.monotonic() - self._at >= self.every_s:
                self.value = await asyncio.to_thread(self.read)
                self._at = time.monotonic()
        return self.value

    def forget(self) -> None:
        """The next ``get`` reads afresh."""
        self._at = -math.inf


class _Board:
    """One dashboard connection: a snapshot every ``update_s``, and the page's requests and commands."""

    def __init__(self, pages: DashboardPages, connection: ServerConnection, device: Device) -> None:
        self.pages = pages
        self.connection = connection
        self.device = device
        self.rates: dict[str, views.FleetRate] = {}

    async def run(self) -> None:
        log.info("operator %s opened the dashboard", self.device.id)
        await _send(self.connection, {"type": "welcome", "operator": self.device.id, "actions": list(ACTIONS)})
        sender = asyncio.create_task(self._updates())
        try:
            async for raw in self.connection:
                try:
                    self.pages.access.check_current(self.device)
                    await _send(self.connection, await self._answer(raw))
                except (PhoneError, AuthError, KeyError) as err:
                    field, message = _error_of(err)
                    await _send(self.connection, {"type": "error", "field": field, "message": message})
                    if field == "hello.token":
                        break
        except websockets.ConnectionClosed:
            pass
        finally:
            sender.cancel()

    async def _updates(self) -> None:
        gateway = self.pages.gateway
        try:
            while True:
                rows = views.fleet_rows(
                    list(gateway.fleet.members.values()),
                    gateway.sessions,
                    gateway.fleet.clock(),
                    self.rates,
                    lambda robot: self.pages.access.reaches(self.device, robot),
                    self.pages.canary,
                )
                rollouts = views.rollout_rows(await self.pages.rollouts.get(), self._sees_policy)
                update = {"type": "fleet", "fleet": rows, "curves": await self.pages.curves.get(), "rollouts": rollouts}
                await _send(self.connection, update)
                await asyncio.sleep(self.pages.update_s)
        except websockets.ConnectionClosed:
            pass

    def _sees_policy(self, policy: str) -> bool:
        return not self.device.policies or policy in self.device.policies

    async def _answer(self, raw: str | bytes) -> dict:
        message = _object(raw)
        kind = message.get("type")
        if kind == "command":
            return self._command(message)
        if kind == "rollout":
            return self._rollout(message)
        if kind == "episodes":
            dataset = _text(message, "dataset")
            listed = await asyncio.to_thread(views.episode_list, self.pages.store, dataset)
            return {"type": "episodes", "dataset": dataset, "episodes": listed}
        if kind == "episode":
            dataset, episode = _text(message, "dataset"), _text(message, "id")
            detail = await asyncio.to_thread(views.episode_detail, self.pages.store, dataset, episode)
            return {"type": "episode", "dataset": dataset, "episode": detail}
        raise PhoneError("type", f"must be one of command, rollout, episodes, episode; got {printable(str(kind))}")

    def _command(self, message: dict) -> dict:
        action, robot = _text(message, "action"), _text(message, "robot")
        if action in CONFIRMED and message.get("confirmed") is not True:
            raise PhoneError("confirmed", f"{action} {robot}: the page must ask the person to confirm first")
        self.pages.access.check_reach(self.device, robot)
        ok, said = self.pages.control.apply(action, robot, f"dashboard: {self.device.id}")
        log.info("operator %s on the dashboard: %s %s: %s", self.device.id, action, robot, said)
        return {"type": "done" if ok else "error", "action": action, "robot": robot, "message": said}

    def _rollout(self, message: dict) -> dict:
        """An operator promotes or rolls back a canary version (as ``fleetloop fleet promote|rollback``)."""
        policy, decision = _text(message, "policy"), _text(message, "decision")
        version = message.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise PhoneError("version", "must be a version number (an integer from 1)")
        if decision in CONFIRMED and message.get("confirmed") is not True:
            raise PhoneError("confirmed", f"{decision} of {policy} v{version}: the page must ask to confirm first")
        if not self._sees_policy(policy):
            raise AuthError("policy", f"{self.device.id!r} may not decide rollouts of {policy}")
        if not self.pages.gateway.config.canary:
            raise PhoneError("rollout", "canary rollouts are off: start the cloud with --canary")
        try:
            said = self.pages.gateway.rollouts.decide(
                policy, version, decision, "operator", f"dashboard: {self.device.id}"
            )
        except ValueError as err:
            field, _, why = str(err).partition(": ")
            raise PhoneError(field, why or field) from None
        self.pages.rollouts.forget()  # the next update shows the decision
        return {"type": "done", "policy": policy, "version": version, "message": said}


def _hello(raw: str | bytes) -> tuple[str, str]:
    message = _object(raw)
    if message.get("type") != "hello":
        raise PhoneError("hello.type", "the first message must be a hello")
    return _text(message, "operator", "hello."), _text(message, "token", "hello.")


def _object(raw: str | bytes) -> dict:
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise PhoneError("message", f"not JSON: {err}") from None
    if not isinstance(message, dict):
        raise PhoneError("message", "must be a JSON object")
    return message


def _text(message: dict, field: str, prefix: str = "") -> str:
    value = message.get(field)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise PhoneError(prefix + field, "must be a non-empty string of at most 256 characters")
    return value


def _error_of(err: Exception) -> tuple[str, str]:
    if isinstance(err, (PhoneError, AuthError)):
        return err.field, err.message
    field, _, message = str(err.args[0] if err.args else err).partition(": ")
    return field, message or field


async def _send(connection: ServerConnection, message: dict) -> None:
    await connection.send(json.dumps(message))
