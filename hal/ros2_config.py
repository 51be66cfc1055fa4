"""The YAML config of a ROS 2 robot (``launch/ros2/*.yaml``): its topics, message types, shapes and limits.

Every model is a ``ConfigModel``: a bad file is refused at start with an error naming the key's path
(``observations[1].shape: ...``), never half-loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from hal.config import ConfigModel, Items, Name, by_shape, invalid, read_yaml, validate
from hal.resource import ArraySpec, Capabilities

JOINT_STATE = "sensor_msgs/JointState"
IMAGE = "sensor_msgs/Image"
FLOAT64_ARRAY = "std_msgs/Float64MultiArray"
JOINT_TRAJECTORY = "trajectory_msgs/JointTrajectory"
EMPTY = "std_msgs/Empty"
BOOL = "std_msgs/Bool"
ENCODINGS = {1: "mono8", 3: "rgb8"}  # image channels -> sensor_msgs/Image encoding


def _absolute_topic(value: str) -> str:
    if not value.startswith("/") or " " in value:
        raise ValueError(f"expected an absolute topic name like '/robot/state', got {value!r}")
    return value


def _node_name(value: str) -> str:
    if not value.replace("_", "").isalnum() or value[0].isdigit():
        raise ValueError(f"ROS node names are letters, digits and '_', not starting with a digit: {value!r}")
    return value


Topic = Annotated[Name, AfterValidator(_absolute_topic)]
Positive = Annotated[float, Field(gt=0)]


class QosConfig(ConfigModel):
    reliability: Literal["reliable", "best_effort"] = "reliable"
    depth: Annotated[int, Field(ge=1)] = 5


class ObservationConfig(ConfigModel):
    name: Name
    topic: Topic
    type: Literal["sensor_msgs/JointState", "sensor_msgs/Image", "std_msgs/Float64MultiArray"]
    shape: Annotated[Items[Annotated[int, Field(ge=1)]], Field(min_length=1)]
    field: Literal["position", "velocity", "effort"] = "position"  # JointState only
    qos: QosConfig = QosConfig()

    @model_validator(mode="after")
    def _fits_the_type(self) -> ObservationConfig:
        if self.type == IMAGE and (len(self.shape) != 3 or self.shape[2] not in ENCODINGS):
            raise invalid(f"an image needs [H, W, 3] (rgb8) or [H, W, 1] (mono8), got {list(self.shape)}", "shape")
        if self.type != IMAGE and len(self.shape) != 1:
            raise invalid(f"{self.type} needs a 1-d shape [N], got {list(self.shape)}", "shape")
        if "field" in self.model_fields_set and self.type != JOINT_STATE:
            raise invalid(f"only {JOINT_STATE} has a field, not {self.type}", "field")
        return self

    @property
    def spec(self) -> ArraySpec:
        if self.type == IMAGE:
            return ArraySpec(self.name, "uint8", self.shape, low=(0.0,), high=(255.0,))
        return ArraySpec(self.name, "float32", self.shape)


class ActionConfig(ConfigModel):
    topic: Topic
    type: Literal["std_msgs/Float64MultiArray", "trajectory_msgs/JointTrajectory"]
    dim: Annotated[int, Field(ge=1)]
    low: Items[float]
    high: Items[float]
    joint_names: Items[Name] = ()  # JointTrajectory only
    # zeros | last_position | an explicit action; unset: last_position for a JointTrajectory, else zeros
    hold: by_shape(Literal["zeros", "last_position"], Items[float]) = "zeros"
    qos: QosConfig = QosConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_hold(cls, data: Any) -> Any:
        if isinstance(data, dict) and "hold" not in data and data.get("type") == JOINT_TRAJECTORY:
            return {**data, "hold": "last_position"}
        return data

    @model_validator(mode="after")
    def _fits_the_dim(self) -> ActionConfig:
        for key in ("low", "high"):
            if len(getattr(self, key)) != self.dim:
                raise invalid(f"expected a list of {self.dim} numbers, got {list(getattr(self, key))}", key)
        for i, (lo, hi) in enumerate(zip(self.low, self.high, strict=True)):
            if lo > hi:
                raise invalid(f"{lo} is above high[{i}] = {hi}", "low", i)
        if self.type == JOINT_TRAJECTORY and not self.joint_names:
            raise invalid(f"required for {JOINT_TRAJECTORY}", "joint_names")
        if self.type == JOINT_TRAJECTORY and len(self.joint_names) != self.dim:
            raise invalid(f"expected a list of {self.dim} joint names, got {list(self.joint_names)}", "joint_names")
        if self.type != JOINT_TRAJECTORY and "joint_names" in self.model_fields_set:
            raise invalid(f"only {JOINT_TRAJECTORY} takes joint_names", "joint_names")
        if isinstance(self.hold, tuple) and len(self.hold) != self.dim:
            raise invalid(f"expected a list of {self.dim} numbers, got {list(self.hold)}", "hold")
        if self.type == JOINT_TRAJECTORY and self.hold == "zeros":
            # Zero joint positions are a pose, not a stop: commanding them on a failure would move the arm.
            raise invalid("'zeros' is not a safe hold for a JointTrajectory; use last_position", "hold")
        return self

    @property
    def spec(self) -> ArraySpec:
        return ArraySpec("action", "float32", (self.dim,), low=self.low, high=self.high)


class SyncConfig(ConfigModel):
    slop_s: Positive = 0.05
    timeout_s: Positive = 1.0  # how long apply() waits for a fresh aligned set before raising


class EpisodeConfig(ConfigModel):
    reset_topic: Topic | None = None
    reset_type: Literal["std_msgs/Empty", "std_msgs/Bool"] = "std_msgs/Empty"
    done_topic: Topic | None = None  # std_msgs/Bool
    success_topic: Topic | None = None  # std_msgs/Bool
    # std_msgs/Bool (true): a person or a node says the scene is set up again; with it the robot holds after each
    # episode until word comes (or the edge's --scene-ready-timeout passes).
    scene_ready_topic: Topic | None = None
    max_steps: Annotated[int, Field(ge=0)] = 0  # 0: no limit from the driver
    reset_timeout_s: Positive = 10.0


class Ros2RobotConfig(ConfigModel):
    node_name: Annotated[Name, AfterValidator(_node_name)]
    control_hz: Positive
    embodiment: Name
    observations: Annotated[Items[ObservationConfig], Field(min_length=1)]
    action: ActionConfig
    sync: SyncConfig = SyncConfig()
    episode: EpisodeConfig = EpisodeConfig()
    domain_id: Annotated[int, Field(ge=0)] | None = None  # None: ROS_DOMAIN_ID from the environment
    # The task whose scripted operator can drive this robot (a simulator behind topics), e.g. panda_pick_cube.
    scripted_task: Name | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> Ros2RobotConfig:
        seen: set[str] = set()
        for i, observation in enumerate(self.observations):
            if observation.name in seen:
                raise invalid(f"duplicate name {observation.name!r}", "observations", i, "name")
            seen.add(observation.name)
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> Ros2RobotConfig:
        return cls.from_dict(read_yaml(path))

    @classmethod
    def from_dict(cls, raw: Any) -> Ros2RobotConfig:
        return validate(cls, raw)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            observation=tuple(o.spec for o in self.observations),
            action=self.action.spec,
            control_hz=self.control_hz,
            embodiment=self.embodiment,
            cameras=tuple(o.name for o in self.observations if o.type == IMAGE),
        )
