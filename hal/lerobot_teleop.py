"""Any lerobot ``Teleoperator`` as a person's controls, chosen by a config dict alone (``teleop:<config.yaml>``).

The device is built by lerobot's own factory (``make_teleoperator_from_config``) from its type's config class, so
every teleoperator lerobot knows works the same way: keyboard_ee, gamepad, so100/so101/koch leader arms, phone.
Building touches no hardware and checks the config (an unknown or mistyped key is an error naming it); ``connect``
opens the device, and one that is not there fails with an error naming its port.

Its action is read as flat named numbers: a scalar feature keeps its name, an array feature ``f`` gives ``f[0]``,
``f[1]``..., a rotation gives its rotation vector as ``f[0..2]``, a flag 0 or 1; a value that is no finite number
is refused (``TeleopError``), since a device's readings are not trusted until checked.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
from typing import Any

import numpy as np

from hal.config import ConfigError
from hal.lerobot_config import check_fields, choice_class, decode
from hal.log_filters import quiet_lerobot_keyboards

# lerobot's plain "keyboard" teleoperator reports the keys held, not an action (its action_features reads an
# attribute it lacks): keyboard_ee is the keyboard that gives one.
NO_ACTION_TYPES = {"keyboard": "it reports the keys held, not an action: use keyboard_ee (or --operator keyboard)"}


class TeleopError(RuntimeError):
    """The teleoperator cannot be used: not there, not calibrated, or it gave a reading that is no action."""


def teleop_config_class(type_name: str, module: str | None) -> type:
    """lerobot's config class for a teleoperator type; ConfigError at ``type`` naming the known ones when none."""
    quiet_lerobot_keyboards()  # before lerobot's keyboards are imported: fleetloop says plainly when keys are absent
    from lerobot.teleoperators import TeleoperatorConfig

    if module:
        importlib.import_module(module)  # a plugin that registers its own teleoperator type
    config_class = choice_class(TeleoperatorConfig, type_name, ("type",), "lerobot teleoperator")
    if type_name in NO_ACTION_TYPES:
        raise ConfigError("type", f"{type_name!r} cannot drive a robot: {NO_ACTION_TYPES[type_name]}", ("type",))
    return config_class


def make_lerobot_teleop(type_name: str, fields: dict[str, Any], module: str | None = None) -> LerobotTeleop:
    """Builds (does not connect) the teleoperator ``type_name`` with its lerobot config ``fields``, checked key by
    key against lerobot's own config dataclass, then decoded by draccus as lerobot's CLI does; a ConfigError naming
    the key otherwise."""
    from lerobot.teleoperators.utils import make_teleoperator_from_config

    config_class = teleop_config_class(type_name, module)
    check_fields(config_class, fields)
    return LerobotTeleop(make_teleoperator_from_config(decode(config_class, fields)), type_name)


def feature_names(features: dict[str, Any]) -> tuple[str, ...]:
    """The names a teleoperator's ``action_features`` give its action: the keys, or the ``names`` of the array
    form (``{"dtype", "shape", "names": {...}}`` of keyboard_ee and gamepad)."""
    names = features.get("names")
    if "shape" in features and isinstance(names, dict):
        return tuple(names)
    return tuple(features)


class LerobotTeleop:
    """One lerobot teleoperator: built, connected on ``connect``, read as flat named numbers."""

    def __init__(self, device: Any, type_name: str) -> None:
        self.device = device
        self.type = type_name
        self.action_names = feature_names(dict(device.action_features))

    @property
    def port(self) -> str:
        """The device's port where its config has one ("" otherwise), for errors a person can act on."""
        return str(vars(self.device.config).get("port") or "")

    @property
    def has_events(self) -> bool:
        """Whether it has HIL-SERL events of its own (lerobot's ``get_teleop_events``: gamepad, keyboard_ee)."""
        from lerobot.processor.hil_processor import HasTeleopEvents

        return isinstance(self.device, HasTeleopEvents)

    def connect(self) -> None:
        """Opens the device; TeleopError saying what to check (the port) when it cannot."""
        device = self.device
        try:
            if "calibrate" in inspect.signature(device.connect).parameters:
                device.connect(calibrate=False)  # calibration asks questions on stdin: a headless edge would hang
            else:
                device.connect()
        except Exception as exc:
            where = f" on port {self.port}" if self.port else ""
            why = " ".join(str(exc).split()) or type(exc).__name__
            raise TeleopError(f"cannot connect the {self.type} teleoperator{where}: {why}") from exc
        if not device.is_connected:  # lerobot's keyboards only warn when pynput cannot read keys here
            raise TeleopError(
                f"the {self.type} teleoperator did not connect: it reads the keys held on an X display, and there is "
                f"none here (DISPLAY={os.environ.get('DISPLAY')!r}); run the edge in the robot's X11 desktop session, "
                "or under Xvfb with DISPLAY set"
            )
        if device.is_calibrated is False:  # None: it has nothing to calibrate (a keyboard)
            raise TeleopError(
                f"the {self.type} teleoperator is not calibrated; run `lerobot-calibrate --teleop.type={self.type} "
                f"--teleop.port={self.port or '...'}` on this machine first"
            )

    def read(self) -> dict[str, float]:
        """The device's action now, as flat named finite numbers; TeleopError for anything else."""
        raw = self.device.get_action()
        values: dict[str, float] = {}
        for name, value in raw.items():
            values.update(_flat(str(name), value))
        return values

    def events(self) -> dict[str, Any]:
        """lerobot's HIL-SERL events (``TeleopEvents`` keys), for a device that ``has_events``."""
        return dict(self.device.get_teleop_events())

    def close(self) -> None:
        if self.device.is_connected:
            self.device.disconnect()


def _flat(name: str, value: Any) -> dict[str, float]:
    """One feature of a reading as named numbers (see the module docstring)."""
    if isinstance(value, dict) or value is None:
        return {}  # raw inputs, metadata: nothing to drive with
    value = _as_rotvec(value)
    array = np.asarray(value, dtype=object).reshape(-1)
    if array.size == 1 and np.ndim(value) == 0:
        return {name: _number(name, array[0])}
    return {f"{name}[{i}]": _number(f"{name}[{i}]", v) for i, v in enumerate(array)}


def _as_rotvec(value: Any) -> Any:
    """A rotation (the phone's pose) as its rotation vector; anything else as it is."""
    try:
        from scipy.spatial.transform import Rotation
    except ImportError:  # without scipy no device can hand us a Rotation either
        return value
    return value.as_rotvec() if isinstance(value, Rotation) else value


def _number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TeleopError(f"teleoperator action {name!r} is not a number: {str(value)[:60]!r}") from None
    if not math.isfinite(number):
        raise TeleopError(f"teleoperator action {name!r} is {number}")
    return number
