"""A ROS 2 robot backed by the simulator, in its own process, speaking only through topics.

Stands in for a real robot's nodes so the ROS 2 driver can be tested end to end. It runs
SimRobot("panda_pick_cube") and publishes, after every reset and every step:
  <ns>/joint_states  sensor_msgs/JointState      the 7 arm joints (position, velocity) and the gripper
  <ns>/state         std_msgs/Float64MultiArray  the full 21-float sim state
  <ns>/done, <ns>/success  std_msgs/Bool         published before the observations
It steps the sim once per message on <ns>/action (std_msgs/Float64MultiArray, [dx, dy, dz, gripper]) and
resets on <ns>/reset (std_msgs/Empty). With --image it also publishes a synthetic 640x480 rgb8
<ns>/image at 30 Hz (a moving pattern: rendering MuJoCo on CPU would be far slower than the camera).

With --command joint_trajectory it is instead a position-controlled arm with the Panda's 7 joints, limits and
speeds, commanded the way ros2_control's JointTrajectoryController is: trajectory_msgs/JointTrajectory on
<ns>/joint_trajectory, joints named in any order. Each command moves the joints toward its last point for that
point's time_from_start at most at their top speed (kinematic: no MuJoCo), then publishes <ns>/joint_states;
<ns>/reset puts the arm at its home pose. A command with unknown or missing joints, no points, or a non-finite
position is refused with a warning and moves nothing. --record FILE writes every command as one JSON line.

    python -m hal.ros2_sim_node --domain-id 42 --image
    python -m hal.ros2_sim_node --domain-id 42 --command joint_trajectory --namespace /arm --record commands.jsonl
"""

from __future__ import annotations

import argparse
import array
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

JOINT_NAMES = tuple(f"panda_joint{i}" for i in range(1, 8))
_QPOS, _QVEL, _GRIPPER = slice(0, 7), slice(7, 14), 14
# The Panda's joint limits (rad) and top speeds (rad/s), from Franka's datasheet; home is its ready pose.
PANDA_LOW = (-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973)
PANDA_HIGH = (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973)
PANDA_SPEED = (2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61)
PANDA_HOME = (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)


def synthetic_frame(tick: int, height: int = 480, width: int = 640) -> np.ndarray:
    """A cheap moving pattern: diagonal stripes that shift every frame, plus the tick in the red channel."""
    rows = np.arange(height, dtype=np.uint16)[:, None]
    cols = np.arange(width, dtype=np.uint16)[None, :]
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[..., 0] = tick % 256
    frame[..., 1] = ((rows + cols + 4 * tick) % 256).astype(np.uint8)
    frame[..., 2] = ((rows * 2 + tick) % 256).astype(np.uint8)
    return frame


class SimRobotNode:
    def __init__(self, context, namespace: str, image: bool, image_hz: float, seed: int | None) -> None:
        import rclpy
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Empty, Float64MultiArray

        from hal.sim import SimRobot

        self._robot = SimRobot("panda_pick_cube", seed=seed)
        self._lock = threading.Lock()  # the sim is stepped from callbacks; a multi-threaded executor stays safe
        self.node = rclpy.create_node("panda_sim", namespace=namespace, context=context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._joint_pub = self.node.create_publisher(JointState, "joint_states", reliable)
        self._state_pub = self.node.create_publisher(Float64MultiArray, "state", reliable)
        self._done_pub = self.node.create_publisher(Bool, "done", reliable)
        self._success_pub = self.node.create_publisher(Bool, "success", reliable)
        self.node.create_subscription(Float64MultiArray, "action", self._on_action, reliable)
        self.node.create_subscription(Empty, "reset", self._on_reset, reliable)
        self._msgs = (JointState, Float64MultiArray, Bool, Image)
        self._episode_over = True  # no action steps the sim before the first reset
        self._state = self._robot.reset()["state"]
        self._tick = 0
        if image:
            self._image_pub = self.node.create_publisher(
                Image, "image", QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
            )
            self.node.create_timer(1.0 / image_hz, self._on_camera)

    def _publish_observation(self, done: bool, success: bool) -> None:
        joint_state_cls, array_cls, bool_cls, _ = self._msgs
        self._done_pub.publish(bool_cls(data=done))
        self._success_pub.publish(bool_cls(data=success))
        state = self._state.astype(np.float64)
        joints = joint_state_cls()
        joints.header.stamp = self.node.get_clock().now().to_msg()
        joints.name = list(JOINT_NAMES)
        joints.position = state[_QPOS].tolist()
        joints.velocity = state[_QVEL].tolist()
        self._joint_pub.publish(joints)
        self._state_pub.publish(array_cls(data=array.array("d", state.tobytes())))

    def _on_reset(self, _msg) -> None:
        with self._lock:
            self._state = self._robot.reset()["state"]
            self._episode_over = False
            self._publish_observation(False, False)

    def _on_action(self, msg) -> None:
        action = np.asarray(msg.data, dtype=np.float32)
        with self._lock:
            if action.shape != (4,) or not np.all(np.isfinite(action)):
                self.node.get_logger().warning(f"dropping malformed action of shape {action.shape}")
                return
            if self._episode_over:  # a hold after the end: keep reporting the final state, do not step
                self._publish_observation(True, False)
                return
            transition = self._robot.apply(action)
            self._state = transition.observation["state"]
            self._episode_over = transition.done or transition.success
            self._publish_observation(self._episode_over, transition.success)

    def _on_camera(self) -> None:
        image_cls = self._msgs[3]
        frame = synthetic_frame(self._tick)
        self._tick += 1
        msg = image_cls()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "camera"
        msg.height, msg.width = frame.shape[:2]
        msg.encoding = "rgb8"
        msg.step = frame.shape[1] * 3
        msg.data = array.array("B", frame.tobytes())  # array.array skips rclpy's per-element type check
        self._image_pub.publish(msg)

    def close(self) -> None:
        self.node.destroy_node()
        self._robot.close()


def trajectory_goal(msg: Any, names: tuple[str, ...]) -> tuple[np.ndarray, float]:
    """The last point of a JointTrajectory as positions in ``names`` order, and its time_from_start in seconds;
    ValueError saying what is wrong with it."""
    if sorted(msg.joint_names) != sorted(names):
        raise ValueError(f"joint_names {list(msg.joint_names)} are not this arm's {list(names)}")
    if not msg.points:
        raise ValueError("no points")
    point = msg.points[-1]
    positions = np.asarray(point.positions, dtype=np.float64)
    if positions.shape != (len(names),) or not np.all(np.isfinite(positions)):
        raise ValueError(f"expected {len(names)} finite positions, got {list(point.positions)}")
    order = [list(msg.joint_names).index(name) for name in names]
    seconds = point.time_from_start.sec + point.time_from_start.nanosec / 1e9
    return positions[order], seconds


class TrajectoryArmNode:
    """A position-controlled 7-joint arm behind a JointTrajectory command topic (see the module's docstring)."""

    def __init__(self, context: Any, namespace: str, record: Path | None) -> None:
        import rclpy
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Empty
        from trajectory_msgs.msg import JointTrajectory

        self._lock = threading.Lock()
        self.node = rclpy.create_node("panda_arm", namespace=namespace, context=context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._joint_pub = self.node.create_publisher(JointState, "joint_states", reliable)
        self.node.create_subscription(JointTrajectory, "joint_trajectory", self._on_trajectory, reliable)
        self.node.create_subscription(Empty, "reset", self._on_reset, reliable)
        self._joint_state = JointState
        self._position = np.array(PANDA_HOME)
        self._velocity = np.zeros(len(JOINT_NAMES))
        self._record = open(record, "a") if record else None  # noqa: SIM115 (open for the node's life)

    def _publish(self) -> None:
        msg = self._joint_state()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.name = list(JOINT_NAMES)
        msg.position = self._position.tolist()
        msg.velocity = self._velocity.tolist()
        self._joint_pub.publish(msg)

    def _note(self, entry: dict) -> None:
        if self._record is not None:
            self._record.write(json.dumps(entry) + "\n")
            self._record.flush()

    def _on_reset(self, _msg) -> None:
        with self._lock:
            self._position = np.array(PANDA_HOME)
            self._velocity = np.zeros(len(JOINT_NAMES))
            self._note({"reset": True})
            self._publish()

    def _on_trajectory(self, msg) -> None:
        with self._lock:
            try:
                goal, seconds = trajectory_goal(msg, JOINT_NAMES)
            except ValueError as exc:
                self.node.get_logger().warning(f"refusing a joint trajectory: {exc}")
                self._note({"refused": str(exc)})
                return
            self._note(
                {"joint_names": list(msg.joint_names), "positions": list(msg.points[-1].positions), "s": seconds}
            )
            goal = np.clip(goal, PANDA_LOW, PANDA_HIGH)
            reach = np.asarray(PANDA_SPEED) * seconds
            moved = np.clip(goal - self._position, -reach, reach)
            self._position = self._position + moved
            self._velocity = moved / seconds if seconds > 0 else np.zeros(len(JOINT_NAMES))
            self._publish()

    def close(self) -> None:
        self.node.destroy_node()
        if self._record is not None:
            self._record.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: from the environment)")
    parser.add_argument("--namespace", default="/panda")
    parser.add_argument("--image", action="store_true", help="also publish a synthetic 640x480 rgb8 camera")
    parser.add_argument("--image-hz", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--command",
        choices=("ee_delta", "joint_trajectory"),
        default="ee_delta",
        help="ee_delta: the simulated Panda on <ns>/action; joint_trajectory: a 7-joint arm on <ns>/joint_trajectory",
    )
    parser.add_argument("--record", type=Path, default=None, help="joint_trajectory: every command as a JSON line")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=args.domain_id, signal_handler_options=SignalHandlerOptions.NO)
    # Ctrl-C and SIGTERM end the node (rclpy's own handlers left it spinning).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: context.try_shutdown())
    if args.command == "joint_trajectory":
        node = TrajectoryArmNode(context, args.namespace, args.record)
    else:
        node = SimRobotNode(context, args.namespace, args.image, args.image_hz, args.seed)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node.node)
    print(f"{node.node.get_name()} ready on domain {args.domain_id}", flush=True)
    try:
        while context.ok():  # a bounded wait: the signal handlers above run between two waits
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.close()
        context.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
