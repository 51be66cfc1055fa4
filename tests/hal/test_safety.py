import logging
import threading
import time

import numpy as np
import pytest

from hal.null import NullRobot
from hal.resource import ArraySpec, EmergencyStoppable, HoldsPosition
from hal.safety import SafeDriver, SafetyLimits

HZ = 50.0  # NullRobot's control rate here: the rate limit allows max_rate / HZ per apply
WATCHDOG_S = 0.1
MARGIN_S = 0.15  # a shared 2-core machine may be slow to schedule the watchdog thread


class Recorder(NullRobot):
    """A NullRobot that remembers what it was sent."""

    def __init__(self, **kwargs) -> None:
        super().__init__(state_dim=2, action_dim=4, control_hz=HZ, **kwargs)
        self.sent: list[np.ndarray] = []
        self.holds = 0

    def apply(self, action):
        self.sent.append(np.array(action))
        return super().apply(action)

    def hold(self) -> None:
        self.holds += 1
        super().hold()


@pytest.fixture
def events() -> list[str]:
    return []


def make(events: list[str], limits: SafetyLimits | None = None, watchdog_s: float | None = WATCHDOG_S, **kwargs):
    robot = Recorder()
    safe = SafeDriver(robot, limits, watchdog_s=watchdog_s, name="robot-1", on_event=events.append, **kwargs)
    safe.reset()
    return robot, safe


def wait_for(predicate, timeout_s: float) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout_s``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, "condition not reached in time"
        time.sleep(0.001)
    return time.monotonic() - start


def test_position_clamp_and_plain_log(events: list[str]) -> None:
    limits = SafetyLimits(low=(-1.0,) * 4, high=(1.0, 1.0, 1.0, 0.5))
    robot, safe = make(events, limits, watchdog_s=None)
    safe.apply(np.array([0.0, 0.0, 3.1, 0.2], dtype=np.float32))
    np.testing.assert_allclose(robot.sent[-1], [0.0, 0.0, 1.0, 0.2], rtol=1e-6)
    assert safe.counts.clamps == 1
    assert events == ["robot-1: action dimension 2 clamped from 3.10 to 1.00 (position limit)"]
    # Non-finite values keep the last action in that dimension.
    safe.apply(np.array([np.nan, 0.0, 0.0, 9.0], dtype=np.float32))
    np.testing.assert_allclose(robot.sent[-1], [0.0, 0.0, 0.0, 0.5], rtol=1e-6)
    safe.close()


def test_clamp_logging_is_rate_limited(events: list[str]) -> None:
    robot, safe = make(events, SafetyLimits(low=(-1.0,) * 4, high=(1.0,) * 4), watchdog_s=None, log_every_s=60.0)
    for _ in range(50):
        safe.apply(np.full(4, 2.0, dtype=np.float32))
    assert safe.counts.clamps == 50 and len(events) == 1
    assert "1 more dimensions" in events[0]
    safe.close()


def test_rate_clamp_relative_to_last_applied(events: list[str]) -> None:
    # 5 units/s at 50 Hz: 0.1 per apply.
    limits = SafetyLimits.from_spec(ArraySpec("action", "float32", (4,), (-1.0,) * 4, (1.0,) * 4), max_rate=5.0)
    robot, safe = make(events, limits, watchdog_s=None)
    safe.apply(np.zeros(4, dtype=np.float32))  # first action of the episode: no reference yet
    for k in range(1, 4):
        safe.apply(np.array([1.0, -1.0, 0.0, 0.05], dtype=np.float32))
        np.testing.assert_allclose(robot.sent[-1], [0.1 * k, -0.1 * k, 0.0, 0.05], atol=1e-6)
    assert safe.counts.clamps == 3
    assert "(rate limit)" in events[0]
    safe.close()


class StandingArm(Recorder, HoldsPosition):
    """A position-controlled arm that stands at 0.5 in every dimension after a reset."""

    def action_from_observation(self, observation):
        return np.full(4, 0.5, dtype=np.float32)


def test_rate_limit_starts_from_where_a_position_controlled_arm_stands(events: list[str]) -> None:
    limits = SafetyLimits.from_spec(ArraySpec("action", "float32", (4,), (-1.0,) * 4, (1.0,) * 4), max_rate=5.0)
    robot = StandingArm()
    safe = SafeDriver(robot, limits, watchdog_s=None, name="robot-1", on_event=events.append)
    safe.reset()
    safe.apply(np.zeros(4, dtype=np.float32))  # the reference is where it stands, not "no reference yet"
    np.testing.assert_allclose(robot.sent[-1], [0.4] * 4, atol=1e-6)
    safe.close()


def test_optional_abilities_are_declared() -> None:
    safe = SafeDriver(Recorder(), watchdog_s=None)
    assert isinstance(safe, EmergencyStoppable) and not isinstance(Recorder(), EmergencyStoppable)
    assert isinstance(StandingArm(), HoldsPosition) and not isinstance(Recorder(), HoldsPosition)
    safe.close()


def test_moving_again_is_routine_information_in_plain_words(caplog) -> None:
    caplog.set_level(logging.INFO, logger="fleetloop.safety")
    safe = SafeDriver(Recorder(), watchdog_s=None, name="robot-1")  # no on_event: the log is the channel
    safe.reset()
    safe.apply(np.zeros(4, dtype=np.float32))
    safe.hold()
    safe.apply(np.zeros(4, dtype=np.float32))
    safe.close()
    [record] = [r for r in caplog.records if "moving again" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith("robot-1: moving again (the first action in ")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_watchdog_holds_when_applies_stop_and_resumes(events: list[str]) -> None:
    robot, safe = make(events)
    for _ in range(5):
        last = time.monotonic()
        safe.apply(np.zeros(4, dtype=np.float32))
        time.sleep(1 / HZ)
    assert not robot.holding and safe.counts.watchdog_trips == 0  # regular applies never trip it
    elapsed = wait_for(lambda: robot.holding, WATCHDOG_S + MARGIN_S)
    assert time.monotonic() - last >= WATCHDOG_S
    assert elapsed <= WATCHDOG_S + MARGIN_S
    assert safe.holding and safe.counts.watchdog_trips == 1
    assert any("no fresh action for" in e and e.endswith("holding still") for e in events)
    time.sleep(2 * WATCHDOG_S)
    assert safe.counts.watchdog_trips == 1 and robot.holds == 1  # holds once, not every period
    safe.apply(np.zeros(4, dtype=np.float32))
    assert not robot.holding and not safe.holding
    assert events[-1].startswith("robot-1: moving again (the first action in ") and events[-1].endswith(" s)")
    wait_for(lambda: safe.counts.watchdog_trips == 2, WATCHDOG_S + MARGIN_S)  # armed again after resuming
    safe.close()


def test_watchdog_holds_when_the_policy_hangs(events: list[str]) -> None:
    robot, safe = make(events)
    hang = threading.Event()
    release = threading.Event()

    def control_loop() -> None:
        for tick in range(1000):
            if tick == 10:
                hang.set()
                release.wait(5.0)  # hung inference: no action comes
                return
            safe.apply(np.zeros(4, dtype=np.float32))
            time.sleep(1 / HZ)

    thread = threading.Thread(target=control_loop, daemon=True)
    thread.start()
    assert hang.wait(2.0)
    hung_at = time.monotonic()
    wait_for(lambda: robot.holding, WATCHDOG_S + MARGIN_S)
    assert time.monotonic() - hung_at <= WATCHDOG_S + MARGIN_S
    assert safe.counts.watchdog_trips == 1
    release.set()
    thread.join()
    safe.close()


def test_emergency_stop_from_another_thread_is_immediate_and_latches(events: list[str]) -> None:
    robot, safe = make(events, watchdog_s=None)
    running = threading.Event()
    done = threading.Event()
    results = []

    def control_loop() -> None:
        while not done.is_set():
            results.append(safe.apply(np.full(4, 0.5, dtype=np.float32)))
            running.set()
            time.sleep(1 / HZ)

    thread = threading.Thread(target=control_loop, daemon=True)
    thread.start()
    try:
        check_emergency_stop(robot, safe, events, running, results)
    finally:
        done.set()
        thread.join()
        safe.close()


def check_emergency_stop(robot, safe, events, running, results) -> None:
    assert running.wait(2.0)
    start = time.monotonic()
    threading.Thread(target=safe.emergency_stop, args=("operator pressed stop",)).start()
    wait_for(lambda: robot.holding, 1.0)
    assert time.monotonic() - start < 0.05
    sent = len(robot.sent)
    time.sleep(5 / HZ)
    assert len(robot.sent) == sent, "an action reached the driver during the emergency stop"
    assert robot.holding and safe.stopped and safe.counts.refused > 0
    assert results[-1].info == {"emergency_stop": True} and "state" in results[-1].observation
    assert any("EMERGENCY STOP (operator pressed stop)" in e for e in events)
    safe.release_emergency_stop()
    wait_for(lambda: len(robot.sent) > sent, 1.0)
    assert not safe.stopped and not robot.holding
    assert any("emergency stop (operator pressed stop) released" in e for e in events)


def test_explicit_hold_and_close(events: list[str]) -> None:
    robot, safe = make(events)
    safe.apply(np.zeros(4, dtype=np.float32))
    safe.hold()
    assert robot.holding and safe.holding
    time.sleep(WATCHDOG_S + 0.05)
    assert safe.counts.watchdog_trips == 0  # an explicit hold disarms the watchdog
    safe.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"low": (0.0, 0.0)}, "SafetyLimits.high: low and high must be given together"),
        ({"low": (0.0, 0.0), "high": (1.0,)}, "SafetyLimits.high"),
        ({"low": (2.0,), "high": (1.0,)}, "SafetyLimits.low[0]"),
        ({"max_rate": (1.0, -1.0)}, "SafetyLimits.max_rate"),
        ({"max_rate": (float("inf"),)}, "SafetyLimits.max_rate"),
        ({"low": ("a",), "high": (1.0,)}, "SafetyLimits.low"),
    ],
)
def test_limit_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        SafetyLimits(**kwargs)


def test_driver_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"SafetyLimits.max_rate has 3 entries but the action has 4"):
        SafeDriver(Recorder(), SafetyLimits(max_rate=(1.0, 1.0, 1.0)), watchdog_s=None)
    with pytest.raises(ValueError, match="watchdog_s"):
        SafeDriver(Recorder(), watchdog_s=0.01)  # shorter than one 50 Hz period
    with pytest.raises(ValueError, match="watchdog_s"):
        SafeDriver(Recorder(), watchdog_s=-1.0)
