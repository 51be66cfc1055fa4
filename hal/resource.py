"""Resources: what a device is and what it can do, and the driver interface over it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from protocol import tunnel_pb2 as pb

RESOURCE_KINDS = ("robot", "phone")
SOURCES = ("sim", "robot", "phone")


@dataclass(frozen=True)
class ArraySpec:
    """One named array: an observation or the action."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def to_proto(self) -> pb.ArraySpec:
        return pb.ArraySpec(
            name=self.name,
            dtype=np.dtype(self.dtype).str,
            shape=list(self.shape),
            low=list(self.low),
            high=list(self.high),
        )

    @classmethod
    def from_proto(cls, msg: pb.ArraySpec) -> ArraySpec:
        return cls(
            name=msg.name,
            dtype=msg.dtype,
            shape=tuple(int(d) for d in msg.shape),
            low=tuple(msg.low),
            high=tuple(msg.high),
        )


@dataclass(frozen=True)
class Capabilities:
    observation: tuple[ArraySpec, ...]
    action: ArraySpec
    control_hz: float
    embodiment: str
    cameras: tuple[str, ...] = ()

    def to_proto(self) -> pb.Capabilities:
        return pb.Capabilities(
            observation=[s.to_proto() for s in self.observation],
            action=self.action.to_proto(),
            control_hz=self.control_hz,
            cameras=list(self.cameras),
            embodiment=self.embodiment,
        )

    @classmethod
    def from_proto(cls, msg: pb.Capabilities) -> Capabilities:
        return cls(
            observation=tuple(ArraySpec.from_proto(s) for s in msg.observation),
            action=ArraySpec.from_proto(msg.action),
            control_hz=msg.control_hz,
            embodiment=msg.embodiment,
            cameras=tuple(msg.cameras),
        )


@dataclass(frozen=True)
class ResourceInfo:
    id: str
    kind: str
    capabilities: Capabilities
    source: str = "sim"

    def to_proto(self) -> pb.Resource:
        return pb.Resource(id=self.id, kind=self.kind, capabilities=self.capabilities.to_proto(), source=self.source)

    @classmethod
    def from_proto(cls, msg: pb.Resource) -> ResourceInfo:
        return cls(id=msg.id, kind=msg.kind, capabilities=Capabilities.from_proto(msg.capabilities), source=msg.source)


@dataclass
class Transition:
    """What a driver reports after applying one action."""

    observation: dict[str, np.ndarray]
    reward: float
    done: bool  # the episode ended (success, failure or time limit)
    success: bool
    info: dict = field(default_factory=dict)


class Driver(Protocol):
    """Turns a device into a resource. Methods are called from the control thread only."""

    @property
    def capabilities(self) -> Capabilities: ...

    def reset(self) -> dict[str, np.ndarray]:
        """Starts an episode and returns the first observation."""
        ...

    def apply(self, action: np.ndarray) -> Transition:
        """Applies one (already clamped) action and returns what followed."""
        ...

    def hold(self) -> None:
        """Stops commanding motion (no fresh action in time, or shutdown)."""
        ...

    def close(self) -> None: ...


# Optional abilities a driver may have beside the Driver interface. A driver that has one says so by naming the
# protocol among its bases; callers check with isinstance.


@runtime_checkable
class EmergencyStoppable(Protocol):
    """A driver that latches an emergency stop: it holds at once and refuses every action until released.

    Both methods are safe to call from any thread (the tunnel's, not only the control thread)."""

    def emergency_stop(self, reason: str = "requested") -> None: ...

    def release_emergency_stop(self) -> None: ...


@runtime_checkable
class HoldsPosition(Protocol):
    """A position-controlled driver that can say which action keeps it where an observation shows it."""

    def action_from_observation(self, observation: dict[str, np.ndarray]) -> np.ndarray | None:
        """The action that holds the robot still at ``observation``, or None when there is no such action."""
        ...


@runtime_checkable
class NamesActions(Protocol):
    """A driver that names each entry of its action vector, so a teleoperator's action maps onto it by name."""

    action_names: tuple[str, ...]  # one name per action entry, in order (e.g. x, y, z, gripper); () for no names


@runtime_checkable
class NamesState(Protocol):
    """A driver that names each entry of its ``state`` observation (a lerobot arm's ``shoulder_pan.pos`` ...)."""

    state_names: tuple[str, ...]  # one name per state entry, in order; () for no names


@runtime_checkable
class SaysSceneReady(Protocol):
    """A driver whose robot can say when its scene is set up again after an episode (e.g. on a ROS 2 topic)."""

    @property
    def scene_ready_source(self) -> str:
        """Where that word comes from, for the log (a topic name); "" when this robot is not configured to say it."""
        ...

    def scene_ready(self) -> bool:
        """Whether the robot said so since the episode began (consumed by the call); never blocks."""
        ...


@runtime_checkable
class ShowsTheScene(Protocol):
    """A simulator that can tell a scripted operator where the objects are when its observation leaves them out (a
    robot that sees them only through a camera): the person beside a real robot sees the scene too."""

    def scene_state(self) -> np.ndarray:
        """The objects' state as of the last observation (for panda_pick_cube, the cube's xyz)."""
        ...


def clamp_action(action: np.ndarray, spec: ArraySpec) -> np.ndarray:
    """Clamps an action to the driver's limits; non-finite entries become the midpoint (a safe hold), or 0."""
    action = np.asarray(action, dtype=spec.numpy_dtype).reshape(spec.shape)
    if spec.low and spec.high:
        low = np.asarray(spec.low, dtype=spec.numpy_dtype)
        high = np.asarray(spec.high, dtype=spec.numpy_dtype)
        action = np.where(np.isfinite(action), action, (low + high) / 2)
        return np.clip(action, low, high)
    return np.where(np.isfinite(action), action, 0).astype(spec.numpy_dtype)
