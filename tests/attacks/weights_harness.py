"""A real gateway on loopback (its own event loop thread) over a data folder, and one real edge: the tunnel client
and local policy runtime wired as the edge agent wires them, counting every version offered to it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator

from cloud.data.layout import DataLayout
from cloud.data.learner_key import verifying_registry
from cloud.data.store import EpisodeStore
from cloud.gateway.config import GatewayConfig
from cloud.gateway.server import Gateway
from edge.local_runtime import LocalPolicyRuntime
from edge.spool import Spool
from edge.tunnel_client import TunnelClient, TunnelConfig
from fleetloop.fleet_view import fetch
from hal.resource import ArraySpec, Capabilities, ResourceInfo

RESOURCE = ResourceInfo(
    "robot-1",
    "robot",
    Capabilities((ArraySpec("state", "float32", (3,)),), ArraySpec("action", "float32", (2,)), 10.0, "pick"),
    source="sim",
)


class CountingEdge:
    """The edge's tunnel and runtime; ``offers`` counts the versions whose first piece arrived."""

    def __init__(self, target: str, spool: Spool) -> None:
        self.offered: Counter[tuple[str, int]] = Counter()
        self.runtime = LocalPolicyRuntime(
            on_swapped=lambda name, version: self.tunnel.report_applied(name, version),
            on_rejected=lambda name, version, reason, bad: self.tunnel.report_rejected(name, version, reason, bad),
        )
        self.tunnel = TunnelClient(TunnelConfig(target, "pick"), RESOURCE, spool, on_policy=self.runtime.load)
        receive = self.tunnel._receive_policy_chunk

        def counting(chunk, data=None) -> None:
            if chunk.offset == 0:
                self.offered[(chunk.policy_name, chunk.version)] += 1
            receive(chunk, data)

        self.tunnel._receive_policy_chunk = counting  # type: ignore[method-assign]

    def version(self) -> int:
        self.runtime.begin_tick()  # a tick boundary: a loaded version swaps in here
        return self.runtime.version

    def wait_version(self, version: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.version() != version:
            assert time.monotonic() < deadline, f"the edge never ran v{version} (it runs v{self.runtime.version})"
            time.sleep(0.05)

    def offers(self, name: str, version: int) -> int:
        return self.offered[(name, version)]


@contextlib.contextmanager
def edge_and_gateway(layout: DataLayout) -> Iterator[tuple[CountingEdge, Gateway]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    store = EpisodeStore(layout.store)
    gateway = Gateway(GatewayConfig(host="127.0.0.1", port=0), store, verifying_registry(layout))
    port = asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(30)
    edge = CountingEdge(f"127.0.0.1:{port}", Spool(layout.root / "spool.db"))
    edge.tunnel.start()
    try:
        yield edge, gateway
    finally:
        edge.tunnel.stop()
        edge.runtime.close()
        asyncio.run_coroutine_threadsafe(gateway.stop(0.5), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        store.close()


def fleet_refusals(gateway: Gateway) -> str:
    """What ``fleetloop fleet`` shows as refused, for every robot."""
    status = fetch(f"127.0.0.1:{gateway.port}")
    return " | ".join(member.refused for member in status.members)
