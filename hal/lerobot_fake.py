"""A hardware-free lerobot ``Robot``: a kinematic 6-joint arm, registered as ``fleetloop_fake_arm``.

lerobot 0.6.1 ships no mock robot (its ``mock_robot`` lives in its test tree, which is not installed), so
this one follows lerobot's Robot API exactly, the way a real follower arm does: ``<joint>.pos`` float
features in degrees (gripper 0..100), position-goal actions, and an optional camera ``(H, W, 3)``.
The joints move toward the commanded goal at a limited speed, like servos do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from lerobot.robots import Robot, RobotConfig
from lerobot.utils.decorators import check_if_already_connected, check_if_not_connected

JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


@RobotConfig.register_subclass("fleetloop_fake_arm")
@dataclass(kw_only=True)
class FakeArmRobotConfig(RobotConfig):
    max_speed_deg_s: float = 90.0  # how fast each joint moves toward its goal
    # Simulated seconds per send_action; None: the arm moves in wall-clock time, as a real one would.
    step_s: float | None = None
    camera_height: int = 0  # 0: no camera
    camera_width: int = 0
    joint_limit_deg: float = 150.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_speed_deg_s <= 0:
            raise ValueError(f"max_speed_deg_s must be positive, got {self.max_speed_deg_s}")
        if (self.camera_height > 0) != (self.camera_width > 0):
            raise ValueError("camera_height and camera_width must both be set (or both 0 for no camera)")


class FakeArmRobot(Robot):
    config_class = FakeArmRobotConfig
    name = "fleetloop_fake_arm"

    def __init__(self, config: FakeArmRobotConfig) -> None:
        super().__init__(config)
        self.config = config
        self._connected = False
        self._position = np.zeros(len(JOINTS))
        self._goal = np.zeros(len(JOINTS))
        self._low = np.array([-config.joint_limit_deg] * (len(JOINTS) - 1) + [0.0])
        self._high = np.array([config.joint_limit_deg] * (len(JOINTS) - 1) + [100.0])
        self._moved_t = time.monotonic()

    @property
    def observation_features(self) -> dict[str, type | tuple]:
        features: dict[str, type | tuple] = {f"{joint}.pos": float for joint in JOINTS}
        if self.config.camera_height:
            features["front"] = (self.config.camera_height, self.config.camera_width, 3)
        return features

    @property
    def action_features(self) -> dict[str, type]:
        return {f"{joint}.pos": float for joint in JOINTS}

    @property
    def is_connected(self) -> bool:
        return self._connected

    @check_if_already_connected
    def connect(self, calibrate: bool = True) -> None:
        self._connected = True
        if not self.is_calibrated and calibrate:
            self.calibrate()
        self.configure()
        self._moved_t = time.monotonic()

    @property
    def is_calibrated(self) -> bool:
        return True  # lerobot's rule when calibration does not apply: a kinematic model has nothing to measure

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        self._goal = self._position.copy()  # a fresh connection holds where the arm is

    def _advance(self) -> None:
        now = time.monotonic()
        dt = now - self._moved_t
        self._moved_t = now
        step = self.config.max_speed_deg_s * dt
        self._position += np.clip(self._goal - self._position, -step, step)

    @check_if_not_connected
    def get_observation(self) -> dict:
        if self.config.step_s is None:
            self._advance()
        obs: dict = {f"{joint}.pos": float(p) for joint, p in zip(JOINTS, self._position, strict=True)}
        if self.config.camera_height:
            # A cheap image that changes with the pose: each third of the rows shows one joint's angle.
            image = np.empty((self.config.camera_height, self.config.camera_width, 3), dtype=np.uint8)
            shade = ((self._position[:3] - self._low[:3]) / (self._high[:3] - self._low[:3]) * 255).astype(np.uint8)
            image[:] = shade
            obs["front"] = image
        return obs

    @check_if_not_connected
    def send_action(self, action: dict) -> dict:
        if self.config.step_s is None:
            self._advance()  # up to now, toward the previous goal
        goal = np.array([float(action[f"{joint}.pos"]) for joint in JOINTS])
        self._goal = np.clip(goal, self._low, self._high)  # returned below: the action actually sent
        if self.config.step_s is not None:
            step = self.config.max_speed_deg_s * self.config.step_s
            self._position += np.clip(self._goal - self._position, -step, step)
        return {f"{joint}.pos": float(g) for joint, g in zip(JOINTS, self._goal, strict=True)}

    @check_if_not_connected
    def disconnect(self) -> None:
        self._connected = False
