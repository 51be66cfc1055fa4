"""The control loop with the safety layer: a policy that stops answering leaves the robot holding still."""

from __future__ import annotations

import threading
import time

from edge.agent import EdgeAgent, EdgeConfig
from edge.spool import Spool
from edge.tunnel_client import TunnelConfig
from hal.null import NullRobot
from hal.resource import ResourceInfo
from hal.safety import SafeDriver
from policies.factory import make_policy
from policies.weights import policy_to_bytes
from protocol import tunnel_pb2 as pb
from tests.e2e.fleet import free_port


class CountingRobot(NullRobot):
    def __init__(self) -> None:
        super().__init__(state_dim=3, action_dim=2, control_hz=50.0, episode_steps=10_000)
        self.applied = 0

    def apply(self, action):
        self.applied += 1
        return super().apply(action)


def wait_for(condition, timeout_s: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "timed out"
        time.sleep(0.002)
    return time.monotonic() - started


def test_a_hung_policy_leaves_the_robot_holding_within_one_tick(tmp_path) -> None:
    robot = CountingRobot()
    driver = SafeDriver(robot, watchdog_s=0.1, name="arm")
    resource = ResourceInfo("arm", "robot", driver.capabilities, "sim")
    # No cloud listens on this port: the loop must not care.
    config = EdgeConfig(TunnelConfig(f"127.0.0.1:{free_port()}", "p"))
    agent = EdgeAgent(config, resource, driver, Spool(tmp_path / "spool.db"))
    config = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "hidden": [8]}
    agent.runtime.load("p", 1, policy_to_bytes(make_policy("mlp", config)))
    agent._on_assignment(pb.Assignment(task="t", policy_name="p"))
    loop = threading.Thread(target=agent.run, kwargs={"duration_s": 10}, daemon=True)
    loop.start()
    try:
        wait_for(lambda: robot.applied > 20, 10)
        assert not robot.holding
        hang = threading.Event()
        policy = agent.runtime._active.policy
        original = policy.act
        policy.act = lambda obs: (hang.wait(10), original(obs))[1]
        hang.clear()
        took = wait_for(lambda: robot.holding, 1.0)
        assert took < 0.1, f"the robot kept moving {took:.3f} s after the policy stopped answering"
        applied = robot.applied
        time.sleep(0.2)
        assert robot.applied == applied, "actions were applied while the policy was hung"
        hang.set()
        policy.act = original
        wait_for(lambda: robot.applied > applied + 5, 5)  # the policy answers again: the robot moves again
    finally:
        agent.stop()
        loop.join(timeout=5)
        agent.close(drain_s=0)
