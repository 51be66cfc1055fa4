"""``driver_capabilities``: what a robot observes and takes, known without starting its simulator or its device."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal.drivers import build_driver, driver_capabilities

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


@pytest.mark.parametrize("name", ["sim:panda_pick_cube", "sim:pusht", f"lerobot:{LAUNCH}/lerobot/fake_arm.yaml"])
def test_the_capabilities_are_those_of_the_built_driver(name: str) -> None:
    built = build_driver(name, seed=0)
    try:
        assert driver_capabilities(name) == built.driver.capabilities
    finally:
        built.driver.close()


def test_a_real_arm_s_come_from_its_config_without_opening_its_port() -> None:
    name = f"lerobot:{LAUNCH}/lerobot/so101_follower.yaml"
    capabilities = driver_capabilities(name)  # no arm on this machine: building the driver would fail at connect
    assert capabilities.action.shape == (6,) and capabilities.embodiment.startswith("so101")
    with pytest.raises(ValueError):
        build_driver(name)


def test_a_ros2_robot_s_come_from_its_yaml_and_bad_names_are_refused() -> None:
    capabilities = driver_capabilities(f"ros2:{LAUNCH}/ros2/panda_sim.yaml")
    assert capabilities.action.shape == (4,) and {s.name for s in capabilities.observation} == {"state", "joints"}
    known = "panda_pick_cube, panda_pick_cube_camera, point_reach, pusht"
    with pytest.raises(ValueError, match=f"unknown sim task 'nope'; available: {known}"):
        driver_capabilities("sim:nope")
    with pytest.raises(ValueError, match="unknown driver 'usb'"):
        driver_capabilities("usb:/dev/ttyACM0")
