"""(c) Control-loop tick jitter at 30 Hz while new policy versions arrive, against the same loop with none.

One EdgeAgent process (NullRobot at 30 Hz, a ~1M-parameter MLP running, record_tick_periods=True)
connected to the in-process gateway runs for ``duration_s``; in the measured run a new version of the
policy is published every ``publish_every_s`` (so the edge receives, checks, loads and swaps it while it
ticks); in the baseline run nothing is published. The first second of each run (connect, first load) is
left out of the percentiles; missed deadlines are the agent's own count over the whole run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.agents import agent_main
from bench.common import LOWER, SPAWN, Children, GatewayHarness, LoopThread, Result
from bench.push import SIZES, policy_blob

POLICY = "bench-jitter"
HZ = 30.0
SETTLE_S = 1.0


@dataclass
class JitterRun:
    p50_ms: float
    p99_ms: float
    missed: int
    ticks: int
    swaps: int
    published: int


def _run(gateway: GatewayHarness, who: str, duration_s: float, blob: bytes | None, every_s: float) -> JitterRun:
    with Children() as children:
        stop = SPAWN.Event()
        spool = str(gateway.store.root.parent / "spool" / f"{who}.db")
        args = (who, gateway.target, spool, POLICY, HZ, duration_s, True, children.messages, stop)
        children.start(agent_main, *args, name=who)
        children.receive("started", 1, timeout_s=180)
        ends = time.monotonic() + duration_s
        published = 0
        stats = None
        if blob is not None:
            latest = gateway.registry.latest(POLICY)
            assert latest is not None
            gateway.wait_applied(POLICY, latest.version, 1, timeout_s=60)  # it runs the policy; now the updates
            while stats is None and time.monotonic() + every_s < ends:
                stats = children.poll("stats", every_s)
                if stats is None:
                    gateway.registry.publish(POLICY, blob)
                    published += 1
        if stats is None:
            stats = children.receive("stats", 1, timeout_s=duration_s + 120)[0]
        children.join(10)
    periods = np.asarray(stats["periods"], dtype=np.float64)
    settled = periods[np.cumsum(periods) > SETTLE_S]
    deviation_ms = np.abs(settled - 1.0 / HZ) * 1e3
    return JitterRun(
        p50_ms=float(np.percentile(deviation_ms, 50)),
        p99_ms=float(np.percentile(deviation_ms, 99)),
        missed=int(stats["missed"]),
        ticks=int(stats["ticks"]),
        swaps=int(stats["swaps"]),
        published=published,
    )


def measure(
    loop: LoopThread,
    workdir: Path,
    duration_s: float = 10.0,
    publish_every_s: float = 0.7,
    say: Callable[[str], None] = print,
) -> list[Result]:
    blob, params = policy_blob(SIZES["1M"])
    with GatewayHarness(loop, workdir / "jitter") as gateway:
        gateway.registry.publish(POLICY, blob)  # both runs start by loading this version
        say(f"tick jitter: EdgeAgent at {HZ:.0f} Hz for {duration_s:.0f} s, no policy updates (baseline)")
        quiet = _run(gateway, "bench-jitter-quiet", duration_s, None, publish_every_s)
        say(
            f"tick jitter: the same with a new {params / 1e6:.1f}M-parameter version published "
            f"every {publish_every_s} s"
        )
        busy = _run(gateway, "bench-jitter-updates", duration_s, blob, publish_every_s)
    say(
        f"  updates: {busy.published} published, {busy.swaps} swapped in, {busy.ticks} ticks, {busy.missed} missed; "
        f"baseline: {quiet.swaps} swap(s), {quiet.ticks} ticks, {quiet.missed} missed"
    )
    note = f"{busy.swaps} swaps in {duration_s:.0f} s vs {quiet.swaps} (initial load only)"
    label = f"tick jitter @{HZ:.0f} Hz, new version every {publish_every_s} s"
    return [
        Result(f"{label}: p50 |period - 1/30 s| (vs no updates)", busy.p50_ms, "ms", quiet.p50_ms, f"{LOWER}; {note}"),
        Result(f"{label}: p99 |period - 1/30 s| (vs no updates)", busy.p99_ms, "ms", quiet.p99_ms, f"{LOWER}; {note}"),
        Result(
            f"{label}: missed deadlines (vs no updates)",
            busy.missed,
            "ticks",
            quiet.missed,
            f"{LOWER}; of {busy.ticks} vs {quiet.ticks} ticks; ratio is null when the baseline missed none; {note}",
        ),
    ]
