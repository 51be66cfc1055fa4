"""Bounds that keep one device from stalling the rest: how many tunnels may be open at once (in all, before their
hello, per device), and where messages are parsed and decoded (a small worker pool, off the event loop that
serves every tunnel). The limits themselves are GatewayConfig fields; every refusal names the one it hit."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("fleetloop.gateway")

# A message this small (on the wire and decoded) is parsed and decoded on the event loop: a hop to the pool would
# cost more than the work, and a heartbeat or a 10 Hz robot's one-step batch never waits behind another's decode.
INLINE_BYTES = 64 << 10


class LimitError(Exception):
    """A bound was reached: ``field`` names what hit it, the message names the limit (a GatewayConfig field). The
    sender may retry later; nothing about it is wrong."""

    code = "resource_exhausted"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StreamSlot:
    """One open tunnel stream, counted from its first byte to its end; ``admit`` names its device."""

    def __init__(self, limits: StreamLimits) -> None:
        self._limits = limits
        self.device = ""
        self._closed = False

    def admit(self, device: str) -> None:
        """The stream's hello named ``device`` (its credential, or its resource id when none is checked)."""
        self._limits.admit(self, device)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._limits.release(self)

    def __enter__(self) -> StreamSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamLimits:
    """Counts the gateway's tunnel streams: at most ``max_streams`` in all, ``max_pending_hellos`` of them before
    their hello was admitted, and ``max_per_device`` of one device (a reconnect supersedes the old stream, which
    counts until it has ended)."""

    def __init__(self, max_streams: int, max_pending_hellos: int, max_per_device: int) -> None:
        self.max_streams = max_streams
        self.max_pending_hellos = max_pending_hellos
        self.max_per_device = max_per_device
        self.open_streams = 0
        self.pending = 0
        self.per_device: Counter[str] = Counter()
        self.refused = 0

    def open(self) -> StreamSlot:
        """A slot for a new stream, or LimitError naming the limit it would pass."""
        if self.open_streams >= self.max_streams:
            self._refuse(
                "connect", f"{self.open_streams} tunnels are open, the limit (max_streams) is {self.max_streams}"
            )
        if self.pending >= self.max_pending_hellos:
            self._refuse(
                "hello",
                f"{self.pending} tunnels wait for their hello, the limit (max_pending_hellos) is "
                f"{self.max_pending_hellos}",
            )
        self.open_streams += 1
        self.pending += 1
        return StreamSlot(self)

    def admit(self, slot: StreamSlot, device: str) -> None:
        if self.per_device[device] >= self.max_per_device:
            self._refuse(
                "hello.resource.id",
                f"{self.per_device[device]} tunnels of {device!r} are open, the limit (max_streams_per_device) is "
                f"{self.max_per_device}",
            )
        self.pending -= 1
        self.per_device[device] += 1
        slot.device = device

    def release(self, slot: StreamSlot) -> None:
        self.open_streams -= 1
        if slot.device:
            self.per_device[slot.device] -= 1
            if not self.per_device[slot.device]:
                del self.per_device[slot.device]
        else:
            self.pending -= 1

    def _refuse(self, field: str, message: str) -> None:
        self.refused += 1
        raise LimitError(field, f"{message}; retry later")


class DecodePool:
    """Parses and decodes what devices send, off the event loop, on at most ``workers`` threads. Each tunnel's
    reader waits for its own message before it reads the next one, so a tunnel has one message in decoding at a
    time: a device that sends faster than its messages decode is held back by HTTP/2 flow control, alone."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gateway-decode")
        self.inline = 0
        self.pooled = 0

    async def run[T](self, cost: int, work: Callable[[], T]) -> T:
        """``work()``'s result; on the loop when ``cost`` (the bytes it reads and makes) is small, else in the pool."""
        if cost <= INLINE_BYTES:
            self.inline += 1
            return work()
        self.pooled += 1
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
