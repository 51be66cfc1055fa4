"""A session's subscriptions: the policy an edge runs and its outcome classifier, each pushed with its own state
(offer, sent, applied, full snapshot needed, versions refused), over a real registry on disk."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.version_registry import PolicyRegistry, PolicyVersion
from cloud.gateway.config import GatewayConfig
from cloud.gateway.push import PolicyPusher
from cloud.gateway.sessions import Session, admit
from cloud.security.devices import AuthError, DeviceRegistry
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from policies.factory import make_policy
from policies.weights import policy_to_bytes
from protocol import PROTOCOL_VERSION
from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError
from protocol.steps import schema_for

RESOURCE = ResourceInfo(
    "robot-1",
    "robot",
    Capabilities((ArraySpec("state", "float32", (3,)),), ArraySpec("action", "float32", (2,)), 10.0, "pick"),
    source="sim",
)


def session(remote: bool = False) -> Session:
    schema = schema_for([("state", "float32", (3,))], ("float32", (2,)))
    return Session(RESOURCE, "pick", schema, remote=remote, outcome_policy="pick.reward")


def version(name: str, number: int) -> PolicyVersion:
    return PolicyVersion(name, number, "", 0, 0.0)


def test_each_name_it_receives_has_its_own_offer() -> None:
    edge = session()
    assert edge.receives() == ["pick", "pick.reward"]
    edge.offer_version(version("pick", 3))
    edge.offer_version(version("pick.reward", 1))
    edge.offer_version(version("other", 9))  # a name it does not receive
    assert set(edge.subscriptions) == {"pick", "pick.reward"}
    assert edge.subscriptions["pick"].offer == version("pick", 3)
    assert edge.subscriptions["pick.reward"].offer == version("pick.reward", 1)
    edge.subscriptions["pick.reward"].bad_versions.add(2)
    edge.offer_version(version("pick.reward", 2))  # it refused v2: never offered again
    assert edge.subscriptions["pick.reward"].offer == version("pick.reward", 1)


def test_an_edge_whose_policy_runs_in_the_cloud_still_gets_its_classifiers_weights() -> None:
    edge = session(remote=True)
    assert edge.receives() == ["pick.reward"]
    edge.offer_version(version("pick", 3))
    edge.offer_version(version("pick.reward", 1))
    assert set(edge.subscriptions) == {"pick.reward"}


def hello(**fields) -> pb.EdgeMessage:
    fields.setdefault("protocol_version", PROTOCOL_VERSION)
    return pb.EdgeMessage(hello=pb.Hello(resource=RESOURCE.to_proto(), **fields))


def test_admission_checks_the_outcome_policy_by_its_own_field(tmp_path) -> None:
    devices = DeviceRegistry(tmp_path / "devices.json")
    token = devices.add("robot-1", policies=("pick", "pick.reward"))
    assert admit(hello(token=token, outcome_policy="pick.reward"), devices).outcome_policy == "pick.reward"
    with pytest.raises(AuthError) as refused:
        admit(hello(token=token, outcome_policy="place.reward"), devices)
    assert refused.value.field == "hello.outcome_policy"
    with pytest.raises(CodecError) as refused:  # its versions could not be told from the policy's
        admit(hello(token=token, outcome_policy="pick"), devices)
    assert refused.value.field == "hello.outcome_policy"


def test_an_edge_of_an_older_protocol_is_told_to_run_the_same_release(tmp_path) -> None:
    """An edge of protocol 1 takes every version's tensors-sha256 digest for a corrupt file: refused at its hello."""
    token = DeviceRegistry(tmp_path / "devices.json").add("robot-1", policies=("pick",))
    with pytest.raises(CodecError) as refused:
        admit(hello(token=token, protocol_version=PROTOCOL_VERSION - 1), DeviceRegistry(tmp_path / "devices.json"))
    assert refused.value.field == "hello.protocol_version"
    assert "run the same fleetloop release" in refused.value.message


def test_both_subscriptions_are_pushed_and_a_refused_version_is_not_sent_again(tmp_path) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    policy = make_policy("mlp", {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2})
    registry.publish("pick", policy_to_bytes(policy))
    registry.publish("pick.reward", policy_to_bytes(policy))  # what it holds does not matter to the pusher

    async def scenario() -> list[tuple[str, int, str]]:
        edge = session()
        pusher = PolicyPusher(GatewayConfig(), registry, {"robot-1": edge})
        sender = asyncio.create_task(pusher.send_policies(edge))
        sent: list[tuple[str, int, str]] = []

        async def receive(n: int) -> None:
            while len(sent) < n:
                message = pb.CloudMessage.FromString(await asyncio.wait_for(edge.out.get(), 10))  # sent serialized
                edge.bulk_credits.release()
                sent.append((message.policy.policy_name, message.policy.version, message.policy.kind))

        for name in ("pick", "pick.reward"):
            pusher.offer_latest(edge, name)
        await receive(2)
        edge.subscriptions["pick.reward"].applied_version = 1
        pusher.on_rejected(edge, pb.PolicyRejected(policy_name="pick.reward", version=1, reason="no camera", bad=True))
        pusher.offer_latest(edge, "pick.reward")
        edge.subscriptions["pick"].full_sent = 0  # as if v1 had gone as a delta: one full snapshot may follow
        pusher.on_rejected(edge, pb.PolicyRejected(policy_name="pick", version=1, reason="delta base gone"))
        await receive(3)  # the policy again, as a snapshot; the refused classifier not
        await asyncio.sleep(0.1)
        assert edge.out.empty()
        sender.cancel()
        return sent

    sent = asyncio.run(scenario())
    assert sorted(sent[:2]) == [("pick", 1, "full"), ("pick.reward", 1, "full")]
    assert sent[2] == ("pick", 1, "full")


def test_a_version_the_learner_did_not_sign_is_logged_as_refused_once_never_as_pushed(tmp_path, caplog) -> None:
    layout = DataLayout(tmp_path)
    policy = make_policy("mlp", {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2})
    signing_registry(layout).publish("pick", policy_to_bytes(policy))

    async def scenario() -> list[int]:
        edge = Session(RESOURCE, "pick", schema_for([("state", "float32", (3,))], ("float32", (2,))))
        pusher = PolicyPusher(GatewayConfig(registry_poll_s=0.01), signing_registry(layout), {"robot-1": edge})
        watcher = asyncio.create_task(pusher.watch_registry())
        sender = asyncio.create_task(pusher.send_policies(edge))
        sent = [pb.CloudMessage.FromString(await asyncio.wait_for(edge.out.get(), 10)).policy.version]  # serialized
        edge.bulk_credits.release()
        PolicyRegistry(layout.registry).publish("pick", policy_to_bytes(policy))  # v2, written by someone else
        await asyncio.sleep(0.3)  # about 30 polls
        while not edge.out.empty():
            sent.append(edge.out.get_nowait().policy.version)
        watcher.cancel()
        sender.cancel()
        assert edge.subscriptions["pick"].refused.startswith("pick v2: ")
        return sent

    caplog.set_level(logging.INFO, logger="fleetloop.gateway")
    assert asyncio.run(scenario()) == [1]
    lines = [record.getMessage() for record in caplog.records]
    assert [line for line in lines if "pushing to" in line] == ["policy pick v1 published; pushing to 1 edge(s)"]
    refused = [line for line in lines if "v2" in line]
    assert len(refused) == 1 and "refused" in refused[0] and "not signed by this cloud's learner" in refused[0]


def test_no_task_hands_a_robot_a_policy_or_classifier_its_record_does_not_allow(tmp_path) -> None:
    """The outcome classifier is fixed at the hello (checked there, above); a task can change only the policy it runs,
    and a task whose policy (here another dataset's classifier) the record does not allow is not given to it, and
    sends no weights if it were."""
    from cloud.data.store import EpisodeStore
    from cloud.gateway.fleet import Requirements, Task
    from cloud.gateway.server import Gateway

    devices = DeviceRegistry(tmp_path / "devices.json")
    devices.add("robot-1", policies=("pick", "pick.reward"))
    registry = signing_registry(DataLayout(tmp_path))
    policy = make_policy("mlp", {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2})
    registry.publish("place.reward", policy_to_bytes(policy))
    gateway = Gateway(GatewayConfig(port=0, devices=devices), EpisodeStore(tmp_path / "store"), registry)
    edge = session()
    edge.device = devices.get("robot-1")
    gateway.sessions["robot-1"] = edge
    task = Task("judge", "place.reward", requires=Requirements(kind="robot", embodiment="pick"), count=0)
    assert not gateway._may_take("robot-1", task)
    gateway._on_assign("robot-1", task)
    assert "place.reward" not in edge.subscriptions and not edge.offered.is_set()
    assert edge.outcome_policy == "pick.reward"  # an assignment never changes the classifier
