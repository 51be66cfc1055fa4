"""Identity and access over the real gateway: device tokens, revocation, operator calls, TLS."""

from __future__ import annotations

import queue
import subprocess
import sys

import grpc
import numpy as np
import pytest

from cloud.data.store import EpisodeStore
from cloud.security.devices import DeviceRegistry
from fleetloop.fleet_view import command, fetch, rollout
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from protocol import PROTOCOL_VERSION
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from protocol.steps import encode_batch
from tests.e2e.fleet import Fleet, publish_untrained_policy, wait_until
from tests.e2e.raw_edge import RawEdge, last_policy_chunk
from tests.factories import step_columns

DATASET = "panda_pick_cube"


def resource(resource_id: str, kind: str = "robot") -> ResourceInfo:
    return ResourceInfo(
        id=resource_id,
        kind=kind,
        source="sim",
        capabilities=Capabilities(
            observation=(ArraySpec("state", "float32", (21,)),),
            action=ArraySpec("action", "float32", (4,), (-1, -1, -1, 0), (1, 1, 1, 2)),
            control_hz=10.0,
            embodiment=DATASET,
        ),
    )


def hello(
    target: str,
    resource_id: str,
    token: str,
    kind: str = "robot",
    policy: str = "",
    then=(),
    to_end: bool = False,
    outcome: str = "",
) -> list:
    """Opens a tunnel, says hello (and ``then``), returns what the cloud answered and the final status code."""
    messages = [
        pb.EdgeMessage(
            hello=pb.Hello(
                resource=resource(resource_id, kind).to_proto(),
                token=token,
                policy_name=policy,
                outcome_policy=outcome,
                protocol_version=PROTOCOL_VERSION,
            )
        ),
        *then,
    ]
    outgoing: queue.Queue = queue.Queue()
    for message in messages:
        outgoing.put(message)
    replies: list = []
    with grpc.insecure_channel(target) as channel:
        # The request stream stays open until the answer is in: a half-closed tunnel ends the session.
        stream = pb_grpc.TunnelStub(channel).Connect(iter(outgoing.get, None), timeout=10)
        try:
            for message in stream:
                replies.append(message)
                if message.WhichOneof("body") in ("error", "ack") and not to_end:
                    break
        except grpc.RpcError as err:
            replies.append(err.code())
        outgoing.put(None)
        stream.cancel()
    return replies


def first_error(replies: list) -> pb.Error:
    errors = [r.error for r in replies if isinstance(r, pb.CloudMessage) and r.WhichOneof("body") == "error"]
    assert errors, f"expected a refusal, got {replies}"
    return errors[0]


@pytest.fixture
def secured(fleet: Fleet) -> tuple[Fleet, dict[str, str]]:
    """A cloud on loopback with a devices file: every device must show its credential."""
    devices = DeviceRegistry(fleet.root / "data" / "devices.json")
    tokens = {
        "robot-1": devices.add("robot-1", policies=(DATASET,)),
        "robot-2": devices.add("robot-2", embodiments=(DATASET,)),
        "phone-1": devices.add("phone-1", kind="phone"),
        "alice": devices.add("alice", kind="operator"),
    }
    fleet.start_cloud()
    return fleet, tokens


def test_missing_wrong_and_misused_credentials_are_refused(secured) -> None:
    fleet, tokens = secured
    for token, why in (("", "no credential given"), (tokens["robot-2"], "wrong credential"), ("flt_x", "wrong")):
        replies = hello(fleet.target, "robot-1", token, to_end=True)
        error = first_error(replies)
        assert (error.code, error.field) == ("unauthenticated", "hello.token")
        assert why in error.message
        assert replies[-1] == grpc.StatusCode.UNAUTHENTICATED
    error = first_error(hello(fleet.target, "phone-1", tokens["phone-1"], kind="robot"))
    assert error.field == "hello.resource.kind" and "registered as a phone" in error.message
    error = first_error(hello(fleet.target, "robot-1", tokens["robot-1"], policy="someone_elses"))
    assert error.field == "hello.policy_name" and DATASET in error.message
    # An outcome classifier it may not run: refused by its own field, not taken for the policy's.
    error = first_error(hello(fleet.target, "robot-1", tokens["robot-1"], outcome=f"{DATASET}.reward"))
    assert (error.code, error.field) == ("unauthenticated", "hello.outcome_policy") and DATASET in error.message
    error = first_error(hello(fleet.target, "robot-2", tokens["robot-2"], outcome=DATASET))  # its policy's own name
    assert (error.code, error.field) == ("invalid_argument", "hello.outcome_policy")
    assert "names the policy it runs" in error.message

    # The right token opens the tunnel; the device writes its own episode, never another's.
    fleet.start_edge("robot-1", env={"FLEETLOOP_TOKEN": tokens["robot-1"]})
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)

    def robot_1_episodes() -> list[str]:
        store.refresh()
        if DATASET not in store.datasets():
            return []
        return [e.episode_id for e in store.episodes(DATASET) if e.resource_id == "robot-1"]

    wait_until(lambda: robot_1_episodes(), 90, "robot-1's steps in the store")
    theirs = robot_1_episodes()[0]
    rows_before = store.episode(theirs).num_steps
    columns = step_columns(5, state=21, action=4)
    intrusion = pb.EdgeMessage(steps=encode_batch(theirs, 10_000, columns, batch_id=3))
    error = first_error(hello(fleet.target, "robot-2", tokens["robot-2"], then=[intrusion]))
    assert error.field == "step_batch.episode_id" and "belongs to another resource" in error.message
    own = pb.EdgeMessage(steps=encode_batch("robot-2-episode", 0, columns, batch_id=4))
    replies = hello(fleet.target, "robot-2", tokens["robot-2"], then=[own])
    assert [r.ack.next_seq for r in replies if isinstance(r, pb.CloudMessage) and r.HasField("ack")] == [5]
    store.refresh()
    assert store.episode(theirs).resource_id == "robot-1" and store.episode(theirs).num_steps >= rows_before

    # Secrets never reach a log.
    for name in ("cloud", "robot-1"):
        text = fleet.log(name)
        assert text and not any(token in text for token in tokens.values())


def test_a_revoked_device_is_cut_off_and_refused_at_its_next_reconnect(secured) -> None:
    fleet, tokens = secured
    env = {"FLEETLOOP_TOKEN": tokens["robot-1"]}
    fleet.start_edge("robot-1", env=env)
    wait_until(lambda: "robot-1 connected" in fleet.log("cloud"), 60, "robot-1 to connect")
    revoke = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", "devices", "revoke", "robot-1", "--root", str(fleet.root / "data")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert revoke.returncode == 0, revoke.stderr
    # Its open tunnel is closed and the edge stops: a refused credential is not retried.
    assert fleet.processes["robot-1"].wait(timeout=30) == 3
    assert "refused its credential" in fleet.log("robot-1") and "revoked" in fleet.log("robot-1")
    assert "its credential was revoked; closing its tunnel" in fleet.log("cloud")

    fleet.processes.pop("robot-1")
    fleet.start_edge("robot-1", env=env)  # the same token again
    assert fleet.processes["robot-1"].wait(timeout=60) == 3
    assert fleet.log("robot-1").count("refused its credential") == 2
    error = first_error(hello(fleet.target, "robot-1", tokens["robot-1"]))
    assert error.code == "unauthenticated" and "revoked" in error.message


def test_fleet_control_needs_an_operator_credential(secured) -> None:
    fleet, tokens = secured
    for token in ("", tokens["robot-2"]):
        with pytest.raises(grpc.RpcError) as err:
            fetch(fleet.target, token=token)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.value.details().startswith("authorization:")
        with pytest.raises(grpc.RpcError):
            command(fleet.target, "robot-1", "estop", token=token)
        with pytest.raises(grpc.RpcError) as err:
            rollout(fleet.target, pb.RolloutCommand(policy_name="pick", version=2, action="rollback"), token=token)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert list(fetch(fleet.target, token=tokens["alice"]).members) == []
    assert not command(fleet.target, "nobody", "pause", token=tokens["alice"]).ok
    promote = pb.RolloutCommand(policy_name="pick", version=2, action="promote")
    refused = rollout(fleet.target, promote, token=tokens["alice"])  # heard, but canary rollouts are off
    assert not refused.ok and "start the cloud with --canary" in refused.message


def test_tls_tunnel_and_fleet_view(tmp_path, fleet: Fleet) -> None:
    root = tmp_path / "data"
    cli = [sys.executable, "-m", "fleetloop.cli"]
    assert subprocess.run([*cli, "certs", "init", "--root", str(root)], timeout=60).returncode == 0
    devices = DeviceRegistry(root / "devices.json")
    robot, alice = devices.add("cart-1", policies=("pusht",)), devices.add("alice", kind="operator")
    fleet.start_cloud("--tls")
    ca = str(root / "certs" / "ca.pem")
    fleet.start_edge("cart-1", "--operator", "none", "--ca", ca, robot="sim:pusht", env={"FLEETLOOP_TOKEN": robot})
    wait_until(lambda: "cart-1 connected" in fleet.log("cloud"), 60, "cart-1 to connect over TLS")
    assert "TLS, device credentials required" in fleet.log("cloud")
    [member] = fetch(fleet.target, ca=ca, token=alice).members
    assert member.resource.id == "cart-1"
    # Plain text to a TLS gateway gets nowhere.
    with pytest.raises(grpc.RpcError) as err:
        fetch(fleet.target, token=alice, timeout_s=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    shown = subprocess.run(
        [*cli, "fleet", "--cloud", fleet.target, "--ca", ca],
        capture_output=True,
        text=True,
        timeout=60,
        env={**fleet_env(), "FLEETLOOP_TOKEN": alice, "COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "cart-1" in shown.stdout
    assert np.isfinite(member.seconds_since_seen)


def fleet_env() -> dict[str, str]:
    from tests.e2e.fleet import ENV

    return dict(ENV)


def test_a_device_receives_only_the_policies_assigned_to_it(tmp_path, fleet: Fleet) -> None:
    devices = DeviceRegistry(tmp_path / "data" / "devices.json")
    tokens = {
        "robot-1": devices.add("robot-1", embodiments=(DATASET,)),
        "robot-2": devices.add("robot-2", embodiments=(DATASET,)),
        "robot-3": devices.add("robot-3", policies=("other_policy",)),
    }
    (tmp_path / "tasks.yaml").write_text(f"- {{name: pick, policy: {DATASET}, count: 2}}\n")
    edges: list[RawEdge] = []
    try:
        fleet.start_cloud(
            "--tasks", str(tmp_path / "tasks.yaml"), "--lost-after", "120"
        )  # raw edges send no heartbeats
        # robot-3 may run only other_policy, so it cannot even ask for this one...
        error = first_error(hello(fleet.target, "robot-3", tokens["robot-3"], policy=DATASET))
        assert error.field == "hello.policy_name"
        for robot in ("robot-1", "robot-2"):  # ...and the task wants two robots: these two
            edges.append(RawEdge(fleet.target, resource(robot), token=tokens[robot], policy_name=DATASET))
            wait_until(lambda r=robot: f"{r} connected" in fleet.log("cloud"), 30, f"{robot} to connect")
        # A third robot with a credential asks for the same policy, but the task is full: it is idle.
        idle = RawEdge(
            fleet.target, resource("robot-4"), token=devices.add("robot-4", embodiments=(DATASET,)), policy_name=DATASET
        )
        edges.append(idle)
        wait_until(lambda: "robot-4 has no task that fits it" in fleet.log("cloud"), 30, "robot-4 to connect idle")
        publish_untrained_policy(tmp_path, DATASET)
        for edge in edges[:2]:
            chunks = edge.received("policy", 10, until=last_policy_chunk)  # v1 whole, not 10 s of nothing after it
            assert chunks and {c.policy.version for c in chunks} == {1}
            assert last_policy_chunk(chunks[-1])
        assert idle.received("policy", 3) == [], "an idle robot received a policy it was not assigned"
    finally:
        for edge in edges:
            edge.close()
