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

import importlib
import logging
import pkgutil
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from hal.config import ConfigModel, Items, Name, validate
from hal.resource import ArraySpec, Capabilities, HoldsPosition, Transition

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


class LerobotRobotDriver(HoldsPosition):
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
            embodiment=str(getattr(robot, "name", type(robot).__name__)),
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
        for name in self.camera_names:
            obs[name] = np.ascontiguousarray(raw[name], dtype=np.uint8)
        return obs

    def reset(self) -> dict[str, np.ndarray]:
        if not self.robot.is_connected:
            # calibrate=False: calibration asks questions on stdin, which would hang a headless edge agent.
            self.robot.connect(calibrate=False)
            if not self.robot.is_calibrated:
                raise RuntimeError(
                    f"lerobot robot {self.robot} is not calibrated; run "
                    f"`lerobot-calibrate --robot.type={self._caps.embodiment} ...` on this machine first"
                )
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


def _robot_config_class(robot_type: str, module: str | None) -> type:
    from lerobot.robots import RobotConfig

    importlib.import_module("hal.lerobot_fake")  # registers fleetloop_fake_arm
    if module:
        importlib.import_module(module)  # a plugin that registers its own robot type
    known = RobotConfig.get_known_choices()
    if robot_type not in known:
        # lerobot registers each robot when its package is imported; import them all once to find it.
        import lerobot.robots as robots

        for info in pkgutil.iter_modules(robots.__path__, robots.__name__ + "."):
            try:
                importlib.import_module(info.name)
            except Exception as exc:  # an optional SDK may be missing; that robot just stays unknown
                log.debug("could not import %s: %s", info.name, exc)
        known = RobotConfig.get_known_choices()
    if robot_type not in known:
        raise ValueError(f"type: unknown lerobot robot type {robot_type!r}; known: {sorted(known)}")
    return RobotConfig.get_choice_class(robot_type)


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


def make_lerobot_robot(config: dict[str, Any]) -> LerobotRobotDriver:
    """Builds the driver from one dict: ``type`` (a lerobot robot type) plus that RobotConfig's fields.

    fleetloop's own keys (``LerobotDriverConfig``) are checked before anything is imported; errors name the key.
    Nested fields (``cameras: {front: {type: opencv, ...}}``) are decoded by draccus, as lerobot's CLI does.
    """
    import draccus

    settings = validate(LerobotDriverConfig, {k: v for k, v in config.items() if k in DRIVER_KEYS})
    config_class = _robot_config_class(settings.type, settings.module)
    fields = {k: v for k, v in config.items() if k not in DRIVER_KEYS}
    try:
        robot_config = draccus.decode(config_class, fields)
    except Exception as exc:
        raise ValueError(f"bad config for lerobot robot type {settings.type!r}: {exc}") from exc
    return LerobotRobotDriver(_make_robot(robot_config), settings)
