"""Any lerobot ``Robot`` as a fleetloop Driver, chosen by a config dict alone.

Features become Capabilities this way:
- scalar features (``float``, also ``int``/``bool``) become ONE flat float32 ``state`` vector, in the robot's
  ``observation_features`` order (``state_names`` keeps the names). Policies, the recorder and the other
  drivers all take one ``state`` vector, and lerobot itself stores robot state the same way
  (``observation.state`` with per-entry names), so datasets and policies line up without a mapping step.
- tuple features ``(H, W, C)`` are cameras: uint8 image ArraySpecs under the feature's own name.
- action features become one flat float32 ``action`` vector; ``action_names`` keeps the order, and ``apply``
  maps the vector back to the robot's dict by those names.

``hold()``: for position-controlled robots (every action feature ``x.pos`` is also an observed feature, as on
the SO/Koch/OMX followers), it reads the current position and sends it as the goal, so the arm stops where
it is. For ``x.vel`` actions (mobile bases) it sends zeros. Otherwise it sends nothing and says so once in
the log: such a robot must stop by itself (lerobot's own ``max_relative_target`` or the device's firmware).
"""

from __future__ import annotations

import errno
import importlib
import logging
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from hal.config import ConfigError, ConfigModel, Items, Name, validate
from hal.lerobot_config import check_fields, choice_class, decode, innermost_message
from hal.resource import ArraySpec, Capabilities, HoldsPosition, NamesActions, NamesState, Transition

log = logging.getLogger("fleetloop.lerobot")


class LerobotDriverConfig(ConfigModel):
    """The keys of a lerobot robot config that are fleetloop's; the others are the lerobot RobotConfig's."""

    type: Name  # a lerobot robot type, e.g. so101_follower
    module: Name | None = None  # a plugin to import first, which registers its own robot type
    control_hz: Annotated[float, Field(gt=0)] = 30.0
    episode_steps: Annotated[int, Field(ge=0)] = 0  # 0: episodes never end by themselves
    action_low: Items[float] | None = None
    action_high: Items[float] | None = None
    hold: Literal["auto", "position", "zero", "none"] = "auto"


DRIVER_KEYS = tuple(LerobotDriverConfig.model_fields)


class RobotUnavailable(ValueError):
    """The robot a config names cannot be opened (no device at its port, not calibrated): a problem of the config
    or the cabling, which the edge reports at start like any bad flag."""


# What an OSError opening a serial port means to the person at the robot.
_PORT_PROBLEMS = {
    errno.ENOENT: "no such device",
    errno.ENODEV: "no such device",
    errno.ENXIO: "no such device",
    errno.EACCES: "permission denied; add this user to the 'dialout' group",
    errno.EBUSY: "busy; another program has it open",
}


def connect_problem(exc: BaseException, robot_type: str) -> str:
    """Why connecting failed, in the words of the person at the robot: the port it could not open, if that was it."""
    chain, cause = [], exc
    while cause is not None and len(chain) < 16:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in chain:
        if isinstance(cause, OSError) and cause.errno in _PORT_PROBLEMS and cause.filename:
            return (
                f"cannot open {cause.filename} ({_PORT_PROBLEMS[cause.errno]}); "
                "is the arm plugged in and the port right?"
            )
    said = " ".join(str(exc).split()) or type(exc).__name__
    first = " ".join(str(chain[-1]).split())
    if len(chain) > 1 and first:
        said += f" (underneath: {first})"
    return f"cannot connect to the {robot_type} robot: {said}; is it plugged in and powered, and the config right?"


class LerobotRobotDriver(HoldsPosition, NamesActions, NamesState):
    """A Driver over a lerobot ``Robot``. ``reset`` connects when needed; a real robot is not moved by reset."""

    def __init__(self, robot: Any, config: LerobotDriverConfig) -> None:
        self.robot = robot
        self.episode_steps = config.episode_steps
        action_low, action_high = config.action_low, config.action_high
        obs_features: dict[str, Any] = dict(robot.observation_features)
        act_features: dict[str, Any] = dict(robot.action_features)
        self.state_names = tuple(k for k, v in obs_features.items() if not isinstance(v, tuple))
        self.camera_names = tuple(k for k, v in obs_features.items() if isinstance(v, tuple))
        self.action_names = tuple(act_features)
        for name, kind in act_features.items():
            if isinstance(kind, tuple):
                raise ValueError(
                    f"action feature {name!r} is an array {kind}; only scalar action features are supported"
                )
        if "state" in self.camera_names:
            raise ValueError("the robot has a camera called 'state', which clashes with the state vector")
        dim = len(self.action_names)
        for field, values in (("action_low", action_low), ("action_high", action_high)):
            if values is not None and len(values) != dim:
                raise ValueError(f"{field} has {len(values)} entries but the robot has {dim} action features")
        observation = [ArraySpec("state", "float32", (len(self.state_names),))] if self.state_names else []
        observation += [
            ArraySpec(name, "uint8", tuple(int(d) for d in obs_features[name]), low=(0.0,), high=(255.0,))
            for name in self.camera_names
        ]
        limits = (action_low, action_high) if action_low and action_high else ((), ())
        self._caps = Capabilities(
            observation=tuple(observation),
            action=ArraySpec("action", "float32", (dim,), *limits),
            control_hz=config.control_hz,
            # The type the config names: lerobot's SO-100 and SO-101 are one class, whose name is so_follower.
            embodiment=config.type,
            cameras=self.camera_names,
        )
        self.hold_mode = self._resolve_hold(config.hold, set(obs_features))
        self._step = 0
        self._warned_hold = False

    def _resolve_hold(self, hold: str, observed: set[str]) -> str:
        positions = all(n.endswith(".pos") and n in observed for n in self.action_names)
        if hold == "position" and not positions:
            raise ValueError("hold='position' needs every action feature to be an observed '.pos' feature")
        if hold != "auto":
            return hold
        if positions:
            return "position"
        return "zero" if all(n.endswith(".vel") for n in self.action_names) else "none"

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def _observe(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self.state_names:
            obs["state"] = np.array([float(raw[n]) for n in self.state_names], dtype=np.float32)
        for spec in self._caps.observation:
            if spec.name in self.camera_names:
                frame = np.asarray(raw[spec.name])
                if frame.shape != spec.shape or frame.dtype != np.uint8:
                    # A camera that ignored its configured size would otherwise reach the store as a refused step.
                    raise RuntimeError(
                        f"camera {spec.name!r} gave a {frame.dtype} frame of shape {frame.shape}; its config says "
                        f"uint8 {spec.shape} (check cameras.{spec.name}.width/height against what it supports)"
                    )
                obs[spec.name] = np.ascontiguousarray(frame)
        return obs

    def connect(self) -> None:
        """Opens the robot if it is not open; RobotUnavailable, saying what to check, when it cannot be."""
        if self.robot.is_connected:
            return
        try:
            # calibrate=False: calibration asks questions on stdin, which would hang a headless edge agent.
            self.robot.connect(calibrate=False)
        except Exception as exc:  # lerobot raises ConnectionError, OSError, RuntimeError... by bus and camera
            raise RobotUnavailable(connect_problem(exc, self._caps.embodiment)) from exc
        if not self.robot.is_calibrated:
            self.robot.disconnect()
            robot_type, robot_id = self._caps.embodiment, self.robot.id
            raise RobotUnavailable(
                f"the {robot_type} robot {robot_id!r} is not calibrated (no matching {self.robot.calibration_fpath}); "
                f"run `lerobot-calibrate --robot.type={robot_type} --robot.id={robot_id} ...` on this machine first"
            )

    def reset(self) -> dict[str, np.ndarray]:
        self.connect()
        self._step = 0
        return self._observe(self.robot.get_observation())

    def apply(self, action: np.ndarray) -> Transition:
        flat = np.asarray(action, dtype=np.float64).reshape(-1)
        sent = self.robot.send_action({n: float(v) for n, v in zip(self.action_names, flat, strict=True)})
        observation = self._observe(self.robot.get_observation())
        self._step += 1
        done = bool(self.episode_steps) and self._step >= self.episode_steps
        info: dict[str, Any] = {}
        if sent is not None:  # the robot may clip (max_relative_target); say what it really did
            info["sent_action"] = np.array([float(sent.get(n, np.nan)) for n in self.action_names], np.float32)
        return Transition(observation, reward=0.0, done=done, success=False, info=info)

    def action_from_observation(self, observation: dict[str, np.ndarray]) -> np.ndarray | None:
        """The action that keeps a position-controlled robot where it is (SafeDriver's rate-limit reference)."""
        if self.hold_mode != "position":
            return None
        index = {n: i for i, n in enumerate(self.state_names)}
        return np.array([observation["state"][index[n]] for n in self.action_names], dtype=np.float32)

    def hold(self) -> None:
        if not self.robot.is_connected:
            return  # nothing is being commanded
        if self.hold_mode == "position":
            raw = self.robot.get_observation()
            self.robot.send_action({n: float(raw[n]) for n in self.action_names})
        elif self.hold_mode == "zero":
            self.robot.send_action(dict.fromkeys(self.action_names, 0.0))
        elif not self._warned_hold:
            self._warned_hold = True
            log.warning(
                "%s: its actions %s are neither positions nor velocities, so hold sends nothing; "
                "the robot must stop by itself",
                self.robot,
                list(self.action_names),
            )

    def close(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()


def _make_robot(config: Any) -> Any:
    from lerobot.robots import Robot, make_robot_from_config

    # A robot defined next to its config (like FakeArmRobot) is found by its config_class.
    module = importlib.import_module(type(config).__module__)
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Robot)
            and getattr(value, "config_class", None) is type(config)
        ):
            return value(config)
    return make_robot_from_config(config)


def _check_robot_cameras(fields: dict[str, Any]) -> None:
    """What lerobot's RobotConfig demands of a camera, and what fleetloop carries, said at the camera's key."""
    cameras = fields.get("cameras") or {}
    for name, camera in cameras.items():
        for key in ("width", "height", "fps"):
            if camera.get(key) is None:
                raise ConfigError(f"cameras.{name}.{key}", "required for a robot's camera (lerobot opens it so)")
        if camera.get("use_depth"):
            raise ConfigError(f"cameras.{name}.use_depth", "depth images are not carried yet; leave it false")


def _check_camera_specs(driver: LerobotRobotDriver) -> None:
    """Each camera's name and frame size fit what a step may carry (the gateway refuses a hello that does not)."""
    from protocol.limits import check_spec

    for spec in driver.capabilities.observation:
        if spec.name in driver.camera_names:
            try:
                check_spec(spec.to_proto(), f"cameras.{spec.name}")
            except ValueError as exc:
                raise ConfigError(f"cameras.{spec.name}", str(exc).split(": ", 1)[-1]) from exc


def _build_robot(config: Any, robot_type: str) -> Any:
    """lerobot's robot for ``config``, not connected; a ConfigError when its SDK is missing or lerobot refuses."""
    try:
        return _make_robot(config)
    except ImportError as exc:
        raise ConfigError("type", f"the {robot_type} robot needs a package that is not installed: {exc}") from exc
    except Exception as exc:  # constructors only read the config: a failure here is the config's
        raise ConfigError("type", f"lerobot could not build the {robot_type} robot: {innermost_message(exc)}") from exc


def make_lerobot_robot(config: dict[str, Any]) -> LerobotRobotDriver:
    """Builds the driver from one dict: ``type`` (a lerobot robot type) plus that RobotConfig's fields, without
    touching hardware: capabilities come from the robot's features; ``connect`` (or the first reset) opens it.

    Every key is checked against lerobot's own config dataclasses before anything is built (``hal.lerobot_config``):
    errors are ConfigErrors naming the key (``cameras.front.height: required ...``). Nested fields (``cameras:
    {front: {type: opencv, ...}}``) are then decoded by draccus, as lerobot's CLI does.
    """
    from lerobot.robots import RobotConfig

    settings = validate(LerobotDriverConfig, {k: v for k, v in config.items() if k in DRIVER_KEYS})
    importlib.import_module("hal.lerobot_fake")  # registers fleetloop_fake_arm
    if settings.module:
        try:
            importlib.import_module(settings.module)  # a plugin that registers its own robot type
        except ImportError as exc:
            raise ConfigError("module", f"cannot import {settings.module!r}: {exc}") from exc
    config_class = choice_class(RobotConfig, settings.type, ("type",), "lerobot robot")
    fields = {k: v for k, v in config.items() if k not in DRIVER_KEYS}
    check_fields(config_class, fields)
    _check_robot_cameras(fields)
    robot = _build_robot(decode(config_class, fields), settings.type)
    driver = LerobotRobotDriver(robot, settings)
    _check_camera_specs(driver)
    return driver
