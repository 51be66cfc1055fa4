"""Shared plumbing for the benchmarks: results, child processes, the background event loop, the gateway.

Everything here cleans up after itself: child processes are terminated (then killed) on exit, also on
errors; servers listen on port 0 (the OS picks a free port); temporary directories are removed by the caller.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.process
import queue
import socket
import statistics
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SPAWN = multiprocessing.get_context("spawn")
HIGHER = "higher is better"
LOWER = "lower is better"


@dataclass
class Result:
    """One figure: ``ratio`` = value / baseline, both measured in the same run."""

    name: str
    value: float
    unit: str
    baseline: float
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


class Children:
    """Spawned child processes that are always stopped: terminate, then kill, on exit or error."""

    def __init__(self) -> None:
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.messages = SPAWN.Queue()

    def start(self, target: Callable[..., None], *args: Any, name: str) -> multiprocessing.process.BaseProcess:
        process = SPAWN.Process(target=target, args=args, name=name, daemon=True)
        process.start()
        self.processes.append(process)
        return process

    def receive(self, kind: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
        """``count`` messages of ``kind`` from the children (others are dropped); raises on a child's error or death."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {count} {kind!r} from children")
            try:
                message = self.messages.get(timeout=min(left, 0.5))
            except queue.Empty:
                dead = [p for p in self.processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"child {dead[0].name} died with exit code {dead[0].exitcode}") from None
                continue
            if message.get("kind") == "error":
                raise RuntimeError(f"child {message.get('who')} failed:\n{message.get('traceback')}")
            if message.get("kind") == kind:
                got.append(message)
        return got

    def poll(self, kind: str, timeout_s: float) -> dict[str, Any] | None:
        """One message of ``kind`` if a child sends it within ``timeout_s``, else None."""
        try:
            return self.receive(kind, 1, timeout_s)[0]
        except TimeoutError:
            return None

    def join(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        for process in self.processes:
            try:
                process.close()
            except ValueError:
                pass
        self.processes.clear()
        self.messages.close()
        self.messages.join_thread()

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def child_setup() -> None:
    """First thing in every child: Ctrl-C is the parent's to handle, and a child never outlives its parent."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)  # the parent died without stopping us (e.g. SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def report_error(messages: Any, who: str) -> None:
    """Called in a child's ``except``: sends its traceback to the parent."""
    import traceback

    messages.put({"kind": "error", "who": who, "traceback": traceback.format_exc()})


class LoopThread:
    """One asyncio loop in a background thread of the bench process; hosts the gateway and the raw servers.

    One loop for the whole run: grpc.aio binds to the loop it first runs on.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="bench-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call[T](self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(callback, *args)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.call(cancel_all(), timeout_s=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self.loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GatewayHarness:
    """The real Gateway with a real EpisodeStore and PolicyRegistry under ``root``, served on the loop thread.

    Records, on this host's monotonic clock, when each edge reports a version applied (``on_applied``),
    and how long the store's writes take (to show the store's share of the uplink).
    """

    def __init__(self, loop: LoopThread, root: Path, **config: Any) -> None:
        from cloud.data.layout import DataLayout
        from cloud.data.learner_key import signing_registry
        from cloud.data.store import EpisodeStore
        from cloud.gateway.config import GatewayConfig
        from cloud.gateway.server import Gateway

        self.loop = loop
        self.store = EpisodeStore(root / "store")
        self.registry = signing_registry(DataLayout(root))
        self.gateway = Gateway(GatewayConfig(host="127.0.0.1", port=0, **config), self.store, self.registry)
        self.gateway.on_applied.append(self._applied)
        self.applied: dict[tuple[str, int], dict[str, float]] = {}
        self.store_write_s = 0.0
        self.store_writes = 0
        self._cond = threading.Condition()
        write = self.store.write

        def timed_write(batches):  # runs on the gateway's to_thread worker
            started = time.perf_counter()
            try:
                return write(batches)
            finally:
                self.store_write_s += time.perf_counter() - started
                self.store_writes += 1

        self.store.write = timed_write  # type: ignore[method-assign]
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> GatewayHarness:
        self.port = self.loop.call(self.gateway.start())
        return self

    def stop(self) -> None:
        try:
            self.loop.call(self.gateway.stop(0.5), timeout_s=30)
        finally:
            self.store.close()

    def __enter__(self) -> GatewayHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _applied(self, resource_id: str, message: Any) -> None:  # on the loop thread
        now = time.monotonic()
        with self._cond:
            self.applied.setdefault((message.policy_name, message.version), {})[resource_id] = now
            self._cond.notify_all()

    def wait_applied(self, policy_name: str, version: int, edges: int, timeout_s: float) -> dict[str, float]:
        """Resource id -> monotonic time its ``applied`` arrived, once ``edges`` edges applied ``version``."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: len(self.applied.get((policy_name, version), {})) >= edges, timeout=timeout_s
            )
            if not done:
                raise TimeoutError(f"{policy_name} v{version} was not applied on {edges} edge(s) in {timeout_s:.0f} s")
            return dict(self.applied[(policy_name, version)])

    def sessions(self) -> int:
        async def count() -> int:
            return len(self.gateway.sessions)

        return self.loop.call(count())

    def wait_sessions(self, edges: int, timeout_s: float) -> None:
        wait_for(lambda: self.sessions() >= edges, timeout_s, f"{edges} edge(s) to connect", interval_s=0.1)
