"""(b) Weight push: from ``registry.publish`` to the edge's "applied" report, against raw gRPC + sha256.

Edges are EdgeAgent processes (NullRobot at 30 Hz, no operator) connected to the in-process gateway;
the gateway's ``on_applied`` callback stamps this host's monotonic clock when an edge reports the swap.
Every timed push starts with the ~1M policy running on every edge (a warm-up push of each size first,
and an untimed reset push after a big one), so the edges' load is the same for every repetition. The baseline pushes
the same bytes over a raw gRPC stream in 1 MB chunks to as many subscriber processes, each of which
assembles them, runs sha256 and reports back on its stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.agents import agent_main, subscriber_main
from bench.common import LOWER, SPAWN, Children, GatewayHarness, LoopThread, Result, median, wait_for
from bench.raw import RawServer

POLICY = "bench-push"
OBSERVATION = {"state": {"shape": [21], "dtype": "float32"}}  # NullRobot's state; its action has 4 dims
SIZES: dict[str, list[int]] = {"1M": [1000, 1000], "50M": [5000, 5000, 5000]}  # 1.03M and 50.1M parameters


def policy_blob(hidden: list[int]) -> tuple[bytes, int]:
    """Safetensors bytes of an MLP policy with these hidden sizes, and its parameter count."""
    from policies.factory import make_policy
    from policies.weights import policy_to_bytes

    policy = make_policy("mlp", {"observation": OBSERVATION, "action_dim": 4, "chunk_size": 1, "hidden": hidden})
    return policy_to_bytes(policy), sum(p.numel() for p in policy.parameters())


def _schedule(blobs: dict[str, bytes], repeats: int, push: Callable[[bytes], float]) -> dict[str, list[float]]:
    """A warm-up push of each size (ours and raw alike: the figures are those of a cloud that has published before,
    as a learner does every few minutes for hours, not of its first publish of that size), then ``repeats`` timed
    pushes per size, each from the small one running."""
    small = next(iter(blobs.values()))
    for blob in blobs.values():
        push(blob)
    push(small)
    last = small
    times: dict[str, list[float]] = {label: [] for label in blobs}
    for label, blob in blobs.items():
        for _ in range(repeats):
            if last is not small:
                push(small)
            times[label].append(push(blob))
            last = blob
    return times


STAGES = ("published", "first chunk", "last chunk", "sha256+signature checked", "loaded", "applied")


def _stages(started: float, published: float, trace: dict[str, float], applied: float) -> dict[str, float]:
    """When each stage of one edge's push ended, in seconds after ``registry.publish`` was called (the stamps its
    agent took, all on this host's monotonic clock). Pieces travel while the publish writes its file, so the first
    and last chunk may come before ``published`` returns; the edge applies nothing before the version is durable."""
    marks = [published, trace["first_chunk"], trace["last_chunk"], trace["verified"], trace["loaded"], applied]
    return {stage: mark - started for stage, mark in zip(STAGES, marks, strict=True)}


def _fleetloop(
    loop: LoopThread, root: Path, edges: int, blobs: dict[str, bytes], repeats: int
) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """Timed pushes per size, and for the last push of each size the stages of its slowest edge."""
    stages: dict[int, dict[str, float]] = {}
    with Children() as children, GatewayHarness(loop, root) as gateway:
        stop = SPAWN.Event()
        for i in range(edges):
            who = f"bench-push-{i}"
            spool = str(root / "spool" / f"{who}.db")
            args = (who, gateway.target, spool, POLICY, 30.0, 0.0, False, children.messages, stop, True)
            children.start(agent_main, *args, name=who)
        children.receive("started", edges, timeout_s=180)
        gateway.wait_sessions(edges, timeout_s=60)

        def push(blob: bytes) -> float:
            started = time.monotonic()
            version = gateway.registry.publish(POLICY, blob).version
            published = time.monotonic()
            applied = gateway.wait_applied(POLICY, version, edges, timeout_s=300)
            traces = {t["who"]: t for t in children.receive("trace", edges, timeout_s=60)}
            if any(t["version"] != version for t in traces.values()):
                raise RuntimeError(f"expected traces of v{version}, got {traces}")
            slowest = max(applied, key=applied.__getitem__)
            stages[len(blob)] = _stages(started, published, traces[slowest], applied[slowest])
            return applied[slowest] - started

        times = _schedule(blobs, repeats, push)
        stop.set()
        children.receive("stats", edges, timeout_s=60)
        children.join(10)
    return times, {label: stages[len(blob)] for label, blob in blobs.items()}


def _raw(loop: LoopThread, edges: int, blobs: dict[str, bytes], repeats: int) -> dict[str, list[float]]:
    with Children() as children, RawServer(loop) as server:
        for i in range(edges):
            children.start(subscriber_main, f"raw-sub-{i}", server.target, children.messages, name=f"raw-sub-{i}")
        wait_for(lambda: server.subscribers() >= edges, 120, f"{edges} raw subscriber(s)", interval_s=0.05)

        def push(blob: bytes) -> float:
            started = time.monotonic()
            generation = server.push(blob)
            return max(server.wait_done(generation, edges, timeout_s=300)) - started

        return _schedule(blobs, repeats, push)


def measure(
    loop: LoopThread,
    workdir: Path,
    edge_counts: tuple[int, ...] = (1, 4),
    sizes: dict[str, list[int]] | None = None,
    repeats: int = 2,
    say: Callable[[str], None] = print,
) -> list[Result]:
    sizes = SIZES if sizes is None else sizes
    say(f"weight push: building MLP policies ({', '.join(sizes)} parameters)")
    blobs: dict[str, bytes] = {}
    for label, hidden in sizes.items():
        blob, params = policy_blob(hidden)
        blobs[label] = blob
        say(f"  {label}: hidden {hidden}, {params / 1e6:.2f}M parameters, {len(blob) / 1e6:.1f} MB")
    results: list[Result] = []
    for edges in edge_counts:
        plural = "s" if edges > 1 else ""
        say(f"weight push: {edges} EdgeAgent process{'es' if edges > 1 else ''}, publish -> applied, x{repeats}")
        ours, stages = _fleetloop(loop, workdir / f"push-{edges}", edges, blobs, repeats)
        say(f"weight push: {edges} raw gRPC subscriber{plural}, push -> received + sha256, x{repeats}")
        raw = _raw(loop, edges, blobs, repeats)
        for label in blobs:
            where = ", ".join(f"{stage} {seconds:.3f}" for stage, seconds in stages[label].items())
            results.append(
                Result(
                    f"weight push {label} params, {edges} edge{plural}: publish -> applied (vs raw gRPC + sha256)",
                    median(ours[label]),
                    "s",
                    median(raw[label]),
                    f"{LOWER}; median of {repeats}; last push, slowest edge, s after publish began: {where}",
                )
            )
            say(
                f"  {label}: fleetloop {' '.join(f'{t:.3f}' for t in ours[label])} s, "
                f"raw {' '.join(f'{t:.3f}' for t in raw[label])} s"
            )
            say(f"    the last one, slowest edge, s after publish began: {where}")
        if edges == 1:
            results += _lerobot_row(sizes, raw, repeats, say)
    return results


def _lerobot_row(
    sizes: dict[str, list[int]], raw: dict[str, list[float]], repeats: int, say: Callable[[str], None]
) -> list[Result]:
    """lerobot's own transport pushing the largest MLP to one actor, against the same run's raw baseline."""
    label = list(sizes)[-1]
    say(f"weight push: lerobot's learner -> actor transport, {label} parameters, 1 actor process, x{repeats}")
    try:
        from bench import lerobot_push

        times = lerobot_push.measure(sizes[label], repeats)
    except ImportError as err:
        say(f"  lerobot's transport cannot run here: {err}")
        return []
    say(f"  {label}: lerobot {' '.join(f'{t:.3f}' for t in times)} s, raw {' '.join(f'{t:.3f}' for t in raw[label])} s")
    return [
        Result(
            f"weight push {label} params, 1 edge: lerobot's transport, push -> loaded (vs raw gRPC + sha256)",
            median(times),
            "s",
            median(raw[label]),
            f"{LOWER}; median of {repeats}; torch.save -> StreamParameters 2 MB chunks -> torch.load; no digest, "
            "no signature, nothing written to disk",
        )
    ]
