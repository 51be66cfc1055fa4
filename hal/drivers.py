"""Drivers by name: ``<scheme>:<what>`` picks a driver factory (``sim:``, ``ros2:``, ``lerobot:``) and builds it.

Errors are ValueErrors that say what is wrong with the name or the file it points at; the caller adds which
flag or key gave it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from hal.resource import Capabilities, Driver

if TYPE_CHECKING:
    from hal.lerobot_robot import LerobotRobotDriver
    from hal.safety import SafeDriver
    from hal.sim import SimTask

SIM_CONTROL_HZ = 10.0  # a simulated robot's rate unless --hz says otherwise (hal.sim.SimRobot's default)

# The Fast DDS profile ships in the checkout's launch/ folder, beside the packages.
LAUNCH_DIR = Path(__file__).resolve().parents[1] / "launch"


class BuiltDriver(NamedTuple):
    driver: Driver
    source: str  # the steps' source: "sim" or "robot"
    task: str  # the name a scripted operator is looked up by


DriverFactory = Callable[[str, int | None, float | None], BuiltDriver]


def _sim_task(task: str) -> SimTask:
    """A sim task by name: gym_hil's and gym-pusht's (``hal.sim``), or ``point_reach`` (``hal.reach_sim``, a task of
    thousands of steps/s for tests of the loop)."""
    from hal.reach_sim import point_reach_task
    from hal.sim import SIM_TASKS

    if task == "point_reach":
        return point_reach_task()
    if task not in SIM_TASKS:
        raise ValueError(f"unknown sim task {task!r}; available: {', '.join(sorted([*SIM_TASKS, 'point_reach']))}")
    return SIM_TASKS[task]


def _sim(task: str, seed: int | None, control_hz: float | None) -> BuiltDriver:
    from hal.sim import SimRobot

    kwargs: dict = {"seed": seed, "spec": _sim_task(task)}
    if control_hz:
        kwargs["control_hz"] = control_hz
    return BuiltDriver(SimRobot(task, **kwargs), "sim", task)


def _lerobot_unconnected(path: str, control_hz: float | None) -> tuple[LerobotRobotDriver, str]:
    """The driver of a lerobot robot config, built but not connected, and the robot's type."""
    from hal.config import read_yaml
    from hal.lerobot_robot import make_lerobot_robot

    config = read_yaml(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping with at least 'type'")
    if control_hz:
        config.setdefault("control_hz", control_hz)
    try:
        return make_lerobot_robot(config), str(config.get("type", ""))
    except ValueError as err:
        raise ValueError(f"lerobot:{path}: {err}") from err


def _lerobot(path: str, seed: int | None, control_hz: float | None) -> BuiltDriver:
    driver, robot_type = _lerobot_unconnected(path, control_hz)
    try:
        # Opened here, before the edge starts: a missing arm or camera stops it with the port's name, at once.
        driver.connect()
    except ValueError as err:
        raise ValueError(f"lerobot:{path}: {err}") from err
    return BuiltDriver(driver, "robot", robot_type)


def _ros2(path: str, seed: int | None, control_hz: float | None) -> BuiltDriver:
    # Fast DDS reads its profile once, at the first rclpy.init: the shipped one gives images a 16 MB
    # shared-memory segment (about 3 ms for 640x480 instead of about 14 ms).
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(LAUNCH_DIR / "ros2" / "fastdds_shm.xml"))
    from hal.ros2 import Ros2Robot, Ros2RobotConfig

    config = Ros2RobotConfig.from_yaml(path)
    return BuiltDriver(Ros2Robot(config), "robot", config.scripted_task or config.embodiment)


DRIVERS: dict[str, DriverFactory] = {"sim": _sim, "ros2": _ros2, "lerobot": _lerobot}
DRIVER_FORMS = "sim:<task>, ros2:<robot.yaml> or lerobot:<config.yaml>"


def build_driver(name: str, seed: int | None = None, control_hz: float | None = None) -> BuiltDriver:
    """``sim:<task>`` -> a simulated robot; ``ros2:<robot.yaml>`` -> a robot behind ROS 2 topics;
    ``lerobot:<config.yaml>`` -> any lerobot Robot, by config alone."""
    scheme, _, what = name.partition(":")
    factory = DRIVERS.get(scheme)
    if factory is None:
        raise ValueError(f"unknown driver {scheme!r} in {name!r}; available: {DRIVER_FORMS}")
    return factory(what, seed, control_hz)


def _sim_capabilities(task: str) -> Capabilities:
    spec = _sim_task(task)
    return Capabilities(spec.observation, spec.action, SIM_CONTROL_HZ, task, spec.cameras)


def _ros2_capabilities(path: str) -> Capabilities:
    from hal.ros2_config import Ros2RobotConfig

    return Ros2RobotConfig.from_yaml(path).capabilities


def _lerobot_capabilities(path: str) -> Capabilities:
    return _lerobot_unconnected(path, None)[0].capabilities  # from the config: the robot is never opened


# What each scheme's robot observes and takes, found without starting a simulator or reaching a device.
CAPABILITIES: dict[str, Callable[[str], Capabilities]] = {
    "sim": _sim_capabilities,
    "ros2": _ros2_capabilities,
    "lerobot": _lerobot_capabilities,
}


def driver_capabilities(name: str) -> Capabilities:
    """The capabilities of the robot ``name`` (as ``build_driver`` takes it) without connecting to it: a sim's from
    its task table, a ROS 2 robot's from its YAML, a lerobot robot's from its config (built, not connected)."""
    scheme, _, what = name.partition(":")
    capabilities = CAPABILITIES.get(scheme)
    if capabilities is None:
        raise ValueError(f"unknown driver {scheme!r} in {name!r}; available: {DRIVER_FORMS}")
    return capabilities(what)


def with_safety(driver: Driver, resource_id: str, watchdog_s: float | None) -> SafeDriver:
    """Every driver gets position limits, a watchdog and an emergency stop in front of it."""
    from hal.safety import SafeDriver, SafetyLimits

    hz = driver.capabilities.control_hz
    watchdog_s = watchdog_s or max(0.25, 3.0 / hz)
    return SafeDriver(
        driver, SafetyLimits.from_spec(driver.capabilities.action), watchdog_s=watchdog_s, name=resource_id
    )
