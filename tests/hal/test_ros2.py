"""The ROS 2 driver: config validation, and end to end against the sim robot node in its own process."""

import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge.operator import PickCubeExpert
from hal.config import ConfigError
from hal.ros2 import Ros2Robot, Ros2RobotConfig
from hal.ros2_sim_node import JOINT_NAMES, PANDA_HOME, PANDA_SPEED, trajectory_goal

ROOT = Path(__file__).resolve().parents[2]
PANDA_YAML = ROOT / "launch" / "ros2" / "panda_sim.yaml"
IMAGE_OBSERVATION = {
    "name": "camera",
    "topic": "/panda/image",
    "type": "sensor_msgs/Image",
    "shape": [480, 640, 3],
    "qos": {"reliability": "reliable", "depth": 2},
}


def panda_raw() -> dict:
    return yaml.safe_load(PANDA_YAML.read_text())


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        (lambda r: r["observations"][1].update(type="foo"), "observations[1].type", "unknown value 'foo'"),
        (lambda r: r["observations"][0].update(shape=[480, 640]), "observations[0].shape", "1-d shape"),
        (
            lambda r: r["observations"].append(dict(IMAGE_OBSERVATION, shape=[480, 640])),
            "observations[2].shape",
            "[H, W, 3]",
        ),
        (lambda r: r["observations"][1].update(field="torque"), "observations[1].field", "unknown value 'torque'"),
        (
            lambda r: r["observations"][0]["qos"].update(reliability="sometimes"),
            "observations[0].qos.reliability",
            "sometimes",
        ),
        (lambda r: r["observations"][1].update(name="state"), "observations[1].name", "duplicate"),
        (lambda r: r["observations"][0].update(topic="panda/state"), "observations[0].topic", "absolute topic"),
        (lambda r: r["action"].update(low=[-1.0, -1.0]), "action.low", "list of 4 numbers"),
        (lambda r: r["action"].update(hold="brake"), "action.hold", "unknown value 'brake'"),
        (lambda r: r["action"].update(type="trajectory_msgs/JointTrajectory"), "action.joint_names", "required"),
        (
            lambda r: r["action"].update(
                type="trajectory_msgs/JointTrajectory", joint_names=list("abcd"), hold="zeros"
            ),
            "action.hold",
            "not a safe hold",
        ),
        (lambda r: r.pop("control_hz"), "control_hz", "required"),
        (lambda r: r.update(control_hz=0), "control_hz", "greater than 0"),
        (lambda r: r["sync"].update(slop=0.1), "sync.slop", "unknown key"),
        (lambda r: r["episode"].update(max_steps=-1), "episode.max_steps", "greater than or equal to 0"),
    ],
)
def test_config_errors_name_the_key(edit, key: str, fragment: str) -> None:
    raw = copy.deepcopy(panda_raw())
    edit(raw)
    with pytest.raises(ConfigError) as info:
        Ros2RobotConfig.from_dict(raw)
    assert str(info.value).startswith(f"{key}:") and fragment in str(info.value)


def test_panda_yaml_gives_the_capabilities() -> None:
    config = Ros2RobotConfig.from_yaml(PANDA_YAML)
    caps = config.capabilities
    assert [s.name for s in caps.observation] == ["state", "joints"]
    assert caps.observation[0].shape == (21,) and caps.action.shape == (4,)
    assert caps.action.low == (-1.0, -1.0, -1.0, 0.0) and caps.control_hz == 10.0
    assert config.action.hold == (0.0, 0.0, 0.0, 1.0) and config.episode.max_steps == 100
    with_camera = panda_raw()
    with_camera["observations"].append(IMAGE_OBSERVATION)
    assert Ros2RobotConfig.from_dict(with_camera).capabilities.cameras == ("camera",)


def assert_matches(observation: dict[str, np.ndarray], robot: Ros2Robot) -> None:
    specs = robot.capabilities.observation
    assert set(observation) == {s.name for s in specs}
    for spec in specs:
        assert observation[spec.name].shape == spec.shape and observation[spec.name].dtype == spec.numpy_dtype


@pytest.mark.timeout(60)
def test_scripted_expert_picks_the_cube_through_ros2(ros2_sim_node, ros_domain: int) -> None:
    ros2_sim_node(ros_domain)
    robot = Ros2Robot(Ros2RobotConfig.from_yaml(PANDA_YAML), domain_id=ros_domain)
    try:
        started = time.monotonic()
        observation = robot.reset()
        assert_matches(observation, robot)
        first_state, expert = observation["state"].copy(), PickCubeExpert()
        np.testing.assert_allclose(observation["joints"], first_state[:7], atol=1e-6)
        transitions = []
        for _ in range(30):
            transition = robot.apply(expert.act(observation))
            assert_matches(transition.observation, robot)
            transitions.append(transition)
            observation = transition.observation
            if transition.done:
                break
        assert not np.array_equal(observation["state"], first_state)
        assert observation["state"][20] > first_state[20] + 0.05  # the cube went up
        assert transitions[-1].success and transitions[-1].done and transitions[-1].reward == 1.0
        assert not any(t.done for t in transitions[:-1])
        robot.hold()
        assert robot.holding
        # A second episode starts from a fresh reset.
        assert_matches(robot.reset(), robot)
        assert not robot.apply(expert.act(observation)).done
        assert time.monotonic() - started < 30
    finally:
        robot.close()


@pytest.mark.timeout(60)
def test_image_frames_arrive_in_the_driver(ros2_sim_node, ros_domain: int) -> None:
    ros2_sim_node(ros_domain, "--image")
    raw = panda_raw()
    raw["observations"].append(IMAGE_OBSERVATION)
    robot = Ros2Robot(Ros2RobotConfig.from_dict(raw), domain_id=ros_domain)
    try:
        observation = robot.reset()
        assert_matches(observation, robot)
        assert observation["camera"].shape == (480, 640, 3) and observation["camera"].dtype == np.uint8
        frames = [observation["camera"]]
        for _ in range(5):
            transition = robot.apply(np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32))
            assert_matches(transition.observation, robot)
            frames.append(transition.observation["camera"])
        assert not np.array_equal(frames[0], frames[-1])  # fresh frames, not one cached image
        time.sleep(0.5)
        assert robot.received("camera") >= 10
        latencies = robot.latencies_s("camera")
        assert latencies and 0 <= float(np.median(latencies)) < 0.5
    finally:
        robot.close()


@pytest.mark.timeout(90)
def test_a_second_driver_resets_a_node_that_already_served_one(ros2_sim_node, ros_domain: int) -> None:
    """A robot node outlives the edges that drive it: the next edge's reset must find its observations."""
    ros2_sim_node(ros_domain)
    expert = PickCubeExpert()
    for _ in range(2):
        robot = Ros2Robot(Ros2RobotConfig.from_yaml(PANDA_YAML), domain_id=ros_domain)
        try:
            for _ in range(2):  # as `fleetloop edge --episodes 2`: episodes of a few steps, each from a reset
                observation = robot.reset()
                assert_matches(observation, robot)
                for _ in range(3):
                    observation = robot.apply(expert.act(observation)).observation
                    assert_matches(observation, robot)
        finally:
            robot.close()


ARM_YAML = ROOT / "launch" / "ros2" / "panda_joint_trajectory.yaml"


def trajectory(names: list[str], *points: list[float], seconds: float = 0.1):
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory(joint_names=names)
    due = Duration(sec=int(seconds), nanosec=int(round(seconds % 1 * 1e9)))
    msg.points = [JointTrajectoryPoint(positions=p, time_from_start=due) for p in points]
    return msg


def test_the_arm_node_reads_a_trajectory_by_joint_name_and_refuses_another_arms() -> None:
    names = list(JOINT_NAMES)
    goal, seconds = trajectory_goal(
        trajectory(names[::-1], [0.0] * 7, [float(i) for i in range(7)], seconds=0.25), JOINT_NAMES
    )
    np.testing.assert_array_equal(goal, np.arange(7)[::-1])  # the last point, put in the arm's joint order
    assert seconds == 0.25
    refusals = [
        (trajectory(names[:6], [0.0] * 6), "are not this arm's"),
        (trajectory([*names[:6], "elbow"], [0.0] * 7), "are not this arm's"),
        (trajectory(names), "no points"),
        (trajectory(names, [0.0] * 6), "expected 7 finite positions"),
        (trajectory(names, [0.0] * 6 + [float("nan")]), "expected 7 finite positions"),
    ]
    for msg, why in refusals:
        with pytest.raises(ValueError, match=why):
            trajectory_goal(msg, JOINT_NAMES)


@pytest.mark.timeout(60)
def test_joint_trajectory_output_moves_the_arm_node(ros2_sim_node, ros_domain: int, tmp_path: Path) -> None:
    record = tmp_path / "commands.jsonl"
    ros2_sim_node(ros_domain, "--command", "joint_trajectory", "--namespace", "/arm", "--record", str(record))
    config = Ros2RobotConfig.from_yaml(ARM_YAML)
    assert config.action.hold == "last_position" and config.capabilities.action.shape == (7,)
    robot = Ros2Robot(config, domain_id=ros_domain)
    try:
        home = robot.reset()["joints"]
        np.testing.assert_allclose(home, PANDA_HOME, atol=1e-6)
        goal = np.array([0.5, 0.3, 0.0, -2.0, 0.0, 1.0, 0.0], dtype=np.float32)
        reached = [robot.apply(goal).observation["joints"] for _ in range(6)]
        # At most each joint's top speed for one control period (0.1 s), then there.
        assert np.all(np.abs(reached[0] - home) <= np.float32(PANDA_SPEED) * 0.1 + 1e-5)
        assert np.abs(reached[0] - home).max() > 0.2
        np.testing.assert_allclose(reached[-1], goal, atol=1e-6)
        robot.hold()
    finally:
        robot.close()
    commands = [json.loads(line) for line in record.read_text().splitlines()]
    # The reset (sent again if the node's first answer was lost while the two were still matching) came first.
    resets = [i for i, c in enumerate(commands) if c == {"reset": True}]
    assert resets and resets == list(range(len(resets)))
    sent = commands[len(resets) :]
    # 6 goals, the hold and close's hold: the last goal again, so the arm stops where it was sent.
    assert [c["positions"] for c in sent] == [goal.astype(float).tolist()] * 8
    assert all(c["joint_names"] == list(JOINT_NAMES) and c["s"] == 0.1 for c in sent)


@pytest.mark.timeout(60)
def test_word_on_the_scene_ready_topic_reaches_the_driver_once(ros_domain: int, fastdds_profile: None) -> None:
    import rclpy
    from std_msgs.msg import Bool

    raw = panda_raw()
    raw["episode"]["scene_ready_topic"] = "/panda/scene_ready"
    robot = Ros2Robot(Ros2RobotConfig.from_dict(raw), domain_id=ros_domain)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    node = rclpy.create_node("person_at_the_cell", context=context)
    try:
        publisher = node.create_publisher(Bool, "/panda/scene_ready", 10)
        assert robot.scene_ready_source == "/panda/scene_ready" and not robot.scene_ready()
        deadline = time.monotonic() + 30
        while publisher.get_subscription_count() == 0:  # a message sent before discovery is lost
            assert time.monotonic() < deadline, "the driver never subscribed to /panda/scene_ready"
            time.sleep(0.05)
        publisher.publish(Bool(data=False))  # false says nothing
        publisher.publish(Bool(data=True))
        while not robot.scene_ready():
            assert time.monotonic() < deadline, "the word on /panda/scene_ready never reached the driver"
            time.sleep(0.01)
        assert not robot.scene_ready(), "one word counted twice"
    finally:
        node.destroy_node()
        context.try_shutdown()
        robot.close()
