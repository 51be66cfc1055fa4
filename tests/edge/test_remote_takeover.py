"""A takeover page's person through the real control loop: their actions pass the safety layer, their steps are
interventions with their name, the page sees what the driver applied, and when their commands stop (no word that
the page closed: a lost link) the robot holds within the watchdog's deadline."""

from __future__ import annotations

import threading
import time

import numpy as np

from edge.agent import EdgeAgent, EdgeConfig
from edge.arbiter import with_takeover
from edge.spool import Spool
from edge.tunnel_client import TunnelConfig
from hal.null import NullRobot
from hal.resource import ResourceInfo
from protocol import tunnel_pb2 as pb
from tests.e2e.fleet import free_port, wait_until

HZ, WATCHDOG_S = 50.0, 0.1


class RecordingRobot(NullRobot):
    def __init__(self) -> None:
        super().__init__(state_dim=3, action_dim=2, control_hz=HZ, episode_steps=10_000, image_shape=(32, 48, 3))
        self.applied: list[tuple[float, np.ndarray]] = []

    def apply(self, action):
        self.applied.append((time.monotonic(), np.array(action)))
        return super().apply(action)


def test_a_remote_person_drives_through_the_safety_layer_and_the_robot_holds_when_they_go_silent(tmp_path) -> None:
    robot = RecordingRobot()
    driver, arbiter = with_takeover(robot, None, "arm", WATCHDOG_S)  # as `fleetloop edge` builds it
    resource = ResourceInfo("arm", "robot", driver.capabilities, "sim")
    spool = Spool(tmp_path / "spool.db")
    agent = EdgeAgent(EdgeConfig(TunnelConfig(f"127.0.0.1:{free_port()}", "p")), resource, driver, spool, arbiter)
    sent: list[pb.EdgeMessage] = []
    arbiter.attach(lambda message: sent.append(message) or True, lambda: 0)  # the tunnel, seen from here
    agent._on_assignment(pb.Assignment(task="t", policy_name="p"))
    loop = threading.Thread(target=agent.run, kwargs={"duration_s": 20}, daemon=True)
    loop.start()
    try:
        time.sleep(0.2)
        assert robot.applied == [] and robot.holding  # no policy, nobody drives: it holds
        arbiter.on_cloud_message(pb.CloudMessage(watch=pb.WatchRequest(watchers=1, rate_hz=25, max_image_side=16)))
        seq = 0
        for _ in range(15):  # a page that drives: an action every 20 ms, far outside the robot's limits
            seq += 1
            command = pb.PersonCommand(who="browser:alice", session="page", seq=seq, action=[5.0, -5.0])
            command.signals.extend(["take_over"] if seq == 1 else [])
            arbiter.on_cloud_message(pb.CloudMessage(person=command))
            time.sleep(0.02)
        silent_at = time.monotonic()  # the link is lost: no more commands and no word that the page closed
        wait_until(lambda: robot.holding, 1.0, "the robot to hold", interval_s=0.005)
        held_after = time.monotonic() - silent_at
        time.sleep(0.3)
    finally:
        agent.stop()
        loop.join(timeout=5)
        agent.close(drain_s=0)
    assert robot.applied, "the person's actions never reached the driver"
    last_applied = max(t for t, _ in robot.applied)
    assert last_applied - silent_at < WATCHDOG_S + 1 / HZ, f"moved {last_applied - silent_at:.3f} s into the silence"
    assert held_after < WATCHDOG_S + 2 / HZ, held_after
    for _, action in robot.applied:
        np.testing.assert_array_equal(action, [1.0, -1.0])  # clamped to the action's limits
    views = [m.live_view for m in sent if m.HasField("live_view")]
    assert len(views) >= 5 and views[-1].controller == "browser:alice"
    driven = [v for v in views if v.HasField("applied")]
    assert driven and list(np.frombuffer(driven[-1].applied.data, np.float32)) == [1.0, -1.0]
    assert driven[-1].frames[0].format == "jpeg" and max(driven[-1].frames[0].width, driven[-1].frames[0].height) == 16
    assert agent.stats.intervention_steps == len(robot.applied)
    spooled = Spool(tmp_path / "spool.db").pending(limit=1000)  # no cloud acked them: all still here
    operators = [who for s in spooled for who in s.batch.operators]
    assert operators == ["browser:alice"] * len(robot.applied)
