"""The edge agent with a person as its operator: signals each tick, labels, discards, who drove, the scene wait.

The person is a scripted fake (signals the test hands it); the agent, its recorder and spool are the real ones, and
what they recorded is read back from the spool as the batches the cloud would receive.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from edge.agent import EdgeAgent, EdgeConfig
from edge.arbiter import with_takeover
from edge.operator import ExplainsSignals, PersonOperator, Signal
from edge.scene import scene_wait_for
from edge.spool import Spool
from edge.tunnel_client import TunnelConfig
from hal.null import NullRobot
from hal.resource import ResourceInfo, SaysSceneReady
from policies.factory import make_policy
from policies.weights import policy_to_bytes
from protocol import tunnel_pb2 as pb
from protocol.arrays import decode_array
from protocol.limits import WAITING_FOR_RESET
from tests.e2e.fleet import free_port

PERSON_ACTION = np.array([0.5, -0.5], np.float32)


class FakePerson(PersonOperator, ExplainsSignals):
    """A person whose signals the test gives (``say``); drives with PERSON_ACTION while taken over or without policy."""

    def __init__(self, who: str = "ana@arm", scene_key: str = "press Enter") -> None:
        self._who = who
        self.scene_key = scene_key
        self.driving = False
        self.resets = 0
        self._signals: queue.SimpleQueue[Signal] = queue.SimpleQueue()

    @property
    def who(self) -> str:
        return self._who

    def say(self, signal: Signal) -> None:
        self._signals.put(signal)

    def take_signals(self) -> list[Signal]:
        said = []
        while not self._signals.empty():
            signal = self._signals.get()
            if signal in (Signal.TAKE_OVER, Signal.HAND_BACK):
                self.driving = signal == Signal.TAKE_OVER
            said.append(signal)
        return said

    def decide(self, observation, policy_action, step_index):
        if self.driving or policy_action is None:
            return PERSON_ACTION, True
        return policy_action, False

    def reset(self) -> None:
        self.driving = False
        self.resets += 1

    def signal_help(self, signal: Signal) -> str:
        return self.scene_key if signal == Signal.SCENE_READY else "press a key"


class SceneTopic(NullRobot, SaysSceneReady):
    """A robot whose config names where word of a reset scene comes from (as a ROS 2 scene_ready_topic)."""

    scene_ready_source = "/arm/scene_ready"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.word = threading.Event()

    def scene_ready(self) -> bool:
        ready = self.word.is_set()
        self.word.clear()
        return ready


@pytest.fixture(autouse=True)
def _edge_log(caplog) -> None:
    caplog.set_level(logging.INFO, logger="fleetloop.edge")


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextmanager
def running(tmp_path, operator, robot=None, policy: bool = True, scene_source=None, timeout_s: float = 0.0) -> Iterator:
    """(agent, robot): an agent over a NullRobot at 50 Hz with a task (and, with ``policy``, a policy) and no cloud,
    running its loop, with the scene wait ``fleetloop edge`` gives it; stopped and closed on the way out."""
    robot = robot or NullRobot(state_dim=3, action_dim=2, control_hz=50.0, episode_steps=10_000)
    resource = ResourceInfo("arm", "robot", robot.capabilities, "sim")
    tunnel = TunnelConfig(f"127.0.0.1:{free_port()}", "p")  # nobody listens: the loop must not care
    spool = Spool(tmp_path / "spool.db")
    scene = scene_wait_for(operator, scene_source, timeout_s)
    agent = EdgeAgent(EdgeConfig(tunnel), resource, robot, spool, operator, scene=scene)
    agent._on_assignment(pb.Assignment(task="t", policy_name="p"))
    if policy:
        spec = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "hidden": [8]}
        agent.runtime.load("p", 1, policy_to_bytes(make_policy("mlp", spec)))
    loop = threading.Thread(target=agent.run, kwargs={"duration_s": 30}, daemon=True)
    loop.start()
    try:
        yield agent, robot
    finally:
        agent.stop()
        loop.join(timeout=5)
        agent.close(drain_s=0)


def said_after(agent: EdgeAgent, person: FakePerson, signal: Signal, ticks: int = 3, episodes: int = 1) -> None:
    """Once the robot made ``ticks`` steps, the person gives ``signal``, which ends episode number ``episodes``."""
    wait_for(lambda: agent.stats.ticks >= ticks, 10, f"{ticks} ticks")
    person.say(signal)
    wait_for(lambda: agent.stats.episodes == episodes, 10, f"episode {episodes} to end")


def recorded(agent: EdgeAgent) -> list[pb.StepBatch]:
    """Every batch spooled so far, in seq order per episode."""
    wait_for(lambda: agent.recorder.spooled == agent.recorder.recorded, 5, "the spool writer")
    return [s.batch for s in agent.spool.pending(limit=100_000)]


def column(batches: list[pb.StepBatch], name: str) -> np.ndarray:
    return np.concatenate([decode_array(b.columns[name], name) for b in batches])


def test_a_persons_take_over_and_success_are_recorded_with_who_and_the_label(tmp_path, caplog) -> None:
    person = FakePerson()
    with running(tmp_path, person) as (agent, _):
        wait_for(lambda: agent.stats.ticks >= 5, 10, "the policy driving")
        person.say(Signal.TAKE_OVER)
        wait_for(lambda: agent.stats.intervention_steps >= 5, 10, "the person driving")
        person.say(Signal.HAND_BACK)
        driven = agent.stats.intervention_steps
        said_after(agent, person, Signal.SUCCESS, ticks=25)
        batches = recorded(agent)
    first = [b for b in batches if b.episode_id == batches[0].episode_id]
    intervention = column(first, "intervention")
    assert 0 < intervention.sum() < len(intervention) and intervention.sum() >= driven
    for batch in first:  # each step the person drove names them; a batch the policy drove alone names no one
        driven_here = decode_array(batch.columns["intervention"], "i")
        assert list(batch.operators) == (["ana@arm" if d else "" for d in driven_here] if driven_here.any() else [])
    np.testing.assert_array_equal(
        column(first, "action")[intervention], np.tile(PERSON_ACTION, (intervention.sum(), 1))
    )
    done, success = column(first, "done"), column(first, "success")
    assert done[-1] and success[-1] and not done[:-1].any()
    assert [b.HasField("label") for b in first] == [False] * (len(first) - 1) + [True]
    assert (first[-1].label.outcome, first[-1].label.by) == ("success", "ana@arm")
    assert agent.stats.successes == 1 and agent.stats.discarded == 0
    assert "arm: ana@arm takes over" in caplog.text and "arm: ana@arm hands back to the policy" in caplog.text
    assert "arm episode 1 succeeded (ana@arm says so)" in caplog.text


def test_rerecord_discards_the_episode_and_failure_labels_it(tmp_path, caplog) -> None:
    person = FakePerson()
    with running(tmp_path, person, timeout_s=0.05) as (agent, _):
        said_after(agent, person, Signal.RERECORD, ticks=5)
        said_after(agent, person, Signal.FAILURE, ticks=15, episodes=2)
        batches = recorded(agent)
    labels = [(b.label.outcome, b.label.by) for b in batches if b.HasField("label")]
    assert labels == [("discarded", "ana@arm"), ("failure", "ana@arm")]
    assert not column(batches, "success").any()
    assert agent.stats.discarded == 1 and agent.stats.successes == 0
    assert "arm episode 1 was discarded (ana@arm asked to re-record it: kept, never trained on)" in caplog.text
    assert "arm episode 2 failed (ana@arm says so)" in caplog.text


def test_after_an_episode_the_robot_waits_for_the_persons_scene_ready(tmp_path, caplog) -> None:
    person = FakePerson()
    with running(tmp_path, person) as (agent, robot):
        said_after(agent, person, Signal.SUCCESS)
        ticks = agent.stats.ticks
        time.sleep(0.5)  # 25 ticks at 50 Hz: it must hold through all of them
        assert agent.stats.ticks == ticks and robot.holding and person.resets == 1
        assert agent.tunnel.waiting_for == WAITING_FOR_RESET
        assert "arm holds still: waiting for the scene to be reset (press Enter when it is ready)" in caplog.text
        person.say(Signal.SUCCESS)  # the episode already ended: nothing to label
        person.say(Signal.SCENE_READY)
        wait_for(lambda: agent.stats.ticks > ticks, 10, "the next episode")
        assert agent.tunnel.waiting_for == "" and person.resets == 2 and agent.stats.episodes == 1
    assert "the episode already ended; ana@arm's success is not applied to it" in caplog.text
    assert "arm: the scene is ready (ana@arm says so); the next episode starts" in caplog.text


def test_the_scene_wait_ends_by_timeout(tmp_path, caplog) -> None:
    person = FakePerson()
    with running(tmp_path, person, timeout_s=0.4) as (agent, _):
        said_after(agent, person, Signal.SUCCESS)
        ended, ticks = time.monotonic(), agent.stats.ticks
        wait_for(lambda: agent.stats.ticks > ticks, 10, "the timeout to start the next episode")
        assert time.monotonic() - ended >= 0.35
    assert "(press Enter when it is ready; or it goes on by itself after 0.4 s)" in caplog.text
    assert "arm: the scene is ready (0.4 s passed)" in caplog.text


def test_the_scene_wait_ends_on_the_robots_own_topic(tmp_path, caplog) -> None:
    robot = SceneTopic(state_dim=3, action_dim=2, control_hz=50.0, episode_steps=10)
    with running(tmp_path, None, robot=robot, scene_source=robot) as (agent, _):  # no person: its config says
        wait_for(lambda: agent.stats.episodes == 1, 10, "the robot's own episode end")
        time.sleep(0.3)
        assert agent.stats.ticks == 10, "it moved on without word from its topic"
        robot.word.set()
        wait_for(lambda: agent.stats.ticks > 10, 10, "the topic's word to start the next episode")
    assert "arm holds still: waiting for the scene to be reset (publish true on /arm/scene_ready)" in caplog.text
    assert "arm: the scene is ready (/arm/scene_ready says so)" in caplog.text


def test_with_no_policy_yet_the_person_drives_from_the_first_tick(tmp_path, caplog) -> None:
    with running(tmp_path, FakePerson(), policy=False) as (agent, _):
        wait_for(lambda: agent.stats.ticks >= 10, 10, "the person driving a robot with no policy")
        batches = recorded(agent)
    assert column(batches, "intervention").all() and {who for b in batches for who in b.operators} == {"ana@arm"}
    assert (column(batches, "policy_version") == 0).all()  # demonstrations, as the learner calls them
    assert "no policy yet" not in caplog.text


def test_a_wait_nothing_can_end_is_refused_at_start() -> None:
    mute = FakePerson(scene_key="")
    with pytest.raises(ValueError, match="--scene-ready-timeout: .* ana@arm has no way to say it is"):
        scene_wait_for(mute, None, 0.0)
    assert scene_wait_for(mute, None, 5.0) is not None
    assert scene_wait_for(None, None, 0.0) is None  # a robot with no person and no topic: no wait at all
    with pytest.raises(ValueError, match="--wait-for-scene: nobody could say the scene is ready"):
        scene_wait_for(None, None, 0.0, page=False, always=True)
    assert scene_wait_for(None, None, 3.0, always=True) is not None


def test_a_robot_driven_only_from_the_page_waits_for_scene_ready_with_wait_for_scene(tmp_path, caplog) -> None:
    batches = _page_labels_then_readies_the_scene(tmp_path, None, always=True)
    labels = [(b.label.outcome, b.label.by) for b in batches if b.HasField("label")]
    assert labels == [("failure", "browser:bob")]
    assert "waiting for the scene to be reset (press scene ready on the takeover page when it is ready)" in caplog.text
    assert "arm: the scene is ready (browser:bob says so)" in caplog.text


def _page_labels_then_readies_the_scene(tmp_path, local: FakePerson | None, always: bool = False) -> list:
    """bob, at the takeover page, ends an episode as a failure then says the scene is ready; the batches recorded."""
    robot = NullRobot(state_dim=3, action_dim=2, control_hz=50.0, episode_steps=10_000)
    driver, arbiter = with_takeover(robot, local, "arm", 0.2)  # as `fleetloop edge` builds it
    arbiter.attach(lambda message: True, lambda: 1)
    seq = iter(range(1, 100))

    def page(*signals: str) -> None:  # bob, at the page, drives nothing: anyone may label while nobody drives
        command = pb.PersonCommand(who="browser:bob", session="page", seq=next(seq), signals=list(signals))
        arbiter.on_cloud_message(pb.CloudMessage(person=command))

    resource = ResourceInfo("arm", "robot", driver.capabilities, "sim")
    scene = scene_wait_for(local, None, 0.0, page=True, always=always)
    spool = Spool(tmp_path / "spool.db")
    agent = EdgeAgent(
        EdgeConfig(TunnelConfig(f"127.0.0.1:{free_port()}", "p")), resource, driver, spool, arbiter, scene
    )
    agent._on_assignment(pb.Assignment(task="t", policy_name="p"))
    spec = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "hidden": [8]}
    agent.runtime.load("p", 1, policy_to_bytes(make_policy("mlp", spec)))
    loop = threading.Thread(target=agent.run, kwargs={"duration_s": 30}, daemon=True)
    loop.start()
    try:
        wait_for(lambda: agent.stats.ticks >= 5, 10, "the policy driving")
        page("failure")
        wait_for(lambda: agent.stats.episodes == 1, 10, "bob's label to end the episode")
        held = agent.stats.ticks
        time.sleep(0.3)  # 15 ticks at 50 Hz: none may move the robot while it waits
        assert agent.scene.waiting and agent.stats.ticks == held
        page("scene_ready")
        wait_for(lambda: agent.stats.ticks > agent.stats.episodes and agent.scene.since is None, 10, "the next one")
        batches = recorded(agent)
    finally:
        agent.stop()
        loop.join(timeout=5)
        agent.close(drain_s=0)
    return batches


def test_a_person_at_the_takeover_page_labels_and_readies_the_scene_under_their_own_name(tmp_path, caplog) -> None:
    batches = _page_labels_then_readies_the_scene(tmp_path, FakePerson())
    labels = [(b.label.outcome, b.label.by) for b in batches if b.HasField("label")]
    assert labels == [("failure", "browser:bob")]
    assert "waiting for the scene to be reset (press Enter or press scene ready on the takeover page" in caplog.text
    assert "arm: the scene is ready (browser:bob says so)" in caplog.text
