"""Remote inference at the edge: a PolicyRuntime (edge.runtime) whose policy runs in the cloud.

The control loop still calls ``begin_tick`` and ``next_action`` once per tick and never waits on the network.
Observations go up the tunnel when the queue of scheduled actions runs low; each reply is a chunk of
actions for consecutive ticks from the moment of its observation. Actions whose moment has already passed
(the round trip took longer than a tick) are dropped, and where a new chunk overlaps actions still queued
the two are blended, with the new chunk's weight rising along the overlap, so the robot does not jump.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge.runtime import PolicyRuntime
from policies.tensor_view import Buffer
from protocol import tunnel_pb2 as pb
from protocol.arrays import decode_array, encode_array
from protocol.sanitize import printable

log = logging.getLogger("fleetloop.remote")


@dataclass
class ScheduledAction:
    due: float  # monotonic time of the tick this action is for
    action: np.ndarray
    version: int


class ActionSchedule:
    """Timed actions from overlapping chunks: drops the late, blends the overlap. Thread-safe."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._queue: list[ScheduledAction] = []
        self._lock = threading.Lock()
        self.dropped_late = 0
        self.blended = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def add_chunk(self, first_due: float, chunk: np.ndarray, version: int, now: float) -> None:
        half = self.period_s / 2
        incoming = [ScheduledAction(first_due + i * self.period_s, np.asarray(a), version) for i, a in enumerate(chunk)]
        fresh = [item for item in incoming if item.due >= now - half]
        with self._lock:
            self.dropped_late += len(incoming) - len(fresh)
            old = [item for item in self._queue if item.due >= now - half]
            self.dropped_late += len(self._queue) - len(old)
            overlap = [(o, n) for o in old for n in fresh if abs(o.due - n.due) < half]
            for k, (o, n) in enumerate(overlap):
                weight = (k + 1) / (len(overlap) + 1)  # the new chunk takes over gradually
                n.action = (weight * n.action + (1 - weight) * o.action).astype(np.float32)
            self.blended += len(overlap)
            replaced = {id(o) for o, _ in overlap}
            self._queue = sorted([o for o in old if id(o) not in replaced] + fresh, key=lambda item: item.due)

    def pop(self, now: float) -> ScheduledAction | None:
        """The action for the tick at ``now``; actions for earlier ticks are dropped as late."""
        half = self.period_s / 2
        with self._lock:
            while self._queue and self._queue[0].due < now - half:
                self._queue.pop(0)
                self.dropped_late += 1
            if self._queue and self._queue[0].due <= now + half:
                return self._queue.pop(0)
        return None


class RemotePolicyRuntime(PolicyRuntime):
    """Observations go up the tunnel (``send``), chunks of actions come back (``on_reply``, on the tunnel thread)."""

    def __init__(
        self,
        period_s: float,
        send: Callable[[pb.InferenceRequest], bool],
        observation_dtypes: dict[str, str],
        on_swapped: Callable[[str, int], None] | None = None,
        policy_name: str = "",
        low_water: int = 2,
        request_timeout_s: float = 2.0,
    ) -> None:
        self.schedule = ActionSchedule(period_s)
        self._send = send
        self._dtypes = observation_dtypes
        self._on_swapped = on_swapped
        self.policy_name = policy_name
        self.low_water = low_water  # ask for the next chunk while this many actions are still queued
        self.request_timeout_s = request_timeout_s
        self._next_id = 1
        self._in_flight: tuple[int, float] | None = None  # request id, sent at
        self._lock = threading.Lock()
        self._answered = threading.Condition()
        self._version = 0
        self._reported = 0
        self.swaps = 0
        self.late_inferences = 0  # ticks with no action ready
        self.rollbacks = 0
        self.errors = 0

    @property
    def version(self) -> int:
        return self._version

    @property
    def update_bytes(self) -> int:
        return 0  # no weights come to this edge

    def load(self, name: str, version: int, weights: Buffer) -> None:
        log.warning("policy %s v%d arrived although this edge uses remote inference; ignored", name, version)

    def begin_tick(self) -> bool:
        """Reports a new version once its first actions are about to be applied (between ticks)."""
        if self._version != self._reported:
            self._reported = self._version
            self.swaps += 1
            if self._on_swapped:
                self._on_swapped(self.policy_name, self._version)
            return True
        return False

    def reset(self) -> None:
        self.schedule.clear()
        with self._lock:
            self._in_flight = None

    def next_action(self, observation: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray | None, int]:
        """Like a local policy: waits at most until ``deadline`` (part of this tick) for an answer in flight."""
        now = time.monotonic()
        self._maybe_request(observation, now)
        scheduled = self.schedule.pop(now)
        if scheduled is None:
            with self._answered:
                self._answered.wait_for(
                    lambda: self._in_flight is None or len(self.schedule) > 0, timeout=max(0.0, deadline - now)
                )
            scheduled = self.schedule.pop(now)
        if scheduled is None:
            self.late_inferences += 1
            return None, self._version
        return scheduled.action, scheduled.version

    def _maybe_request(self, observation: dict[str, np.ndarray], now: float) -> None:
        with self._lock:
            if self._in_flight is not None and now - self._in_flight[1] < self.request_timeout_s:
                return
            if len(self.schedule) > self.low_water:
                return
            request_id, self._next_id = self._next_id, self._next_id + 1
            self._in_flight = (request_id, now)
        request = pb.InferenceRequest(request_id=request_id, observed_mono_ns=int(now * 1e9))
        for name, dtype in self._dtypes.items():
            request.observation[name].CopyFrom(encode_array(np.asarray(observation[name], dtype=dtype)))
        if not self._send(request):  # no link: try again at a later tick
            with self._lock:
                self._in_flight = None

    def on_reply(self, reply: pb.InferenceReply) -> None:
        """Runs on the tunnel thread."""
        with self._lock:
            if self._in_flight is None or self._in_flight[0] != reply.request_id:
                return  # an answer to a request from before a reset or a timeout
            sent_at = self._in_flight[1]
            self._in_flight = None
        if reply.error:
            self.errors += 1
            if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
                log.warning("remote inference: %s", printable(reply.error))
            return
        try:
            chunk = decode_array(reply.actions, "actions")
        except ValueError as exc:
            log.error("remote inference sent unusable actions: %s", exc)
            return
        if chunk.ndim != 2 or not np.isfinite(chunk).all():
            log.error("remote inference sent actions of shape %s or non-finite ones; ignored", chunk.shape)
            return
        self._version = reply.policy_version
        self.schedule.add_chunk(sent_at, chunk.astype(np.float32), reply.policy_version, time.monotonic())
        with self._answered:
            self._answered.notify_all()

    def close(self) -> None:
        self.schedule.clear()
