"""``fleetloop edge --operator``: a person's operator is checked at start and every refusal names its flag and field."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.x_display import x_display


def edge(tmp_path, *args: str, display: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    if display:
        env["DISPLAY"] = display
    argv = ["edge", "--robot", "sim:panda_pick_cube", "--id", "arm-1", "--spool", str(tmp_path / "s.db"), *args]
    return subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,  # no terminal to read keys from, as under a service manager
    )


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (
            "type: so101_leader\nport: /dev/ttyFLEETLOOP9\n",
            "--operator teleop:{path}: action_map: teleop action 'shoulder_pan.pos' has no place in the robot's "
            "action (panda_pick_cube takes 4: x, y, z, gripper)",
        ),
        ("type: keyboard_ee\naction_map: {delta_x: {to: yaw}}\n", "--operator teleop:{path}: action_map.delta_x.to:"),
        ("- not a mapping\n", "--operator teleop:{path}: <root>: should be a mapping"),
        (
            "type: gamepad\nsignals: teleop\naction_map: {delta_x: {to: x}, delta_y: {to: y}, delta_z: {to: z}, "
            "gripper: {to: gripper}}\n",
            "--scene-ready-timeout: after each episode the robot waits for the scene to be reset, and gamepad@arm-1 "
            "has no way to say it is",
        ),
    ],
)
def test_a_teleop_config_that_cannot_work_is_refused_at_start(tmp_path, config: str, says: str) -> None:
    path = tmp_path / "teleop.yaml"
    path.write_text(config)
    result = edge(tmp_path, "--operator", f"teleop:{path}", "--no-takeover")  # no page to say "scene ready" either
    assert result.returncode == 2, result.stderr[-2000:]
    assert says.format(path=path) in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_leader_arm_that_is_not_on_its_port_is_refused_naming_the_port(tmp_path) -> None:
    path = tmp_path / "leader.yaml"
    path.write_text(
        "type: so101_leader\nport: /dev/ttyFLEETLOOP9\naction_map: {shoulder_pan.pos: {to: x}, "
        "shoulder_lift.pos: {to: y}, elbow_flex.pos: {to: z}, gripper.pos: {to: gripper}}\n"
    )
    with x_display() as display:  # its signals are keys: they come from this display
        result = edge(tmp_path, "--operator", f"teleop:{path}", display=display)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "cannot connect the so101_leader teleoperator on port /dev/ttyFLEETLOOP9" in result.stderr


def test_the_keyboard_needs_a_display_and_a_printable_name(tmp_path) -> None:
    result = edge(tmp_path, "--operator", "keyboard")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "keys cannot be read here: there is no X display (DISPLAY=None" in result.stderr, result.stderr[-2000:]
    assert "pynput" not in result.stderr, result.stderr[-2000:]  # lerobot's lines saying the same, less plainly
    result = edge(tmp_path, "--operator", "keyboard", "--operator-name", "ana\tb")
    assert result.returncode == 2 and "--operator-name: must be printable" in result.stderr, result.stderr[-1000:]
    result = edge(tmp_path, "--operator", "telop:x.yaml")
    assert result.returncode == 2 and "expected scripted, none, keyboard or teleop:<config.yaml>" in result.stderr
