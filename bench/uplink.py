"""(a) Uplink: image steps from 1..N edge processes into the episode store, against raw gRPC bytes.

Each edge process pre-fills its spool with batches of NullRobot(image_shape=(96, 96, 3)) steps (as the
recorder makes them), then, on a common start signal, runs a TunnelClient until its spool is empty
(every step acked, i.e. durably in the store). The baseline child streams the same bytes, as many
messages of the same sizes, over a raw gRPC bidi stream to a server on the same loop thread, which
acks each message with a few bytes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import HIGHER, LOWER, SPAWN, Children, GatewayHarness, LoopThread, Result, child_setup, report_error
from bench.raw import RawServer

IMAGE_SHAPE = (96, 96, 3)
DATASET = "null_pixels"  # NullRobot's embodiment when it has a camera
POLICY = "bench-uplink"


def make_batches(resource_id: str, steps: int, batch_steps: int) -> list[Any]:
    """StepBatch messages for ``steps`` steps of NullRobot image episodes, ``batch_steps`` per batch."""
    import numpy as np

    from hal.null import NullRobot
    from protocol.steps import encode_batch, schema_for

    robot = NullRobot(image_shape=IMAGE_SHAPE)
    caps = robot.capabilities
    schema = schema_for([(s.name, s.dtype, s.shape) for s in caps.observation], (caps.action.dtype, caps.action.shape))
    observation = robot.reset()
    batches = []
    made = 0
    while made < steps:
        episode_id = f"{resource_id}-{uuid.uuid4().hex[:12]}"
        episode_steps = min(robot.episode_steps, steps - made)
        for first in range(0, episode_steps, batch_steps):
            k = min(batch_steps, episode_steps - first)
            seqs = np.arange(first, first + k)
            columns = {
                "obs.state": np.repeat(seqs[:, None].astype(np.float32), caps.observation[0].shape[0], axis=1),
                "obs.pixels": np.broadcast_to(observation["pixels"], (k, *IMAGE_SHAPE)),
                "action": np.zeros((k, *caps.action.shape), np.float32),
                "reward": np.zeros(k, np.float32),
                "done": seqs == robot.episode_steps - 1,
                "success": np.zeros(k, np.bool_),
                "intervention": np.zeros(k, np.bool_),
                "policy_version": np.zeros(k, np.int64),
                "t_mono_ns": np.full(k, time.monotonic_ns(), np.int64),
            }
            for name, (dtype, row_shape) in schema.items():  # the columns must be exactly the resource's schema
                value = columns[name]
                assert np.dtype(value.dtype).str == dtype and value.shape[1:] == row_shape, name
            assert set(columns) == set(schema)
            batches.append(encode_batch(episode_id, first, columns, task=DATASET))
        made += episode_steps
    return batches


def edge_main(
    mode: str, index: int, target: str, steps: int, batch_steps: int, spool_dir: str, messages, start, release
) -> None:
    """Child process: pre-fill, wait for the start signal, upload everything, report when all is acked."""
    child_setup()
    who = f"{mode} edge {index}"
    try:
        from hal.null import NullRobot
        from hal.resource import ResourceInfo
        from protocol import tunnel_pb2 as pb

        resource = ResourceInfo(
            id=f"bench-uplink-{index}", kind="robot", capabilities=NullRobot(image_shape=IMAGE_SHAPE).capabilities
        )
        batches = make_batches(resource.id, steps, batch_steps)
        payloads = [pb.EdgeMessage(steps=b).SerializeToString() for b in batches]  # what goes on the wire
        wire_bytes = sum(len(p) for p in payloads)
        if mode == "fleetloop":
            from edge.spool import Spool
            from edge.tunnel_client import TunnelClient, TunnelConfig

            del payloads
            spool = Spool(Path(spool_dir) / f"edge-{index}.db")
            for batch in batches:
                spool.append(batch)
            del batches
            tunnel = TunnelClient(TunnelConfig(target, POLICY), resource, spool, on_policy=lambda *_: None)
            messages.put({"kind": "ready", "who": who, "batches": spool.counts()[0], "bytes": wire_bytes})
            if not start.wait(120):
                raise TimeoutError("no start signal")
            tunnel.start()
            deadline = time.monotonic() + 300
            while tunnel.acked_steps < steps:  # in memory: polling the spool would compete with the upload
                if tunnel.errors:
                    raise RuntimeError(f"the cloud refused a batch: {tunnel.errors[0]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{steps - tunnel.acked_steps} steps still unacked")
                time.sleep(0.005)
            done = time.monotonic()
            messages.put({"kind": "done", "who": who, "t_done": done, "acked": tunnel.acked_steps})
            release.wait(60)
            tunnel.stop()
            spool.close()
        else:
            from bench.raw import upload

            messages.put({"kind": "ready", "who": who, "batches": len(payloads), "bytes": wire_bytes})
            if not start.wait(120):
                raise TimeoutError("no start signal")
            done = upload(target, payloads)
            messages.put({"kind": "done", "who": who, "t_done": done, "acked": steps})
            release.wait(60)
    except Exception:
        report_error(messages, who)


@dataclass
class UplinkRun:
    seconds: float
    steps: int
    wire_bytes: int
    store_write_s: float = 0.0
    drain_s: float = 0.0  # after the last ack, until the store held every row
    lag_p50_s: float = 0.0  # ack -> visible in the store
    lag_p99_s: float = 0.0


def _run(mode: str, loop: LoopThread, root: Path, edges: int, steps: int, batch_steps: int) -> UplinkRun:
    root.mkdir(parents=True, exist_ok=True)
    with Children() as children:
        server = GatewayHarness(loop, root) if mode == "fleetloop" else RawServer(loop)
        with server:
            start, release = SPAWN.Event(), SPAWN.Event()
            for i in range(edges):
                children.start(
                    edge_main,
                    mode,
                    i,
                    server.target,
                    steps,
                    batch_steps,
                    str(root / "spool"),
                    children.messages,
                    start,
                    release,
                    name=f"uplink-{mode}-{i}",
                )
            ready = children.receive("ready", edges, timeout_s=120)
            started = time.monotonic()
            start.set()
            done = children.receive("done", edges, timeout_s=300)
            seconds = max(d["t_done"] for d in done) - started
            release.set()
            children.join(15)
            run = UplinkRun(seconds, edges * steps, sum(r["bytes"] for r in ready))
            if isinstance(server, GatewayHarness):
                drained = time.monotonic()
                if not server.loop.call(server.gateway.writer.drain(120), timeout_s=130):
                    raise RuntimeError("the store did not take in the ingest log within 120 s")
                run.drain_s = time.monotonic() - drained
                run.lag_p50_s, run.lag_p99_s = server.gateway.writer.compactor.lag_percentiles()
                stored = server.store.committed_rows(DATASET)
                if stored != edges * steps:
                    raise RuntimeError(f"the store holds {stored} rows, expected {edges * steps}")
                run.store_write_s = server.store_write_s
    return run


def measure(
    loop: LoopThread,
    workdir: Path,
    edge_counts: tuple[int, ...] = (1, 4),
    steps_per_edge: int = 2400,
    batch_steps: int = 20,
    say: Callable[[str], None] = print,
) -> list[Result]:
    results: list[Result] = []
    for edges in edge_counts:
        say(f"uplink: {edges} edge(s) x {steps_per_edge} image steps through the tunnel into the store")
        ours = _run("fleetloop", loop, workdir / f"uplink-{edges}-fleetloop", edges, steps_per_edge, batch_steps)
        say(f"uplink: {edges} edge(s), the same bytes over raw gRPC")
        raw = _run("raw", loop, workdir / f"uplink-{edges}-raw", edges, steps_per_edge, batch_steps)
        label = f"uplink {edges} edge{'s' if edges > 1 else ''}"
        mb, raw_mb = ours.wire_bytes / 1e6, raw.wire_bytes / 1e6
        steps_s, raw_steps_s = ours.steps / ours.seconds, raw.steps / raw.seconds
        results += [
            Result(f"{label}: steps/s (vs raw gRPC)", steps_s, "steps/s", raw_steps_s, HIGHER),
            Result(f"{label}: MB/s (vs raw gRPC)", mb / ours.seconds, "MB/s", raw_mb / raw.seconds, HIGHER),
            Result(
                f"{label}: time in EpisodeStore.write (vs uplink wall time)",
                ours.store_write_s,
                "s",
                ours.seconds,
                f"{LOWER}; off the ack path (the compactor): ratio = the store's load beside the uplink",
            ),
            Result(
                f"{label}: compaction lag p50, ack -> in the store (vs uplink wall time)",
                ours.lag_p50_s,
                "s",
                ours.seconds,
                f"{LOWER}; ratio = how far the store trails the acks, in uplink times",
            ),
            Result(
                f"{label}: compaction lag p99, ack -> in the store (vs uplink wall time)",
                ours.lag_p99_s,
                "s",
                ours.seconds,
                LOWER,
            ),
        ]
        say(
            f"  fleetloop {ours.steps / ours.seconds:,.0f} steps/s ({mb / ours.seconds:,.0f} MB/s), "
            f"raw {raw.steps / raw.seconds:,.0f} steps/s ({raw_mb / raw.seconds:,.0f} MB/s); "
            f"store writes {ours.store_write_s:.2f} s of {ours.seconds:.2f} s (off the ack path); "
            f"ack -> store lag p50 {ours.lag_p50_s:.2f} s, p99 {ours.lag_p99_s:.2f} s; "
            f"store caught up {ours.drain_s:.2f} s after the last ack"
        )
    return results
