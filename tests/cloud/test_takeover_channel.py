"""The takeover pages in the cloud: who may open one, what a page's commands become on a robot's tunnel, and what
its robot's live view becomes on the page. The real gateway and page server on loopback; the robot's tunnel is a
``Session`` in the gateway, read directly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from cloud.channels.phone_channel import PhoneChannel, PhoneChannelConfig
from cloud.channels.takeover_channel import TakeoverPages
from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.gateway.config import GatewayConfig
from cloud.gateway.server import Gateway
from cloud.gateway.sessions import Session
from cloud.security.devices import DeviceRegistry
from hal.null import NullRobot
from hal.resource import ResourceInfo
from protocol import tunnel_pb2 as pb
from protocol.arrays import encode_array


@contextlib.asynccontextmanager
async def serving(root: Path, devices: DeviceRegistry | None = None) -> AsyncIterator[tuple[Gateway, int]]:
    """The gateway and its page server (phone page and takeover pages) on loopback; (the gateway, the pages' port)."""
    gateway = Gateway(
        GatewayConfig(port=0, devices=devices), EpisodeStore(root / "store"), PolicyRegistry(root / "reg")
    )
    channel = PhoneChannel(PhoneChannelConfig(credentials=root / "phones.json"), gateway, (TakeoverPages(gateway),))
    await gateway.start()
    try:
        yield gateway, await channel.start()
    finally:
        await channel.stop()
        await gateway.stop()


async def hello(url: str, operator: str, token: str) -> tuple[object, dict]:
    ws = await connect(url)
    await ws.send(json.dumps({"type": "hello", "operator": operator, "token": token, "rate_hz": 4}))
    return ws, json.loads(await ws.recv())


async def until(ws, kind: str) -> dict:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if message["type"] == kind:
            return message


def out_messages(session: Session, kind: str) -> list:
    found = []
    while not session.out.empty():
        message = session.out.get_nowait()
        if message is not None and message.HasField(kind):
            found.append(getattr(message, kind))
    return found


def test_takeover_pages_admit_operators_only_and_relay_between_a_page_and_its_robot(tmp_path, capsys) -> None:
    devices = DeviceRegistry(tmp_path / "devices.json")
    alice, carol = devices.add("alice", "operator"), devices.add("carol", "operator", ("pusht",))
    robot_token = devices.add("robot-1", policies=("pusht",))

    async def scenario() -> None:
        async with serving(tmp_path, devices) as (gateway, port):
            url = f"ws://127.0.0.1:{port}/takeover/robot-1/ws"
            _, refused = await hello(url, "alice", "flt_wrong")
            assert (refused["type"], refused["field"]) == ("error", "hello.token"), refused
            _, refused = await hello(url, "robot-1", robot_token)
            assert refused["field"] == "hello.operator" and "registered as a robot" in refused["message"]
            _, refused = await hello(url, "carol", carol)  # may reach robots running pusht; robot-1 is not here
            assert refused["field"] == "hello.operator" and "only robots running pusht" in refused["message"]

            ws, welcome = await hello(url, "alice", alice)
            assert welcome["type"] == "welcome" and welcome["who"] == "browser:alice"
            assert (await until(ws, "robot"))["connected"] is False
            await ws.send(json.dumps({"type": "command", "seq": 1, "signals": ["take_over"]}))
            assert (await until(ws, "error"))["field"] == "robot"  # not connected: nothing to drive

            robot = NullRobot(state_dim=3, action_dim=2, image_shape=(8, 8, 3))
            session = Session(ResourceInfo("robot-1", "robot", robot.capabilities), "null", {})
            gateway.sessions["robot-1"] = session
            gateway.persons.opened(session)
            info = await until(ws, "robot")
            assert info["connected"] and info["action"] == {"shape": [2], "low": [-1.0, -1.0], "high": [1.0, 1.0]}
            (watch,) = out_messages(session, "watch")
            assert (watch.watchers, watch.rate_hz, watch.max_image_side) == (1, 4.0, 160)

            await ws.send(json.dumps({"type": "command", "seq": 2, "signals": ["take_over"], "action": [0.5, -2]}))
            await ws.send(json.dumps({"type": "command", "seq": 3, "signals": ["sudo"]}))
            assert (await until(ws, "error"))["field"] == "command.signals[0]"
            await ws.send(json.dumps({"type": "command", "seq": 3, "action": [0.1, 0.2, 0.3]}))
            assert (await until(ws, "error"))["field"] == "command.action"
            await ws.send(json.dumps({"type": "command", "seq": 2, "action": [0.1, 0.2]}))
            assert "must rise" in (await until(ws, "error"))["message"]
            (command,) = out_messages(session, "person")
            assert (command.who, command.seq, list(command.signals), list(command.action)) == (
                "browser:alice",
                2,
                ["take_over"],
                [0.5, -2.0],
            )

            view = pb.LiveView(step=7, controller="browser:alice", policy_version=3)
            view.state["state"].CopyFrom(encode_array(np.array([1.5, 2, 3], np.float32)))
            view.frames.add(camera="pixels", format="jpeg", data=b"\xff\xd8\xff", width=8, height=8)
            gateway.persons.receive(session, pb.EdgeMessage(live_view=view))
            shown = await until(ws, "view")
            assert shown["state"] == {"state": [1.5, 2.0, 3.0]} and shown["controller"] == "browser:alice"
            assert shown["frames"][0]["jpeg"] == "/9j/" and shown["intended"] is None
            refusal = pb.PersonRefused(who="browser:alice", session=welcome["session"], seq=2, reason="bob drives")
            gateway.persons.receive(session, pb.EdgeMessage(person_refused=refusal))
            assert (await until(ws, "refused"))["reason"] == "bob drives"

            devices.revoke("alice")  # an open page of a revoked operator closes
            revoked = await until(ws, "error")
            assert revoked["field"] == "hello.token" and "revoked" in revoked["message"]
            await asyncio.wait_for(ws.wait_closed(), 5)
            await asyncio.sleep(0.2)
            messages = [session.out.get_nowait() for _ in range(session.out.qsize())]
            (left,) = [m.person for m in messages if m.HasField("person")]  # the page closed: its person left
            assert left.left and left.who == "browser:alice"
            (watch,) = [m.watch for m in messages if m.HasField("watch")]
            assert watch.watchers == 0  # nobody watches: the robot stops sending views

    asyncio.run(asyncio.wait_for(scenario(), 60))
    capsys.readouterr()  # the pairing token and QR code


def test_the_page_and_its_script_are_served_and_nothing_else(tmp_path, capsys) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (_, port):
            base = f"http://127.0.0.1:{port}"
            fetch = lambda path: urllib.request.urlopen(base + path, timeout=5)  # noqa: E731
            page = await asyncio.to_thread(lambda: fetch("/takeover/robot-1").read().decode())
            assert "<title>fleetloop takeover</title>" in page
            script = await asyncio.to_thread(lambda: fetch("/takeover/-/takeover.js").read().decode())
            assert "fleetloopTakeover" in script
            for bad in ("/takeover/..%2Fetc", "/takeover/a/b", "/takeover/"):
                try:
                    await asyncio.to_thread(fetch, bad)
                    raise AssertionError(f"{bad} was served")
                except urllib.error.HTTPError as err:
                    assert err.code == 404
            ws, refused = await hello(f"ws://127.0.0.1:{port}/takeover/robot-1/ws", "alice", "flt_x")
            assert refused["field"] == "hello.operator" and "no operator credentials" in refused["message"]

    asyncio.run(asyncio.wait_for(scenario(), 60))
    capsys.readouterr()
