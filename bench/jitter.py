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


def _run(
    gateway: GatewayHarness,
    who: str,
    duration_s: float,
    blob: bytes | None,
    every_s: float,
    preload_lerobot: bool = False,
) -> JitterRun:
    with Children() as children:
        stop = SPAWN.Event()
        spool = str(gateway.store.root.parent / "spool" / f"{who}.db")
        args = (who, gateway.target, spool, POLICY, HZ, duration_s, True, children.messages, stop, False)
        children.start(agent_main, *args, preload_lerobot, name=who)
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


def lerobot_blob() -> bytes:
    """A tiny lerobot ACT over the NullRobot's 21-d state (fed as state and environment state), with statistics."""
    import torch

    from policies.lerobot_policy import LerobotPolicy
    from policies.weights import policy_to_bytes

    tiny = {"dim_model": 32, "n_heads": 2, "dim_feedforward": 64, "n_encoder_layers": 1, "n_decoder_layers": 1}
    tiny.update({"n_vae_encoder_layers": 1, "latent_dim": 8, "chunk_size": 5, "n_action_steps": 5})
    inputs = {"observation.state": ["state"], "observation.environment_state": ["state"]}
    torch.manual_seed(0)
    policy = LerobotPolicy({"state": {"shape": [21], "dtype": "float32"}}, 4, "act", tiny, inputs=inputs)
    rng = np.random.default_rng(0)
    state, action = rng.normal(size=(32, 21)), rng.uniform(-1, 1, size=(32, 4))
    policy.fit_normalization({"obs.state": state.astype(np.float32), "action": action.astype(np.float32)})
    return policy_to_bytes(policy.eval())


def measure_lerobot_load(
    loop: LoopThread, workdir: Path, duration_s: float = 12.0, say: Callable[[str], None] = print
) -> list[Result]:
    """Tick jitter while an edge that ran an MLP receives its first lerobot policy: lerobot imported on arrival
    (the default) vs before the loop started (``--preload lerobot``, the baseline)."""
    blob, _ = policy_blob(SIZES["1M"])
    act = lerobot_blob()
    runs = {}
    with GatewayHarness(loop, workdir / "lerobot-load") as gateway:
        for preload in (False, True):
            gateway.registry.publish(POLICY, blob)  # each run starts on the MLP, then ACT arrives
            say(f"tick jitter: EdgeAgent at {HZ:.0f} Hz, a lerobot ACT arrives ({'preloaded' if preload else 'cold'})")
            who = f"bench-lerobot-{'preloaded' if preload else 'cold'}"
            runs[preload] = _run(gateway, who, duration_s, act, duration_s / 2.5, preload_lerobot=preload)
    cold, warm = runs[False], runs[True]
    say(f"  cold: {cold.missed} missed of {cold.ticks}; preloaded: {warm.missed} missed of {warm.ticks}")
    label = f"tick jitter @{HZ:.0f} Hz as the first lerobot ACT arrives, lerobot imported then (vs --preload lerobot)"
    return [
        Result(f"{label}: p99", cold.p99_ms, "ms", warm.p99_ms, LOWER),
        Result(f"{label}: missed deadlines", cold.missed, "ticks", warm.missed, f"{LOWER}; null ratio: none missed"),
    ]
