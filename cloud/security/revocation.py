"""Revocation: every live connection held on a device credential (a robot's tunnel, a phone's socket, an operator's
takeover page, an openpi client) closes within a fraction of a second of `fleetloop devices revoke`.

Each connection is checked by its device id against the devices file's current record (revoked, removed, or a new
token) every ``REVOCATION_CHECK_S``. The check never asks whether the file changed since *its* last read: the same
registry is re-read by authentication, phone keepalives and `fleetloop fleet --watch`, and a change that one reader
saw first would be gone for the next (the revoked robot kept its tunnel that way).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cloud.security.devices import Device, DeviceRegistry

log = logging.getLogger("fleetloop.security")

REVOCATION_CHECK_S = 0.1  # how often held credentials are checked: a revoked device is cut off within about this

# Ends one connection; given the reason to tell its peer. It may be a coroutine function (closing a websocket).
Close = Callable[[str], Awaitable[None] | None]


def still_valid(devices: DeviceRegistry, device: Device) -> bool:
    """Whether ``device``'s credential, as it was when it connected, is still its current, unrevoked one."""
    current = devices.get(device.id)
    return (
        current is not None
        and not current.revoked
        and current.kind == device.kind
        and hmac.compare_digest(current.token_sha256, device.token_sha256)
    )


@dataclass(eq=False)
class Held:
    """One live connection on one credential: ``what`` it is, in the log's words ("tunnel", "phone connection")."""

    device: Device
    what: str
    close: Close


class CredentialWatch:
    """The live connections on one registry's credentials; closes those whose credential no longer holds.

    Its checking task runs on the event loop of the first ``hold`` while anything is held, and stops when nothing is.
    """

    def __init__(self, devices: DeviceRegistry, period_s: float = REVOCATION_CHECK_S) -> None:
        self.devices = devices
        self.period_s = period_s
        self._held: set[Held] = set()
        self._task: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()  # close coroutines running (kept so they are not collected)
        self._broken = ""  # the last unreadable devices file's error, said once

    def hold(self, device: Device, what: str, close: Close) -> Held:
        """Watches ``device``'s credential from now; call on the event loop that serves the connection."""
        held = Held(device, what, close)
        self._held.add(held)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="credential watch")
        return held

    def release(self, held: Held) -> None:
        """The connection ended on its own: stop watching it."""
        self._held.discard(held)

    @contextmanager
    def holding(self, device: Device, what: str, close: Close) -> Iterator[Held]:
        held = self.hold(device, what, close)
        try:
            yield held
        finally:
            self.release(held)

    def sweep(self) -> list[Held]:
        """Closes every held connection whose credential was revoked, removed or replaced; returns them."""
        self._reload()
        gone = [held for held in self._held if not still_valid(self.devices, held.device)]
        for held in gone:
            self._held.discard(held)
            log.warning("%s: its credential was revoked; closing its %s", held.device.id, held.what)
            result = held.close(f"the credential of {held.device.id!r} was revoked")
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._closing.add(task)
                task.add_done_callback(self._closed)
        return gone

    def _reload(self) -> None:
        try:
            self.devices.reload()
        except ValueError as err:  # a broken devices file: the last good one stands; said once per new error
            if str(err) != self._broken:
                log.error("%s (the last readable one stands)", err)
            self._broken = str(err)
        else:
            self._broken = ""

    def _closed(self, task: asyncio.Task) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("closing a revoked connection failed", exc_info=task.exception())

    async def _run(self) -> None:
        while self._held:
            self.sweep()
            await asyncio.sleep(self.period_s)
