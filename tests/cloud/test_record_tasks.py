"""The tasks a cloud with credentials makes from its device records, and the policy checks of remote inference."""

from __future__ import annotations

import asyncio

import numpy as np

from cloud.gateway.bounds import DecodePool
from cloud.gateway.config import GatewayConfig
from cloud.gateway.fleet import Requirements, Task
from cloud.gateway.remote_inference import infer
from cloud.gateway.sessions import Session
from cloud.gateway.tasks import record_tasks
from cloud.security.devices import DeviceRegistry
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from protocol import tunnel_pb2 as pb
from protocol.arrays import encode_array
from protocol.steps import schema_for


def test_each_robot_record_gives_a_task_per_policy_and_dataset(tmp_path) -> None:
    devices = DeviceRegistry(tmp_path / "devices.json")
    devices.add("arm-1", policies=("so101", "so101.reward"))  # a classifier is no task
    devices.add("arm-2", policies=("so101",))  # the same task: made once
    devices.add("cart-1", embodiments=("pusht",))  # no policies: its dataset's own
    devices.add("cart-2", embodiments=("pusht", "pusht_v2"), policies=("smolvla",))
    devices.add("gone", policies=("old",))
    devices.revoke("gone")
    devices.add("alice", kind="operator", policies=("so101",))

    def task(name: str, policy: str, embodiment: str) -> Task:
        return Task(name, policy, requires=Requirements(kind="robot", embodiment=embodiment), count=0)

    assert record_tasks(devices.devices()) == (
        task("pusht", "pusht", "pusht"),
        task("smolvla@pusht", "smolvla", "pusht"),
        task("smolvla@pusht_v2", "smolvla", "pusht_v2"),
        task("so101", "so101", "so101"),
    )


def test_remote_inference_answers_only_for_a_policy_the_credential_allows(tmp_path) -> None:
    devices = DeviceRegistry(tmp_path / "devices.json")
    devices.add("robot-1", policies=("pick",))
    caps = Capabilities((ArraySpec("state", "float32", (3,)),), ArraySpec("action", "float32", (2,)), 10.0, "pick")
    schema = schema_for([("state", "float32", (3,))], ("float32", (2,)))
    session = Session(ResourceInfo("robot-1", "robot", caps, "sim"), "place", schema, remote=True)
    session.device = devices.get("robot-1")
    request = pb.InferenceRequest(request_id=3)
    request.observation["state"].CopyFrom(encode_array(np.zeros(3, np.float32)))

    class NoServer:  # nothing may reach the inference server
        def submit(self, policy_name: str, job) -> None:
            raise AssertionError(f"{policy_name} was run")

    asyncio.run(infer(session, request, NoServer(), GatewayConfig(devices=devices), DecodePool(1)))
    reply = session.out.get_nowait().actions
    assert (reply.request_id, reply.error) == (3, "may not run place: hold still") and not reply.HasField("actions")
