from pathlib import Path

import numpy as np
import pytest

from hal.lerobot_fake import JOINTS
from hal.lerobot_robot import LerobotRobotDriver, make_lerobot_robot
from hal.safety import SafeDriver, SafetyLimits


def fake_arm(tmp_path: Path, **extra) -> LerobotRobotDriver:
    # step_s: each send_action moves the arm a fixed simulated time, so the test does not depend on timing.
    config = {
        "type": "fleetloop_fake_arm",
        "calibration_dir": str(tmp_path),
        "step_s": 0.1,
        "max_speed_deg_s": 100.0,
        "camera_height": 12,
        "camera_width": 16,
        "control_hz": 10,
        **extra,
    }
    return make_lerobot_robot(config)


def assert_matches(observation: dict[str, np.ndarray], driver: LerobotRobotDriver) -> None:
    specs = driver.capabilities.observation
    assert set(observation) == {s.name for s in specs}
    for spec in specs:
        assert observation[spec.name].shape == spec.shape and observation[spec.name].dtype == spec.numpy_dtype


def test_capabilities_follow_the_robot_features(tmp_path: Path) -> None:
    driver = fake_arm(tmp_path, episode_steps=3)
    robot = driver.robot
    caps = driver.capabilities
    positions = tuple(f"{j}.pos" for j in JOINTS)
    assert driver.state_names == positions and driver.action_names == tuple(robot.action_features) == positions
    assert [s.name for s in caps.observation] == ["state", "front"]
    assert caps.observation[0].shape == (6,) and caps.observation[0].dtype == "float32"
    assert caps.observation[1].shape == robot.observation_features["front"] == (12, 16, 3)
    assert caps.observation[1].dtype == "uint8" and caps.cameras == ("front",)
    assert caps.action.shape == (6,) and caps.action.dtype == "float32"
    assert caps.control_hz == 10.0 and caps.embodiment == "fleetloop_fake_arm"
    assert driver.hold_mode == "position"
    assert not robot.is_connected  # building reads features only


def test_reset_apply_hold_close(tmp_path: Path) -> None:
    driver = fake_arm(tmp_path, episode_steps=3)
    try:
        observation = driver.reset()
        assert driver.robot.is_connected
        assert_matches(observation, driver)
        np.testing.assert_allclose(observation["state"], 0.0)
        goal = np.array([30.0, -20.0, 0.0, 0.0, 0.0, 50.0], dtype=np.float32)
        previous = observation["state"]
        for step in range(1, 4):
            transition = driver.apply(goal)
            assert_matches(transition.observation, driver)
            state = transition.observation["state"]
            # Toward the goal, at most 10 degrees per step (100 deg/s for 0.1 s).
            assert np.all(np.abs(goal - state) <= np.abs(goal - previous))
            assert np.all(np.abs(state - previous) <= 10.0 + 1e-4)
            np.testing.assert_allclose(transition.info["sent_action"], goal)
            assert transition.done == (step == 3)
            previous = state
        np.testing.assert_allclose(previous, [30.0, -20.0, 0.0, 0.0, 0.0, 30.0], atol=1e-4)
        assert transition.observation["front"].std() > 0  # the image follows the pose
        driver.hold()  # the goal becomes where the arm is: it stops there
        after = driver.apply(driver.action_from_observation(transition.observation)).observation["state"]
        np.testing.assert_allclose(after, previous, atol=1e-4)
    finally:
        driver.close()
    assert not driver.robot.is_connected


def test_safe_driver_over_lerobot_limits_from_the_current_position(tmp_path: Path) -> None:
    driver = fake_arm(tmp_path, max_speed_deg_s=1000.0, camera_height=0, camera_width=0)
    safe = SafeDriver(driver, SafetyLimits(max_rate=(50.0,) * 6), watchdog_s=None, name="arm-1", on_event=print)
    try:
        safe.reset()
        # 50 deg/s at 10 Hz: at most 5 degrees from where the arm is, even on the first action.
        state = safe.apply(np.full(6, 40.0, dtype=np.float32)).observation["state"]
        np.testing.assert_allclose(state, 5.0, atol=1e-4)
        assert safe.counts.clamps == 1
    finally:
        safe.close()


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^type: required"):
        make_lerobot_robot({})
    with pytest.raises(ValueError, match="unknown lerobot robot type 'no_such_robot'"):
        make_lerobot_robot({"type": "no_such_robot"})
    with pytest.raises(ValueError, match="max_speed"):
        make_lerobot_robot({"type": "fleetloop_fake_arm", "calibration_dir": str(tmp_path), "max_speed": 3})
    with pytest.raises(ValueError, match="action_low has 2 entries"):
        fake_arm(tmp_path, action_low=[0, 0], action_high=[1, 1])


def test_a_camera_frame_of_another_size_is_refused_by_name(tmp_path: Path) -> None:
    driver = fake_arm(tmp_path)
    real = driver.robot.get_observation
    driver.robot.get_observation = lambda: {**real(), "front": np.zeros((24, 32, 3), dtype=np.uint8)}
    try:
        with pytest.raises(RuntimeError, match=r"camera 'front' gave a uint8 frame of shape \(24, 32, 3\)"):
            driver.reset()
    finally:
        driver.close()
