"""Attacks by someone holding one legitimate credential (or a file on the cloud's disk): each test tries one, against
the real gateway, phone channel and openpi endpoint on loopback, spoken to as a raw client."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from cloud.channels.openpi_server import OpenPiConfig, OpenPiServer
from cloud.channels.phone_channel import PhoneChannel, PhoneChannelConfig
from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import ColumnSpec, EpisodeStore
from cloud.gateway.config import GatewayConfig
from cloud.gateway.fleet import Requirements, Task
from cloud.gateway.server import Gateway
from cloud.security.devices import DeviceRegistry
from hal.resource import ArraySpec
from policies.factory import make_policy
from policies.weights import policy_to_bytes
from protocol import tunnel_pb2 as pb
from protocol.arrays import encode_array
from protocol.steps import encode_batch
from tests.e2e.raw_edge import RESOURCE, RawEdge, good_columns

PANDA = RESOURCE.capabilities.embodiment  # "panda_pick_cube", 21 state values, 4 actions
PUSHT = replace(
    RESOURCE,
    id="cart-1",
    capabilities=replace(
        RESOURCE.capabilities,
        observation=(ArraySpec("state", "float32", (2,)),),
        action=ArraySpec("action", "float32", (2,), (0, 0), (512, 512)),
        embodiment="pusht",
    ),
)
PANDA_MLP = {"observation": {"state": {"shape": [21], "dtype": "float32"}}, "action_dim": 4, "hidden": [8]}


class LoopbackCloud:
    """The real gateway, phone channel and openpi endpoint on loopback, in one event loop on a thread."""

    def __init__(self, root: Path, devices: DeviceRegistry | None, tasks: tuple[Task, ...] = (), **phone) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.registry = signing_registry(DataLayout(root))  # the learner's: versions it publishes are signed
        config = GatewayConfig(port=0, devices=devices, tasks=tasks, lost_after_s=120)  # raw edges send no heartbeats
        self.gateway = Gateway(config, EpisodeStore(root / "store"), self.registry)
        self.phones = PhoneChannel(PhoneChannelConfig(credentials=root / "phones.json", **phone), self.gateway)
        self.openpi = OpenPiServer(self.gateway.inference, self.registry, OpenPiConfig(), devices)

        async def start() -> None:
            await self.gateway.start()
            await self.phones.start()
            await self.openpi.start()

        self.call(start())
        self.target = f"127.0.0.1:{self.gateway.port}"

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=20)

    def stop(self) -> None:
        async def stop() -> None:
            await self.openpi.stop()
            await self.phones.stop()
            await self.gateway.stop(0)

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    def phone_hello(self, phone_id: str, **credential) -> dict:
        """A phone's hello on the phone channel; the cloud's first answer."""
        hello = {"type": "hello", "phone_id": phone_id, "capabilities": {"camera": True, "gripper": True}, **credential}
        with connect(f"ws://127.0.0.1:{self.phones.port}", open_timeout=5) as ws:
            ws.send(json.dumps(hello))
            return json.loads(ws.recv(timeout=5))

    def openpi_status(self, token: str, policy: str) -> int:
        """The HTTP status of an openpi handshake with this credential for this policy (101: it was taken)."""
        try:
            with connect(
                f"ws://127.0.0.1:{self.openpi.port}/{policy}",
                additional_headers={"Authorization": f"Api-Key {token}"},
                open_timeout=5,
            ):
                return 101
        except InvalidStatus as refused:
            return refused.response.status_code


@pytest.fixture
def devices(tmp_path) -> DeviceRegistry:
    return DeviceRegistry(tmp_path / "devices.json")


@pytest.fixture
def start(tmp_path):
    started: list[LoopbackCloud] = []

    def start_cloud(devices: DeviceRegistry | None, tasks: tuple[Task, ...] = (), **phone) -> LoopbackCloud:
        started.append(LoopbackCloud(tmp_path / "data", devices, tasks, **phone))
        return started[-1]

    yield start_cloud
    for cloud in started:
        cloud.stop()


def opened(edge: RawEdge) -> pb.CloudMessage:
    """The cloud's answer to the edge's hello: a welcome, or the error that refused it."""
    while True:
        message = edge.incoming.get(timeout=10)
        assert message is not None, f"the stream ended without an answer: {edge.status}"
        if message.WhichOneof("body") in ("welcome", "error"):
            return message


def assignment(edge: RawEdge) -> str:
    """The task of the edge's first assignment ("" for none)."""
    got = edge.received("assignment", 5.0, until=lambda message: True)
    assert got, "no assignment came"
    return got[-1].assignment.task


def pairing_token(capsys) -> str:
    return re.findall(r"phone pairing token: (pair_\S+)", capsys.readouterr().out)[-1]


def test_a_pusht_credential_cannot_store_panda_steps(start, devices) -> None:
    """I hold cart-1's credential (`--policy pusht`). I connect as a simulated Panda, ask for pusht, and stream
    scripted "interventions" into panda_pick_cube, the dataset every Panda's policy trains on."""
    token = devices.add("cart-1", policies=("pusht",))
    cloud = start(devices)
    edge = RawEdge(cloud.target, replace(RESOURCE, id="cart-1"), token=token, policy_name="pusht")
    try:
        answer = opened(edge)
        assert answer.HasField("error"), "the cloud welcomed a pusht credential as a Panda"
        assert (answer.error.code, answer.error.field) == ("unauthenticated", "hello.resource.capabilities.embodiment")
        assert "may record only into pusht" in answer.error.message
        edge.outgoing.put(pb.EdgeMessage(steps=encode_batch("cart-1-ep", 0, good_columns(99), batch_id=1)))
        assert not [m for m in edge.received("ack", 1.0)], "its steps were stored"
        assert PANDA not in cloud.gateway.store.datasets()
    finally:
        edge.close()


def test_the_first_hello_naming_a_policy_does_not_create_its_task(start, devices) -> None:
    """I hold a credential that lists no policy. After the cloud restarts I connect first, as a Panda asking for
    pusht: the pusht task is then made for Pandas, and every real pusht robot is left without a task."""
    intruder = devices.add("intruder-1", embodiments=(PANDA,))
    cart = devices.add("cart-1", policies=("pusht",))
    cloud = start(devices)
    edges = [RawEdge(cloud.target, RESOURCE, token=intruder, policy_name="pusht")]
    try:
        answer = opened(edges[0])  # a record without policies runs only its own datasets' policies
        assert (answer.error.code, answer.error.field) == ("unauthenticated", "hello.policy_name"), answer
        assert cloud.gateway.fleet.tasks["pusht"].requires.embodiment == "pusht"  # none made for its hello
        edges.append(RawEdge(cloud.target, RESOURCE, token=intruder))
        assert opened(edges[1]).HasField("welcome")
        assert assignment(edges[1]) == PANDA  # it gets its record's task
        edges.append(RawEdge(cloud.target, PUSHT, token=cart, policy_name="pusht"))
        assert opened(edges[2]).HasField("welcome")
        assert assignment(edges[2]) == "pusht", "the real pusht robot got no task"
    finally:
        for edge in edges:
            edge.close()


def test_a_phone_or_operator_credential_opens_no_robot_tunnel(start, devices) -> None:
    """I copied a paired phone's token out of the browser's localStorage (or hold an operator's) and open the robot
    tunnel with it, to download any policy's weights and use remote inference."""
    tokens = {"phone-1": devices.add("phone-1", kind="phone"), "alice": devices.add("alice", kind="operator")}
    cloud = start(devices)
    for device_id, kind in (("phone-1", "phone"), ("phone-1", "robot"), ("alice", "robot")):
        edge = RawEdge(cloud.target, replace(RESOURCE, id=device_id, kind=kind), token=tokens[device_id])
        try:
            answer = opened(edge)
            assert answer.HasField("error"), f"{device_id}'s credential opened a tunnel as a {kind}"
            assert (answer.error.code, answer.error.field) == ("unauthenticated", "hello.resource.kind")
        finally:
            edge.close()


def test_an_operator_or_phone_credential_is_refused_by_openpi(start, devices) -> None:
    """I hold an operator's (or a phone's) credential and connect to the openpi endpoint with it as Api-Key, to
    drive any policy from my own machine."""
    tokens = [devices.add("alice", kind="operator"), devices.add("phone-1", kind="phone")]
    robot = devices.add("arm-1", policies=(PANDA,))
    cloud = start(devices)
    cloud.registry.publish(PANDA, policy_to_bytes(make_policy("mlp", PANDA_MLP)))
    assert cloud.openpi_status(robot, PANDA) == 101  # a robot's credential for its own policy is taken
    for token in tokens:
        assert cloud.openpi_status(token, PANDA) == 403


def test_remote_inference_of_a_policy_the_credential_does_not_allow(start, devices) -> None:
    """My robot may run only panda_pick_cube. A task in --tasks runs another policy on Pandas; I connect with remote
    inference and take that task's actions from the cloud, a policy my credential never allowed."""
    token = devices.add("robot-1", policies=(PANDA,))
    other = Task("other", "other_policy", requires=Requirements(embodiment=PANDA), count=0)
    cloud = start(devices, tasks=(other,))
    cloud.registry.publish("other_policy", policy_to_bytes(make_policy("mlp", PANDA_MLP)))
    edge = RawEdge(cloud.target, replace(RESOURCE, id="robot-1"), token=token, remote_inference=True)
    try:
        assert opened(edge).HasField("welcome")
        request = pb.InferenceRequest(request_id=7)
        request.observation["state"].CopyFrom(encode_array(np.zeros(21, np.float32)))
        edge.outgoing.put(pb.EdgeMessage(infer=request))
        (reply,) = edge.received("actions", 5, until=lambda m: m.actions.request_id == 7)
        assert not reply.actions.HasField("actions"), "the cloud ran a policy the credential does not allow"
        assert reply.actions.error.endswith("hold still")
    finally:
        edge.close()


def test_an_id_with_a_trailing_newline_is_refused(start, capsys) -> None:
    """I pair a phone as `robot-1\\n`: a name pattern matched with re.match and `^...$` takes it, and in the fleet view
    and the logs my phone looks like robot-1."""
    cloud = start(None)
    answer = cloud.phone_hello("robot-1\n", pair=pairing_token(capsys))
    assert (answer["type"], answer["field"]) == ("error", "hello.phone_id"), answer
    with pytest.raises(ValueError, match="^id:"):
        DeviceRegistry(cloud.gateway.store.root.parent / "devices.json").add("robot-1\n")
    with pytest.raises(ValueError, match="policy_name"):
        cloud.registry.publish("panda_pick_cube\n", b"weights")


def test_names_that_differ_only_in_case_are_refused(start, devices) -> None:
    """On a case-insensitive filesystem PANDA_pick_cube is the folder of panda_pick_cube: I record, publish and
    register under the case twin of a name in use, to write into (or replace) its data."""
    token = devices.add("robot-1", embodiments=(PANDA,))
    with pytest.raises(ValueError, match="differs only in case"):
        devices.add("ROBOT-1", embodiments=(PANDA,))
    twin_token = devices.add("robot-2", embodiments=("PANDA_pick_cube",))  # another record may name the twin
    cloud = start(devices)
    first = RawEdge(cloud.target, replace(RESOURCE, id="robot-1"), token=token)
    twin = replace(RESOURCE, id="robot-2", capabilities=replace(RESOURCE.capabilities, embodiment="PANDA_pick_cube"))
    second = None
    try:
        assert opened(first).HasField("welcome")
        # the twin says hello only once the first dataset exists: opened together, either may be the first
        second = RawEdge(cloud.target, twin, token=twin_token)
        answer = opened(second)
        assert answer.HasField("error"), "a robot recorded into the case twin of a stored dataset"
        assert answer.error.field == "hello.resource.capabilities.embodiment"
        assert "differs only in case" in answer.error.message
    finally:
        first.close()
        if second is not None:
            second.close()
    assert cloud.gateway.store.datasets() == [PANDA, "phone"]
    spec = {"obs.state": ColumnSpec("float32", (3,))}
    with pytest.raises(ValueError, match="differs only in case"):
        cloud.gateway.store.ensure_dataset("Phone", spec)
    cloud.registry.publish(PANDA, policy_to_bytes(make_policy("mlp", PANDA_MLP)))
    with pytest.raises(ValueError, match="differs only in case"):
        cloud.registry.publish("PANDA_pick_cube", b"other weights")
    assert cloud.registry.latest("PANDA_pick_cube") is None


def test_an_expired_pairing_token_pairs_no_phone(start, capsys) -> None:
    """I photographed the pairing QR code on the cloud's screen yesterday and pair my own phone with it today."""
    cloud = start(None, pairing_ttl_s=0.3)
    token = pairing_token(capsys)
    time.sleep(0.5)
    answer = cloud.phone_hello("phone-1", pair=token)
    assert (answer["type"], answer["field"]) == ("error", "hello.pair"), answer
    assert "expired" in answer["message"]
    assert cloud.phone_hello("phone-1", pair=pairing_token(capsys))["type"] == "welcome"  # the new one pairs


def test_a_revoked_id_is_never_paired_or_added_again(start, devices, capsys) -> None:
    """My phone was revoked. I pair it again under the same id (or ask an admin's script to add it again), so its
    history, its takeovers and the fleet view carry on as if nothing happened."""
    devices.add("robot-1", embodiments=(PANDA,))
    devices.add("phone-1", kind="phone")
    devices.revoke("phone-1")
    devices.revoke("robot-1")
    with pytest.raises(ValueError, match="never reused"):
        devices.add("robot-1", embodiments=(PANDA,))
    cloud = start(devices)
    answer = cloud.phone_hello("phone-1", pair=pairing_token(capsys))
    assert (answer["type"], answer["field"]) == ("error", "hello.phone_id"), answer
    assert "never reused" in answer["message"]
    assert devices.get("phone-1").revoked


def test_deleting_the_devices_file_at_run_time_opens_nothing(start, devices, caplog) -> None:
    """I can delete files in the cloud's data folder. I delete devices.json while the cloud runs, then connect
    with no credential at all."""
    token = devices.add("robot-1", embodiments=(PANDA,))
    cloud = start(devices)
    devices.path.unlink()
    caplog.set_level(logging.ERROR, "fleetloop")
    for resource, hello_token in ((replace(RESOURCE, id="robot-1"), token), (RESOURCE, "")):
        edge = RawEdge(cloud.target, resource, token=hello_token)
        try:
            answer = opened(edge)
            assert answer.HasField("error"), "the cloud let a device in without checking its credential"
            assert (answer.error.code, answer.error.field) == ("unauthenticated", "hello.token")
        finally:
            edge.close()
    assert "devices.json is gone: every device is refused" in caplog.text
