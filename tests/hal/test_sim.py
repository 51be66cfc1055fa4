import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from hal.resource import clamp_action  # noqa: E402
from hal.sim import SIM_TASKS, SimRobot  # noqa: E402


def assert_matches(observation: dict[str, np.ndarray], robot: SimRobot) -> None:
    specs = robot.capabilities.observation
    assert set(observation) == {s.name for s in specs}
    for spec in specs:
        assert observation[spec.name].shape == spec.shape and observation[spec.name].dtype == spec.numpy_dtype


@pytest.mark.parametrize("task", sorted(SIM_TASKS))
def test_reset_and_apply_match_capabilities(task: str) -> None:
    robot = SimRobot(task, seed=0, control_hz=5.0)
    try:
        caps = robot.capabilities
        assert caps.control_hz == 5.0 and caps.embodiment == task
        assert_matches(robot.reset(), robot)
        rng = np.random.default_rng(0)
        for _ in range(3):
            action = clamp_action(rng.uniform(caps.action.low, caps.action.high), caps.action)
            transition = robot.apply(action)
            assert_matches(transition.observation, robot)
            assert isinstance(transition.reward, float) and isinstance(transition.success, bool)
        robot.hold()
        assert robot.holding
    finally:
        robot.close()


def test_pick_cube_runs_to_the_time_limit() -> None:
    robot = SimRobot("panda_pick_cube", seed=0)
    try:
        robot.reset()
        hover = np.array([0, 0, 0, 1], dtype=np.float32)
        done = [robot.apply(hover).done for _ in range(100)]
        assert done[-1] and not any(done[:-1])
    finally:
        robot.close()


def first_cube_positions(seed: int, episodes: int = 2) -> list[np.ndarray]:
    robot = SimRobot("panda_pick_cube", seed=seed)
    try:
        return [robot.reset()["state"][18:21] for _ in range(episodes)]
    finally:
        robot.close()


def test_pick_cube_seeding() -> None:
    a, a_again, b = first_cube_positions(1), first_cube_positions(1), first_cube_positions(2)
    np.testing.assert_array_equal(a[0], a_again[0])
    np.testing.assert_array_equal(a[1], a_again[1])
    assert not np.allclose(a[0], b[0])
    assert not np.allclose(a[0], a[1])  # successive episodes of one robot differ


def test_pick_cube_seed_ignores_other_users_of_the_global_generator() -> None:
    robot = SimRobot("panda_pick_cube", seed=1)
    try:
        np.random.seed(12345)
        first = robot.reset()["state"][18:21]
        assert np.random.randint(1 << 30) == np.random.RandomState(12345).randint(1 << 30)  # left untouched
    finally:
        robot.close()
    np.testing.assert_array_equal(first, first_cube_positions(1, episodes=1)[0])


NOISE_SCRIPT = """
import logging
from fleetloop.logs import setup_logging
setup_logging("INFO", plain=True)
from hal.sim import SimRobot
for task in ("panda_pick_cube", "pusht"):
    robot = SimRobot(task, seed=0)
    robot.reset()
    robot.reset()
    robot.close()
logging.info("other root lines still show")
"""


def test_the_simulators_routine_third_party_lines_are_silenced_and_nothing_else() -> None:
    # A fresh process: these lines come once per import (and per reset), so an earlier test may have eaten them.
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-c", NOISE_SCRIPT], capture_output=True, text=True, timeout=240, env=env, check=True
    )
    for noise in ("Reset delay of", "pkg_resources", "OpenGL_accelerate"):
        assert noise not in done.stderr, done.stderr
    assert "other root lines still show" in done.stderr


def test_the_camera_panda_shows_the_cube_only_in_its_camera_and_its_operator_sees_the_scene() -> None:
    from edge.operator import make_operator

    robot = SimRobot("panda_pick_cube_camera", seed=3)
    state_robot = SimRobot("panda_pick_cube", seed=3)
    try:
        observation, full = robot.reset(), state_robot.reset()["state"]
        cube = robot.scene_state()
        np.testing.assert_allclose(cube, full[18:21])  # the same scene from the same seed
        np.testing.assert_allclose(observation["state"], full[:18])  # the robot's own state, and no more
        red = observation["camera"][:, :, 0].astype(float)
        rows, cols = np.indices(red.shape) + 0.5
        seen = np.array([(rows * red).sum(), (cols * red).sum()]) / red.sum() / 32 * 0.4 + [0.2, -0.2]
        np.testing.assert_allclose(seen, cube[:2], atol=0.004)  # finer than a 1.25 cm pixel: anti-aliased
        assert make_operator("panda_pick_cube_camera") is None  # without the scene no script can see the cube
        operator = make_operator("panda_pick_cube_camera", scene=robot)
        for step in range(100):
            action, intervening = operator.decide(observation, None, step)
            transition = robot.apply(action)
            observation = transition.observation
            if transition.done:
                break
        assert transition.success and intervening
    finally:
        robot.close()
        state_robot.close()
