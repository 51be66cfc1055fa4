"""(m) capacity: the most simulated robots with two 224x224 cameras at 30 Hz that one cloud on this machine sustains.

Setup, once: the MuJoCo Panda's front and wrist cameras over the scripted operator (bench/video.py's frames), as a
clip of one episode, encoded once as H.264 by ``protocol/video.py`` (a keyframe opens the episode). The edges then
replay that clip, so the bench measures the cloud, not the encoders: each simulated edge is its own gRPC connection
and tunnel stream (hello, then StepBatch messages of 6 steps, at most 8 unacked), many per child process on asyncio;
every step gets a fresh episode id / seq and its capture stamp (``t_mono_ns``: when a 30 Hz camera would have taken
it, on this host's monotonic clock). Its lag is the time from that stamp to the gateway's ack (the ack says the
step is durably in the store), so a cloud that falls behind shows as growing lag, never as dropped steps.

The count of edges doubles until the ack lag p99 passes 2 s or a step is lost (not acked by the end, or not in the
store); the row is the last count that held, with its lag p50 / p99. The baseline, in the same run: the same with
raw frames on the wire and in the store (``--store-codec raw``), so the ratio says how many more robots encoding
buys one cloud.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import HIGHER, LOWER, SPAWN, Children, GatewayHarness, LoopThread, Result, child_setup, report_error

FPS = 30.0
SIZE = 224
CAMERAS = ("front", "wrist")
BATCH_STEPS = 6  # 0.2 s of steps per message
WINDOW = 8  # unacked messages per edge, as the tunnel client's window
LAG_LIMIT_S = 2.0
EMBODIMENT = "bench_two_cameras"
POLICY = "bench-capacity"
EDGE_PROCESSES = 2


def render_clip(path: Path, frames: int) -> dict[str, int]:
    """Renders the Panda's two cameras for ``frames`` steps, encodes them as H.264 once; saves both to ``path``.
    Returns the mean bytes per frame of each form."""
    from bench.video import panda_frames
    from protocol.video import CameraEncoder

    rendered = panda_frames(frames, SIZE)
    arrays: dict[str, np.ndarray] = {}
    for camera in CAMERAS:
        (scene,) = [name for name in rendered if f" {camera} " in name]
        clip = np.concatenate(rendered[scene])[:frames]
        encoder = CameraEncoder("h264", SIZE, SIZE, FPS)
        packets = [p for frame in clip for p in encoder.encode(frame)] + encoder.flush()
        assert len(packets) == len(clip) and packets[0].keyframe
        arrays[f"raw.{camera}"] = clip
        arrays[f"packets.{camera}"] = np.array([p.data for p in packets], dtype=object)
        arrays[f"keyframe.{camera}"] = np.array([p.keyframe for p in packets])
    np.save(path, arrays, allow_pickle=True)  # the bench's own file, read back by its own children
    return {
        "raw": sum(arrays[f"raw.{c}"][0].nbytes for c in CAMERAS),
        "h264": int(sum(sum(map(len, arrays[f"packets.{c}"])) for c in CAMERAS) / frames),
    }


def resource(edge_id: str) -> Any:
    from hal.resource import ArraySpec, Capabilities, ResourceInfo

    observation = (ArraySpec("state", "float32", (8,)),) + tuple(
        ArraySpec(camera, "uint8", (SIZE, SIZE, 3)) for camera in CAMERAS
    )
    caps = Capabilities(observation, ArraySpec("action", "float32", (4,)), FPS, EMBODIMENT)
    return ResourceInfo(edge_id, "robot", caps, source="sim")


class Edge:
    """One simulated robot: its own connection and tunnel stream, replaying the clip at 30 Hz."""

    def __init__(self, edge_id: str, mode: str, clip: dict[str, Any]) -> None:
        self.id, self.mode, self.clip = edge_id, mode, clip
        self.frames = len(clip[f"raw.{CAMERAS[0]}"])
        self.pending: dict[int, np.ndarray] = {}  # batch id -> its steps' capture stamps (s)
        self.lags: list[float] = []
        self.sent = self.acked = 0
        self.errors: list[str] = []
        self.credits = asyncio.Semaphore(WINDOW)
        self.all_acked = asyncio.Event()

    async def connect(self, target: str) -> None:
        import grpc

        from cloud.gateway.config import GRPC_OPTIONS
        from protocol import PROTOCOL_VERSION
        from protocol import tunnel_pb2 as pb
        from protocol import tunnel_pb2_grpc as pb_grpc

        options = [*GRPC_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]  # one connection per robot
        self.channel = grpc.aio.insecure_channel(target, options=options)
        self.call = pb_grpc.TunnelStub(self.channel).Connect()
        uplink = "raw" if self.mode == "raw" else "h264"
        hello = pb.Hello(
            resource=resource(self.id).to_proto(),
            protocol_version=PROTOCOL_VERSION,
            policy_name=POLICY,
            uplink_codec=uplink,
        )
        await self.call.write(pb.EdgeMessage(hello=hello))
        while (message := await asyncio.wait_for(self.call.read(), 60)).WhichOneof("body") != "welcome":
            if message.WhichOneof("body") == "error":
                raise RuntimeError(f"{self.id} refused at hello: {message.error.message}")

    def _batch(self, step: int, batch_id: int, captured: np.ndarray) -> Any:
        from protocol import tunnel_pb2 as pb
        from protocol.steps import encode_batch
        from protocol.video import PacketColumn

        episode, seq = divmod(step, self.frames)
        n = len(captured)
        rows = slice(seq, seq + n)
        columns: dict[str, np.ndarray] = {
            "obs.state": np.zeros((n, 8), np.float32),
            "action": np.zeros((n, 4), np.float32),
            "reward": np.zeros(n, np.float32),
            "done": np.arange(seq, seq + n) == self.frames - 1,
            "success": np.zeros(n, np.bool_),
            "intervention": np.zeros(n, np.bool_),
            "policy_version": np.zeros(n, np.int64),
            "t_mono_ns": (captured * 1e9).astype(np.int64),
        }
        video = {}
        for camera in CAMERAS:
            if self.mode == "raw":
                columns[f"obs.{camera}"] = self.clip[f"raw.{camera}"][rows]
            else:
                packets = tuple(self.clip[f"packets.{camera}"][rows])
                video[f"obs.{camera}"] = PacketColumn("h264", packets, self.clip[f"keyframe.{camera}"][rows])
        batch = encode_batch(f"{self.id}-{episode}-{self.token}", seq, columns, task=EMBODIMENT, video=video)
        batch.batch_id = batch_id
        return pb.EdgeMessage(steps=batch)

    async def _read(self) -> None:
        import grpc

        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                kind = message.WhichOneof("body")
                if kind == "error":
                    self.errors.append(f"{message.error.field}: {message.error.message}")
                if kind != "ack" or message.ack.batch_id not in self.pending:
                    continue
                captured = self.pending.pop(message.ack.batch_id)
                self.lags.extend((time.monotonic() - captured).tolist())
                self.acked += len(captured)
                self.credits.release()
                if self.acked == self.sent and self.done_sending:
                    self.all_acked.set()
        except grpc.aio.AioRpcError as err:
            self.errors.append(f"stream ended: {err.code().name} {err.details()}")
        self.all_acked.set()  # nothing more will come

    async def run(self, t0: float, seconds: float, drain_s: float) -> None:
        """Sends the steps a 30 Hz robot captures in ``seconds`` from ``t0``; waits up to ``drain_s`` for the acks."""
        self.token, self.done_sending = uuid.uuid4().hex[:8], False
        reader = asyncio.create_task(self._read())
        steps = int(seconds * FPS) // BATCH_STEPS * BATCH_STEPS
        for batch_id, first in enumerate(range(0, steps, BATCH_STEPS), start=1):
            captured = t0 + np.arange(first, first + BATCH_STEPS) / FPS
            await asyncio.sleep(max(0.0, captured[-1] - time.monotonic()))  # the batch's last frame is taken
            await self.credits.acquire()
            self.pending[batch_id] = captured
            self.sent += BATCH_STEPS
            await self.call.write(self._batch(first, batch_id, captured))
        self.done_sending = True
        if self.acked == self.sent:
            self.all_acked.set()
        try:
            await asyncio.wait_for(self.all_acked.wait(), drain_s)
        except TimeoutError:
            pass
        await self.call.done_writing()
        reader.cancel()
        await self.channel.close()


async def _edges(
    mode: str, target: str, ids: list[str], clip_path: str, seconds: float, start: Any, ready: Callable[[], None]
) -> list[Edge]:
    clip = np.load(clip_path, allow_pickle=True).item()
    edges = [Edge(edge_id, mode, clip) for edge_id in ids]
    await asyncio.gather(*(edge.connect(target) for edge in edges))
    ready()
    if not await asyncio.to_thread(start.wait, 120):
        raise TimeoutError("no start signal")
    t0 = time.monotonic()
    await asyncio.gather(*(edge.run(t0, seconds, drain_s=2 * LAG_LIMIT_S + 3) for edge in edges))
    return edges


def edges_main(mode: str, target: str, ids: list[str], clip_path: str, seconds: float, messages, start) -> None:
    """Child process: ``ids`` simulated robots on one asyncio loop; reports their lags and counts."""
    child_setup()
    who = f"capacity {mode} edges {ids[0]}..{ids[-1]}"
    try:
        ready = lambda: messages.put({"kind": "ready", "who": who})  # noqa: E731
        edges = asyncio.run(_edges(mode, target, ids, clip_path, seconds, start, ready))
        lags = [lag for edge in edges for lag in edge.lags]
        errors = [f"{edge.id}: {e}" for edge in edges for e in edge.errors]
        sent, acked = sum(e.sent for e in edges), sum(e.acked for e in edges)
        messages.put({"kind": "done", "who": who, "lags": lags, "sent": sent, "acked": acked, "errors": errors[:5]})
    except Exception:
        report_error(messages, who)


@dataclass
class Level:
    """One count of edges: ack lags (s) of every step, steps sent / acked / in the store, refusals."""

    edges: int
    lags: list[float]
    sent: int
    acked: int
    stored: int
    errors: list[str]

    @property
    def p50(self) -> float:
        return float(np.percentile(self.lags, 50)) if self.lags else float("inf")

    @property
    def p99(self) -> float:
        return float(np.percentile(self.lags, 99)) if self.lags else float("inf")

    @property
    def held(self) -> bool:
        return self.p99 < LAG_LIMIT_S and self.sent == self.acked == self.stored and not self.errors


def run_level(mode: str, loop: LoopThread, root: Path, clip: Path, edges: int, seconds: float) -> Level:
    """``edges`` robots replaying the clip for ``seconds`` into a fresh gateway and store."""
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"{mode}-robot-{i}" for i in range(edges)]
    groups = [ids[i::EDGE_PROCESSES] for i in range(min(EDGE_PROCESSES, edges))]
    with Children() as children, GatewayHarness(loop, root, store_codec="raw" if mode == "raw" else "h264") as cloud:
        start = SPAWN.Event()
        for i, group in enumerate(groups):
            children.start(
                edges_main, mode, cloud.target, group, str(clip), seconds, children.messages, start, name=f"cap-{i}"
            )
        children.receive("ready", len(groups), timeout_s=120)
        start.set()
        done = children.receive("done", len(groups), timeout_s=seconds + 4 * LAG_LIMIT_S + 60)
        children.join(15)
        # acks come from the ingest log: what was acked reaches the store a moment later
        if not cloud.loop.call(cloud.gateway.writer.drain(60), timeout_s=70):
            raise RuntimeError("the store did not take in the ingest log within 60 s")
        stored = cloud.store.committed_rows(EMBODIMENT) if EMBODIMENT in cloud.store.datasets() else 0
    return Level(
        edges,
        [lag for d in done for lag in d["lags"]],
        sum(d["sent"] for d in done),
        sum(d["acked"] for d in done),
        stored,
        [e for d in done for e in d["errors"]],
    )


def ramp(
    mode: str, loop: LoopThread, workdir: Path, clip: Path, counts: tuple[int, ...], seconds: float, say
) -> tuple[Level | None, Level | None]:
    """Doubles the edges until a count fails twice; returns the last level that held and the first that did not."""
    last = None
    for edges in counts:
        level = run_level(mode, loop, workdir / f"capacity-{mode}-{edges}", clip, edges, seconds)
        if not level.held:  # a shared machine's stall can sink one try: a count fails only when two tries do
            level = run_level(mode, loop, workdir / f"capacity-{mode}-{edges}-again", clip, edges, seconds)
        say(
            f"  {mode} {edges:3d} robot(s): ack lag p50 {level.p50:.3f} s, p99 {level.p99:.3f} s; "
            f"{level.acked}/{level.sent} steps acked, {level.stored} stored"
            + (f"; refused: {level.errors[0]}" if level.errors else "")
            + ("" if level.held else "  <- over the limit")
        )
        if not level.held:
            return last, level
        last = level
    return last, None


def measure(
    loop: LoopThread,
    workdir: Path,
    counts: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
    seconds: float = 6.0,
    clip_frames: int = 60,
    say: Callable[[str], None] = print,
) -> list[Result]:
    import logging

    logging.getLogger("fleetloop.fleet").setLevel(logging.ERROR)  # every robot's leaving is logged as a loss
    clip = workdir / "capacity-clip.npy"
    say(f"capacity: rendering {clip_frames} steps of the Panda's two {SIZE}x{SIZE} cameras, H.264 once")
    sizes = render_clip(clip, clip_frames)
    say(f"  {sizes['h264']:,} B per step encoded vs {sizes['raw']:,} B raw (two cameras)")
    found: dict[str, Level | None] = {}
    for mode in ("h264", "raw"):
        say(f"capacity: {mode} robots at 30 Hz, doubling until ack lag p99 > {LAG_LIMIT_S:.0f} s or a step is lost")
        found[mode], failed = ramp(mode, loop, workdir, clip, counts, seconds, say)
        if failed is None:
            say(f"  {mode}: every count up to {counts[-1]} held; its figure is a lower bound")
    ours, raw = found["h264"], found["raw"]
    top = f"counts {counts[0]}..{counts[-1]} tried, {seconds:.0f} s each; the edges share the 2 cores with the cloud"
    if ours is not None and ours.edges == counts[-1]:
        top += f"; H.264 held at the top count: at least {ours.edges}"
    rows = [
        Result(
            "capacity: robots with two 224x224 cameras at 30 Hz one cloud sustains, H.264 (vs raw frames)",
            ours.edges if ours else 0,
            "robots",
            raw.edges if raw else 0,
            f"{HIGHER}; ack lag p99 < {LAG_LIMIT_S:.0f} s, nothing lost; {top}",
        ),
        Result(
            "capacity: wire bytes per step, two cameras, H.264 (vs raw)",
            sizes["h264"],
            "B",
            sizes["raw"],
            f"{LOWER}; Panda front + wrist, scripted operator",
        ),
    ]
    for name, level in (("H.264", ours), ("raw", raw)):
        if level is not None:
            rows.append(
                Result(
                    f"capacity: ack lag p99 (vs p50) at {level.edges} robots, {name}",
                    level.p99 * 1e3,
                    "ms",
                    level.p50 * 1e3,
                    f"{LOWER}; capture stamp -> durable ack, this host's monotonic clock",
                )
            )
    return rows
