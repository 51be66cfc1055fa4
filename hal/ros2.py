"""ROS 2 robots: a Driver over a robot that speaks only through topics, configured by a YAML file.

The driver owns one rclpy node in its own ``Context`` (several drivers coexist in one process), spun by a
SingleThreadedExecutor on a background thread. Callbacks only buffer messages; the control thread aligns
them: the newest message of the anchor stream (the first camera, else the first stamped stream) and, for
every other stream, the message whose stamp is closest to it within ``sync.slop_s``. Streams without a
header (Float64MultiArray) are stamped on receipt with the driver's ROS clock, so they align only with
publishers on the same host.
"""

from __future__ import annotations

import array
import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hal.resource import ArraySpec, Capabilities, Transition

JOINT_STATE = "sensor_msgs/JointState"
IMAGE = "sensor_msgs/Image"
FLOAT64_ARRAY = "std_msgs/Float64MultiArray"
JOINT_TRAJECTORY = "trajectory_msgs/JointTrajectory"
EMPTY = "std_msgs/Empty"
BOOL = "std_msgs/Bool"

OBSERVATION_TYPES = (JOINT_STATE, IMAGE, FLOAT64_ARRAY)
ACTION_TYPES = (FLOAT64_ARRAY, JOINT_TRAJECTORY)
RESET_TYPES = (EMPTY, BOOL)
JOINT_FIELDS = ("position", "velocity", "effort")
RELIABILITIES = ("reliable", "best_effort")
HOLD_MODES = ("zeros", "last_position")
_ENCODINGS = {1: "mono8", 3: "rgb8"}
_BUFFER = 32  # messages kept per stream for alignment: about 1 s of a 30 Hz camera


class ConfigError(ValueError):
    """A bad robot config; the message starts with the path of the offending key."""


def _fail(key: str, why: str) -> ConfigError:
    return ConfigError(f"{key}: {why}")


def _section(raw: Any, key: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(key, f"expected a mapping, got {type(raw).__name__}")
    return raw


def _known(raw: dict[str, Any], key: str, allowed: tuple[str, ...]) -> None:
    for name in raw:
        if name not in allowed:
            prefix = f"{key}." if key else ""
            raise _fail(f"{prefix}{name}", f"unknown key; known: {', '.join(allowed)}")


def _required(raw: dict[str, Any], key: str, name: str) -> Any:
    if raw.get(name) is None:
        raise _fail(f"{key}.{name}" if key else name, "required")
    return raw[name]


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(key, f"expected a non-empty string, got {value!r}")
    return value


def _topic(value: Any, key: str) -> str:
    value = _str(value, key)
    if not value.startswith("/") or " " in value:
        raise _fail(key, f"expected an absolute topic name like '/robot/state', got {value!r}")
    return value


def _number(value: Any, key: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise _fail(key, f"expected a number, got {value!r}")
    if positive and value <= 0:
        raise _fail(key, f"must be > 0, got {value!r}")
    return float(value)


def _int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(key, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _choice(value: Any, key: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise _fail(key, f"unknown {what} {value!r}; known: {', '.join(choices)}")
    return value


def _floats(value: Any, key: str, length: int) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or len(value) != length:
        raise _fail(key, f"expected a list of {length} numbers, got {value!r}")
    return tuple(_number(v, f"{key}[{i}]") for i, v in enumerate(value))


@dataclass(frozen=True)
class QosConfig:
    reliability: str = "reliable"
    depth: int = 5

    @classmethod
    def parse(cls, raw: Any, key: str) -> QosConfig:
        raw = _section(raw, key)
        _known(raw, key, ("reliability", "depth"))
        return cls(
            reliability=_choice(raw.get("reliability", "reliable"), f"{key}.reliability", RELIABILITIES, "reliability"),
            depth=_int(raw.get("depth", 5), f"{key}.depth"),
        )


@dataclass(frozen=True)
class ObservationConfig:
    name: str
    topic: str
    type: str
    shape: tuple[int, ...]
    field: str = "position"  # JointState only
    qos: QosConfig = QosConfig()

    @property
    def spec(self) -> ArraySpec:
        if self.type == IMAGE:
            return ArraySpec(self.name, "uint8", self.shape, low=(0.0,), high=(255.0,))
        return ArraySpec(self.name, "float32", self.shape)

    @classmethod
    def parse(cls, raw: Any, key: str) -> ObservationConfig:
        raw = _section(raw, key)
        _known(raw, key, ("name", "topic", "type", "field", "shape", "qos"))
        kind = _choice(_required(raw, key, "type"), f"{key}.type", OBSERVATION_TYPES, "message type")
        shape_raw = _required(raw, key, "shape")
        if not isinstance(shape_raw, list | tuple) or not shape_raw:
            raise _fail(f"{key}.shape", f"expected a list of dimensions, got {shape_raw!r}")
        shape = tuple(_int(d, f"{key}.shape[{i}]") for i, d in enumerate(shape_raw))
        if kind == IMAGE and (len(shape) != 3 or shape[2] not in _ENCODINGS):
            raise _fail(f"{key}.shape", f"an image needs [H, W, 3] (rgb8) or [H, W, 1] (mono8), got {list(shape)}")
        if kind != IMAGE and len(shape) != 1:
            raise _fail(f"{key}.shape", f"{kind} needs a 1-d shape [N], got {list(shape)}")
        field_name = raw.get("field", "position")
        if "field" in raw and kind != JOINT_STATE:
            raise _fail(f"{key}.field", f"only sensor_msgs/JointState has a field, not {kind}")
        return cls(
            name=_str(_required(raw, key, "name"), f"{key}.name"),
            topic=_topic(_required(raw, key, "topic"), f"{key}.topic"),
            type=kind,
            shape=shape,
            field=_choice(field_name, f"{key}.field", JOINT_FIELDS, "JointState field"),
            qos=QosConfig.parse(raw.get("qos"), f"{key}.qos"),
        )


@dataclass(frozen=True)
class ActionConfig:
    topic: str
    type: str
    dim: int
    low: tuple[float, ...]
    high: tuple[float, ...]
    joint_names: tuple[str, ...] = ()  # JointTrajectory only
    hold: str | tuple[float, ...] = "zeros"  # zeros | last_position | an explicit action
    qos: QosConfig = QosConfig()

    @property
    def spec(self) -> ArraySpec:
        return ArraySpec("action", "float32", (self.dim,), low=self.low, high=self.high)

    @classmethod
    def parse(cls, raw: Any, key: str) -> ActionConfig:
        raw = _section(raw, key)
        _known(raw, key, ("topic", "type", "dim", "low", "high", "joint_names", "hold", "qos"))
        kind = _choice(_required(raw, key, "type"), f"{key}.type", ACTION_TYPES, "message type")
        dim = _int(_required(raw, key, "dim"), f"{key}.dim")
        low = _floats(_required(raw, key, "low"), f"{key}.low", dim)
        high = _floats(_required(raw, key, "high"), f"{key}.high", dim)
        for i, (lo, hi) in enumerate(zip(low, high, strict=True)):
            if lo > hi:
                raise _fail(f"{key}.low[{i}]", f"{lo} is above high[{i}] = {hi}")
        joint_names: tuple[str, ...] = ()
        if kind == JOINT_TRAJECTORY:
            names = _required(raw, key, "joint_names")
            if not isinstance(names, list) or len(names) != dim:
                raise _fail(f"{key}.joint_names", f"expected a list of {dim} joint names, got {names!r}")
            joint_names = tuple(_str(n, f"{key}.joint_names[{i}]") for i, n in enumerate(names))
        elif "joint_names" in raw:
            raise _fail(f"{key}.joint_names", f"only {JOINT_TRAJECTORY} takes joint_names")
        hold_raw = raw.get("hold", "last_position" if kind == JOINT_TRAJECTORY else "zeros")
        hold: str | tuple[float, ...]
        if isinstance(hold_raw, list | tuple):
            hold = _floats(hold_raw, f"{key}.hold", dim)
        else:
            hold = _choice(hold_raw, f"{key}.hold", HOLD_MODES, "hold mode (or give a list of values)")
        if kind == JOINT_TRAJECTORY and hold == "zeros":
            # Zero joint positions are a pose, not a stop: commanding them on a failure would move the arm.
            raise _fail(f"{key}.hold", "'zeros' is not a safe hold for a JointTrajectory; use last_position")
        return cls(
            topic=_topic(_required(raw, key, "topic"), f"{key}.topic"),
            type=kind,
            dim=dim,
            low=low,
            high=high,
            joint_names=joint_names,
            hold=hold,
            qos=QosConfig.parse(raw.get("qos"), f"{key}.qos"),
        )


@dataclass(frozen=True)
class SyncConfig:
    slop_s: float = 0.05
    timeout_s: float = 1.0  # how long apply() waits for a fresh aligned set before raising

    @classmethod
    def parse(cls, raw: Any, key: str) -> SyncConfig:
        raw = _section(raw, key)
        _known(raw, key, ("slop_s", "timeout_s"))
        return cls(
            slop_s=_number(raw.get("slop_s", 0.05), f"{key}.slop_s", positive=True),
            timeout_s=_number(raw.get("timeout_s", 1.0), f"{key}.timeout_s", positive=True),
        )


@dataclass(frozen=True)
class EpisodeConfig:
    reset_topic: str | None = None
    reset_type: str = EMPTY
    done_topic: str | None = None  # std_msgs/Bool
    success_topic: str | None = None  # std_msgs/Bool
    max_steps: int = 0  # 0: no limit from the driver
    reset_timeout_s: float = 10.0

    @classmethod
    def parse(cls, raw: Any, key: str) -> EpisodeConfig:
        raw = _section(raw, key)
        _known(raw, key, ("reset_topic", "reset_type", "done_topic", "success_topic", "max_steps", "reset_timeout_s"))

        def optional_topic(name: str) -> str | None:
            return None if raw.get(name) is None else _topic(raw[name], f"{key}.{name}")

        return cls(
            reset_topic=optional_topic("reset_topic"),
            reset_type=_choice(raw.get("reset_type", EMPTY), f"{key}.reset_type", RESET_TYPES, "message type"),
            done_topic=optional_topic("done_topic"),
            success_topic=optional_topic("success_topic"),
            max_steps=_int(raw.get("max_steps", 0), f"{key}.max_steps", minimum=0),
            reset_timeout_s=_number(raw.get("reset_timeout_s", 10.0), f"{key}.reset_timeout_s", positive=True),
        )


@dataclass(frozen=True)
class Ros2RobotConfig:
    node_name: str
    control_hz: float
    embodiment: str
    observations: tuple[ObservationConfig, ...]
    action: ActionConfig
    sync: SyncConfig = SyncConfig()
    episode: EpisodeConfig = EpisodeConfig()
    domain_id: int | None = None  # None: ROS_DOMAIN_ID from the environment

    @classmethod
    def from_yaml(cls, path: str | Path) -> Ros2RobotConfig:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Ros2RobotConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"<root>: expected a mapping, got {type(raw).__name__}")
        _known(
            raw, "", ("node_name", "control_hz", "embodiment", "observations", "action", "sync", "episode", "domain_id")
        )
        node_name = _str(_required(raw, "", "node_name"), "node_name")
        if not node_name.replace("_", "").isalnum() or node_name[0].isdigit():
            raise _fail(
                "node_name", f"ROS node names are letters, digits and '_', not starting with a digit: {node_name!r}"
            )
        observations_raw = _required(raw, "", "observations")
        if not isinstance(observations_raw, list) or not observations_raw:
            raise _fail("observations", "expected a non-empty list")
        observations = tuple(ObservationConfig.parse(o, f"observations[{i}]") for i, o in enumerate(observations_raw))
        seen: set[str] = set()
        for i, obs in enumerate(observations):
            if obs.name in seen:
                raise _fail(f"observations[{i}].name", f"duplicate name {obs.name!r}")
            seen.add(obs.name)
        domain_id = raw.get("domain_id")
        return cls(
            node_name=node_name,
            control_hz=_number(_required(raw, "", "control_hz"), "control_hz", positive=True),
            embodiment=_str(_required(raw, "", "embodiment"), "embodiment"),
            observations=observations,
            action=ActionConfig.parse(_required(raw, "", "action"), "action"),
            sync=SyncConfig.parse(raw.get("sync"), "sync"),
            episode=EpisodeConfig.parse(raw.get("episode"), "episode"),
            domain_id=None if domain_id is None else _int(domain_id, "domain_id", minimum=0),
        )

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            observation=tuple(o.spec for o in self.observations),
            action=self.action.spec,
            control_hz=self.control_hz,
            embodiment=self.embodiment,
            cameras=tuple(o.name for o in self.observations if o.type == IMAGE),
        )


@dataclass
class _Stream:
    """Recent messages of one observation topic, as (stamp_ns, receipt_ns, array); newest last."""

    config: ObservationConfig
    messages: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_BUFFER))
    received: int = 0
    dropped: int = 0  # malformed messages (wrong shape, encoding, length)
    last_error: str = ""
    latencies_ns: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Ros2Robot:
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
        reliable = QosConfig("reliable", 10)
        self._reset_pub = None
        if episode.reset_topic:
            reset_type = Empty if episode.reset_type == EMPTY else Bool
            self._reset_pub = self._node.create_publisher(reset_type, episode.reset_topic, qos(reliable))
        if episode.done_topic:
            self._node.create_subscription(Bool, episode.done_topic, self._on_done, qos(reliable))
        if episode.success_topic:
            self._node.create_subscription(Bool, episode.success_topic, self._on_success, qos(reliable))

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

    # -- alignment -----------------------------------------------------------------------------------------

    def _aligned(self, since_ns: int) -> tuple[int, dict[str, np.ndarray]] | None:
        """The newest aligned set whose every message arrived after ``since_ns``, as (anchor stamp, arrays)."""
        slop_ns = int(self.config.sync.slop_s * 1e9)
        with self._lock:
            anchor = self._streams[self._anchor].messages
            for stamp_ns, receipt_ns, value in reversed(anchor):
                if receipt_ns <= since_ns:
                    break
                chosen = {self._anchor: value}
                for name, stream in self._streams.items():
                    if name == self._anchor:
                        continue
                    fresh = [m for m in stream.messages if m[1] > since_ns]
                    if not fresh:
                        return None
                    best = min(fresh, key=lambda m: abs(m[0] - stamp_ns))
                    if abs(best[0] - stamp_ns) > slop_ns:
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
            self._done = self._success = False
        self._step = 0
        self.holding = False
        since_ns = -1
        if self._reset_pub is not None:
            self._wait_for_peers(
                self._reset_pub.get_subscription_count, f"nobody subscribes to {episode.reset_topic}", deadline
            )
            since_ns = time.time_ns()
            msg = _message_class(episode.reset_type)()
            if episode.reset_type == BOOL:
                msg.data = True
            self._reset_pub.publish(msg)
        observation = self._wait_aligned(since_ns, max(0.0, deadline - time.monotonic()), "after reset")
        with self._lock:  # done/success of the previous episode may have landed while we waited
            self._done = self._success = False
        return observation

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
        if (msg.height, msg.width) != (height, width) or msg.encoding != _ENCODINGS[channels]:
            raise ValueError(
                f"expected {width}x{height} {_ENCODINGS[channels]}, got {msg.width}x{msg.height} {msg.encoding}"
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
