"""Child processes that run the real edge: an EdgeAgent with a NullRobot (no device), and raw subscribers."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from bench.common import child_setup, report_error


def agent_main(
    who: str,
    target: str,
    spool_path: str,
    policy_name: str,
    control_hz: float,
    duration_s: float,
    record_tick_periods: bool,
    messages,
    stop,
    trace: bool = False,
    preload_lerobot: bool = False,
) -> None:
    """Runs an EdgeAgent (NullRobot, no operator) until ``duration_s`` passed or ``stop`` is set; reports stats.

    ``trace``: for every policy version, reports when its first and last chunk arrived, when it passed its
    checksum and when it was loaded (this host's monotonic clock), to break a push's time down.
    ``preload_lerobot``: import lerobot's policy code before the loop starts (`fleetloop edge --preload lerobot`).
    """
    child_setup()
    os.environ["OMP_NUM_THREADS"] = "1"  # as the fleet's edges run: the cores are shared
    logging.basicConfig(level=logging.ERROR, format=f"{who} %(levelname)s %(name)s: %(message)s")
    try:
        import torch

        if preload_lerobot:
            from policies.lerobot_policy import preload

            preload()

        from edge.agent import EdgeAgent, EdgeConfig
        from edge.segment_spool import open_spool
        from edge.tunnel_client import TunnelConfig
        from hal.null import NullRobot
        from hal.resource import ResourceInfo

        torch.set_num_threads(1)
        robot = NullRobot(control_hz=control_hz)
        resource = ResourceInfo(id=who, kind="robot", capabilities=robot.capabilities, source="sim")
        config = EdgeConfig(TunnelConfig(target, policy_name), record_tick_periods=record_tick_periods)
        agent = EdgeAgent(config, resource, robot, open_spool(Path(spool_path)))
        if trace:
            _trace(agent, messages, who)
        threading.Thread(target=lambda: (stop.wait(), agent.stop()), daemon=True).start()
        messages.put({"kind": "started", "who": who})
        stats = agent.run(duration_s=duration_s)
        unacked = agent.close(drain_s=3)
        messages.put(
            {
                "kind": "stats",
                "who": who,
                "ticks": stats.ticks,
                "missed": stats.missed_deadlines,
                "periods": stats.tick_periods_s,
                "swaps": agent.runtime.swaps,
                "late_inferences": agent.runtime.late_inferences,
                "unacked": unacked,
            }
        )
    except Exception:
        report_error(messages, who)


def _trace(agent, messages, who: str) -> None:
    """Wraps the agent's tunnel and runtime (on this instance only) to stamp each stage of a push."""
    import collections
    import time

    import edge.local_runtime

    stamps: dict[int, dict[str, float]] = {}
    loading: collections.deque[int] = collections.deque()
    receive_chunk = agent.tunnel._receive_policy_chunk
    on_policy = agent.tunnel.on_policy
    apply_update = edge.local_runtime.apply_update

    def receive_chunk_traced(chunk, data=None) -> None:
        data = chunk.data if data is None else data  # as the tunnel reads it (each read of chunk.data is a copy)
        entry = stamps.setdefault(chunk.version, {})
        if chunk.offset == 0:
            entry["first_chunk"] = time.monotonic()
        if chunk.offset + len(data) >= chunk.total_bytes:
            entry["last_chunk"] = time.monotonic()
        receive_chunk(chunk, data)

    def on_policy_traced(name: str, version: int, data: bytes) -> None:
        stamps.setdefault(version, {})["verified"] = time.monotonic()
        loading.append(version)
        on_policy(name, version, data)

    def apply_update_traced(data: bytes, held):
        try:
            return apply_update(data, held)
        finally:
            version = loading.popleft()
            entry = stamps.pop(version, {})
            entry["loaded"] = time.monotonic()
            messages.put({"kind": "trace", "who": who, "version": version, **entry})

    agent.tunnel._receive_policy_chunk = receive_chunk_traced
    agent.tunnel.on_policy = on_policy_traced
    edge.local_runtime.apply_update = apply_update_traced


def subscriber_main(who: str, target: str, messages) -> None:
    """A raw subscriber: receives pushed blobs, sha256s each, reports it done; ends with the server's stream."""
    child_setup()
    try:
        from bench.raw import subscribe

        messages.put({"kind": "stats", "who": who, "received": subscribe(target)})
    except Exception:
        report_error(messages, who)
