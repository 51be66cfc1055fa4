"""(a) Uplink: image steps from 1..N edge processes into the episode store, against raw gRPC bytes.

Each edge process pre-fills its spool with batches of NullRobot(image_shape=(96, 96, 3)) steps (as the recorder makes
them), then, on a common start signal, runs a TunnelClient until its spool is empty (every step acked, i.e. durably
in the ingest log). The baseline child streams the same bytes, as many messages of the same sizes, over a raw gRPC
bidi stream to a server on the same loop thread, which acks each message with a few bytes. Each server first takes a
warm-up round of the same size (ours and the raw one alike): the figures are those of a server that has been running
(its ingest log's segments recycled), not of its first seconds. A third arm, the durable floor, runs the raw
clients against a server that writes each message to a file and fdatasyncs it (group commit) before the ack: what
acking only durable bytes costs here before any parsing, checking or storing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import HIGHER, LOWER, SPAWN, Children, GatewayHarness, LoopThread, Result, child_setup, report_error
from bench.raw import DurableRawServer, RawServer

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
            from edge.segment_spool import open_spool
            from edge.tunnel_client import TunnelClient, TunnelConfig

            del payloads
            spool = open_spool(Path(spool_dir) / f"edge-{index}.db")
            for batch in batches:
                spool.append(batch)
            del batches
            tunnel = TunnelClient(TunnelConfig(target, POLICY), resource, spool, on_policy=lambda *_: None)
            messages.put({"kind": "ready", "who": who, "batches": spool.counts()[0], "bytes": wire_bytes})
            if not start.wait(120):
                raise TimeoutError("no start signal")
            cpu = time.process_time()
            tunnel.start()
            deadline = time.monotonic() + 300
            while tunnel.acked_steps < steps:  # in memory: polling the spool would compete with the upload
                if tunnel.errors:
                    raise RuntimeError(f"the cloud refused a batch: {tunnel.errors[0]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{steps - tunnel.acked_steps} steps still unacked")
                time.sleep(0.005)
            done, cpu = time.monotonic(), time.process_time() - cpu
            messages.put({"kind": "done", "who": who, "t_done": done, "acked": tunnel.acked_steps, "cpu_s": cpu})
            release.wait(60)
            tunnel.stop()
            spool.close()
        else:
            from bench.raw import upload

            messages.put({"kind": "ready", "who": who, "batches": len(payloads), "bytes": wire_bytes})
            if not start.wait(120):
                raise TimeoutError("no start signal")
            cpu = time.process_time()
            done = upload(target, payloads)
            cpu = time.process_time() - cpu
            messages.put({"kind": "done", "who": who, "t_done": done, "acked": steps, "cpu_s": cpu})
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
    edge_cpu_s: float = 0.0  # all edge processes together, from the start signal to their last ack
    server_cpu_s: float = 0.0  # the server's process (gateway and compactor), from the start signal to the last ack
    compact_mb_s: float = 0.0  # what the compactor moved into the store per second of its writes


def _run(mode: str, loop: LoopThread, root: Path, edges: int, steps: int, batch_steps: int) -> UplinkRun:
    """A warm-up round, then the measured one, on the same server (ours and raw alike): the measured round sees a
    server as it runs for hours, its ingest log's segments recycled, its memory and connections warm."""
    root.mkdir(parents=True, exist_ok=True)
    server: GatewayHarness | RawServer
    if mode == "fleetloop":
        server = GatewayHarness(loop, root)
    else:  # "raw", or "durable": the raw bytes written and fdatasync'd before each ack
        server = DurableRawServer(loop, root) if mode == "durable" else RawServer(loop)
    with server:
        _round(mode, server, root / "warm-up", edges, steps, batch_steps)
        return _round(mode, server, root / "measured", edges, steps, batch_steps, stored_before=edges * steps)


def _round(
    mode: str,
    server: GatewayHarness | RawServer,
    folder: Path,
    edges: int,
    steps: int,
    batch_steps: int,
    stored_before: int = 0,
) -> UplinkRun:
    if isinstance(server, GatewayHarness):
        server.gateway.writer.compactor.lags_s.clear()
        server.store_write_s = 0.0
    with Children() as children:
        start, release = SPAWN.Event(), SPAWN.Event()
        for i in range(edges):
            children.start(
                edge_main,
                mode,
                i,
                server.target,
                steps,
                batch_steps,
                str(folder / "spool"),
                children.messages,
                start,
                release,
                name=f"uplink-{mode}-{i}",
            )
        ready = children.receive("ready", edges, timeout_s=120)
        started, cpu = time.monotonic(), time.process_time()
        start.set()
        done = children.receive("done", edges, timeout_s=300)
        seconds = max(d["t_done"] for d in done) - started
        run = UplinkRun(seconds, edges * steps, sum(r["bytes"] for r in ready))
        run.server_cpu_s, run.edge_cpu_s = time.process_time() - cpu, sum(d["cpu_s"] for d in done)
        if isinstance(server, GatewayHarness):  # before the edges close: their spools' last deletes load the CPU
            if not server.loop.call(server.gateway.writer.drain(120), timeout_s=130):
                raise RuntimeError("the store did not take in the ingest log within 120 s")
            run.drain_s = time.monotonic() - (started + seconds)
            run.lag_p50_s, run.lag_p99_s = server.gateway.writer.compactor.lag_percentiles()
            stored = server.store.committed_rows(DATASET) - stored_before
            if stored != edges * steps:
                raise RuntimeError(f"the store took in {stored} rows, expected {edges * steps}")
            run.store_write_s = server.store_write_s
            run.compact_mb_s = run.wire_bytes / 1e6 / max(server.store_write_s, 1e-9)
        release.set()
        children.join(15)
    return run


def disk_seconds(folder: Path, nbytes: int, group_bytes: int = 4 << 20) -> float:
    """Seconds to write ``nbytes`` with an fdatasync per ``group_bytes``, as the ingest log's group commit does once
    the gateway has run a while: over a file written before (a recycled segment, its pages cached, its blocks
    allocated), the first pass untimed. The least that acking only what is durable costs on this disk, whatever the
    software."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(group_bytes)
    fd = os.open(folder / "disk.bin", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        seconds = 0.0
        for timed in (False, True):
            started = time.monotonic()
            for offset in range(0, nbytes, group_bytes):
                os.pwrite(fd, block[: min(group_bytes, nbytes - offset)], offset)
                os.fdatasync(fd)
            seconds = time.monotonic() - started if timed else 0.0
        return seconds
    finally:
        os.close(fd)
        (folder / "disk.bin").unlink()


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
        say(f"uplink: {edges} edge(s), the same bytes over raw gRPC, each written and fdatasync'd before its ack")
        floor = _run("durable", loop, workdir / f"uplink-{edges}-durable", edges, steps_per_edge, batch_steps)
        disk_s = disk_seconds(workdir / f"uplink-{edges}-disk", ours.wire_bytes)
        label = f"uplink {edges} edge{'s' if edges > 1 else ''}"
        mb, raw_mb = ours.wire_bytes / 1e6, raw.wire_bytes / 1e6
        steps_s, raw_steps_s = ours.steps / ours.seconds, raw.steps / raw.seconds
        results += [
            Result(f"{label}: steps/s (vs raw gRPC)", steps_s, "steps/s", raw_steps_s, HIGHER),
            Result(f"{label}: MB/s (vs raw gRPC)", mb / ours.seconds, "MB/s", raw_mb / raw.seconds, HIGHER),
            Result(
                f"{label}: raw gRPC written + fdatasync'd before each ack, MB/s (vs raw gRPC)",
                floor.wire_bytes / 1e6 / floor.seconds,
                "MB/s",
                raw_mb / raw.seconds,
                f"{HIGHER}; the durable floor: the same clients, a server that only writes, syncs and acks",
            ),
            Result(
                f"{label}: MB/s (vs the durable floor above)",
                mb / ours.seconds,
                "MB/s",
                floor.wire_bytes / 1e6 / floor.seconds,
                HIGHER,
            ),
            Result(
                f"{label}: time in EpisodeStore.write (vs uplink wall time)",
                ours.store_write_s,
                "s",
                ours.seconds,
                f"{LOWER}; off the ack path (the compactor): ratio = the store's load beside the uplink",
            ),
            Result(
                f"{label}: this disk's write + fdatasync of the same bytes in 4 MB groups, MB/s (vs raw gRPC)",
                mb / disk_s,
                "MB/s",
                raw_mb / raw.seconds,
                f"{HIGHER}; the ratio is the most any ingest that acks only what is durable reaches here",
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
            Result(
                f"{label}: store caught up, after the last ack (vs uplink wall time)",
                ours.drain_s,
                "s",
                ours.seconds,
                LOWER,
            ),
            Result(
                f"{label}: compactor MB/s into the store (vs the uplink's MB/s)",
                ours.compact_mb_s,
                "MB/s",
                mb / ours.seconds,
                f"{HIGHER}; below 1 the store falls behind a sustained uplink",
            ),
        ]
        # CPU per MB: steadier than wall time on a loaded machine (the uplink's processes share its cores)
        for who, cpu_s, raw_cpu_s, note in (
            ("server", ours.server_cpu_s, raw.server_cpu_s, "; the gateway's process, compaction included"),
            ("edges", ours.edge_cpu_s, raw.edge_cpu_s, ""),
        ):
            name = f"{label}: {who} CPU ms per MB until the last ack (vs raw gRPC's {who})"
            results.append(Result(name, 1e3 * cpu_s / mb, "ms/MB", 1e3 * raw_cpu_s / raw_mb, LOWER + note))
        say(
            f"  fleetloop {ours.steps / ours.seconds:,.0f} steps/s ({mb / ours.seconds:,.0f} MB/s), "
            f"raw {raw.steps / raw.seconds:,.0f} steps/s ({raw_mb / raw.seconds:,.0f} MB/s), "
            f"durable floor {floor.wire_bytes / 1e6 / floor.seconds:,.0f} MB/s; "
            f"store writes {ours.store_write_s:.2f} s of {ours.seconds:.2f} s (off the ack path); "
            f"ack -> store lag p50 {ours.lag_p50_s:.2f} s, p99 {ours.lag_p99_s:.2f} s; "
            f"store caught up {ours.drain_s:.2f} s after the last ack; disk {mb / disk_s:,.0f} "
            f"MB/s; CPU ms per MB: server "
            f"{1e3 * ours.server_cpu_s / mb:.1f} (raw {1e3 * raw.server_cpu_s / raw_mb:.1f}), edges "
            f"{1e3 * ours.edge_cpu_s / mb:.1f} (raw {1e3 * raw.edge_cpu_s / raw_mb:.1f})"
        )
    return results
