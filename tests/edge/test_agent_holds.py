"""What the edge says and does when it cannot move: no policy and no operator, or a cloud that refuses it."""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc

from edge.agent import EdgeAgent, EdgeConfig
from edge.spool import Spool
from edge.tunnel_client import TunnelConfig
from hal.null import NullRobot
from hal.resource import ResourceInfo
from policies.factory import make_policy
from policies.weights import policy_to_bytes
from protocol import tunnel_pb2 as pb
from protocol import tunnel_pb2_grpc as pb_grpc
from protocol.limits import WAITING_FOR_VERSION
from tests.e2e.fleet import free_port


def wait_for(condition, timeout_s: float) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "timed out"
        time.sleep(0.01)


def make_agent(tmp_path, target: str) -> tuple[EdgeAgent, NullRobot]:
    robot = NullRobot(state_dim=3, action_dim=2, control_hz=50.0, episode_steps=10_000)
    resource = ResourceInfo("arm", "robot", robot.capabilities, "sim")
    return EdgeAgent(EdgeConfig(TunnelConfig(target, "p")), resource, robot, Spool(tmp_path / "spool.db")), robot


def test_a_robot_with_no_policy_and_no_operator_says_it_holds_still(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fleetloop.edge")
    agent, robot = make_agent(tmp_path, f"127.0.0.1:{free_port()}")  # no cloud: the loop must not care
    loop = threading.Thread(target=agent.run, kwargs={"duration_s": 20}, daemon=True)
    loop.start()
    try:
        wait_for(lambda: "arm holds still: waiting for a task from the cloud" in caplog.text, 10)
        agent._on_assignment(pb.Assignment(task="t", policy_name="p"))  # a task, but no policy yet
        wait_for(lambda: agent.stats.no_action_ticks > 10, 10)
        assert robot.holding and agent.stats.ticks == 0
        assert "moves again" not in caplog.text, "it said it moves while it held still"
        assert caplog.text.count("arm holds still: no policy yet and no operator to drive it") == 1
        config = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "hidden": [8]}
        agent.runtime.load("p", 1, policy_to_bytes(make_policy("mlp", config)))
        wait_for(lambda: agent.stats.ticks > 5, 10)
        assert caplog.text.count("arm moves again") == 1 and not robot.holding
    finally:
        agent.stop()
        loop.join(timeout=5)
        agent.close(drain_s=0)


class RefusingGateway(pb_grpc.TunnelServicer):
    """Refuses every hello by field, as the gateway does for a capability clash, and counts the tries."""

    def __init__(self) -> None:
        self.hellos = 0

    def Connect(self, request_iterator, context):  # noqa: N802 (gRPC method name)
        next(request_iterator)
        self.hellos += 1
        yield pb.CloudMessage(
            error=pb.Error(
                code="invalid_argument",
                field="hello.resource.capabilities",
                message="do not match the stored dataset null",
            )
        )
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello.resource.capabilities: do not match")


def test_a_refused_hello_stops_the_edge_at_once_with_the_reason(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    gateway = RefusingGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_TunnelServicer_to_server(gateway, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    agent, robot = make_agent(tmp_path, f"127.0.0.1:{port}")
    try:
        started = time.monotonic()
        agent.run(duration_s=30)
        took = time.monotonic() - started
        agent.close(drain_s=10)
        assert time.monotonic() - started < 5, "it kept retrying or draining a refusal that cannot heal"
    finally:
        agent.stop()
        server.stop(0)
    assert took < 5 and gateway.hellos == 1
    assert agent.tunnel.refused is not None and agent.tunnel.refused.field == "hello.resource.capabilities"
    assert "arm stops: the cloud refused its hello (hello.resource.capabilities: do not match" in caplog.text


def test_an_episode_a_new_version_finished_names_both_versions(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fleetloop.edge")
    robot = NullRobot(state_dim=3, action_dim=2, control_hz=100.0, episode_steps=60)
    resource = ResourceInfo("arm", "robot", robot.capabilities, "sim")
    agent = EdgeAgent(EdgeConfig(TunnelConfig(f"127.0.0.1:{free_port()}", "p")), resource, robot, Spool(tmp_path / "s"))
    agent._on_assignment(pb.Assignment(task="t", policy_name="p"))
    config = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "hidden": [8]}
    weights = policy_to_bytes(make_policy("mlp", config))
    agent.runtime.load("p", 1, weights)
    loop = threading.Thread(target=agent.run, kwargs={"episodes": 2, "duration_s": 20}, daemon=True)
    loop.start()
    try:
        wait_for(lambda: agent.stats.ticks > 20, 10)
        agent.runtime.load("p", 2, weights)  # swapped in mid-episode 1
        loop.join(timeout=15)
        assert "arm episode 1 failed after 60 steps on its own (policy v1, then v2)" in caplog.text, caplog.text
        assert "arm episode 2 failed after 60 steps on its own (policy v2)" in caplog.text, caplog.text
    finally:
        agent.stop()
        loop.join(timeout=5)
        agent.close(drain_s=0)


def test_the_synchronous_schedule_holds_between_episodes_until_the_next_version(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fleetloop.edge")
    robot = NullRobot(state_dim=3, action_dim=2, control_hz=100.0, episode_steps=20)
    resource = ResourceInfo("arm", "robot", robot.capabilities, "sim")
    config = EdgeConfig(TunnelConfig(f"127.0.0.1:{free_port()}", "p"), episodes_per_version=2)
    agent = EdgeAgent(config, resource, robot, Spool(tmp_path / "s"))
    agent._on_assignment(pb.Assignment(task="t", policy_name="p"))
    policy = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "hidden": [8]}
    weights = policy_to_bytes(make_policy("mlp", policy))
    agent.runtime.load("p", 1, weights)
    loop = threading.Thread(target=agent.run, kwargs={"duration_s": 30}, daemon=True)
    loop.start()
    try:
        wait_for(lambda: "2 episodes with v1 done; waiting for the learner's next version" in caplog.text, 10)
        ticks = agent.stats.ticks
        time.sleep(0.5)  # 50 ticks: two more episodes' worth, had it not held
        assert (agent.stats.episodes, agent.stats.ticks) == (2, ticks) == (2, 40) and robot.holding
        assert agent.tunnel.waiting_for == WAITING_FOR_VERSION  # every heartbeat says so: the fleet view shows it
        agent.runtime.load("p", 2, weights)
        wait_for(lambda: agent.tunnel.waiting_for == "", 10)  # it moves again, and says so
        wait_for(lambda: "2 episodes with v2 done" in caplog.text, 10)
        after_hold = caplog.text.split("2 episodes with v1 done")[1]
        assert agent.stats.episodes == 4 and after_hold.count("arm moves again") == 1
        assert "arm episode 3 failed after 20 steps on its own (policy v2)" in caplog.text, caplog.text
    finally:
        agent.stop()
        loop.join(timeout=5)
        agent.close(drain_s=0)
