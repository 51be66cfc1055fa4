"""A ROS 2 robot node in its own process, driven through topics by a fleetloop edge configured by YAML."""

from __future__ import annotations

import pytest

from cloud.data.store import EpisodeStore
from tests.e2e.fleet import ENV, Fleet, wait_until

PANDA_YAML = "launch/ros2/panda_sim.yaml"


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
    store.refresh()
    assert store.committed_rows("panda_ros2") == fleet.stats("ros-arm-1")["ticks"]
