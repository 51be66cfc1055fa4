"""ROS 2 robots: a Driver over a robot that speaks only through topics, configured by a YAML file
(``hal.ros2_config``).

The driver owns one rclpy node in its own ``Context`` (several drivers coexist in one process), spun by a
SingleThreadedExecutor on a background thread. Callbacks only buffer messages; the control thread aligns
them: the newest message of the anchor stream (the first camera, else the first stamped stream) and, for
every other stream, the message whose stamp is closest to it within ``sync.slop_s``. A stream without a
header (Float64MultiArray) has only the time it arrived, so it is paired by receipt time with the anchor's
receipt time: a header stamp against a receipt would count the delivery delay as skew (a node's first messages
to a newly joined driver came 62 ms after their stamp, over the 50 ms slop, and every reset failed).
"""

from __future__ import annotations

import array
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hal.resource import Capabilities, NamesActions, SaysSceneReady, Transition
from hal.ros2_config import (
    BOOL,
    EMPTY,
    ENCODINGS,
    FLOAT64_ARRAY,
    IMAGE,
    JOINT_STATE,
    JOINT_TRAJECTORY,
    ObservationConfig,
    QosConfig,
    Ros2RobotConfig,
)

_BUFFER = 32  # messages kept per stream for alignment: about 1 s of a 30 Hz camera
RESET_RESEND_S = 1.0  # a reset request not answered with aligned observations within this is sent again


@dataclass
class _Stream:
    """Recent messages of one observation topic, as (stamp_ns, receipt_ns, array); newest last."""

    config: ObservationConfig
    messages: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_BUFFER))
    received: int = 0
    dropped: int = 0  # malformed messages (wrong shape, encoding, length)
    last_error: str = ""
    latencies_ns: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))
    stamped: bool = True  # its messages carry a header stamp (else stamp_ns is the receipt time)


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Ros2Robot(NamesActions, SaysSceneReady):
    """A Driver over a ROS 2 robot: subscribes to its observation topics and publishes its actions."""

    def __init__(self, config: Ros2RobotConfig, domain_id: int | None = None) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.config = config
        self._caps = config.capabilities
        self._lock = threading.Lock()
        self._streams = {o.name: _Stream(o) for o in config.observations}
        self._anchor = next(
            (o.name for o in config.observations if o.type == IMAGE),
            next((o.name for o in config.observations if o.type != FLOAT64_ARRAY), config.observations[0].name),
        )
        self._done = False
        self._success = False
        self._scene_ready = False
        self._step = 0
        self._last_anchor_ns = -1
        self._last_action: np.ndarray | None = None
        self.holding = False

        # Our own context: rclpy's global one would tie every driver in the process to one lifetime and domain.
        self._context = rclpy.Context()
        domain = domain_id if domain_id is not None else config.domain_id
        rclpy.init(context=self._context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
        try:
            self._node = rclpy.create_node(config.node_name, context=self._context)
            self._make_endpoints()
            self._executor = SingleThreadedExecutor(context=self._context)
            self._executor.add_node(self._node)
        except Exception:
            self._context.try_shutdown()
            raise
        self._thread = threading.Thread(target=self._spin, name=f"ros2-{config.node_name}", daemon=True)
        self._thread.start()

    # -- ROS plumbing ------------------------------------------------------------------------------------

    def _make_endpoints(self) -> None:
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Bool, Empty

        def qos(config: QosConfig) -> QoSProfile:
            reliability = (
                ReliabilityPolicy.RELIABLE if config.reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
            )
            return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=config.depth, reliability=reliability)

        self._subscriptions: list[tuple[str, Any]] = []
        for stream in self._streams.values():
            msg_type = _message_class(stream.config.type)
            subscription = self._node.create_subscription(
                msg_type,
                stream.config.topic,
                lambda msg, s=stream: self._on_observation(s, msg),
                qos(stream.config.qos),
            )
            self._subscriptions.append((stream.config.topic, subscription))
        action = self.config.action
        self._action_pub = self._node.create_publisher(_message_class(action.type), action.topic, qos(action.qos))
        episode = self.config.episode
        reliable = QosConfig(reliability="reliable", depth=10)
        self._reset_pub = None
        if episode.reset_topic:
            reset_type = Empty if episode.reset_type == EMPTY else Bool
            self._reset_pub = self._node.create_publisher(reset_type, episode.reset_topic, qos(reliable))
        if episode.done_topic:
            self._node.create_subscription(Bool, episode.done_topic, self._on_done, qos(reliable))
        if episode.success_topic:
            self._node.create_subscription(Bool, episode.success_topic, self._on_success, qos(reliable))
        if episode.scene_ready_topic:
            self._node.create_subscription(Bool, episode.scene_ready_topic, self._on_scene_ready, qos(reliable))

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass  # close() shut the context down

    def _on_observation(self, stream: _Stream, msg: Any) -> None:
        receipt_ns = time.time_ns()  # the ROS clock (system time): comparable to header stamps from this host
        try:
            value = _decode(stream.config, msg)
        except ValueError as exc:
            with self._lock:
                stream.dropped += 1
                stream.last_error = str(exc)
            return
        header = getattr(msg, "header", None)
        stamp_ns = _stamp_ns(header.stamp) if header is not None else receipt_ns
        with self._lock:
            stream.stamped = header is not None
            stream.messages.append((stamp_ns, receipt_ns, value))
            stream.received += 1
            if header is not None:
                stream.latencies_ns.append(receipt_ns - stamp_ns)

    def _on_done(self, msg: Any) -> None:
        with self._lock:
            self._done = self._done or bool(msg.data)

    def _on_success(self, msg: Any) -> None:
        with self._lock:
            self._success = self._success or bool(msg.data)

    def _on_scene_ready(self, msg: Any) -> None:
        with self._lock:
            self._scene_ready = self._scene_ready or bool(msg.data)

    # -- alignment -----------------------------------------------------------------------------------------

    def _aligned(self, since_ns: int) -> tuple[int, dict[str, np.ndarray]] | None:
        """The newest aligned set whose every message arrived after ``since_ns``, as (anchor stamp, arrays)."""
        slop_ns = int(self.config.sync.slop_s * 1e9)
        with self._lock:
            anchor = self._streams[self._anchor]
            for stamp_ns, receipt_ns, value in reversed(anchor.messages):
                if receipt_ns <= since_ns:
                    break
                chosen = {self._anchor: value}
                for name, stream in self._streams.items():
                    if name == self._anchor:
                        continue
                    fresh = [m for m in stream.messages if m[1] > since_ns]
                    if not fresh:
                        return None
                    when, at = (0, stamp_ns) if anchor.stamped and stream.stamped else (1, receipt_ns)
                    best = min(fresh, key=lambda m: abs(m[when] - at))
                    if abs(best[when] - at) > slop_ns:
                        break
                    chosen[name] = best[2]
                else:
                    return stamp_ns, chosen
        return None

    def _wait_aligned(self, since_ns: int, timeout_s: float, what: str) -> dict[str, np.ndarray]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self._aligned(since_ns)
            if found is not None:
                self._last_anchor_ns = found[0]
                return found[1]
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.config.node_name}: no aligned observations {what} within {timeout_s:g} s; {self._report()}"
                )
            time.sleep(0.001)

    def _report(self) -> str:
        with self._lock:
            parts = []
            for stream in self._streams.values():
                part = f"{stream.config.topic} ({stream.config.name}): {stream.received} received"
                if stream.dropped:
                    part += f", {stream.dropped} malformed (last: {stream.last_error})"
                parts.append(part)
        return "; ".join(parts) + f"; sync.slop_s={self.config.sync.slop_s:g}"

    def _wait_for_peers(self, count: Any, what: str, deadline: float) -> None:
        # Topics are volatile: a message sent before discovery matched both ends is simply lost.
        while count() == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.config.node_name}: {what} (is the robot's node up, same ROS_DOMAIN_ID?)")
            time.sleep(0.01)

    # -- Driver --------------------------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def reset(self) -> dict[str, np.ndarray]:
        episode = self.config.episode
        deadline = time.monotonic() + episode.reset_timeout_s
        self._wait_for_peers(
            self._action_pub.get_subscription_count, f"nobody subscribes to {self.config.action.topic}", deadline
        )
        for topic, subscription in self._subscriptions:
            self._wait_for_peers(subscription.get_publisher_count, f"nobody publishes {topic}", deadline)
        with self._lock:
            self._done = self._success = self._scene_ready = False  # word from before this episode is stale
        self._step = 0
        self.holding = False
        if self._reset_pub is None:
            observation = self._wait_aligned(-1, max(0.0, deadline - time.monotonic()), "after reset")
        else:
            self._wait_for_peers(
                self._reset_pub.get_subscription_count, f"nobody subscribes to {episode.reset_topic}", deadline
            )
            observation = self._request_reset(deadline)
        with self._lock:  # done/success of the previous episode may have landed while we waited
            self._done = self._success = False
        return observation

    def _request_reset(self, deadline: float) -> dict[str, np.ndarray]:
        """Publishes the reset request and waits for aligned observations after it, sending the request again each
        second until they come: while the robot's node is still matching this new participant, its first answer can
        be lost, or come too late to align (a fresh driver saw 0, or 1 unaligned, messages and timed out)."""
        episode = self.config.episode
        msg = _message_class(episode.reset_type)()
        if episode.reset_type == BOOL:
            msg.data = True
        while True:
            since_ns = time.time_ns()
            self._reset_pub.publish(msg)
            left = max(0.0, deadline - time.monotonic())
            if left <= RESET_RESEND_S:
                return self._wait_aligned(since_ns, left, "after reset")
            try:
                return self._wait_aligned(since_ns, RESET_RESEND_S, "after reset")
            except TimeoutError:
                continue

    def apply(self, action: np.ndarray) -> Transition:
        action = np.asarray(action, dtype=np.float64).reshape(self.config.action.dim)
        since_ns = time.time_ns()
        self._publish(action)
        self._last_action = action
        self.holding = False
        observation = self._wait_aligned(since_ns, self.config.sync.timeout_s, "after the action")
        self._step += 1
        with self._lock:
            done, success = self._done, self._success
        time_limit = bool(self.config.episode.max_steps) and self._step >= self.config.episode.max_steps
        return Transition(
            observation=observation,
            reward=float(success),
            done=done or success or time_limit,
            success=success,
            info={"truncated": time_limit and not (done or success), "step": self._step},
        )

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(self.config.action.joint_names)

    @property
    def scene_ready_source(self) -> str:
        return self.config.episode.scene_ready_topic or ""

    def scene_ready(self) -> bool:
        with self._lock:
            ready, self._scene_ready = self._scene_ready, False
        return ready

    def hold(self) -> None:
        hold = self.config.action.hold
        if hold == "last_position":
            action = self._last_action  # a position command repeated is a stop; before any, send nothing
        elif hold == "zeros":
            action = np.zeros(self.config.action.dim)
        else:
            action = np.asarray(hold, dtype=np.float64)
        if action is not None:
            self._publish(action)
        self.holding = True

    def close(self) -> None:
        if not self._context.ok():
            return
        try:
            self.hold()
        finally:
            self._executor.shutdown(timeout_sec=1.0)
            self._node.destroy_node()
            self._context.try_shutdown()
            self._thread.join(timeout=2.0)

    # -- extras: health and measurement ----------------------------------------------------------------------

    def received(self, name: str) -> int:
        with self._lock:
            return self._streams[name].received

    def latencies_s(self, name: str) -> list[float]:
        """Header stamp to receipt of the stamped stream ``name``, in seconds (same-host clocks only)."""
        with self._lock:
            return [ns / 1e9 for ns in self._streams[name].latencies_ns]

    def _publish(self, action: np.ndarray) -> None:
        config = self.config.action
        msg = _message_class(config.type)()
        if config.type == FLOAT64_ARRAY:
            msg.data = array.array("d", action.astype(np.float64).tobytes())
        else:
            from builtin_interfaces.msg import Duration
            from trajectory_msgs.msg import JointTrajectoryPoint

            msg.header.stamp = self._node.get_clock().now().to_msg()
            msg.joint_names = list(config.joint_names)
            period_ns = int(1e9 / self.config.control_hz)
            point = JointTrajectoryPoint(positions=action.astype(float).tolist())
            point.time_from_start = Duration(sec=period_ns // 1_000_000_000, nanosec=period_ns % 1_000_000_000)
            msg.points = [point]
        self._action_pub.publish(msg)


def _message_class(name: str) -> type:
    package, _, message = name.partition("/")
    if name == JOINT_TRAJECTORY:
        try:
            import trajectory_msgs.msg  # noqa: F401
        except ImportError as exc:
            raise ImportError("trajectory_msgs is missing: pip install ros-trajectory-msgs") from exc
    module = __import__(f"{package}.msg", fromlist=[message])
    return getattr(module, message)


def _decode(config: ObservationConfig, msg: Any) -> np.ndarray:
    """One message as the array its spec promises; ValueError (naming what is off) for a malformed one."""
    if config.type == IMAGE:
        height, width, channels = config.shape
        if (msg.height, msg.width) != (height, width) or msg.encoding != ENCODINGS[channels]:
            raise ValueError(
                f"expected {width}x{height} {ENCODINGS[channels]}, got {msg.width}x{msg.height} {msg.encoding}"
            )
        row = width * channels
        data = np.frombuffer(msg.data, dtype=np.uint8)
        if msg.step < row or data.size < msg.step * height:
            raise ValueError(f"image data too short: step {msg.step}, {data.size} bytes")
        return data[: msg.step * height].reshape(height, msg.step)[:, :row].reshape(config.shape).copy()
    values = getattr(msg, config.field) if config.type == JOINT_STATE else msg.data
    array_ = np.asarray(values, dtype=np.float32)
    if array_.shape != config.shape:
        raise ValueError(f"expected {config.shape[0]} values, got {array_.size}")
    return array_
