"""How a teleoperator's action lands in the robot's action vector, checked against both sides at start.

Without a map, every teleoperator action goes to the robot action of the same name (a leader arm's
``shoulder_pan.pos`` drives the follower's ``shoulder_pan.pos``). A map in config names, for each teleoperator
action, the robot action it drives (by name or index) and a scale; ``rest`` gives the robot actions no teleoperator
action drives a value of their own. Every mismatch is an error at start that names both sides, e.g. "teleop action
'delta_x' has no place in the robot's action (panda_pick_cube takes 4: x, y, z, gripper)".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hal.config import ConfigError, ConfigModel
from hal.resource import Driver, NamesActions, NamesState


class MapTarget(ConfigModel):
    """Where one teleoperator action goes: a robot action (its name, or its index in the action vector)."""

    to: str | int
    scale: float = 1.0


@dataclass(frozen=True)
class RobotAction:
    """The robot's side of the map: its action vector's size and, where the driver names them, its entries (and
    those of its ``state`` observation, where a driver names them: what kinematics reads the joints from)."""

    embodiment: str
    dim: int
    names: tuple[str, ...] = ()
    state_names: tuple[str, ...] = ()

    @classmethod
    def of(cls, driver: Driver) -> RobotAction:
        """The action of a driver (before its safety layer, which does not name entries)."""
        names = tuple(driver.action_names) if isinstance(driver, NamesActions) else ()
        state = tuple(driver.state_names) if isinstance(driver, NamesState) else ()
        caps = driver.capabilities
        return cls(caps.embodiment, int(np.prod(caps.action.shape)), names, state)

    def describe(self) -> str:
        if self.names:
            return f"{self.embodiment} takes {self.dim}: {', '.join(self.names)}"
        return f"{self.embodiment} takes {self.dim} unnamed values, by index 0..{self.dim - 1}"

    def index(self, to: str | int, field: str) -> int:
        """The entry ``to`` names; ConfigError at ``field`` when the robot has no such entry."""
        if isinstance(to, int):
            if not 0 <= to < self.dim:
                raise ConfigError(field, f"{to} is not an index of the robot's action ({self.describe()})")
            return to
        if to not in self.names:
            raise ConfigError(field, f"the robot's action has no {to!r} ({self.describe()})")
        return self.names.index(to)


class ReadingToAction(Protocol):
    """How a teleoperator's reading becomes the robot's action: a map by name (``ActionMapping``), or kinematics
    from end-effector deltas to joints (``edge.kinematics.EEToJoints``), which also reads the robot's observation."""

    def action(self, reading: Mapping[str, float], observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """The robot's action for one reading; KeyError naming what the reading (or observation) lacks."""
        ...

    def restart(self) -> None:
        """The person starts driving again: forget any target kept from before."""
        ...


@dataclass(frozen=True)
class ActionMapping:
    """A resolved map: ``apply`` turns one teleoperator reading into the robot's action vector."""

    routes: tuple[tuple[str, int, float], ...]  # (teleop action, robot index, scale)
    rest: np.ndarray  # the robot's action where no route writes

    def apply(self, reading: Mapping[str, float]) -> np.ndarray:
        """The robot's action for one reading; KeyError naming a teleoperator action the reading lacks."""
        action = self.rest.copy()
        for name, index, scale in self.routes:
            if name not in reading:
                raise KeyError(f"the teleoperator's reading has no {name!r} (it gave {sorted(reading)})")
            action[index] = reading[name] * scale
        return action

    def action(self, reading: Mapping[str, float], observation: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.apply(reading)  # a map by name needs no observation

    def restart(self) -> None:
        pass  # it keeps nothing between readings


def resolve_mapping(
    teleop: str,
    teleop_names: Sequence[str],
    robot: RobotAction,
    action_map: Mapping[str, MapTarget] | None,
    rest: Mapping[str, float],
) -> ActionMapping:
    """Checks the teleoperator ``teleop`` (its action names) against ``robot``; ConfigError naming the field."""
    gives = f"the {teleop} teleoperator gives {', '.join(teleop_names) or 'nothing'}"
    if action_map is None:
        for name in teleop_names:
            if name not in robot.names:
                raise ConfigError(
                    "action_map",
                    f"teleop action {name!r} has no place in the robot's action ({robot.describe()}); "
                    "say where each goes in action_map",
                )
        action_map = {name: MapTarget(to=name) for name in teleop_names}
    routes: list[tuple[str, int, float]] = []
    driven: dict[int, str] = {}
    for name, target in action_map.items():
        if name not in teleop_names and name.partition("[")[0] not in teleop_names:
            raise ConfigError(f"action_map.{name}", f"{gives}, not {name!r}")
        index = robot.index(target.to, f"action_map.{name}.to")
        if index in driven:
            raise ConfigError(f"action_map.{name}.to", f"robot action {target.to!r} is driven by {driven[index]!r}")
        driven[index] = name
        routes.append((name, index, target.scale))
    how = "map a teleop action onto it in action_map"
    return ActionMapping(tuple(routes), rest_of(robot, rest, driven, gives, ("action_map", how)))


def rest_of(
    robot: RobotAction, rest: Mapping[str, float], driven: dict[int, str], gives: str, undriven: tuple[str, str]
) -> np.ndarray:
    """The robot's action where nothing in ``driven`` (index -> what drives it) writes: the values of ``rest``;
    ConfigError when ``rest`` names a driven entry, or at ``undriven`` (its field, and what to do) when an entry
    is left with nothing."""
    values = np.zeros(robot.dim, np.float32)
    driven = dict(driven)
    for key, value in rest.items():
        index = robot.index(int(key) if key.isdigit() else key, f"rest.{key}")
        if index in driven:
            raise ConfigError(f"rest.{key}", f"robot action {key!r} is driven by teleop action {driven[index]!r}")
        values[index] = value
        driven[index] = "rest"
    for index in range(robot.dim):
        if index not in driven:
            what = robot.names[index] if robot.names else str(index)
            raise ConfigError(
                undriven[0],
                f"the robot's action {what!r} gets nothing ({gives}; the robot {robot.describe()}): "
                f"{undriven[1]}, or give it a value in rest",
            )
    return values
