import logging
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from edge.operator import (  # noqa: E402
    OPERATORS,
    HGDaggerOperator,
    PickCubeExpert,
    TakeoverRule,
    choose_operator,
    make_operator,
)
from hal.sim import SimRobot  # noqa: E402


def test_expert_alone_succeeds() -> None:
    robot, expert = SimRobot("panda_pick_cube", seed=7), PickCubeExpert()
    successes, lengths = 0, []
    try:
        for _ in range(20):
            obs, steps, done = robot.reset(), 0, False
            while not done:
                transition = robot.apply(expert.act(obs))
                obs, steps, done = transition.observation, steps + 1, transition.done
            successes += transition.success
            lengths.append(steps)
    finally:
        robot.close()
    assert successes >= 18, (successes, lengths)
    assert np.mean(lengths) < 30


def observation(tcp=(0.4, 0.0, 0.08), cube=(0.45, 0.05, 0.02), gripper=0.0) -> dict[str, np.ndarray]:
    state = np.zeros(21, dtype=np.float32)
    state[14], state[15:18], state[18:21] = gripper, tcp, cube
    return {"state": state}


def test_expert_phases() -> None:
    expert = PickCubeExpert()
    far = expert.act(observation())
    assert far[0] > 0 and far[1] > 0 and far[2] == 0 and far[3] == 0  # line up first, gripper open
    above = expert.act(observation(tcp=(0.45, 0.05, 0.08)))
    assert above[2] < 0 and above[3] == 0  # descend
    at = expert.act(observation(tcp=(0.45, 0.05, 0.021)))
    assert at[3] == 2  # close
    holding = expert.act(observation(tcp=(0.45, 0.05, 0.03), cube=(0.45, 0.05, 0.03), gripper=255))
    assert holding[2] == 1 and holding[3] == 2  # lift
    missed = expert.act(observation(tcp=(0.45, 0.05, 0.1), gripper=255))
    assert missed[3] == 0  # re-open to try again


def test_no_policy_means_the_operator_drives() -> None:
    operator = HGDaggerOperator(PickCubeExpert())
    operator.reset()
    for step in range(10):
        action, intervening = operator.decide(observation(), None, step)
        assert intervening
        np.testing.assert_array_equal(action, PickCubeExpert().act(observation()))


def test_takeover_after_patience_and_deadline() -> None:
    operator = HGDaggerOperator(PickCubeExpert(), TakeoverRule(takeover_patience=2, deadline_step=40))
    bad = np.array([-1, -1, 1, 2], dtype=np.float32)  # far from the expert's action here
    first, first_intervening = operator.decide(observation(), bad, 0)
    assert not first_intervening and np.array_equal(first, bad)  # one bad step is tolerated
    assert operator.decide(observation(), bad, 1)[1]
    operator.reset()
    good = PickCubeExpert().act(observation())
    assert not operator.decide(observation(), good, 39)[1]
    for step in range(40, 45):
        assert operator.decide(observation(), good, step)[1]  # past the deadline the operator keeps control


def test_handback_when_policy_matches_the_expert() -> None:
    expert = PickCubeExpert()
    operator = HGDaggerOperator(expert)
    patience = operator.rule.handback_patience
    bad = np.array([-1, -1, 1, 2], dtype=np.float32)
    for step in range(2):
        operator.decide(observation(), bad, step)
    assert operator.intervening
    flags = [operator.decide(observation(), expert.act(observation()), step)[1] for step in range(2, 12)]
    assert flags == [True] * (patience - 1) + [False] * (11 - patience)


def test_operator_factory() -> None:
    assert isinstance(make_operator("panda_pick_cube"), HGDaggerOperator)
    assert make_operator("pusht") is None and OPERATORS.get("pusht") is None


def test_the_operator_choice(caplog) -> None:
    caplog.set_level(logging.INFO, logger="fleetloop.edge")
    assert isinstance(choose_operator("panda_pick_cube", None), HGDaggerOperator)
    assert isinstance(choose_operator("panda_pick_cube", "scripted"), HGDaggerOperator)
    assert choose_operator("panda_pick_cube", "none") is None
    assert not caplog.text
    # Not asked for by name: a task with no scripted operator runs with none, and says so once.
    assert choose_operator("pusht", None) is None
    assert caplog.text.count("no scripted operator for pusht") == 1
    assert choose_operator("pusht", "none") is None
    with pytest.raises(ValueError, match="--operator scripted: no scripted operator for pusht"):
        choose_operator("pusht", "scripted")  # asked for by name: refused
