"""End-effector teleoperators (gamepad, keyboard_ee: ``delta_x, delta_y, delta_z, gripper``) driving a joint-space
arm (an SO-101 follower: ``shoulder_pan.pos`` ...) through lerobot's own kinematics.

A teleoperator config's ``kinematics:`` section names the robot's URDF, its end-effector frame and its arm joints in
order. Each tick, lerobot's processors turn the person's deltas into joint targets from the robot's current joints:
``MapDeltaActionToRobotActionStep`` (deltas to an enabled EE command), ``EEReferenceAndDelta`` (the target: the pose
forward kinematics gives for the measured joints, moved by the deltas times the step sizes), ``EEBoundsAndSafety``
(clipped to the workspace bounds, rate-limited to ``max_step_m`` a tick), ``GripperVelocityToJoint`` (the gripper
opened or closed ``gripper.step`` a tick) and ``InverseKinematicsEEToJoints`` (placo's IK, through lerobot's
``RobotKinematics``). Joint positions are in degrees, as lerobot's kinematics takes them (an SO follower's
``use_degrees: true``). Every config error names its field: ``kinematics.joints[2]: the robot's action has no ...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from edge.action_map import RobotAction, rest_of
from hal.config import ConfigError, ConfigModel, Items, Name, invalid
from hal.urdf import Urdf, listed, read_urdf

DELTAS = ("delta_x", "delta_y", "delta_z")
STAY = 1.0  # lerobot's GripperAction: 0 close, 1 stay, 2 open (gamepad and keyboard_ee alike)
LEROBOT_GRIPPER = "gripper"  # the one motor name lerobot's IK step leaves to the gripper step
Metres = Annotated[float, Field(gt=0, le=1.0)]
Point = Annotated[Items[float], Field(min_length=3, max_length=3)]


class StepSizes(ConfigModel):
    """How far the end-effector target moves in one tick at a full deflection of each delta, in metres."""

    x: Metres = 0.01
    y: Metres = 0.01
    z: Metres = 0.01


class Bounds(ConfigModel):
    """The workspace the end-effector target stays in: x, y, z in metres, in the URDF's base frame."""

    min: Point
    max: Point

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        for axis, (low, high) in enumerate(zip(self.min, self.max, strict=True)):
            if low >= high:
                raise invalid(f"{high} is not above min[{axis}] ({low})", "max", axis)
        return self


class GripperMap(ConfigModel):
    """The teleoperator's gripper buttons onto the robot's gripper joint (``<joint>.pos``)."""

    joint: Name = "gripper"
    step: float = Field(5.0, gt=0)  # how far it moves in one tick while a button is held (the joint's units)
    min: float = 0.0
    max: float = 100.0
    closed: Literal["max", "min"] = "max"  # which end of [min, max] is closed (lerobot's SO-100 closes at max)

    @model_validator(mode="after")
    def _ordered(self) -> GripperMap:
        if self.min >= self.max:
            raise invalid(f"{self.max} is not above min ({self.min})", "max")
        return self


class KinematicsConfig(ConfigModel):
    """A teleoperator config's ``kinematics:`` section (see the module docstring)."""

    urdf: Name  # the robot's URDF; relative paths from where the edge starts
    frame: Name = "gripper_frame_link"  # the end-effector link the deltas move (lerobot's SO-101 name)
    joints: Annotated[Items[Name], Field(min_length=1, max_length=16)]  # URDF joints = the robot's <joint>.pos
    step_sizes: StepSizes = StepSizes()
    bounds: Bounds
    max_step_m: Metres = 0.05  # the most the target moves in one tick (lerobot's EEBoundsAndSafety default)
    orientation_weight: float = Field(0.01, ge=0.0, le=1.0)  # 0: position only (lerobot's default 0.01)
    gripper: GripperMap | None = None  # None: the robot has no gripper, or the teleoperator does not drive it

    @model_validator(mode="after")
    def _consistent(self) -> KinematicsConfig:
        for index, joint in enumerate(self.joints):
            if joint in self.joints[:index]:
                raise invalid(f"{joint!r} is named twice", "joints", index)
            if joint == LEROBOT_GRIPPER or (self.gripper and joint == self.gripper.joint):
                raise invalid(
                    f"{joint!r} is the gripper: say it under gripper, not among the arm's joints", "joints", index
                )
        for axis in ("x", "y", "z"):
            if getattr(self.step_sizes, axis) > self.max_step_m:
                raise invalid(
                    f"{getattr(self.step_sizes, axis)} m a tick is more than max_step_m ({self.max_step_m})",
                    "step_sizes",
                    axis,
                )
        return self


class EEToJoints:
    """lerobot's EE-to-joints processors for one teleoperator and robot: ``action`` turns one reading and the
    robot's observation into its action vector; ``restart`` forgets the last target (a new stretch of driving)."""

    def __init__(
        self,
        pipeline: Any,
        observed: tuple[tuple[str, int], ...],
        routes: tuple[tuple[str, int], ...],
        rest: np.ndarray,
        gripper_sign: float,
    ) -> None:
        self.pipeline = pipeline  # lerobot's RobotProcessorPipeline[(action, observation) -> action]
        self.observed = observed  # (lerobot's name, index in the robot's state), arm joints then the gripper
        self.routes = routes  # (lerobot's name, index in the robot's action)
        self.rest = rest
        self.gripper_sign = gripper_sign  # +1: closing raises the joint (lerobot's convention), -1 lowers it, 0 none

    def action(self, reading: Mapping[str, float], observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """The robot's joint targets for one reading; KeyError naming what the reading or observation lacks,
        ValueError when the joints read (or solved) are no numbers."""
        if "state" not in observation:
            raise KeyError("the robot's observation has no state to read its joints from")
        state = np.asarray(observation["state"], dtype=np.float64).reshape(-1)
        joints = {name: float(state[index]) for name, index in self.observed}
        if not all(np.isfinite(list(joints.values()))):
            raise ValueError(f"the robot's joints read {joints}: no pose to move from")
        command: dict[str, float] = {}
        for axis in DELTAS:
            if axis not in reading:
                raise KeyError(f"the teleoperator's reading has no {axis!r} (it gave {sorted(reading)})")
            command[axis] = float(np.clip(reading[axis], -1.0, 1.0))  # a device's word, bounded before use
        # lerobot's discrete gripper (0 close, 1 stay, 2 open) as the signed speed GripperVelocityToJoint takes
        closing = float(np.clip(STAY - reading.get("gripper", STAY), -1.0, 1.0))
        command["gripper"] = closing * self.gripper_sign
        out = self.pipeline((command, joints))
        action = self.rest.copy()
        for name, index in self.routes:
            action[index] = out[name]
        if not np.all(np.isfinite(action)):
            raise ValueError(f"the inverse kinematics gave no joints ({action.tolist()})")
        return action

    def restart(self) -> None:
        self.pipeline.reset()


def _state_index(robot: RobotAction, name: str, field: str) -> int:
    if name not in robot.state_names:
        has = listed(robot.state_names) if robot.state_names else "no named state"
        raise ConfigError(field, f"the robot's state has no {name!r}, so where it is cannot be read (it has {has})")
    return robot.state_names.index(name)


def _joint_indices(config: KinematicsConfig, urdf: Urdf, robot: RobotAction) -> list[tuple[str, int, int]]:
    """(lerobot's name, action index, state index) of each arm joint, then of the gripper; ConfigError naming it."""
    moving = urdf.moving()
    found: list[tuple[str, int, int]] = []
    for i, joint in enumerate(config.joints):
        field = f"kinematics.joints[{i}]"
        if joint not in moving:
            fixed = " (a fixed joint there: name the moving ones)" if joint in urdf.joints else ""
            raise ConfigError(field, f"the URDF has no moving joint {joint!r}{fixed}; it has {listed(moving)}")
        found.append((f"{joint}.pos", robot.index(f"{joint}.pos", field), _state_index(robot, f"{joint}.pos", field)))
    if config.gripper:
        name, field = f"{config.gripper.joint}.pos", "kinematics.gripper.joint"
        found.append((f"{LEROBOT_GRIPPER}.pos", robot.index(name, field), _state_index(robot, name, field)))
    return found


def resolve_kinematics(
    config: KinematicsConfig, teleop: str, teleop_names: tuple[str, ...], robot: RobotAction, rest: Mapping[str, float]
) -> EEToJoints:
    """Checks ``config`` against the teleoperator ``teleop`` (its action names), the URDF and ``robot``, then builds
    lerobot's kinematics and processors; ConfigError naming the field when they do not fit."""
    gives = f"the {teleop} teleoperator gives {', '.join(teleop_names) or 'nothing'}"
    if not set(DELTAS) <= set(teleop_names):
        raise ConfigError(
            "kinematics", f"{gives}, not the end-effector deltas {', '.join(DELTAS)} it turns into joints"
        )
    if config.gripper and "gripper" not in teleop_names:
        raise ConfigError("kinematics.gripper", f"{gives}, no gripper (its use_gripper: true?); or leave gripper out")
    if not robot.state_names:
        raise ConfigError("kinematics", f"the robot ({robot.describe()}) does not name its state: no joints to read")
    urdf = read_urdf(config.urdf, "kinematics.urdf")
    if config.frame not in urdf.links:
        raise ConfigError("kinematics.frame", f"the URDF has no link {config.frame!r}; it has {listed(urdf.links)}")
    joints = _joint_indices(config, urdf, robot)
    driven = {index: f"kinematics ({name})" for name, index, _ in joints}
    values = rest_of(robot, rest, driven, gives, ("kinematics.joints", "name it among kinematics.joints"))
    pipeline = _pipeline(config, urdf)
    sign = 0.0 if config.gripper is None else 1.0 if config.gripper.closed == "max" else -1.0
    observed = tuple((name, state) for name, _, state in joints)
    return EEToJoints(pipeline, observed, tuple((name, index) for name, index, _ in joints), values, sign)


def _pipeline(config: KinematicsConfig, urdf: Urdf) -> Any:
    """lerobot's processors, chained as its own EE examples chain them, on placo's kinematics of ``urdf``."""
    from lerobot.model.kinematics import RobotKinematics
    from lerobot.processor import MapDeltaActionToRobotActionStep, RobotProcessorPipeline
    from lerobot.processor.converters import robot_action_observation_to_transition, transition_to_robot_action
    from lerobot.robots.so_follower.robot_kinematic_processor import (
        EEBoundsAndSafety,
        EEReferenceAndDelta,
        GripperVelocityToJoint,
        InverseKinematicsEEToJoints,
    )

    try:
        kinematics = RobotKinematics(str(urdf.path), config.frame, list(config.joints))
    except (RuntimeError, ValueError) as err:  # placo's own refusals (a mesh it cannot read...)
        raise ConfigError("kinematics.urdf", f"placo cannot load it: {' '.join(str(err).split())[:300]}") from None
    motors = [*config.joints, *([LEROBOT_GRIPPER] if config.gripper else [])]
    gripper = config.gripper or GripperMap()
    steps = [
        MapDeltaActionToRobotActionStep(),
        EEReferenceAndDelta(
            kinematics=kinematics,
            end_effector_step_sizes=config.step_sizes.model_dump(),
            motor_names=motors,
            use_latched_reference=False,  # deltas are rates: each tick moves on from where the arm is
        ),
        EEBoundsAndSafety(
            end_effector_bounds={"min": list(config.bounds.min), "max": list(config.bounds.max)},
            max_ee_step_m=config.max_step_m,
            raise_on_jump=False,  # rate-limit and warn: lerobot's advice for live teleoperation
        ),
        GripperVelocityToJoint(speed_factor=gripper.step, clip_min=gripper.min, clip_max=gripper.max),
        InverseKinematicsEEToJoints(
            kinematics=kinematics, motor_names=motors, orientation_weight=config.orientation_weight
        ),
    ]
    return RobotProcessorPipeline(
        steps=steps, to_transition=robot_action_observation_to_transition, to_output=transition_to_robot_action
    )
