"""The local policy runtime: inference and weight loading off the control thread, swaps between ticks.

The control thread only ever calls ``begin_tick`` (which swaps a ready policy in with one
assignment) and ``next_action`` (which waits for an inference at most until the tick's
deadline). Loading and inference run on their own threads.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from edge.runtime import PolicyRuntime
from policies.base import Policy
from policies.tensor_view import Buffer
from policies.updates import DeltaBaseError, HeldState, apply_update
from policies.weights import read_metadata

log = logging.getLogger("fleetloop.runtime")


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    version: int
    name: str
    update_bytes: int = 0  # size of the update that brought it (a delta is a fraction of the model)


HELD_VERSIONS = 3  # versions whose tensors stay at hand as bases for deltas (unchanged tensors are shared)


class LocalPolicyRuntime(PolicyRuntime):
    """The policy runs on this edge; versions arrive as weights (snapshots or deltas) down the tunnel."""

    def __init__(
        self,
        on_swapped: Callable[[str, int], None] | None = None,
        on_rejected: Callable[[str, int, str, bool], None] | None = None,
    ) -> None:
        self._held: dict[int, HeldState] = {}
        # on_rejected(name, version, reason, bad): bad means the version itself misbehaved, not only its update
        self._on_rejected = on_rejected
        self._previous: LoadedPolicy | None = None  # what to roll back to when a new version misbehaves
        self._misbehaved: int | None = None  # a version whose outputs were not finite
        self.bad_versions: set[int] = set()
        self._rollback_to = 0  # an older version the cloud rolled this edge back to (``roll_back_to``)
        self.rollbacks = 0
        self._active: LoadedPolicy | None = None
        self._ready: LoadedPolicy | None = None  # loaded, waiting for the next tick boundary
        self._load_queue: queue.Queue[tuple[str, int, bytes] | None] = queue.Queue()
        # Unbounded, but the control thread keeps at most one inference in flight.
        self._infer_queue: queue.Queue[tuple[LoadedPolicy, dict, Future] | None] = queue.Queue()
        self._actions: deque[np.ndarray] = deque()
        self._in_flight: Future | None = None
        self._on_swapped = on_swapped
        self.swaps = 0
        self.late_inferences = 0
        self._threads = [
            threading.Thread(target=self._load_loop, name="policy-loader", daemon=True),
            threading.Thread(target=self._infer_loop, name="policy-inference", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def version(self) -> int:
        return self._active.version if self._active else 0

    @property
    def active(self) -> LoadedPolicy | None:
        return self._active

    @property
    def update_bytes(self) -> int:
        return self._active.update_bytes if self._active else 0

    def load(self, name: str, version: int, weights: Buffer) -> None:
        """Queues verified weights for loading; returns at once."""
        self._load_queue.put((name, version, weights))

    def _load_loop(self) -> None:
        while (item := self._load_queue.get()) is not None:
            name, version, weights = item
            try:
                started = time.perf_counter()
                _warn_if_importing_lerobot(name, version, weights)
                policy, held = apply_update(weights, self._held)
                policy.eval()
                policy.reset()
                self._held[version] = dataclasses.replace(held, version=version)
                for old in sorted(self._held)[:-HELD_VERSIONS]:
                    del self._held[old]
                self._ready = LoadedPolicy(policy, version, name, len(weights))
                log.info(
                    "policy %s v%d loaded from a %.2f MB update in %.0f ms; swapping in at the next tick",
                    name,
                    version,
                    len(weights) / 1e6,
                    (time.perf_counter() - started) * 1000,
                )
            except DeltaBaseError as exc:  # a delta on a version this edge no longer holds: ask for a snapshot
                log.warning("policy %s v%d not applied, keeping v%d: %s", name, version, self.version, exc)
                if self._on_rejected:
                    self._on_rejected(name, version, str(exc), False)
            except Exception as exc:  # a bad version must not stop the robot: keep the current policy, and keep it off
                log.error("policy %s v%d refused, keeping v%d: %s", name, version, self.version, exc)
                if self._on_rejected:
                    self._on_rejected(name, version, str(exc), True)

    def begin_tick(self) -> bool:
        """Swaps in a newly loaded policy (between ticks, atomically). Returns True on a swap."""
        active = self._active
        if active is not None and self._misbehaved == active.version:
            self._roll_back(active)
            return True
        ready = self._ready
        if ready is None or ready.version in self.bad_versions:
            return False
        if self._active and ready.version <= self._active.version and not self._rolls_back(ready):
            return False
        self._ready = None
        self._previous = self._active
        self._active = ready
        self._actions.clear()  # actions predicted by the old version are not applied after the swap
        self._in_flight = None
        self.swaps += 1
        if self._on_swapped:
            self._on_swapped(ready.name, ready.version)
        return True

    def roll_back_to(self, name: str, bad: int, to: int) -> None:
        """The cloud rolled ``bad`` back (a canary that did worse, or an operator's decision): it is never swapped in
        again, and ``to`` may replace it although it is older. Only the authenticated tunnel says so, and ``to``'s
        weights still pass the learner's signature before they reach ``load``."""
        self.bad_versions.add(bad)
        self._rollback_to = to
        log.warning("the cloud rolled back policy %s v%d; going back to v%d when it arrives", name, bad, to)

    def _rolls_back(self, ready: LoadedPolicy) -> bool:
        """Whether ``ready`` is the older version the cloud rolled back to, replacing a version it rolled back."""
        active = self._active
        return active is not None and ready.version == self._rollback_to and active.version in self.bad_versions

    def _roll_back(self, bad: LoadedPolicy) -> None:
        """Back to the version before ``bad`` (or to none): its steps are labelled with that older version."""
        self._misbehaved = None
        self.bad_versions.add(bad.version)
        self._active, self._previous = self._previous, None
        self._actions.clear()
        self._in_flight = None
        self.rollbacks += 1
        back_to = f"v{self._active.version}" if self._active else "no policy (the robot holds or the operator drives)"
        log.error("policy %s v%d gave non-finite actions: rolled back to %s", bad.name, bad.version, back_to)
        if self._on_rejected:
            self._on_rejected(bad.name, bad.version, "non-finite actions: rolled back", True)
        if self._active and self._on_swapped:
            self._on_swapped(self._active.name, self._active.version)

    def reset(self) -> None:
        """New episode: drop queued actions and the policy's history."""
        self._actions.clear()
        self._in_flight = None
        if self._active:
            self._infer_queue.put((self._active, {"__reset__": True}, Future()))

    def next_action(self, observation: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray | None, int]:
        """The next action of the active policy and its version; None if none is ready by ``deadline``."""
        active = self._active
        if active is None:
            return None, 0
        if not self._actions:
            if self._in_flight is None:
                self._in_flight = Future()
                self._infer_queue.put((active, observation, self._in_flight))
            try:
                chunk, version = self._in_flight.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                self.late_inferences += 1
                return None, active.version
            except Exception:  # logged by the inference thread; the operator or a hold covers this tick
                self._in_flight = None
                return None, active.version
            self._in_flight = None
            if version != active.version:
                return None, active.version
            self._actions.extend(chunk)
        return self._actions.popleft(), active.version

    def _infer_loop(self) -> None:
        while (item := self._infer_queue.get()) is not None:
            loaded, observation, future = item
            try:
                if "__reset__" in observation:
                    loaded.policy.reset()
                    continue
                chunk = np.asarray(loaded.policy.act(observation), dtype=np.float32)
                if not np.isfinite(chunk).all():
                    self._misbehaved = loaded.version  # the control thread rolls back at the next tick
                    raise ValueError(f"policy v{loaded.version} returned non-finite actions")
                future.set_result((chunk, loaded.version))
            except Exception as exc:
                log.error("inference with policy v%d failed: %s", loaded.version, exc)
                future.set_exception(exc)

    def close(self) -> None:
        self._load_queue.put(None)
        self._infer_queue.put(None)


def _warn_if_importing_lerobot(name: str, version: int, weights: Buffer) -> None:
    """Rebuilding the first lerobot policy imports lerobot on this thread, which stalls the control loop for
    seconds (extension modules load under the GIL): say so, and how to avoid it."""
    try:
        lerobot = read_metadata(weights).get("type") == "lerobot"
    except ValueError:
        return  # apply_update names what is wrong with it
    if lerobot and "lerobot.policies.factory" not in sys.modules:
        log.warning(
            "policy %s v%d is a lerobot policy and lerobot is not imported yet: importing it now stalls the "
            "control loop (p99 tick error ~100 ms for a few seconds); start edges that run lerobot policies with "
            "--preload lerobot",
            name,
            version,
        )
