"""Fault injection for tests: a TCP proxy on loopback that can delay, cut and restore a link.

Edges connect to the proxy instead of the gateway. The proxy forwards bytes both ways and, on command:

- ``set_delay(s)``: holds every chunk ``s`` seconds before passing it on (each direction, order kept);
- ``set_bandwidth(bits_per_s)``: a thin link: each connection carries at most that many bits a second each way
  (a token bucket a few KB deep); the proxy stops reading when it is behind, so the sender's TCP fills and its
  writes wait, as on a real slow uplink. ``set_bandwidth(None)`` lifts the limit;
- ``cut()``: the link goes down. Every current connection is reset at once and new ones are refused
  (accepted and reset at once, as a router that drops the session would) until ``restore()``;
  ``cut(blackhole=True)`` instead keeps connections open and silently drops what they send, as a link
  that stops carrying packets does: only keepalives find out;
- ``restore()``: the link is back; connections open again.

It runs an asyncio loop in a daemon thread, keeps at most ``queue_chunks`` chunks in flight per direction
(bounded memory), and stops by itself after ``lifetime_s`` even if a test forgets ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass

PACED_READ_BYTES = 4096  # reads of a bandwidth-limited link: small, so the pacing is smooth
PACED_BURST_S = 0.02  # how much unused link time a paced connection may spend at once


@dataclass
class ProxyStats:
    accepted: int = 0  # connections forwarded to the target
    refused: int = 0  # connections reset because the link was down
    cut: int = 0  # connections reset or frozen by cut()
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client


class _Connection:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.target: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task] = []
        self.frozen = False

    def abort(self) -> None:
        for writer in (self.client, self.target):
            if writer is not None:
                _reset(writer)
        for task in self.tasks:
            task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Closes with RST (SO_LINGER 0), like a link that drops the session, not a polite FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()


class LinkProxy:
    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        listen_port: int = 0,
        delay_s: float = 0.0,
        lifetime_s: float = 900.0,
        queue_chunks: int = 256,
    ) -> None:
        assert target_host == "127.0.0.1", "tests only proxy loopback"
        self.target = (target_host, target_port)
        self.listen_port = listen_port
        self.delay_s = delay_s
        self.bandwidth_bps: float | None = None
        self.lifetime_s = lifetime_s
        self.queue_chunks = queue_chunks
        self.stats = ProxyStats()
        self.port = 0
        self._down = False
        self._blackhole = False
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-proxy", daemon=True)
        self._restore_timer: threading.Timer | None = None
        self._error: BaseException | None = None

    # ---- control (any thread) ----

    def start(self) -> int:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the link proxy did not start: {self._error}")
        return self.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def down(self) -> bool:
        return self._down

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def set_delay(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def set_bandwidth(self, bits_per_s: float | None) -> None:
        """Limits each connection to ``bits_per_s`` each way (None: no limit); takes effect at the next read."""
        assert bits_per_s is None or bits_per_s > 0, "a bandwidth is > 0 bits/s"
        self.bandwidth_bps = bits_per_s

    def cut(self, duration_s: float | None = None, blackhole: bool = False) -> None:
        """Link down: reset (or, with ``blackhole``, freeze) every connection and refuse new ones."""
        self._call(self._cut, blackhole)
        if duration_s is not None:
            self._restore_timer = threading.Timer(duration_s, self.restore)
            self._restore_timer.daemon = True
            self._restore_timer.start()

    def restore(self) -> None:
        """Link up: new connections are forwarded again (frozen ones are reset so their peers reconnect)."""
        self._call(self._restore)

    def stop(self) -> None:
        if self._restore_timer is not None:
            self._restore_timer.cancel()
        loop = self._loop
        if loop is not None and not self._stopped.is_set():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._stopped.set)
        self._stopped.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> LinkProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn, *args) -> None:
        """Runs ``fn`` on the proxy's loop and waits for it, so a cut has happened when cut() returns."""
        assert self._loop is not None, "start() the proxy first"
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("the link proxy did not answer within 10 s")

    # ---- the loop ----

    def _cut(self, blackhole: bool) -> None:
        self._down = True
        self._blackhole = blackhole
        for connection in list(self._connections):
            self.stats.cut += 1
            if blackhole:
                connection.frozen = True
            else:
                connection.abort()
                self._connections.discard(connection)

    def _restore(self) -> None:
        self._down = False
        self._blackhole = False
        for connection in list(self._connections):
            if connection.frozen:  # what it swallowed is gone: the stream cannot go on
                connection.abort()
                self._connections.discard(connection)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # noqa: BLE001 (reported through start())
            self._error = err
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port, reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        deadline = time.monotonic() + self.lifetime_s
        try:
            while not self._stopped.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            server.close()
            for connection in list(self._connections):
                connection.abort()
            self._connections.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        if self._down and not self._blackhole:
            self.stats.refused += 1
            _reset(writer)
            return
        self._connections.add(connection)
        if self._down:  # blackhole: the connection opens but nothing ever comes through
            connection.frozen = True
            self.stats.cut += 1
            return
        try:
            target_reader, target_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), timeout=5)
        except (OSError, TimeoutError):
            self._connections.discard(connection)
            _reset(writer)
            return
        connection.target = target_writer
        if connection not in self._connections:  # cut while connecting
            connection.abort()
            return
        self.stats.accepted += 1
        connection.tasks = [
            asyncio.create_task(self._pipe(connection, reader, target_writer, up=True)),
            asyncio.create_task(self._pipe(connection, target_reader, writer, up=False)),
        ]

    async def _pipe(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(self.queue_chunks)

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                if connection.frozen:
                    continue
                # Counted before the write, so a peer that has the bytes always finds them counted.
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                try:
                    writer.write(data)
                    await writer.drain()
                except OSError:  # the receiving side is gone
                    connection.abort()
                    return

        sender = asyncio.create_task(deliver())
        free_at = time.monotonic()  # when the paced link has carried everything read so far
        try:
            while data := await reader.read(PACED_READ_BYTES if self.bandwidth_bps else 1 << 16):
                if connection.frozen:
                    continue  # swallowed, as by a dead link
                if self.bandwidth_bps:  # paced before queueing: nothing is read while the link is behind
                    free_at = max(free_at, time.monotonic() - PACED_BURST_S) + len(data) * 8 / self.bandwidth_bps
                    if (behind := free_at - time.monotonic()) > 0:
                        await asyncio.sleep(behind)
                await queue.put((time.monotonic() + self.delay_s, data))
            await queue.put(None)
            await sender
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sender.cancel()
            # One side closed or failed: the other side learns at once (a proxy does not keep half a stream).
            if not connection.frozen:
                connection.abort()
                self._connections.discard(connection)
