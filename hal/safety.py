"""A safety layer around any Driver: position and rate limits, a watchdog, and a latching emergency stop.

``SafeDriver`` is itself a Driver, so the edge agent wraps its driver once and needs no other change.
Everything that can command the device (apply, hold, reset, the watchdog, an emergency stop from any
thread) goes through one lock, so the wrapped driver never sees two calls at once. The one exception is
a driver call that is itself stuck: then a hold is sent without waiting for it, because stopping the
robot matters more than the driver's thread-safety.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from hal.config import CodeConfig, invalid
from hal.resource import ArraySpec, Capabilities, Driver, EmergencyStoppable, HoldsPosition, Transition

log = logging.getLogger("fleetloop.safety")

# How long an emergency stop or the watchdog waits for a driver call in progress before holding anyway.
_LOCK_WAIT_S = 0.02


# Limits per action dimension: any sequence of finite numbers (a list, a numpy array), never an empty one.
Limit = Annotated[tuple[float, ...], Field(min_length=1)] | None


@dataclass
class SafetyCounts:
    """What the safety layer did since it started."""

    clamps: int = 0  # actions changed by a limit (one per apply, however many dimensions were clamped)
    watchdog_trips: int = 0
    refused: int = 0  # actions refused under the current emergency stop


class SafetyLimits(CodeConfig):
    """Per-dimension limits on the action. Each field is optional; ``None`` means no such limit.

    ``max_rate`` is the largest change per second of each action dimension (units of the action per second).
    """

    model_config = ConfigDict(strict=False)  # built in code from specs and arrays: numbers of any kind
    config_name = "SafetyLimits"

    low: Limit = None
    high: Limit = None
    max_rate: Annotated[tuple[Annotated[float, Field(gt=0)], ...], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SafetyLimits:
        if (self.low is None) != (self.high is None):
            raise invalid("low and high must be given together", "high" if self.high is None else "low")
        if self.low is not None and self.high is not None:
            if len(self.low) != len(self.high):
                raise invalid(f"has {len(self.high)} entries but SafetyLimits.low has {len(self.low)}", "high")
            for i, (lo, hi) in enumerate(zip(self.low, self.high, strict=True)):
                if lo > hi:
                    raise invalid(f"{lo} is above SafetyLimits.high[{i}] ({hi})", "low", i)
        if self.max_rate is not None and self.low is not None and len(self.max_rate) != len(self.low):
            raise invalid(f"has {len(self.max_rate)} entries but SafetyLimits.low has {len(self.low)}", "max_rate")
        return self

    @property
    def dim(self) -> int | None:
        for values in (self.low, self.max_rate):
            if values is not None:
                return len(values)
        return None

    def check_dim(self, dim: int) -> None:
        """Raises when the limits do not fit an action with ``dim`` dimensions."""
        for name in ("low", "high", "max_rate"):
            values = getattr(self, name)
            if values is not None and len(values) != dim:
                raise ValueError(f"SafetyLimits.{name} has {len(values)} entries but the action has {dim} dimensions")

    @classmethod
    def from_spec(cls, spec: ArraySpec, max_rate: float | Sequence[float] | None = None) -> SafetyLimits:
        """The action spec's own low/high (if any), plus a rate limit: one number for every dimension, or one each."""
        dim = int(np.prod(spec.shape))
        if max_rate is not None and not isinstance(max_rate, Sequence):
            max_rate = (float(max_rate),) * dim
        limits = cls(
            low=spec.low if spec.low and spec.high else None,
            high=spec.high if spec.low and spec.high else None,
            max_rate=max_rate,
        )
        limits.check_dim(dim)
        return limits


class SafeDriver(EmergencyStoppable):
    """Wraps a Driver: clamps every action, holds when actions stop coming, and latches an emergency stop.

    Rate limit: each action may differ from the last applied one by at most ``max_rate * dt``, where ``dt`` is
    the control period from the capabilities (the agent calls ``apply`` once per period and never bursts to
    catch up, so a stall never buys a bigger jump), or the measured time since the last apply (at most 0.1 s)
    when the capabilities give no rate. After ``reset`` the reference is the driver's
    ``action_from_observation(observation)`` when it ``HoldsPosition`` (a position-controlled arm: where it is now);
    otherwise the first action of an episode is only position-clamped.
    """

    def __init__(
        self,
        driver: Driver,
        limits: SafetyLimits | None = None,
        watchdog_s: float | None = 0.25,
        name: str = "robot",
        on_event: Callable[[str], None] | None = None,
        log_every_s: float = 5.0,
    ) -> None:
        caps = driver.capabilities
        self._dim = int(np.prod(caps.action.shape))
        self.limits = limits if limits is not None else SafetyLimits.from_spec(caps.action)
        self.limits.check_dim(self._dim)
        self._period = 1.0 / caps.control_hz if caps.control_hz > 0 else None
        if watchdog_s is not None:
            if not (isinstance(watchdog_s, int | float) and math.isfinite(watchdog_s) and watchdog_s > 0):
                raise ValueError(f"watchdog_s must be a positive number of seconds, got {watchdog_s!r}")
            if self._period is not None and watchdog_s <= self._period:
                raise ValueError(
                    f"watchdog_s ({watchdog_s} s) must be longer than one control period "
                    f"({self._period:.3f} s at {caps.control_hz:g} Hz), or it trips between two ticks"
                )
        if log_every_s < 0:
            raise ValueError(f"log_every_s must be >= 0, got {log_every_s}")
        self.driver = driver
        self.name = name
        self.watchdog_s = watchdog_s
        self.log_every_s = log_every_s
        self._on_event = on_event
        self._low = None if self.limits.low is None else np.asarray(self.limits.low, dtype=np.float64)
        self._high = None if self.limits.high is None else np.asarray(self.limits.high, dtype=np.float64)
        self._rate = None if self.limits.max_rate is None else np.asarray(self.limits.max_rate, dtype=np.float64)

        self._lock = threading.Lock()  # every call into the driver, and the state below
        self._last_action: np.ndarray | None = None  # flat float64: the reference for the rate limit
        self._last_apply_t: float | None = None
        self._last_observation: dict[str, np.ndarray] = {}
        self._holding = False
        self._stopped = False
        self._stop_reason = ""
        self.counts = SafetyCounts()
        self._clamp_log_t = -math.inf
        self._clamps_unreported = 0

        # Watchdog state, read by its thread without the lock (single attribute reads are atomic).
        self._fresh_t = 0.0  # monotonic time the latest apply call arrived
        self._armed = False  # only after an apply: before it nothing has been commanded to move
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._watchdog: threading.Thread | None = None
        if watchdog_s is not None:
            self._watchdog = threading.Thread(target=self._watch, name=f"{name}-watchdog", daemon=True)
            self._watchdog.start()

    # --- Driver protocol -------------------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self.driver.capabilities

    def reset(self) -> dict[str, np.ndarray]:
        self._armed = False  # a reset may take long (connecting, a sim rebuilding); it commands no motion
        with self._lock:
            observation = self.driver.reset()
            self._last_observation = observation
            self._holding = False
            self._last_apply_t = None
            current = (
                self.driver.action_from_observation(observation) if isinstance(self.driver, HoldsPosition) else None
            )
            self._last_action = None if current is None else np.asarray(current, dtype=np.float64).reshape(-1)
        return observation

    def apply(self, action: np.ndarray) -> Transition:
        now = time.monotonic()
        self._fresh_t = now
        with self._lock:
            if self._stopped:
                self.counts.refused += 1
                self.driver.hold()
                self._holding = True
                self._armed = False
                return Transition(self._last_observation, 0.0, False, False, {"emergency_stop": True})
            safe, notes = self._make_safe(action, now)
            if self._holding:
                self._holding = False
                # Routine (a policy that answered late, a robot given a task): information, not a warning.
                if self._last_apply_t is not None:
                    gap = now - self._last_apply_t
                    self._emit(f"{self.name}: moving again (the first action in {gap:.2f} s)", logging.INFO)
                else:
                    self._emit(f"{self.name}: moving again (a new action after holding still)", logging.INFO)
            transition = self.driver.apply(safe.astype(self.capabilities.action.numpy_dtype).reshape(self._shape))
            self._last_action = safe
            self._last_apply_t = now
            self._last_observation = transition.observation
            if notes:
                self.counts.clamps += 1
                self._report_clamp(notes, now)
        if self._watchdog is not None and not self._armed:
            self._armed = True
            self._wake.set()
        return transition

    def hold(self) -> None:
        self._armed = False
        with self._lock:
            self.driver.hold()
            self._holding = True

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=1.0)
        with self._lock:
            self.driver.close()

    # --- emergency stop --------------------------------------------------------------------------------------

    def emergency_stop(self, reason: str = "requested") -> None:
        """Holds at once and refuses every later action until ``release_emergency_stop``. Safe from any thread."""
        already = self._stopped
        self._stopped = True  # first: an apply waiting for the lock is refused
        self._stop_reason = reason
        self._armed = False
        self._hold_now()
        if not already:
            self._emit(f"{self.name}: EMERGENCY STOP ({reason}); holding still and refusing actions until released")

    def release_emergency_stop(self) -> None:
        with self._lock:
            if not self._stopped:
                return
            self._stopped = False
            refused, self.counts.refused = self.counts.refused, 0
        self._emit(
            f"{self.name}: emergency stop ({self._stop_reason}) released after refusing {refused} actions; "
            "the next action moves the robot again"
        )

    # --- state ----------------------------------------------------------------------------------------------

    @property
    def holding(self) -> bool:
        return self._holding

    @property
    def stopped(self) -> bool:
        return self._stopped

    # --- internals ------------------------------------------------------------------------------------------

    def _emit(self, message: str, level: int = logging.WARNING) -> None:
        if self._on_event is not None:
            self._on_event(message)
        else:
            log.log(level, "%s", message)

    @property
    def _shape(self) -> tuple[int, ...]:
        return self.capabilities.action.shape

    def _make_safe(self, action: np.ndarray, now: float) -> tuple[np.ndarray, list[tuple[int, float, float, str]]]:
        """Returns the flat float64 action to send and, per clamped dimension, (index, asked, sent, why)."""
        asked = np.asarray(action, dtype=np.float64).reshape(-1)
        if asked.size != self._dim:
            raise ValueError(f"{self.name}: action has {asked.size} values, expected {self._dim}")
        safe = asked.copy()
        notes: list[tuple[int, float, float, str]] = []
        bad = ~np.isfinite(safe)
        if bad.any():  # keep still in those dimensions: the last action, else the middle of the range, else 0
            if self._last_action is not None:
                fallback = self._last_action
            elif self._low is not None and self._high is not None:
                fallback = (self._low + self._high) / 2
            else:
                fallback = np.zeros(self._dim)
            safe[bad] = fallback[bad]
            notes += [(int(i), float(asked[i]), float(safe[i]), "not a finite number") for i in np.flatnonzero(bad)]
        if self._low is not None and self._high is not None:
            clipped = np.clip(safe, self._low, self._high)
            changed = np.flatnonzero((clipped != safe) & ~bad)
            notes += [(int(i), float(asked[i]), float(clipped[i]), "position limit") for i in changed]
            safe = clipped
        if self._rate is not None and self._last_action is not None:
            if self._period is not None:
                dt = self._period
            else:
                dt = min(now - self._last_apply_t, 0.1) if self._last_apply_t is not None else 0.1
            step = self._rate * dt
            limited = np.clip(safe, self._last_action - step, self._last_action + step)
            changed = np.flatnonzero(limited != safe)
            notes += [(int(i), float(safe[i]), float(limited[i]), "rate limit") for i in changed]
            safe = limited
        return safe, notes

    def _report_clamp(self, notes: list[tuple[int, float, float, str]], now: float) -> None:
        # A policy that clamps every tick would otherwise write 30 lines a second.
        if now - self._clamp_log_t < self.log_every_s:
            self._clamps_unreported += 1
            return
        parts = [f"action dimension {i} clamped from {a:.2f} to {s:.2f} ({why})" for i, a, s, why in notes[:3]]
        if len(notes) > 3:
            parts.append(f"{len(notes) - 3} more dimensions")
        message = f"{self.name}: " + "; ".join(parts)
        if self._clamps_unreported:
            message += f" (and {self._clamps_unreported} more clamped actions since the last report)"
        self._clamps_unreported = 0
        self._clamp_log_t = now
        self._emit(message)

    def _hold_now(self) -> None:
        """Holds through the lock; if a driver call is stuck holding it, holds without it."""
        if self._lock.acquire(timeout=_LOCK_WAIT_S):
            try:
                self.driver.hold()
                self._holding = True
            finally:
                self._lock.release()
            return
        self._emit(f"{self.name}: a driver call is stuck; the emergency stop holds without waiting for it")
        self.driver.hold()
        self._holding = True

    def _watch(self) -> None:
        assert self.watchdog_s is not None
        while not self._closing.is_set():
            self._wake.clear()
            if not self._armed:
                self._wake.wait()  # until the next apply arms it, or close
                continue
            overdue = time.monotonic() - self._fresh_t
            if overdue < self.watchdog_s:
                self._wake.wait(self.watchdog_s - overdue)
                continue
            self._trip()

    def _trip(self) -> None:
        assert self.watchdog_s is not None
        locked = self._lock.acquire(timeout=_LOCK_WAIT_S)
        try:
            overdue = time.monotonic() - self._fresh_t
            if overdue < self.watchdog_s or not self._armed or self._stopped:
                return  # an apply, reset, hold or stop came in meanwhile
            self._armed = False  # hold once, then wait for the next apply to arm it again
            self.counts.watchdog_trips += 1
            if not locked:
                self._emit(f"{self.name}: a driver call is stuck; the watchdog holds without waiting for it")
            self.driver.hold()
            self._holding = True
        finally:
            if locked:
                self._lock.release()
        self._emit(f"{self.name}: no fresh action for {overdue:.2f} s; holding still")
