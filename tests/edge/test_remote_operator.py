"""The takeover page's people on the edge: one controller at a time, fresh actions only, refusals that say why."""

from __future__ import annotations

import logging
import time

import numpy as np

from edge.arbiter import Arbiter
from edge.live_view import LiveView
from edge.operator import HGDaggerOperator, PersonOperator, PickCubeExpert, Signal
from edge.remote_operator import CloudLinked, RemoteOperator
from hal.null import NullRobot
from protocol import tunnel_pb2 as pb
from protocol.person import SIGNALS

ROBOT = NullRobot(state_dim=21, action_dim=4)
OBSERVATION = {"state": np.zeros(21, np.float32)}


class Sent:
    """What went up the tunnel."""

    def __init__(self) -> None:
        self.messages: list[pb.EdgeMessage] = []

    def __call__(self, message: pb.EdgeMessage) -> bool:
        self.messages.append(message)
        return True

    def refusals(self) -> list[pb.PersonRefused]:
        return [m.person_refused for m in self.messages if m.HasField("person_refused")]


def remote(fresh_s: float = 0.3, lease_s: float = 5.0) -> tuple[RemoteOperator, Sent]:
    operator, sent = RemoteOperator(ROBOT.capabilities.action, fresh_s, lease_s, "arm"), Sent()
    operator.send = sent
    return operator, sent


def say(operator: RemoteOperator, who: str, seq: int, *signals: str, action=None, session: str = "") -> None:
    message = pb.PersonCommand(who=who, session=session or who, seq=seq, signals=signals, action=action or [])
    operator.receive(message)


def test_signals_on_the_wire_are_the_operator_signals() -> None:
    assert SIGNALS == tuple(s.value for s in Signal)


def test_one_person_drives_until_they_hand_back_and_another_is_refused_and_told_why() -> None:
    operator, sent = remote()
    say(operator, "browser:alice", 1, "take_over", action=[0.5, 0, 0, 1])
    say(operator, "browser:bob", 1, "take_over", action=[-1, -1, -1, 0])
    operator.process(time.monotonic())
    assert operator.controller == "browser:alice"
    np.testing.assert_array_equal(operator.action(time.monotonic()), [0.5, 0, 0, 1])  # bob's action moved nothing
    (refused,) = sent.refusals()
    assert (refused.who, refused.seq) == ("browser:bob", 1)
    assert "browser:alice drives arm from the takeover page until they hand back" in refused.reason
    say(operator, "browser:bob", 2, "success")  # a label from someone who does not drive
    say(operator, "browser:alice", 2, "hand_back")
    operator.process(time.monotonic())
    assert operator.controller == "" and operator.action(time.monotonic()) is None
    assert "only they label it now" in sent.refusals()[-1].reason
    assert operator.take_signals() == [Signal.TAKE_OVER, Signal.HAND_BACK]
    say(operator, "browser:bob", 3, "take_over", "failure")
    operator.process(time.monotonic())
    assert operator.controller == "browser:bob" and operator.take_signals() == [Signal.TAKE_OVER, Signal.FAILURE]


def test_a_stale_action_holds_and_a_silent_controller_loses_control() -> None:
    operator, _ = remote(fresh_s=0.3, lease_s=1.0)
    say(operator, "browser:alice", 1, "take_over", action=[1, 0, 0, 1])
    operator.process(time.monotonic())
    arrived = time.monotonic()
    assert operator.action(arrived + 0.29) is not None
    assert operator.action(arrived + 0.31) is None  # the commands stopped: the robot holds
    assert operator.hold_note(arrived + 0.31) == "no fresh command from browser:alice within 0.30 s"
    operator.process(arrived + 0.9)
    assert operator.controller == "browser:alice"
    operator.process(arrived + 1.1)
    assert operator.controller == ""  # the lease lapsed: the policy drives again


def test_older_repeated_and_malformed_commands_move_nothing() -> None:
    operator, sent = remote()
    say(operator, "browser:alice", 5, "take_over", action=[0.2, 0, 0, 1])
    say(operator, "browser:alice", 4, action=[-1, 0, 0, 1])  # older than one already applied
    say(operator, "browser:alice", 5, action=[-1, 0, 0, 1])  # repeated
    say(operator, "browser:alice", 6, action=[float("inf"), 0, 0, 1])
    say(operator, "browser:alice", 7, action=[0.1, 0.2])  # not this robot's action size
    operator.process(time.monotonic())
    np.testing.assert_allclose(operator.action(time.monotonic()), [0.2, 0, 0, 1], rtol=1e-6)
    reasons = [r.reason for r in sent.refusals()]
    assert reasons[0].startswith("person.action[0]: is NaN or infinite") and reasons[1].startswith("person.action:")


def test_a_closed_page_holds_at_once_and_a_new_episode_forgets_the_last_action() -> None:
    operator, _ = remote()
    say(operator, "browser:alice", 1, "take_over", action=[1, 0, 0, 1])
    operator.process(time.monotonic())
    operator.forget_action()
    assert operator.action(time.monotonic()) is None and operator.controller == "browser:alice"
    say(operator, "browser:alice", 2, action=[1, 0, 0, 1])
    operator.receive(pb.PersonCommand(who="browser:alice", session="browser:alice", seq=3, left=True))
    operator.process(time.monotonic())
    assert operator.action(time.monotonic()) is None


def arbiter(local=None, version: int = 0) -> tuple[Arbiter, RemoteOperator, Sent]:
    operator, sent = remote()
    view = LiveView(ROBOT.capabilities, "arm")
    arbiter = Arbiter(local, operator, view, "arm")
    arbiter.attach(sent, lambda: version)  # the policy version the robot runs
    return arbiter, operator, sent


def test_the_arbiter_is_a_cloud_linked_person_operator_and_holds_with_nobody_to_drive(caplog) -> None:
    caplog.set_level(logging.INFO)
    arb, _, _ = arbiter()
    assert isinstance(arb, PersonOperator) and isinstance(arb, CloudLinked)
    assert arb.decide(OBSERVATION, None, 0) == (None, False)
    assert "arm holds still: no policy yet and nobody drives" in caplog.text
    late, _, _ = arbiter(version=2)
    caplog.clear()
    assert late.decide(OBSERVATION, None, 0) == (None, False)  # a policy whose answer came late: hold, no news
    assert caplog.text == ""
    policy = np.array([0.1, 0.2, 0.3, 1.0], np.float32)
    action, intervening = arb.decide(OBSERVATION, policy, 1)
    assert action is policy and not intervening and arb.who == ""
    arb.on_cloud_message(
        pb.CloudMessage(
            person=pb.PersonCommand(who="browser:alice", session="a", seq=1, signals=["take_over"], action=[1, 1, 1, 2])
        )
    )
    action, intervening = arb.decide(OBSERVATION, policy, 2)
    np.testing.assert_array_equal(action, [1, 1, 1, 2])
    assert intervening and arb.who == "browser:alice"


def test_the_local_operator_and_a_page_s_person_never_drive_at_once(caplog) -> None:
    local = HGDaggerOperator(PickCubeExpert())
    arb, operator, sent = arbiter(local)
    assert arb.decide(OBSERVATION, None, 0)[1]  # no policy: the scripted operator drives
    arb.on_cloud_message(
        pb.CloudMessage(person=pb.PersonCommand(who="browser:alice", session="a", seq=1, signals=["take_over"]))
    )
    arb.decide(OBSERVATION, None, 1)
    assert operator.controller == "" and arb.who == ""  # the scripted operator is no person
    assert "the scripted operator drives arm at the robot until they hand back" in sent.refusals()[0].reason
    arb.reset()  # a new episode, and a policy that the scripted operator trusts
    policy = local.expert.act(OBSERVATION)
    assert not arb.decide(OBSERVATION, policy, 0)[1]
    arb.on_cloud_message(
        pb.CloudMessage(
            person=pb.PersonCommand(who="browser:alice", session="a", seq=2, signals=["take_over"], action=[0, 0, 0, 1])
        )
    )
    action, intervening = arb.decide(OBSERVATION, -policy, 1)  # the policy drifts, but alice holds control
    assert intervening and arb.who == "browser:alice"
    np.testing.assert_array_equal(action, [0, 0, 0, 1])
    arb.decide(OBSERVATION, -policy, 2)
    assert "the scripted operator wants to take over, refused: browser:alice drives" in caplog.text
