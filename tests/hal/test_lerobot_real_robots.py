"""Real lerobot robot types (SO-100/101, Koch, ...) built by lerobot's own factory from a config, with no hardware
attached: every key checked against lerobot's config classes and named when wrong, capabilities from the robot's
features, and a refusal that names the port when nothing is plugged in. lerobot itself is not mocked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hal.config import ConfigError
from hal.lerobot_config import import_registered
from hal.lerobot_robot import RobotUnavailable, make_lerobot_robot

ROOT = Path(__file__).resolve().parents[2]
SO101_YAML = ROOT / "launch" / "lerobot" / "so101_follower.yaml"
ARM_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
CAMERA = {"type": "opencv", "index_or_path": 0, "width": 640, "height": 480, "fps": 30}


def so101(tmp_path: Path, **extra) -> dict:
    """An SO-101 config whose port is a path where no device is (and calibrations in the test's folder)."""
    return {
        "type": "so101_follower",
        "id": "arm1",
        "port": str(tmp_path / "ttyACM0"),
        "calibration_dir": str(tmp_path / "calibration"),
        **extra,
    }


def test_an_so101_is_built_by_lerobot_without_hardware(tmp_path: Path) -> None:
    from lerobot.robots.so_follower import SOFollower

    wrist = dict(CAMERA, width=320, height=240, index_or_path="/dev/video2")
    driver = make_lerobot_robot(so101(tmp_path, cameras={"front": CAMERA, "wrist": wrist}, control_hz=15))
    assert isinstance(driver.robot, SOFollower) and not driver.robot.is_connected
    positions = tuple(f"{joint}.pos" for joint in ARM_JOINTS)
    assert driver.state_names == positions and driver.action_names == positions
    caps = driver.capabilities
    assert [(s.name, s.dtype, s.shape) for s in caps.observation] == [
        ("state", "float32", (6,)),
        ("front", "uint8", (480, 640, 3)),
        ("wrist", "uint8", (240, 320, 3)),
    ]
    assert caps.cameras == ("front", "wrist") and caps.action.shape == (6,) and caps.control_hz == 15.0
    # The type the config names, not lerobot's class name (so_follower for SO-100 and SO-101 alike).
    assert caps.embodiment == "so101_follower"
    assert driver.hold_mode == "position"  # every action is a joint goal it also observes


@pytest.mark.parametrize(("robot_type", "cls"), [("so100_follower", "SOFollower"), ("koch_follower", "KochFollower")])
def test_other_arms_come_from_the_same_factory(tmp_path: Path, robot_type: str, cls: str) -> None:
    driver = make_lerobot_robot(so101(tmp_path, type=robot_type))
    assert type(driver.robot).__name__ == cls and driver.capabilities.embodiment == robot_type
    assert driver.action_names == tuple(f"{joint}.pos" for joint in ARM_JOINTS)


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        ({"type": "so102_follower"}, "type", "unknown lerobot robot type 'so102_follower'"),
        ({"portt": "/dev/ttyACM0"}, "portt", "unknown key; known: calibration_dir, cameras,"),
        ({"port": 5}, "port", "should be a valid string, got 5"),
        ({"use_degrees": "maybe"}, "use_degrees", "should be a valid boolean"),
        ({"max_relative_target": "far"}, "max_relative_target", "should be float or dict[str, float], got 'far'"),
        ({"max_relative_target": {"gripper": "x"}}, "max_relative_target", "should be float or dict[str, float]"),
        ({"cameras": [CAMERA]}, "cameras", "should be a mapping"),
        ({"cameras": {"front": {"index_or_path": 0}}}, "cameras.front.type", "required: one of ["),
        ({"cameras": {"front": dict(CAMERA, type="webcam")}}, "cameras.front.type", "unknown camera type 'webcam'"),
        ({"cameras": {"front": dict(CAMERA, colour="rgb")}}, "cameras.front.colour", "unknown key"),
        ({"cameras": {"front": dict(CAMERA, width="wide")}}, "cameras.front.width", "should be a valid integer"),
        ({"cameras": {"front": dict(CAMERA, color_mode="hsv")}}, "cameras.front.color_mode", "'rgb' or 'bgr'"),
        ({"cameras": {"front": dict(CAMERA, fourcc="MJPEG")}}, "cameras.front", "4-character string"),
        ({"cameras": {"front": {k: v for k, v in CAMERA.items() if k != "fps"}}}, "cameras.front.fps", "required"),
        ({"cameras": {"front camera": CAMERA}}, "cameras.front camera", "letters, digits"),
        ({"cameras": {"front": dict(CAMERA, width=8192)}}, "cameras.front", "unsupported shape [480, 8192, 3]"),
        ({"cameras": {"state": CAMERA}}, "state", "clashes"),
    ],
)
def test_a_bad_key_is_named(tmp_path: Path, edit: dict, key: str, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        make_lerobot_robot(so101(tmp_path, **edit))
    text = str(err.value)
    assert (text.startswith(f"{key}:") or key == "state") and fragment in text, text


def test_required_keys_are_named_inside_nested_configs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^port: required$"):
        make_lerobot_robot({"type": "koch_follower", "calibration_dir": str(tmp_path)})
    arm = {"port": str(tmp_path / "ttyACM0")}
    config = {"type": "bi_so_follower", "calibration_dir": str(tmp_path), "left_arm_config": arm}
    with pytest.raises(ConfigError, match=r"^right_arm_config: required$"):
        make_lerobot_robot(config)
    with pytest.raises(ConfigError, match=r"^right_arm_config\.port: should be a valid string"):
        make_lerobot_robot({**config, "right_arm_config": {"port": 1}})
    driver = make_lerobot_robot({**config, "right_arm_config": arm})
    assert driver.capabilities.action.shape == (12,)  # both arms, one vector


def test_every_lerobot_robot_type_is_checked_or_built(tmp_path: Path) -> None:
    """The walk over lerobot's config classes understands every field type lerobot 0.6.1 uses: each robot type
    either builds from its defaults or is refused with a ConfigError, never an exception from inside the walk."""
    from lerobot.robots import RobotConfig

    import_registered(RobotConfig)
    outcomes = {}
    for robot_type in sorted(RobotConfig.get_known_choices()):
        try:
            make_lerobot_robot({"type": robot_type, "calibration_dir": str(tmp_path)})
            outcomes[robot_type] = "built"
        except ConfigError as err:
            outcomes[robot_type] = err.path
    assert outcomes["so101_follower"] == "port" and outcomes["bi_so_follower"] == "left_arm_config"
    assert len(outcomes) >= 10, outcomes


def test_connecting_without_the_arm_names_the_port(tmp_path: Path) -> None:
    driver = make_lerobot_robot(so101(tmp_path))
    port = tmp_path / "ttyACM0"
    with pytest.raises(RobotUnavailable) as err:
        driver.connect()
    assert str(err.value) == f"cannot open {port} (no such device); is the arm plugged in and the port right?"
    assert not driver.robot.is_connected
    port.write_text("")  # something is there, but no serial port
    with pytest.raises(RobotUnavailable) as err:
        driver.reset()  # the first reset connects the same way
    assert str(err.value).startswith(f"cannot connect to the so101_follower robot: Could not connect on port '{port}'")


def test_the_edge_refuses_to_start_without_the_arm(tmp_path: Path) -> None:
    config_path = tmp_path / "so101.yaml"
    config_path.write_text(yaml.safe_dump(so101(tmp_path)))
    result = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", "edge", "--robot", f"lerobot:{config_path}", "--id", "arm1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    port = tmp_path / "ttyACM0"
    expected = f"--robot: lerobot:{config_path}: cannot open {port} (no such device); is the arm plugged in"
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_example_so101_config_builds_with_and_without_its_camera(tmp_path: Path) -> None:
    text = SO101_YAML.read_text()
    config = yaml.safe_load(text)
    assert config["type"] == "so101_follower" and config["port"] == "/dev/ttyACM0"
    driver = make_lerobot_robot({**config, "calibration_dir": str(tmp_path)})
    assert driver.capabilities.cameras == () and driver.capabilities.control_hz == 30.0
    with_camera = yaml.safe_load(text.replace("# cameras:", "cameras:").replace("#   front:", "  front:"))
    driver = make_lerobot_robot({**with_camera, "calibration_dir": str(tmp_path)})
    assert driver.capabilities.cameras == ("front",)
    assert driver.capabilities.observation[1].shape == (480, 640, 3)
