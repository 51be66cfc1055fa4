"""Teleoperators as operators: configs checked through lerobot's own factory without hardware, the action map
checked against both sides at start, connect failing with the port named, and the operator's signals and driving.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.action_map import MapTarget, RobotAction, resolve_mapping
from edge.keys import TOGGLE, KeySignals
from edge.operator import Signal
from edge.teleop_operator import TeleopEvents, TeleopOperator, build_teleop_operator, keyboard_operator, operator_for
from hal.config import ConfigError
from hal.lerobot_teleop import LerobotTeleop, TeleopError
from hal.sim import SIM_TASKS

PANDA = RobotAction("panda_pick_cube", 4, SIM_TASKS["panda_pick_cube"].action_names)
SO101 = RobotAction(
    "so101_follower",
    6,
    ("shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"),
)
NO_PORT = "/dev/ttyFLEETLOOP-not-there"


def test_a_leader_arm_is_built_by_lerobots_factory_and_maps_onto_its_follower_by_name() -> None:
    operator = build_teleop_operator({"type": "so101_leader", "port": NO_PORT, "id": "left"}, SO101, "arm-1")
    from lerobot.teleoperators.so_leader import SO101Leader

    assert isinstance(operator.teleop.device, SO101Leader)  # lerobot's own class, from its own factory
    assert operator.who == "so101_leader@arm-1"
    reading = {name: float(i) for i, name in enumerate(SO101.names)}
    np.testing.assert_array_equal(operator.mapping.apply(reading), np.arange(6, dtype=np.float32))


def test_connect_fails_with_the_port_named_and_keeps_the_device_closed() -> None:
    teleop = build_teleop_operator({"type": "so101_leader", "port": NO_PORT}, SO101, "arm-1").teleop
    with pytest.raises(TeleopError, match=f"cannot connect the so101_leader teleoperator on port {NO_PORT}"):
        teleop.connect()
    assert not teleop.device.is_connected


@pytest.mark.parametrize(
    ("config", "robot", "error"),
    [
        (  # end-effector deltas onto a robot that takes x, y, z, gripper: nothing says where they go
            {"type": "keyboard_ee"},
            PANDA,
            "action_map: teleop action 'delta_x' has no place in the robot's action "
            "(panda_pick_cube takes 4: x, y, z, gripper)",
        ),
        (  # joints onto an end-effector robot
            {"type": "so101_leader", "port": NO_PORT},
            PANDA,
            "teleop action 'shoulder_pan.pos' has no place in the robot's action (panda_pick_cube takes 4",
        ),
        (
            {"type": "keyboard_ee", "action_map": {"delta_w": {"to": "x"}}},
            PANDA,
            "action_map.delta_w: the keyboard_ee teleoperator gives delta_x, delta_y, delta_z, gripper, not 'delta_w'",
        ),
        (
            {"type": "keyboard_ee", "action_map": {"delta_x": {"to": "yaw"}}},
            PANDA,
            "action_map.delta_x.to: the robot's action has no 'yaw' (panda_pick_cube takes 4: x, y, z, gripper)",
        ),
        (
            {"type": "keyboard_ee", "action_map": {"delta_x": {"to": 4}}},
            PANDA,
            "action_map.delta_x.to: 4 is not an index of the robot's action",
        ),
        (
            {"type": "keyboard_ee", "action_map": {"delta_x": {"to": "x"}, "delta_y": {"to": "x"}}},
            PANDA,
            "action_map.delta_y.to: robot action 'x' is driven by 'delta_x'",
        ),
        (
            {"type": "keyboard_ee", "action_map": {"delta_x": {"to": "x"}}},
            PANDA,
            "the robot's action 'y' gets nothing (the keyboard_ee teleoperator gives delta_x",
        ),
        ({"type": "keyboard_ee", "action_map": {"delta_x": {"to": "x", "scal": 2}}}, PANDA, "action_map.delta_x.scal"),
        ({"type": "so101_leader", "port": NO_PORT, "baudrate": 9600}, SO101, "baudrate: unknown key; known: "),
        ({"type": "so101_leader"}, SO101, "port: required"),
        ({"type": "so101_leader", "port": NO_PORT, "use_degrees": "often"}, SO101, "use_degrees: "),
        ({"type": "so101_lead"}, SO101, "type: unknown lerobot teleoperator type 'so101_lead'; known: "),
        ({"type": "keyboard"}, PANDA, "type: 'keyboard' cannot drive a robot: it reports the keys held"),
        ({"type": "so101_leader", "who": "ana\x1b[2J"}, SO101, "who: must be printable"),
        ({"type": "gamepad", "signals": "teleop", "rest": {"gripper": "open"}}, PANDA, "rest.gripper"),
        ({"type": "so101_leader", "port": NO_PORT, "signals": "teleop"}, SO101, "signals: the so101_leader"),
    ],
)
def test_a_config_that_cannot_drive_the_robot_is_refused_at_start_naming_the_field(config, robot, error) -> None:
    with pytest.raises(ValueError) as raised:
        build_teleop_operator(config, robot, "arm-1")
    assert error in str(raised.value)


def test_the_keyboard_operator_drives_xyz_gripper_robots_and_refuses_others() -> None:
    operator = keyboard_operator(PANDA, "arm-1")
    assert operator.who == "keyboard@arm-1" and operator.teleop.type == "keyboard_ee"
    reading = {"delta_x": 1.0, "delta_y": -1.0, "delta_z": 0.0, "gripper": 2.0}
    np.testing.assert_array_equal(operator.mapping.apply(reading), [1.0, -1.0, 0.0, 2.0])
    assert keyboard_operator(PANDA, "arm-1", who="ana").who == "ana"
    with pytest.raises(ConfigError, match=r"action_map.delta_x.to: the robot's action has no 'x' \(so101_follower"):
        keyboard_operator(SO101, "arm-1")
    assert operator_for("none", "panda_pick_cube", PANDA, "arm-1") is None
    assert isinstance(operator_for("keyboard", "panda_pick_cube", PANDA, "arm-1"), TeleopOperator)


def test_the_action_map_scales_fills_rest_and_names_a_missing_reading() -> None:
    mapping = resolve_mapping(
        "gamepad",
        ("delta_x", "delta_y", "delta_z", "gripper"),
        PANDA,
        {"delta_x": MapTarget(to=0, scale=0.5), "delta_y": MapTarget(to="y"), "delta_z": MapTarget(to="z")},
        {"gripper": 1.0},
    )
    np.testing.assert_array_equal(mapping.apply({"delta_x": 1.0, "delta_y": -1.0, "delta_z": 0.25}), [0.5, -1, 0.25, 1])
    with pytest.raises(KeyError, match="has no 'delta_z'"):
        mapping.apply({"delta_x": 1.0, "delta_y": -1.0})
    unnamed = RobotAction("cell", 2)
    with pytest.raises(ConfigError, match=r"cell takes 2 unnamed values, by index 0..1"):
        resolve_mapping("gamepad", ("delta_x",), unnamed, None, {})


class FakeDevice:
    """A lerobot teleoperator without hardware: a reading the test sets, events, and a connection flag."""

    config = type("Config", (), {"port": ""})()
    action_features = {"dtype": "float32", "shape": (4,), "names": {"delta_x": 0, "delta_y": 1, "delta_z": 2}}
    is_calibrated = None

    def __init__(self) -> None:
        self.reading: dict | Exception = {"delta_x": 1.0, "delta_y": 0.0, "delta_z": -1.0}
        self.events: dict = {}
        self.is_connected = False

    def connect(self) -> None:
        self.is_connected = True

    def get_action(self) -> dict:
        if isinstance(self.reading, Exception):
            raise self.reading
        return dict(self.reading)

    def get_teleop_events(self) -> dict:
        return dict(self.events)

    def disconnect(self) -> None:
        self.is_connected = False


class FakeKeys:
    def __init__(self) -> None:
        self.pressed: list = []

    def start(self) -> None:
        pass

    def take(self) -> list:
        pressed, self.pressed = self.pressed, []
        return pressed

    def help(self, action) -> str:
        return "press Enter" if action == Signal.SCENE_READY else "press space"

    def close(self) -> None:
        pass


def operator_with(device: FakeDevice, keys) -> TeleopOperator:
    teleop = LerobotTeleop(device, "fake_ee")
    mapping = resolve_mapping(
        "fake_ee",
        teleop.action_names,
        RobotAction("xyz", 3, ("delta_x", "delta_y", "delta_z")),
        None,
        {},
    )
    return TeleopOperator(teleop, mapping, "ana@arm", keys)


def test_the_toggle_key_takes_over_and_hands_back_and_a_failing_device_hands_back() -> None:
    device, keys = FakeDevice(), FakeKeys()
    operator = operator_with(device, keys)
    operator.start()
    policy = np.zeros(3, np.float32)
    assert operator.decide({}, policy, 0) == (policy, False)
    keys.pressed = [TOGGLE, Signal.SUCCESS]
    action, intervention = operator.decide({}, policy, 1)
    np.testing.assert_array_equal(action, [1.0, 0.0, -1.0])
    assert intervention and operator.take_signals() == [Signal.TAKE_OVER, Signal.SUCCESS]
    device.reading = {"delta_x": float("nan"), "delta_y": 0.0, "delta_z": 0.0}  # hostile: never applied
    assert operator.decide({}, policy, 2) == (policy, False)
    assert operator.take_signals() == [Signal.HAND_BACK] and not operator.driving
    device.reading = OSError("the cable came out")
    assert operator.decide({}, None, 3) == (None, False)  # no policy and no device: the robot holds
    device.reading = {"delta_x": 0.0, "delta_y": 0.0, "delta_z": 0.0}
    assert operator.decide({}, None, 4)[1] is True  # no policy: the person drives without taking over
    operator.reset()
    assert not operator.driving and operator.signal_help(Signal.SCENE_READY) == "press Enter"
    operator.close()
    assert not device.is_connected


def test_a_devices_own_hil_serl_events_become_signals() -> None:
    from lerobot.teleoperators.utils import TeleopEvents as Events

    device = FakeDevice()
    events = TeleopEvents(LerobotTeleop(device, "gamepad"))
    device.events = {Events.IS_INTERVENTION: True}
    assert events.take() == [Signal.TAKE_OVER]
    assert events.take() == []  # held: no news
    device.events = {Events.IS_INTERVENTION: False, Events.SUCCESS: True, Events.TERMINATE_EPISODE: True}
    assert events.take() == [Signal.HAND_BACK, Signal.SUCCESS]
    device.events = {Events.TERMINATE_EPISODE: True, Events.RERECORD_EPISODE: True}
    assert events.take() == [Signal.RERECORD]
    device.events = {Events.TERMINATE_EPISODE: True}
    assert events.take() == [Signal.FAILURE]
    assert events.help(Signal.SCENE_READY) == ""  # a gamepad has no scene-ready button: a timeout must do


def test_keys_as_lerobots_listener_names_them_become_signals() -> None:
    keys = KeySignals()
    for name in ("space", "s", "S", "q", "r", "enter", "up", "x"):  # what create_key_listener dispatches
        keys._on_key(name)
    assert keys.take() == [TOGGLE, Signal.SUCCESS, Signal.SUCCESS, Signal.FAILURE, Signal.RERECORD, Signal.SCENE_READY]
    assert keys.take() == [] and keys.help(Signal.SCENE_READY) == "press Enter"


def test_the_shipped_teleop_configs_fit_their_robots() -> None:
    from pathlib import Path

    from hal.config import read_yaml

    launch = Path(__file__).resolve().parents[2] / "launch" / "teleop"
    leader = build_teleop_operator(read_yaml(launch / "so101_leader.yaml"), SO101, "arm-1")
    assert (leader.who, leader.teleop.port) == ("alice", "/dev/ttyACM0")
    gamepad = build_teleop_operator(read_yaml(launch / "gamepad_panda.yaml"), PANDA, "arm-1")
    assert isinstance(gamepad.signals, TeleopEvents) and gamepad.who == "gamepad@arm-1"
