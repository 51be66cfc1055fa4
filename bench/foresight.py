"""(f) Visual foresight: request -> answer time of a phone's foresight request on loopback vs a websockets echo.

The real gateway and phone channel run on the bench's loop thread with a small CNN published as policy
``phone`` (observations as the phone dataset's: a HxWx3 uint8 image, a 7-d pose, a gripper width; the
learner's own ``policy_for_schema``). A websockets client pairs with the one-time token the channel prints,
then sends foresight requests (a binary frame: header length, JSON header, a JPEG at the channel's image size)
one at a time and times each until its answer arrives. The baseline is a plain websockets echo server on the
same loop thread answering the same frame bytes: what the transport alone costs for that payload.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import LOWER, GatewayHarness, LoopThread, Result

BUDGET_MS = 150.0  # what the phone page can wait for a trajectory and still draw it over a live view
WARMUP = 3


def frame(height: int, width: int) -> bytes:
    """One foresight request: a camera-like JPEG (a gradient with some texture) and an identity pose."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (height + width)], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=80)
    header = json.dumps({"type": "foresight", "pose": [0.1, -0.02, 0.4, 0.0, 0.0, 0.0, 1.0], "gripper": 0.05})
    return struct.pack(">I", len(header)) + header.encode() + out.getvalue()


def _publish_phone_policy(registry, height: int, width: int) -> None:
    from cloud.data.store import ColumnSpec
    from cloud.learning.policy_choice import policy_for_schema
    from policies.weights import policy_to_bytes
    from protocol.steps import schema_for

    spec = [("image", "|u1", (height, width, 3)), ("pose", "<f4", (7,)), ("gripper", "<f4", (1,))]
    schema = schema_for(spec, ("<f4", (8,)))
    policy = policy_for_schema({k: ColumnSpec(d, s) for k, (d, s) in schema.items()}, hidden=(32,))
    registry.publish("phone", policy_to_bytes(policy))


def _round_trips(url: str, payload: bytes, count: int, hello: dict | None = None) -> tuple[list[float], list]:
    """``count`` request -> answer times (s) of ``payload`` on one connection, after ``WARMUP`` untimed ones."""
    from websockets.sync.client import connect

    times, answers = [], []
    with connect(url, max_size=16 << 20, open_timeout=10) as ws:
        if hello is not None:
            ws.send(json.dumps(hello))
            welcome = json.loads(ws.recv(timeout=20))
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"the phone channel refused the bench's phone: {welcome}")
        for i in range(WARMUP + count):
            started = time.monotonic()
            ws.send(payload)
            answer = ws.recv(timeout=30)
            elapsed = time.monotonic() - started
            if i >= WARMUP:
                times.append(elapsed)
                answers.append(answer)
    return times, answers


async def _echo_server():
    from websockets.asyncio.server import serve

    async def echo(connection) -> None:
        async for message in connection:
            await connection.send(message)

    return await serve(echo, "127.0.0.1", 0, max_size=16 << 20)


def echo_round_trips(loop: LoopThread, payload: bytes, count: int) -> list[float]:
    """``count`` round trips (s) of ``payload`` through a plain websockets echo server on the loop thread."""
    server = loop.call(_echo_server())
    try:
        port = server.sockets[0].getsockname()[1]
        times, echoed = _round_trips(f"ws://127.0.0.1:{port}", payload, count)
    finally:
        server.close()
        loop.call(server.wait_closed())
    if any(e != payload for e in echoed):
        raise RuntimeError("the echo server answered other bytes than it was sent")
    return times


def measure(loop: LoopThread, workdir: Path, requests: int = 100, say: Callable[[str], None] = print) -> list[Result]:
    from cloud.channels.phone_channel import PhoneChannel, PhoneChannelConfig

    with GatewayHarness(loop, workdir / "foresight") as gateway:
        config = PhoneChannelConfig(credentials=workdir / "foresight" / "phone-devices.json")
        channel = PhoneChannel(config, gateway.gateway)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # the pairing token, URL and QR code: read here, not shown
            port = loop.call(channel.start())
        try:
            _publish_phone_policy(gateway.registry, config.image_height, config.image_width)
            payload = frame(config.image_height, config.image_width)
            say(
                f"foresight: {requests} requests, {config.image_height}x{config.image_width} JPEG frames"
                f" ({len(payload) / 1e3:.1f} kB), a CNN published as `phone`"
            )
            token = re.search(r"phone pairing token: (pair_\S+)", printed.getvalue())
            if token is None:
                raise RuntimeError(f"the phone channel printed no pairing token: {printed.getvalue()!r}")
            hello = {
                "type": "hello",
                "phone_id": "bench-phone",
                "pair": token.group(1),
                "capabilities": {"camera": True, "pose": True, "gripper": True, "rate_hz": 10},
            }
            with contextlib.redirect_stdout(io.StringIO()):  # pairing prints the next token and its QR code
                times, answers = _round_trips(f"ws://127.0.0.1:{port}", payload, requests, hello)
        finally:
            loop.call(channel.stop())
    for raw in answers:
        answer = json.loads(raw)
        if answer.get("type") != "foresight" or answer.get("version") != 1 or len(answer.get("points", [])) < 1:
            raise RuntimeError(f"not a foresight trajectory from policy phone v1: {answer}")

    echo_times = echo_round_trips(loop, payload, requests)

    p50, p99 = (float(np.percentile(times, q)) * 1e3 for q in (50, 99))
    echo_p50, echo_p99 = (float(np.percentile(echo_times, q)) * 1e3 for q in (50, 99))
    say(f"  foresight: p50 {p50:.2f} ms, p99 {p99:.2f} ms (budget {BUDGET_MS:.0f} ms)")
    say(f"  echo:      p50 {echo_p50:.3f} ms, p99 {echo_p99:.3f} ms")
    within = "within" if p99 <= BUDGET_MS else "OVER"
    return [
        Result(
            "foresight round trip on loopback, p50: request -> predicted trajectory (vs a websockets echo)",
            p50,
            "ms",
            echo_p50,
            f"{LOWER}; {requests} requests, {len(payload)} B frames; p99 {p99:.1f} ms, {within} the {BUDGET_MS:.0f} ms"
            " budget",
        ),
        Result(
            "foresight round trip on loopback, p99 (vs a websockets echo)",
            p99,
            "ms",
            echo_p99,
            f"{LOWER}; {requests} requests; budget {BUDGET_MS:.0f} ms: {within}",
        ),
    ]
