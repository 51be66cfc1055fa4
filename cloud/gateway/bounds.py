"""Bounds that keep one device from stalling the rest: how many tunnels may be open at once (in all, before their
hello, per device), and where messages are parsed and decoded (a small worker pool, off the event loop that
serves every tunnel). The limits themselves are GatewayConfig fields; every refusal names the one it hit."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("fleetloop.gateway")

# A message this small (on the wire and decoded) is parsed and decoded on the event loop: a hop to the pool would
# cost more than the work, and a heartbeat or a 10 Hz robot's one-step batch never waits behind another's decode.
INLINE_BYTES = 64 << 10
# A step batch up to this size whose decoding only copies and checks (no zlib, no encoded frames) is decoded on the
# loop too: that work holds the GIL anyway, so a pool thread would add its hop (a third of the gateway's CPU per
# camera batch in bench (a)) and no parallelism; 4 MB take the loop ~2 ms.
COPY_INLINE_BYTES = 4 << 20


class LimitError(Exception):
    """A bound was reached: ``field`` names what hit it, the message names the limit (a GatewayConfig field). The
    sender may retry later; nothing about it is wrong."""

    code = "resource_exhausted"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# How often the log says that silent tunnels were closed to make room: an attacker re-opening them forever would
# otherwise write a line for each.
EVICTION_LOG_EVERY_S = 10.0


def peer_host(peer: str) -> str:
    """The host of a gRPC peer ("ipv4:10.0.0.5:41234" -> "10.0.0.5"); an IPv6 peer's /64, which one host can fill
    with addresses of its own. Anything else (a unix socket, a proxy's name) is kept whole."""
    kind, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0].strip("[]")
    if kind == "ipv6" and host:
        try:
            return str(ipaddress.ip_network(f"{host}/64", strict=False))
        except ValueError:
            return host
    return host or peer


class StreamSlot:
    """One open tunnel stream, counted from its first byte to its end; ``admit`` names its device. While it waits
    for its hello it may be closed to make room (``evicted`` is set): its server then ends the stream."""

    def __init__(self, limits: StreamLimits, host: str) -> None:
        self._limits = limits
        self.host = host
        self.device = ""
        self.heard = False  # its first message arrived: it is being read, and no longer evicted
        self.evicted = asyncio.Event()
        self._closed = False

    def hear(self) -> None:
        """Its first message arrived: it is no longer closed to make room for others."""
        self._limits.heard(self)

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
    counts until it has ended).

    A new stream past ``max_pending_hellos`` is not refused: the oldest silent stream of the host holding the most
    silent streams is closed to make room. Refusing the new one would let an attacker that holds the pending
    places with streams that never speak lock every robot out; closing the oldest lets a robot in as long as its
    hello arrives before that many newer streams open. A robot's hello leaves in the same write as its stream's
    headers, so it arrives within a round trip; to close it in that time an attacker must open more streams than
    any other host holds, from at least ``max_pending_hellos`` hosts of its own (its own streams go first
    otherwise, since the host holding the most goes first)."""

    def __init__(self, max_streams: int, max_pending_hellos: int, max_per_device: int) -> None:
        self.max_streams = max_streams
        self.max_pending_hellos = max_pending_hellos
        self.max_per_device = max_per_device
        self.open_streams = 0
        self.pending = 0
        self.per_device: Counter[str] = Counter()
        self.refused = 0
        self.evicted = 0
        self._silent: dict[StreamSlot, None] = {}  # pending and not yet heard, oldest first
        self._logged_evictions = 0
        self._logged_at = -EVICTION_LOG_EVERY_S

    def open(self, peer: str = "") -> StreamSlot:
        """A slot for a new stream from ``peer`` (gRPC's peer string), or LimitError naming the limit it would
        pass. At ``max_pending_hellos``, the oldest silent stream of the busiest host is evicted for it."""
        if self.open_streams >= self.max_streams:
            self._refuse(
                "connect", f"{self.open_streams} tunnels are open, the limit (max_streams) is {self.max_streams}"
            )
        if self.pending >= self.max_pending_hellos:
            self._evict_one()
        self.open_streams += 1
        self.pending += 1
        slot = StreamSlot(self, peer_host(peer))
        self._silent[slot] = None
        return slot

    def _evict_one(self) -> None:
        if not self._silent:  # every waiting stream has sent its first message, which is being read
            self._refuse(
                "hello",
                f"{self.pending} tunnels wait for their hello, the limit (max_pending_hellos) is "
                f"{self.max_pending_hellos}",
            )
        hosts = Counter(slot.host for slot in self._silent)
        busiest = max(hosts.values())
        victim = next(slot for slot in self._silent if hosts[slot.host] == busiest)
        del self._silent[victim]
        self.pending -= 1
        self.evicted += 1
        victim.evicted.set()
        self._log_evictions(victim.host)

    def _log_evictions(self, host: str) -> None:
        now = time.monotonic()
        if now - self._logged_at < EVICTION_LOG_EVERY_S:
            return
        count, self._logged_evictions, self._logged_at = self.evicted - self._logged_evictions, self.evicted, now
        log.warning(
            "closed %d connection(s) that had not introduced themselves, the latest from %s, to let newer ones in: "
            "more than %d were waiting (max_pending_hellos); a robot that keeps being closed this way is crowded "
            "out by someone opening connections without saying who they are",
            count,
            host or "an unknown address",
            self.max_pending_hellos,
        )

    def heard(self, slot: StreamSlot) -> None:
        """``slot``'s first message arrived: it is no longer evicted to make room."""
        slot.heard = True
        self._silent.pop(slot, None)

    def admit(self, slot: StreamSlot, device: str) -> None:
        if slot.evicted.is_set():  # closed to make room while its hello was on its way: its place is gone
            self._refuse("hello", "this tunnel waited too long for its hello (max_pending_hellos); reconnect")
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
        self._silent.pop(slot, None)
        if slot.device:
            self.per_device[slot.device] -= 1
            if not self.per_device[slot.device]:
                del self.per_device[slot.device]
        elif not slot.evicted.is_set():
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
