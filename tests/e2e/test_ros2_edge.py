"""A ROS 2 robot node in its own process, driven through topics by a fleetloop edge configured by YAML."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud.data.store import EpisodeStore
from hal.ros2_config import Ros2RobotConfig
from tests.e2e.fleet import ENV, Fleet, publish_untrained, wait_until
from tests.e2e.store_checks import wait_compacted

PANDA_YAML = "launch/ros2/panda_sim.yaml"
ARM_YAML = "launch/ros2/panda_joint_trajectory.yaml"


@pytest.fixture
def ros_node(ros2_sim_node, ros_domain: int, tmp_path) -> int:
    """A sim robot node on this test's ROS_DOMAIN_ID; the test asks for it before ``fleet``, so the edge stops
    before the node does."""
    env = {**ENV, "ROS_DOMAIN_ID": str(ros_domain)}
    ros2_sim_node(ros_domain, seed=3, env=env, log=tmp_path / "ros-node.log")
    return ros_domain


def test_edge_drives_a_ros2_robot_node_configured_by_yaml(ros_node: int, fleet: Fleet) -> None:
    fleet.start_cloud()
    fleet.start_edge("ros-arm-1", robot=f"ros2:{PANDA_YAML}", hz=10, env={"ROS_DOMAIN_ID": str(ros_node)})
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)

    def finished_episodes() -> list:
        store.refresh()
        if "panda_ros2" not in store.datasets():
            return []
        return [e for e in store.episodes("panda_ros2") if e.done]

    wait_until(lambda: len(finished_episodes()) >= 2, 120, "two finished episodes through ROS 2")
    assert fleet.stop("ros-arm-1") == 0
    episodes = finished_episodes()
    assert {e.resource_id for e in episodes} == {"ros-arm-1"}
    assert {e.source for e in episodes} == {"robot"}
    assert any(e.success for e in episodes), "the scripted operator picks the cube through topics alone"
    wait_compacted(fleet.root / "data" / "store")  # acked steps reach the store once the uplink pauses
    store.refresh()
    assert store.committed_rows("panda_ros2") == fleet.stats("ros-arm-1")["ticks"]


def finished(store: EpisodeStore, dataset: str) -> list:
    store.refresh()
    return [e for e in store.episodes(dataset) if e.done] if dataset in store.datasets() else []


def test_edge_drives_a_joint_trajectory_arm_node(ros2_sim_node, ros_domain: int, fleet: Fleet, tmp_path: Path) -> None:
    """JointTrajectory output end to end: the edge's policy commands an arm node in its own process through
    trajectory_msgs/JointTrajectory; the node gets every stored action as a trajectory point for its joints."""
    record = tmp_path / "commands.jsonl"
    env = {**ENV, "ROS_DOMAIN_ID": str(ros_domain)}
    command = ("--command", "joint_trajectory", "--namespace", "/arm", "--record", str(record))
    ros2_sim_node(ros_domain, *command, env=env, log=tmp_path / "ros-node.log")
    config = Ros2RobotConfig.from_yaml(ARM_YAML)
    caps = config.capabilities
    fleet.start_cloud()
    # Random weights: the arm gets goals of its own from its first tick, spread over its joint ranges by the clamp.
    publish_untrained(fleet.root, caps.embodiment, caps.observation, caps.action)
    fleet.start_edge("joint-arm-1", "--operator", "none", robot=f"ros2:{ARM_YAML}", hz=10, env=env)
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    wait_until(lambda: len(finished(store, caps.embodiment)) >= 2, 120, "two finished episodes of the arm")
    assert fleet.stop("joint-arm-1") == 0

    store.refresh()
    rows = store.committed_rows(caps.embodiment)
    assert rows == fleet.stats("joint-arm-1")["ticks"] and rows >= 2 * config.episode.max_steps
    data = store.read(caps.embodiment, columns=["action", "obs.joints", "policy_version"])
    assert (data["policy_version"] == 1).all()
    commands = [json.loads(line) for line in record.read_text().splitlines()]
    assert not [c for c in commands if "refused" in c], "the node refused none of the driver's trajectories"
    trajectories = [c for c in commands if "positions" in c]
    assert {tuple(c["joint_names"]) for c in trajectories} == {config.action.joint_names}
    assert {c["s"] for c in trajectories} == {0.1}, "each point is due within one control period (10 Hz)"
    # Every stored action reached the node as one trajectory point, in order (holds between episodes add more).
    sent = np.array([c["positions"] for c in trajectories], dtype=np.float32)
    matched = 0
    for position in sent:
        if matched < rows and np.array_equal(position, data["action"][matched]):
            matched += 1
    assert matched == rows, f"only {matched} of {rows} stored actions reached the node in order"
    assert np.all(data["action"] >= np.float32(caps.action.low)) and np.all(
        data["action"] <= np.float32(caps.action.high)
    )
    # The joints the node reported followed the goals: they moved, inside the arm's limits.
    joints = data["obs.joints"]
    assert joints.std(axis=0).max() > 0.05
    assert np.all(joints >= np.float32(caps.action.low) - 1e-5) and np.all(
        joints <= np.float32(caps.action.high) + 1e-5
    )
