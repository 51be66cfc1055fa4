"""A person at the robot as its operator: a lerobot teleoperator drives, keys (or the device's own buttons) signal.

``--operator keyboard`` is lerobot's keyboard_ee (arrows move in x/y, shift / right shift down / up, right ctrl /
left ctrl close / open the gripper) with the keys of ``edge.keys`` (space takes over and hands back, s success,
q failure, r re-record, Enter scene ready); ``--operator teleop:<config.yaml>`` is any lerobot teleoperator by its
config (``TeleopConfig``), its action mapped onto the robot's by name, by ``action_map``, or (an end-effector
teleoperator driving a joint-space arm) through lerobot's kinematics by ``kinematics:`` (``edge.kinematics``).
While the person drives, or while there is no policy yet, every step is the person's (an intervention, recorded
with ``who``); otherwise the policy's action passes through untouched.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from pydantic import AfterValidator, Field

from edge.action_map import MapTarget, ReadingToAction, RobotAction, resolve_mapping
from edge.keys import TOGGLE, KeyAction, KeySignals
from edge.kinematics import KinematicsConfig, resolve_kinematics
from edge.operator import ExplainsSignals, Operator, PersonOperator, Signal, choose_operator
from hal.config import ConfigError, ConfigModel, Name, read_yaml, validate
from hal.lerobot_teleop import LerobotTeleop, TeleopError, make_lerobot_teleop
from hal.resource import ShowsTheScene

log = logging.getLogger("fleetloop.edge")

MAX_WHO = 128  # the wire's bound on an identity (protocol.steps.MAX_ID_LENGTH)


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError(f"must be printable, got {value!r}")
    return value


Who = Annotated[Name, Field(max_length=MAX_WHO), AfterValidator(_printable)]


class TeleopConfig(ConfigModel):
    """fleetloop's keys of a teleoperator config; every other key is the lerobot TeleoperatorConfig's."""

    type: Name  # a lerobot teleoperator type: keyboard_ee, gamepad, so101_leader, koch_leader, phone...
    module: Name | None = None  # a plugin to import first, which registers its own teleoperator type
    who: Who | None = None  # the person, recorded with their steps and labels (default <type>@<robot id>)
    # keyboard: the keys of edge.keys on this machine; teleop: the device's own HIL-SERL events (a gamepad's buttons)
    signals: Literal["keyboard", "teleop"] = "keyboard"
    action_map: dict[str, MapTarget] | None = None  # teleop action -> robot action; None: by equal names
    rest: dict[str, float] = {}  # robot actions no teleop action drives: their value
    kinematics: KinematicsConfig | None = None  # end-effector deltas onto a joint-space arm (edge/kinematics.py)


FLEETLOOP_KEYS = tuple(TeleopConfig.model_fields)

# --operator keyboard: lerobot's keyboard_ee onto an end-effector robot whose action is x, y, z, gripper.
KEYBOARD = {
    "type": "keyboard_ee",
    "action_map": {
        "delta_x": {"to": "x"},
        "delta_y": {"to": "y"},
        "delta_z": {"to": "z"},
        "gripper": {"to": "gripper"},
    },
}


KEYBOARD_HELP = (
    "arrow keys move in x and y, left / right shift move down / up, right / left ctrl close / open the gripper"
)
SIGNAL_WORDS = {
    Signal.TAKE_OVER: "take over or hand back",
    Signal.SUCCESS: "end the episode as a success",
    Signal.FAILURE: "end it as a failure",
    Signal.RERECORD: "discard it and record it again",
    Signal.SCENE_READY: "say the scene is reset",
}


class SignalSource(Protocol):
    """Where a person's signals come from besides the device's action: keys, or the device's own buttons."""

    def start(self) -> None: ...

    def take(self) -> list[KeyAction]: ...

    def help(self, action: KeyAction) -> str:
        """How the person gives ``action`` ("press Enter"), "" when they cannot."""
        ...

    def close(self) -> None: ...


class TeleopEvents:
    """A device's own HIL-SERL events (lerobot's ``get_teleop_events``) as signals: intervention while held."""

    def __init__(self, teleop: LerobotTeleop) -> None:
        if not teleop.has_events:
            raise ValueError(
                f"signals: the {teleop.type} teleoperator has no events of its own (lerobot's get_teleop_events); "
                "use signals: keyboard"
            )
        self.teleop = teleop
        self._held = False

    def start(self) -> None:
        pass

    def take(self) -> list[KeyAction]:
        from lerobot.teleoperators.utils import TeleopEvents as Events

        events = self.teleop.events()
        out: list[KeyAction] = []
        held = bool(events.get(Events.IS_INTERVENTION, False))
        if held != self._held:
            self._held = held
            out.append(Signal.TAKE_OVER if held else Signal.HAND_BACK)
        if events.get(Events.RERECORD_EPISODE, False):
            out.append(Signal.RERECORD)
        elif events.get(Events.SUCCESS, False):
            out.append(Signal.SUCCESS)
        elif events.get(Events.TERMINATE_EPISODE, False):
            out.append(Signal.FAILURE)
        return out

    def help(self, action: KeyAction) -> str:
        return "" if action == Signal.SCENE_READY else f"use the {self.teleop.type}'s button"

    def close(self) -> None:
        pass


class TeleopOperator(PersonOperator, ExplainsSignals):
    """A lerobot teleoperator and a person's signals as the robot's operator (see the module docstring)."""

    def __init__(self, teleop: LerobotTeleop, mapping: ReadingToAction, who: str, signals: SignalSource) -> None:
        self.teleop = teleop
        self.mapping = mapping
        self._who = who
        self.signals = signals
        self.driving = False
        self._moving = False  # whether the last action was the person's: a new stretch restarts the mapping
        self._said: list[Signal] = []
        self._failing = ""  # why the device gave no action last time ("" while it works)

    @property
    def who(self) -> str:
        return self._who

    def start(self) -> None:
        """Starts listening for signals and connects the device; NoKeyboardError or TeleopError saying why not."""
        self.signals.start()  # first: a missing display is said before lerobot's own keyboard warns of it
        try:
            self.teleop.connect()
        except TeleopError:
            self.signals.close()
            raise

    def describe(self) -> str:
        """The person's controls in one line, for the log at start."""
        moves = KEYBOARD_HELP if self.teleop.type == "keyboard_ee" else f"the {self.teleop.type} drives"
        said = ", ".join(
            f"{self.signal_help(signal)} to {words}"
            for signal, words in SIGNAL_WORDS.items()
            if self.signal_help(signal)
        )
        return f"{self.who} at the controls: {moves}; {said}"

    def signal_help(self, signal: Signal) -> str:
        """How the person gives ``signal`` ("press Enter"), "" when they cannot."""
        return self.signals.help(TOGGLE if signal in (Signal.TAKE_OVER, Signal.HAND_BACK) else signal)

    def take_signals(self) -> list[Signal]:
        self._listen()
        said, self._said = self._said, []
        return said

    def _listen(self) -> None:
        for action in self.signals.take():
            if action == TOGGLE:
                action = Signal.HAND_BACK if self.driving else Signal.TAKE_OVER
            if action in (Signal.TAKE_OVER, Signal.HAND_BACK):
                self.driving = action == Signal.TAKE_OVER
            self._said.append(Signal(action))

    def decide(
        self, observation: dict[str, np.ndarray], policy_action: np.ndarray | None, step_index: int
    ) -> tuple[np.ndarray | None, bool]:
        """The person's action while they drive or no policy has one; None (hold) when the device gives none."""
        self._listen()
        if not self.driving and policy_action is not None:
            self._moving = False
            return policy_action, False
        try:
            if not self._moving:
                self.mapping.restart()  # a target kept from before would pull the arm back to it
            self._moving = True
            action = self.mapping.action(self.teleop.read(), observation)
        except Exception as err:  # a device is outside our control: whatever it raises, the loop goes on
            self._moving = False
            return self._device_failed(f"{type(err).__name__}: {err}", policy_action)
        if self._failing:
            log.info("the %s teleoperator answers again", self.teleop.type)
            self._failing = ""
        return action, True

    def _device_failed(self, why: str, policy_action: np.ndarray | None) -> tuple[np.ndarray | None, bool]:
        if why != self._failing:
            then = "the policy drives again" if policy_action is not None else "the robot holds"
            log.error("the %s teleoperator gave no action (%s): %s", self.teleop.type, why, then)
            self._failing = why
        if self.driving and policy_action is not None:
            self.driving = False
            self._said.append(Signal.HAND_BACK)
        return policy_action, False

    def reset(self) -> None:
        self.driving = False  # a new episode starts with the policy driving, as HIL-SERL's do
        self._moving = False

    def close(self) -> None:
        self.signals.close()
        self.teleop.close()


def build_teleop_operator(raw: Any, robot: RobotAction, resource_id: str, who: str = "") -> TeleopOperator:
    """The operator of a teleoperator config (a mapping: ``TeleopConfig`` keys plus lerobot's), not yet started;
    ValueError (a ConfigError naming the key, where it is one key) when it cannot drive this robot."""
    if not isinstance(raw, dict):
        raise ValueError("<root>: should be a mapping with at least 'type'")
    if who:
        raw = {**raw, "who": who}
    config = validate(TeleopConfig, {k: v for k, v in raw.items() if k in FLEETLOOP_KEYS})
    teleop = make_lerobot_teleop(
        config.type, {k: v for k, v in raw.items() if k not in FLEETLOOP_KEYS}, module=config.module
    )
    mapping = _mapping(config, teleop, robot)
    signals: SignalSource = KeySignals() if config.signals == "keyboard" else TeleopEvents(teleop)
    return TeleopOperator(teleop, mapping, config.who or f"{config.type}@{resource_id}", signals)


def _mapping(config: TeleopConfig, teleop: LerobotTeleop, robot: RobotAction) -> ReadingToAction:
    if config.kinematics is None:
        return resolve_mapping(teleop.type, teleop.action_names, robot, config.action_map, config.rest)
    if config.action_map is not None:
        raise ConfigError("action_map", "not with kinematics, which turns the end-effector deltas into joints")
    return resolve_kinematics(config.kinematics, teleop.type, teleop.action_names, robot, config.rest)


def keyboard_operator(robot: RobotAction, resource_id: str, who: str = "") -> TeleopOperator:
    """``--operator keyboard``: lerobot's keyboard_ee driving an end-effector robot (x, y, z, gripper)."""
    return build_teleop_operator({**KEYBOARD, "who": who or f"keyboard@{resource_id}"}, robot, resource_id)


def operator_for(
    asked: str | None,
    task: str,
    robot: RobotAction,
    resource_id: str,
    who: str = "",
    scene: ShowsTheScene | None = None,
) -> Operator | None:
    """The operator ``--operator`` names: "keyboard" and "teleop:<config.yaml>" (a person, not yet started), or
    "scripted" / "none" / None (``choose_operator``; ``scene``: the simulator, for a camera-only task's scripted
    operator). ``who`` names the person (default from the operator kind).
    ValueError (a ConfigError naming the key of a teleoperator config) when it cannot drive this robot."""
    if asked == "keyboard":
        return keyboard_operator(robot, resource_id, who)
    if asked is not None and asked.startswith("teleop:"):
        return build_teleop_operator(read_yaml(asked.removeprefix("teleop:")), robot, resource_id, who)
    return choose_operator(task, asked, scene)
