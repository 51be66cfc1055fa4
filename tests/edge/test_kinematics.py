"""End-effector teleoperators driving a joint-space arm through lerobot's kinematics processors and placo.

The arm is a URDF written by the test (tests/edge/arm_urdf.py) whose joints are named as the fake lerobot arm's;
placo solves real IK on it, and lerobot's ``RobotKinematics.forward_kinematics`` checks where the tip went.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lerobot.model.kinematics import RobotKinematics
from lerobot.teleoperators import Teleoperator, TeleoperatorConfig
from lerobot.teleoperators.utils import TeleopEvents as Events

from edge.action_map import RobotAction
from edge.kinematics import KinematicsConfig, resolve_kinematics
from edge.teleop_operator import TeleopEvents, TeleopOperator, build_teleop_operator
from hal.config import ConfigError, validate
from hal.lerobot_fake import JOINTS
from hal.lerobot_robot import make_lerobot_robot
from hal.lerobot_teleop import LerobotTeleop
from hal.urdf import MAX_URDF_BYTES
from tests.edge.arm_urdf import ARM, FRAME, arm_urdf, write_arm_urdf

POSITIONS = tuple(f"{joint}.pos" for joint in JOINTS)
FAKE_ARM = RobotAction("fleetloop_fake_arm", 6, POSITIONS, POSITIONS)
GAMEPAD = {"type": "gamepad", "use_gripper": True}
BOUNDS = {"min": [-0.3, -0.3, -0.2], "max": [0.25, 0.3, 0.3]}
START = np.array([0.0, -40.0, 80.0, 30.0, 0.0, 50.0], np.float32)  # a bent arm, its tip at x 0.20 m
ELBOW_LOWER = 0.9  # radians: a limit the free solution (the elbow near 44 degrees at x 0.25) would pass


@pytest.fixture
def urdf(tmp_path: Path) -> Path:
    return write_arm_urdf(tmp_path)


def kinematics_of(urdf: Path, /, **extra: Any) -> dict[str, Any]:
    return {"urdf": str(urdf), "frame": FRAME, "joints": list(ARM), "bounds": BOUNDS, "gripper": {}, **extra}


def solver(urdf: Path) -> RobotKinematics:
    return RobotKinematics(str(urdf), FRAME, list(ARM))


def tip(kinematics: RobotKinematics, joints: np.ndarray) -> np.ndarray:
    return kinematics.forward_kinematics(np.asarray(joints, dtype=float))[:3, 3]


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"urdf": "/fleetloop/not/there.urdf"}, "kinematics.urdf: no such file: /fleetloop/not/there.urdf"),
        ({"urdf": None}, "kinematics.urdf: should be a valid string, got None"),
        ({"frame": "hand"}, "kinematics.frame: the URDF has no link 'hand'; it has base, shoulder_pan_link"),
        ({"joints": ["shoulder_pan", "shoulder_lift", "elbow"]}, "kinematics.joints[2]: the URDF has no moving joint"),
        (
            {"joints": [f"{FRAME}_joint"]},
            "kinematics.joints[0]: the URDF has no moving joint 'gripper_frame_link_joint' (a fixed",
        ),
        ({"joints": ["shoulder_pan", "shoulder_pan"]}, "kinematics.joints[1]: 'shoulder_pan' is named twice"),
        (
            {"joints": ["shoulder_pan", "gripper"]},
            "kinematics.joints[1]: 'gripper' is the gripper: say it under gripper",
        ),
        ({"joints": []}, "kinematics.joints: tuple should have at least 1 item"),
        ({"bounds": {"min": [0, 0, 0], "max": [1, 0, 1]}}, "kinematics.bounds.max[1]: 0.0 is not above min[1] (0.0)"),
        ({"bounds": {"min": [0, 0], "max": [1, 1, 1]}}, "kinematics.bounds.min: tuple should have at least 3 items"),
        ({"step_sizes": {"x": 0.1}}, "kinematics.step_sizes.x: 0.1 m a tick is more than max_step_m (0.05)"),
        ({"step_sizes": {"x": -0.01}}, "kinematics.step_sizes.x: should be greater than 0"),
        ({"gripper": {"min": 100, "max": 0}}, "kinematics.gripper.max: 0.0 is not above min (100.0)"),
        ({"gripper": {"closed": "shut"}}, "kinematics.gripper.closed: unknown value 'shut'; expected 'max' or 'min'"),
        ({"gripper": {"joint": "claw"}}, "kinematics.gripper.joint: the robot's action has no 'claw.pos'"),
        ({"speed": 2}, "kinematics.speed: unknown key; known: urdf, frame, joints"),
        ({"gripper": None}, "kinematics.joints: the robot's action 'gripper.pos' gets nothing (the gamepad"),
    ],
)
def test_a_kinematics_section_that_does_not_fit_is_refused_naming_its_field(urdf: Path, extra, error) -> None:
    with pytest.raises(ConfigError) as caught:
        build_teleop_operator({**GAMEPAD, "kinematics": kinematics_of(urdf, **extra)}, FAKE_ARM, "arm-1")
    assert str(caught.value).startswith(error), str(caught.value)


def test_the_robot_and_the_teleoperator_must_fit_kinematics(urdf: Path) -> None:
    no_elbow = RobotAction("arm", 6, tuple(n for n in POSITIONS if n != "elbow_flex.pos") + ("elbow.pos",), POSITIONS)
    no_state = RobotAction("arm", 6, POSITIONS, tuple(n for n in POSITIONS if n != "wrist_flex.pos"))
    cases = [
        (GAMEPAD, {}, no_elbow, "kinematics.joints[2]: the robot's action has no 'elbow_flex.pos' (arm takes 6: "),
        (GAMEPAD, {}, no_state, "kinematics.joints[3]: the robot's state has no 'wrist_flex.pos', so where it is"),
        (GAMEPAD, {}, RobotAction("arm", 6, POSITIONS), "kinematics: the robot (arm takes 6: shoulder_pan.pos"),
        ({**GAMEPAD, "use_gripper": False}, {}, FAKE_ARM, "kinematics.gripper: the gamepad teleoperator gives "),
        ({**GAMEPAD, "action_map": {"delta_x": {"to": 0}}}, {}, FAKE_ARM, "action_map: not with kinematics"),
        (
            {**GAMEPAD, "rest": {"elbow_flex.pos": 3}},
            {},
            FAKE_ARM,
            "rest.elbow_flex.pos: robot action 'elbow_flex.pos'",
        ),
        (
            {"type": "so101_leader", "port": "/dev/null"},
            {},
            FAKE_ARM,
            "kinematics: the so101_leader teleoperator gives",
        ),
    ]
    for teleop, extra, robot, error in cases:
        with pytest.raises(ConfigError) as caught:
            build_teleop_operator({**teleop, "kinematics": kinematics_of(urdf, **extra)}, robot, "arm-1")
        assert str(caught.value).startswith(error), str(caught.value)
    # a robot without a gripper: the joints drive, rest gives the gripper a value of its own
    rest = {**GAMEPAD, "rest": {"gripper.pos": 30}, "kinematics": kinematics_of(urdf, gripper=None)}
    action = build_teleop_operator(rest, FAKE_ARM, "arm-1").mapping.action(
        {"delta_x": 0, "delta_y": 0, "delta_z": 0}, {"state": START}
    )
    assert action[5] == 30 and np.allclose(action[:5], START[:5], atol=0.5)


def urdf_error(path: Path, text: str = "") -> str:
    if text:
        path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        build_teleop_operator({**GAMEPAD, "kinematics": kinematics_of(path)}, FAKE_ARM, "arm-1")
    return str(caught.value)


def test_the_urdf_is_checked_before_placo_opens_it(tmp_path: Path) -> None:
    path = tmp_path / "arm.urdf"
    assert urdf_error(tmp_path) == f"kinematics.urdf: {tmp_path} is not a regular file"
    too_big = arm_urdf() + " " * MAX_URDF_BYTES
    assert urdf_error(path, too_big).startswith(f"kinematics.urdf: {path} is {len(too_big)} bytes; a URDF may be")
    assert urdf_error(path, "robot: {}").startswith(f"kinematics.urdf: {path} is not XML: syntax error")
    assert (
        urdf_error(path, "<html/>") == f"kinematics.urdf: {path} is not a URDF: its root element is <html>, not <robot>"
    )
    laughs = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><robot name="r"><link name="&a;"/></robot>'
    assert "declares a DOCTYPE or entities, which a URDF has no need of: refused" in urdf_error(path, laughs)
    (tmp_path / "outside.stl").write_text("solid t\nendsolid t\n")
    nested = tmp_path / "arm"
    nested.mkdir()
    for mesh, said in [
        ("/etc/passwd", "kinematics.urdf: the URDF's mesh '/etc/passwd': name meshes by a path relative to"),
        ("package://arm/meshes/base.stl", "kinematics.urdf: the URDF's mesh 'package://arm/meshes/base.stl': name"),
        ("../outside.stl", "kinematics.urdf: the URDF's mesh '../outside.stl' is outside the URDF's folder"),
        ("meshes/base.stl", f"kinematics.urdf: no such file: {nested}/meshes/base.stl"),
    ]:
        text = arm_urdf(link_extra=f'<collision><geometry><mesh filename="{mesh}"/></geometry></collision>')
        assert urdf_error(nested / "arm.urdf", text).startswith(said)
    (nested / "meshes").mkdir()
    (nested / "meshes" / "base.stl").write_text("not a mesh at all")  # passes our checks: placo's refusal is named
    text = arm_urdf(link_extra='<collision><geometry><mesh filename="meshes/base.stl"/></geometry></collision>')
    assert urdf_error(nested / "arm.urdf", text).startswith("kinematics.urdf: placo cannot load it: ")


def drive(kinematics: Any, joints: np.ndarray, reading: dict[str, float], ticks: int) -> list[np.ndarray]:
    """``ticks`` readings through lerobot's processors onto an arm that reaches each target (the joints it is sent
    come back as its state); the joints after each tick."""
    seen = []
    for _ in range(ticks):
        joints = kinematics.action(reading, {"state": joints})
        seen.append(joints)
    return seen


def resolved(urdf: Path, **extra: Any) -> Any:
    config = validate(KinematicsConfig, kinematics_of(urdf, **extra))
    return resolve_kinematics(config, "gamepad", ("delta_x", "delta_y", "delta_z", "gripper"), FAKE_ARM, {})


def test_delta_x_moves_the_tip_in_plus_x_within_the_bounds_and_the_joint_limits(tmp_path: Path) -> None:
    limited = write_arm_urdf(tmp_path, limits={"elbow_flex": (ELBOW_LOWER, 1.7)})
    arm = solver(limited)
    start = tip(arm, START[:5])
    close_x = {"delta_x": 1.0, "delta_y": 0.0, "delta_z": 0.0, "gripper": 0.0}  # +x, and the close button held
    seen = drive(resolved(limited), START, close_x, 20)
    tips = np.array([tip(arm, joints[:5]) for joints in seen])
    assert np.all(np.diff(tips[:4, 0]) > 0.009), tips[:4]  # about 1 cm a tick (step_sizes.x) until the bound
    assert tips[-1, 0] == pytest.approx(BOUNDS["max"][0], abs=1e-3)  # then held at the workspace's edge
    assert np.abs(tips[:, 1:] - start[1:]).max() < 0.005  # y and z stay put
    elbow = np.array([joints[2] for joints in seen])
    assert elbow.min() >= np.rad2deg(ELBOW_LOWER) - 0.01 and elbow.min() < np.rad2deg(ELBOW_LOWER) + 0.5
    free = drive(resolved(write_arm_urdf(tmp_path)), START, close_x, 20)
    assert free[-1][2] < np.rad2deg(ELBOW_LOWER) - 3  # without the limit the elbow goes past it: the limit held it
    gripper = [joints[5] for joints in seen]  # closing: 5 a tick toward max (lerobot's SO-100 convention) up to 100
    assert gripper[:3] == [55, 60, 65] and gripper[-1] == 100
    opened = drive(resolved(limited, gripper={"closed": "min"}), START, close_x, 3)
    assert [joints[5] for joints in opened] == [45, 40, 35]


def test_joints_that_read_no_number_or_a_reading_without_deltas_give_no_action(urdf: Path) -> None:
    kinematics = resolved(urdf)
    broken = START.copy()
    broken[1] = np.nan
    with pytest.raises(ValueError, match=r"the robot's joints read .*'shoulder_lift.pos': nan.*: no pose to move from"):
        kinematics.action({"delta_x": 1.0, "delta_y": 0.0, "delta_z": 0.0}, {"state": broken})
    with pytest.raises(KeyError, match=r"the teleoperator's reading has no 'delta_y' \(it gave \['delta_x'\]\)"):
        kinematics.action({"delta_x": 1.0}, {"state": START})
    with pytest.raises(KeyError, match="the robot's observation has no state"):
        kinematics.action({"delta_x": 1.0, "delta_y": 0.0, "delta_z": 0.0}, {"front": START})
    huge = drive(kinematics, START, {"delta_x": 1e9, "delta_y": 0.0, "delta_z": 0.0, "gripper": -1e9}, 1)[0]
    assert np.allclose(
        huge, drive(resolved(urdf), START, {"delta_x": 1.0, "delta_y": 0, "delta_z": 0, "gripper": 0}, 1)[0]
    )


@TeleoperatorConfig.register_subclass("fleetloop_scripted_ee")
@dataclass
class ScriptedEEConfig(TeleoperatorConfig):
    pass


class ScriptedEE(Teleoperator):
    """A lerobot Teleoperator without hardware: a gamepad's action (deltas and a discrete gripper) and its HIL-SERL
    events, as the test scripts them."""

    config_class = ScriptedEEConfig
    name = "fleetloop_scripted_ee"

    def __init__(self, config: ScriptedEEConfig) -> None:
        super().__init__(config)
        self.reading = {"delta_x": 0.0, "delta_y": 0.0, "delta_z": 0.0, "gripper": 1.0}
        self.intervening = False
        self._connected = False

    @property
    def action_features(self) -> dict:
        names = {"delta_x": 0, "delta_y": 1, "delta_z": 2, "gripper": 3}
        return {"dtype": "float32", "shape": (4,), "names": names}

    @property
    def feedback_features(self) -> dict:
        return {}

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, calibrate: bool = True) -> None:
        self._connected = True

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_action(self) -> dict[str, float]:
        return dict(self.reading)

    def get_teleop_events(self) -> dict[Any, Any]:
        return {Events.IS_INTERVENTION: self.intervening}

    def send_feedback(self, feedback: dict[str, Any]) -> None:
        pass

    def disconnect(self) -> None:
        self._connected = False


def test_the_operator_drives_the_fake_lerobot_arm_in_plus_x_and_takes_over_from_where_the_policy_left_it(
    tmp_path: Path, urdf: Path
) -> None:
    driver = make_lerobot_robot(
        {"type": "fleetloop_fake_arm", "calibration_dir": str(tmp_path), "step_s": 0.1, "max_speed_deg_s": 200.0}
    )
    robot = RobotAction.of(driver)
    assert robot == FAKE_ARM  # the driver names its actions and its state: the joints kinematics reads
    device = ScriptedEE(ScriptedEEConfig(calibration_dir=tmp_path))
    teleop = LerobotTeleop(device, "fleetloop_scripted_ee")
    config = validate(KinematicsConfig, kinematics_of(urdf))
    mapping = resolve_kinematics(config, teleop.type, teleop.action_names, robot, {})
    operator = TeleopOperator(teleop, mapping, "ana@arm-1", TeleopEvents(teleop))
    arm = solver(urdf)
    operator.start()
    try:
        observation = driver.reset()
        for _ in range(5):
            observation = driver.apply(START).observation  # the policy brings the arm to a bent pose
        device.intervening, device.reading["delta_x"] = True, 1.0
        before = tip(arm, observation["state"][:5])
        for step in range(5):
            action, intervention = operator.decide(observation, START, step)
            assert intervention
            observation = driver.apply(action).observation
        after = tip(arm, observation["state"][:5])
        assert after[0] - before[0] > 0.03 and np.abs(after[1:] - before[1:]).max() < 0.005, (before, after)
        assert operator.take_signals() == ["take_over"]
        device.intervening, device.reading["delta_x"] = False, 0.0
        turned = START + np.array([30, 0, 0, 0, 0, 0], np.float32)  # the policy turns the arm about its pan
        for step in range(5, 8):
            action, intervention = operator.decide(observation, turned, step)
            assert not intervention and action is turned
            observation = driver.apply(action).observation
        device.intervening = True  # the person takes over and touches nothing: the arm stays where it is
        action, intervention = operator.decide(observation, turned, 8)
        assert intervention and operator.take_signals() == ["hand_back", "take_over"]
        np.testing.assert_allclose(action[:5], observation["state"][:5], atol=1.0)  # not back where they left it
    finally:
        operator.close()
        driver.close()


def test_the_shipped_gamepad_to_so101_config_waits_for_its_urdf_then_fits_the_follower(urdf: Path) -> None:
    from hal.config import read_yaml

    shipped = read_yaml(Path(__file__).resolve().parents[2] / "launch" / "teleop" / "gamepad_to_so101_ee.yaml")
    with pytest.raises(ConfigError, match=r"^kinematics.urdf: no such file: /path/to/SO101/so101_new_calib.urdf$"):
        build_teleop_operator(shipped, FAKE_ARM, "arm1")
    filled = {**shipped, "kinematics": {**shipped["kinematics"], "urdf": str(urdf)}}
    operator = build_teleop_operator(filled, FAKE_ARM, "arm1")  # the SO-101's joint names, as the fake arm's
    assert isinstance(operator.signals, TeleopEvents) and operator.teleop.type == "gamepad"
    raised = np.array([0.0, -50.0, 80.0, 20.0, 0.0, 50.0], np.float32)  # the tip at z 0.054, inside the bounds
    up = {"delta_x": 0.0, "delta_y": 0.0, "delta_z": 1.0, "gripper": 1.0}
    action = operator.mapping.action(up, {"state": raised})
    arm = solver(urdf)
    assert tip(arm, action[:5])[2] - tip(arm, raised[:5])[2] == pytest.approx(0.005, abs=0.001)  # step_sizes.z
    assert action[5] == 50  # gripper 1: stay
