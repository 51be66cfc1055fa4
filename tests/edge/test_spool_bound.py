"""The bounded spool: past --spool-max-mb the robot holds still and records nothing, nothing unacked is deleted,
and it moves again once acks make room."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from edge.agent import EdgeAgent, EdgeConfig
from edge.recorder import RESUME_FRACTION, Step, StepDigest, StepRecorder
from edge.tunnel_client import TunnelConfig
from hal.null import NullRobot
from hal.resource import ResourceInfo
from hal.safety import SafeDriver
from policies.factory import make_policy
from policies.weights import policy_to_bytes
from protocol import tunnel_pb2 as pb
from protocol.steps import encode_batch
from tests.e2e.fleet import free_port


def batch(episode: str, first_seq: int, n: int = 4):
    return encode_batch(episode, first_seq, {"x": np.arange(first_seq, first_seq + n, dtype=np.int64)})


def wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_size_bytes_follows_appends_acks_and_a_reopen(make_spool, tmp_path) -> None:
    spool = make_spool(tmp_path / "spool.db")
    assert spool.size_bytes == 0
    a0, a4, b0 = batch("a", 0), batch("a", 4), batch("b", 0)
    for b in (a0, a4, b0):
        spool.append(b)
    spool.append(a0)  # a duplicate is ignored and not counted
    sizes = [len(b.SerializeToString()) for b in (a0, a4, b0)]
    assert spool.size_bytes == sum(sizes)
    assert spool.ack("a", 4) == 1
    assert spool.size_bytes == sizes[1] + sizes[2]
    spool.close()
    reopened = make_spool(tmp_path / "spool.db")
    assert reopened.size_bytes == sizes[1] + sizes[2]
    reopened.ack("a", 8)
    reopened.ack("b", 4)
    assert reopened.size_bytes == 0 and reopened.counts() == (0, 0)


def step(episode: str, seq: int) -> Step:
    return Step(episode, seq, "t", {"action": np.full(64, seq, np.float32), "done": np.bool_(False)})


def test_recorder_turns_full_at_the_bound_keeps_every_step_and_clears_below_the_resume_mark(
    make_spool, tmp_path
) -> None:
    spool = make_spool(tmp_path / "spool.db")
    recorder = StepRecorder(spool, on_spooled=lambda: None, interval_s=3600, max_spool_bytes=4000)
    seq = 0
    while not recorder.full:
        recorder.record(step("e", seq))
        seq += 1
        recorder.flush()  # one step per batch, so the bound is crossed step by step
        assert seq < 100, "never full"
    assert spool.size_bytes >= 4000
    assert spool.counts() == (seq, seq)  # nothing was dropped to make room
    # One ack (~300 bytes): below the bound but above the resume mark, it stays full (no flapping).
    spool.ack("e", 1)
    recorder.flush()
    assert RESUME_FRACTION * 4000 <= spool.size_bytes < 4000 and recorder.full
    spool.ack("e", seq // 2)
    recorder.flush()
    assert spool.size_bytes < RESUME_FRACTION * 4000 and not recorder.full
    recorder.close()


def test_a_full_spool_holds_the_robot_and_records_nothing_until_acks_make_room(make_spool, tmp_path, caplog) -> None:
    robot = NullRobot(state_dim=3, action_dim=2, control_hz=50.0, episode_steps=10_000)
    driver = SafeDriver(robot, watchdog_s=0.1, name="arm")
    resource = ResourceInfo("arm", "robot", driver.capabilities, "sim")
    spool = make_spool(tmp_path / "spool.db")
    # No cloud listens: nothing is ever acked, so the spool fills up.
    config = EdgeConfig(TunnelConfig(f"127.0.0.1:{free_port()}", "p"), max_spool_bytes=20_000, record_digest=True)
    agent = EdgeAgent(config, resource, driver, spool)
    config = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "hidden": [8]}
    agent.runtime.load("p", 1, policy_to_bytes(make_policy("mlp", config)))
    agent._on_assignment(pb.Assignment(task="t", policy_name="p"))
    loop = threading.Thread(target=agent.run, kwargs={"duration_s": 30}, daemon=True)
    caplog.set_level(logging.WARNING, logger="fleetloop.edge")
    loop.start()
    try:
        wait_for(lambda: agent.stats.spool_full_ticks > 5, 20)
        assert robot.holding
        assert "spool full (0.0191 MB): robot holds until the cloud acks" in caplog.text
        agent.recorder.flush()
        ticks, spooled = agent.stats.ticks, spool.counts()[1]
        time.sleep(0.3)
        agent.recorder.flush()
        assert agent.stats.ticks == ticks, "steps were recorded while the spool was full"
        assert spool.counts()[1] == spooled == ticks, "unacked steps were deleted"
        assert robot.holding
        # The cloud acks everything spooled so far: the robot moves and records again.
        for held in spool.pending(limit=10_000):
            spool.ack(held.episode_id, held.first_seq + held.num_steps)
        wait_for(lambda: agent.stats.ticks > ticks + 5, 10)
    finally:
        agent.stop()
        loop.join(timeout=5)
        agent.close(drain_s=0)
    assert agent.recorder.digest is not None and len(agent.recorder.digest.episodes) == 1
    [(count, _)] = agent.recorder.digest.episodes.values()
    assert count == agent.stats.ticks


def test_step_digest_does_not_depend_on_batching() -> None:
    one, two = StepDigest(), StepDigest()
    steps = [step("e", i) for i in range(5)] + [step("f", 0)]
    for s in steps:
        one.update(s)
    for s in [steps[5], *steps[:5]]:  # episodes interleave differently; within an episode seq order holds
        two.update(s)
    assert one.hexdigest() == two.hexdigest()
    three = StepDigest()
    for s in steps[:4] + [Step("e", 4, "t", {"action": np.full(64, 99, np.float32), "done": np.bool_(False)})]:
        three.update(s)
    three.update(steps[5])
    assert three.hexdigest() != one.hexdigest()
