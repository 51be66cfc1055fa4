"""Every config decoder names the key that is wrong: the tasks file, ROS 2 robot YAML, lerobot robot YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.gateway.tasks import load_tasks
from fleetloop.commands.edge import robot_driver
from hal.config import ConfigError
from hal.lerobot_robot import make_lerobot_robot
from hal.ros2_config import Ros2RobotConfig

GOOD_TASK = {"name": "pick", "policy": "panda_pick_cube", "count": 1, "requires": {"embodiment": "panda_pick_cube"}}


def tasks_file(tmp_path, entries: Any) -> str:
    path = tmp_path / "tasks.yaml"
    path.write_text(entries if isinstance(entries, str) else yaml.safe_dump(entries))
    return str(path)


def test_a_good_tasks_file_loads(tmp_path) -> None:
    (task,) = load_tasks(tasks_file(tmp_path, [GOOD_TASK]))
    assert task.name == "pick" and task.policy_name == "panda_pick_cube" and task.requires.embodiment


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"policy": "my policy"}, "tasks[0].policy"),
        ({"policy": None}, "tasks[0].policy"),
        ({"count": "two"}, "tasks[0].count"),
        ({"count": -1}, "tasks[0].count"),
        ({"name": "x" * 200}, "tasks[0].name"),
        ({"name": ""}, "tasks[0].name"),
        ({"instruction": ["a"]}, "tasks[0].instruction"),
        ({"requires": "panda"}, "tasks[0].requires"),
        ({"requires": {"embodyment": "panda"}}, "tasks[0].requires.embodyment"),
        ({"requires": {"min_control_hz": "fast"}}, "tasks[0].requires.min_control_hz"),
        ({"requires": {"min_control_hz": float("nan")}}, "tasks[0].requires.min_control_hz"),
        ({"requires": {"observations": "state"}}, "tasks[0].requires.observations"),
        ({"requires": {"cameras": [1]}}, "tasks[0].requires.cameras[0]"),
        ({"requires": {"kind": "drone"}}, "tasks[0].requires.kind"),
        ({"colour": "red"}, "tasks[0].colour"),
    ],
)
def test_tasks_file_errors_name_the_key(tmp_path, change: dict, key: str) -> None:
    with pytest.raises(ValueError) as err:
        load_tasks(tasks_file(tmp_path, [{**GOOD_TASK, **change}]))
    assert str(err.value).startswith(f"{key}:"), err.value


def test_tasks_file_duplicates_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"^tasks\[1\].name: duplicate"):
        load_tasks(tasks_file(tmp_path, [GOOD_TASK, GOOD_TASK]))
    with pytest.raises(ValueError, match="not valid YAML"):
        load_tasks(tasks_file(tmp_path, "- name: [unclosed\n"))


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
FUZZ = settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


@FUZZ
@given(entries=st.lists(st.dictionaries(st.sampled_from([*GOOD_TASK, "instruction", "x"]), yaml_values), max_size=3))
def test_fuzzed_tasks_files_load_or_name_a_key(tmp_path_factory, entries) -> None:
    path = tasks_file(tmp_path_factory.mktemp("tasks"), entries)
    try:
        load_tasks(path)
    except ValueError as err:
        assert str(err).startswith("tasks["), err


ROS2 = yaml.safe_load((Path(__file__).parents[2] / "launch" / "ros2" / "panda_sim.yaml").read_text())


def mutate(config: Any, path: list, value: Any) -> Any:
    """A copy of ``config`` with the value at ``path`` (keys and indices, as far as they lead) replaced."""
    if not path or not isinstance(config, dict | list) or not config:
        return value
    config = dict(config) if isinstance(config, dict) else list(config)
    keys = sorted(config, key=str) if isinstance(config, dict) else range(len(config))
    key = list(keys)[path[0] % len(keys)]
    config[key] = mutate(config[key], path[1:], value)
    return config


@FUZZ
@given(path=st.lists(st.integers(0, 20), min_size=1, max_size=4), value=yaml_values)
def test_fuzzed_ros2_configs_load_or_name_a_key(path: list, value: Any) -> None:
    try:
        Ros2RobotConfig.from_dict(mutate(ROS2, path, value))
    except ConfigError as err:
        key = str(err).split(":")[0]
        assert key and " " not in key.strip("<>"), err


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "type"),
        ({"type": 3}, "type"),
        ({"type": "fleetloop_fake_arm", "control_hz": "fast"}, "control_hz"),
        ({"type": "fleetloop_fake_arm", "control_hz": 0}, "control_hz"),
        ({"type": "fleetloop_fake_arm", "episode_steps": 1.5}, "episode_steps"),
        ({"type": "fleetloop_fake_arm", "action_low": "low"}, "action_low"),
        ({"type": "fleetloop_fake_arm", "action_high": [1, "x"]}, "action_high[1]"),
        ({"type": "fleetloop_fake_arm", "hold": "brake"}, "hold"),
        ({"type": "fleetloop_fake_arm", "module": 7}, "module"),
        ({"type": "no_such_robot"}, "type"),
    ],
)
def test_lerobot_config_errors_name_the_key(config: dict, key: str) -> None:
    with pytest.raises(ValueError) as err:
        make_lerobot_robot(config)
    assert str(err.value).startswith(f"{key}:"), err.value


def test_lerobot_yaml_that_is_not_yaml_is_refused(tmp_path) -> None:
    path = tmp_path / "arm.yaml"
    path.write_text("type: [unclosed\n")
    with pytest.raises(ValueError, match="--robot: .* not valid YAML"):
        robot_driver(f"lerobot:{path}", seed=None, control_hz=None)
