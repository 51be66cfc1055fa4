"""The baselines: raw gRPC byte streams on loopback, no protobuf, no store, no checks.

Generic handlers move ``bytes`` in and out unchanged. The servers run on the bench's loop thread
(where the gateway runs); the clients run in child processes (where the edges run), with the same
channel and server options as the tunnel.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc

from bench.common import LoopThread
from cloud.gateway.config import GRPC_OPTIONS
from protocol.file_writes import write_all

UPLOAD = "/bench.Raw/Upload"
SUBSCRIBE = "/bench.Raw/Subscribe"
ACK = b"ack:0000"  # a few bytes per message, as an Ack is
HEADER = struct.Struct("<qq")  # generation, total bytes


def _options() -> list[tuple[str, int]]:
    return list(GRPC_OPTIONS)


class RawServer:
    """Upload: acks each message with a few bytes. Subscribe: pushes published blobs in chunks."""

    def __init__(self, loop: LoopThread, chunk_bytes: int = 1 << 20) -> None:
        self.loop = loop
        self.chunk_bytes = chunk_bytes
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._subscribers: list[asyncio.Queue] = []
        self._generation = 0
        self._done: dict[int, list[float]] = {}
        self._cond = threading.Condition()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ---- serving (loop thread) ----

    async def _start(self) -> int:
        self._server = grpc.aio.server(options=_options())
        handler = grpc.method_handlers_generic_handler(
            "bench.Raw",
            {
                "Upload": grpc.stream_stream_rpc_method_handler(self._upload),
                "Subscribe": grpc.stream_stream_rpc_method_handler(self._subscribe),
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    async def _upload(self, requests: AsyncIterator[bytes], context) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield ACK

    async def _subscribe(self, requests: AsyncIterator[bytes], context) -> AsyncIterator[bytes]:
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers.append(queue)
        reader = asyncio.create_task(self._read_done(requests))
        try:
            while (item := await queue.get()) is not None:
                generation, data = item
                yield HEADER.pack(generation, len(data))
                for offset in range(0, len(data), self.chunk_bytes):
                    yield data[offset : offset + self.chunk_bytes]
        finally:
            reader.cancel()
            if queue in self._subscribers:
                self._subscribers.remove(queue)

    async def _read_done(self, requests: AsyncIterator[bytes]) -> None:
        async for message in requests:
            if message.startswith(b"done "):
                now = time.monotonic()
                generation = int(message.split()[1])
                with self._cond:
                    self._done.setdefault(generation, []).append(now)
                    self._cond.notify_all()

    # ---- control (bench thread) ----

    def start(self) -> RawServer:
        self.port = self.loop.call(self._start())
        return self

    def stop(self) -> None:
        async def stop() -> None:
            for queue in self._subscribers:
                queue.put_nowait(None)
            if self._server is not None:
                await self._server.stop(0.5)

        self.loop.call(stop(), timeout_s=30)

    def __enter__(self) -> RawServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def subscribers(self) -> int:
        async def count() -> int:
            return len(self._subscribers)

        return self.loop.call(count())

    def push(self, data: bytes) -> int:
        """Queues ``data`` for every subscriber; returns its generation."""
        self._generation += 1
        generation = self._generation

        def put() -> None:
            for queue in self._subscribers:
                queue.put_nowait((generation, data))

        self.loop.soon(put)
        return generation

    def wait_done(self, generation: int, subscribers: int, timeout_s: float) -> list[float]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._done.get(generation, [])) >= subscribers, timeout_s):
                raise TimeoutError(f"push {generation} not received by {subscribers} subscriber(s) in {timeout_s} s")
            return list(self._done[generation])


class DurableRawServer(RawServer):
    """Upload as RawServer's, but a message is acked only once it is written to a file and fdatasync'd: the least
    that any ingest acking only what is durable costs on this machine (no parsing, no checks, no store). One writer
    thread takes every message that arrived while it synced (group commit) and writes them over a file written
    before, as a recycled log segment is."""

    SEGMENT_BYTES = 64 << 20  # as the ingest log's segments

    def __init__(self, loop: LoopThread, folder: Path) -> None:
        super().__init__(loop)
        folder.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(folder / "durable.log", os.O_WRONLY | os.O_CREAT, 0o600)
        self._offset = 0
        self._waiting: list[tuple[bytes, asyncio.Future]] = []
        self._writing = False

    async def _upload(self, requests: AsyncIterator[bytes], context) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        durable: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()

        async def read() -> None:
            async for message in requests:
                future = loop.create_future()
                self._waiting.append((message, future))
                if not self._writing:
                    self._writing = True
                    loop.create_task(self._commit())
                durable.put_nowait(future)
            durable.put_nowait(None)

        reader = loop.create_task(read())
        try:
            while (future := await durable.get()) is not None:
                await future
                yield ACK
        finally:
            reader.cancel()

    async def _commit(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                await asyncio.to_thread(self._write, [message for message, _ in group])
                for _, future in group:
                    future.set_result(None)
        finally:
            self._writing = False

    def _write(self, messages: list[bytes]) -> None:
        if self._offset > self.SEGMENT_BYTES:
            self._offset = 0
        self._offset += write_all(self._fd, messages, self._offset)
        os.fdatasync(self._fd)

    def stop(self) -> None:
        super().stop()
        os.close(self._fd)


# ---- clients (child processes) ----


def upload(target: str, payloads: list[bytes], window: int = 32) -> float:
    """Streams ``payloads`` up, at most ``window`` unacked (as the tunnel does); returns when the last ack came."""
    credits = threading.Semaphore(window)
    all_acked = threading.Event()

    def requests() -> Iterator[bytes]:
        for payload in payloads:
            credits.acquire()
            yield payload
        all_acked.wait()

    with grpc.insecure_channel(target, options=_options()) as channel:
        call = channel.stream_stream(UPLOAD)(requests())
        acks = 0
        last_ack = 0.0
        try:
            for _ in call:
                acks += 1
                credits.release()
                if acks == len(payloads):
                    last_ack = time.monotonic()
                    break
        finally:
            all_acked.set()
            for _ in call:  # the server ends the stream once the requests end
                pass
    if acks != len(payloads):
        raise RuntimeError(f"raw upload: {acks} of {len(payloads)} messages acked")
    return last_ack


def subscribe(target: str) -> int:
    """Receives pushed blobs until the server ends the stream; after each, sha256 and report ``done``."""
    import queue

    outgoing: queue.Queue[bytes | None] = queue.Queue()
    outgoing.put(b"hello")

    def requests() -> Iterator[bytes]:
        while (message := outgoing.get()) is not None:
            yield message

    received = 0
    with grpc.insecure_channel(target, options=_options()) as channel:
        call = channel.stream_stream(SUBSCRIBE)(requests())
        buffer: bytearray | None = None
        generation = total = 0
        try:
            for message in call:
                if buffer is None:
                    generation, total = HEADER.unpack(message)
                    buffer = bytearray()
                    continue
                buffer.extend(message)
                if len(buffer) >= total:
                    data = bytes(buffer)  # as the tunnel client does before checking
                    digest = hashlib.sha256(data).hexdigest()
                    buffer = None
                    received += 1
                    outgoing.put(f"done {generation} {digest}".encode())
        finally:
            outgoing.put(None)
    return received
