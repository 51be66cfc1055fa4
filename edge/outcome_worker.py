"""The reward classifier judging a robot's episodes off its control thread (``fleetloop edge --outcome-from``).

The cloud pushes the classifier's versions down the tunnel like a policy's, under its own name. The control loop hands
the worker each tick's frame through a one-slot mailbox (``offer``: the newest frame replaces one not yet judged, so
the loop never waits on a classifier that takes a few hundred milliseconds a frame) and asks, each tick, whether the
worker said success on a frame of the episode that runs now (``take_success``): a verdict on an earlier episode's
frame is dropped, never applied to the next one. A newer version is loaded and swapped in on the worker, between two
frames. A version that is no reward classifier, or sees a camera this robot lacks, is refused with a log line and
reported rejected as unusable (the cloud does not send it again).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge.outcome import OutcomeJudge, OutcomeJudgeConfig
from hal.resource import ArraySpec
from policies.base import Policy
from policies.reward_classifier import RewardClassifier
from policies.updates import DeltaBaseError, HeldState, apply_update
from protocol.steps import MAX_ID_LENGTH

log = logging.getLogger("fleetloop.edge")


@dataclass(frozen=True)
class Success:
    """The classifier said success on a frame of ``episode``."""

    episode: str
    by: str  # who says so, as the episode's label records it: "reward-classifier <name> v<N>"
    probability: float
    streak: int  # frames in a row above the threshold


def unusable(policy: Policy, observation: Sequence[ArraySpec]) -> str:
    """Why ``policy`` cannot judge a robot that observes ``observation``; "" when it can."""
    if not isinstance(policy, RewardClassifier):
        return f"a {policy.type_name} policy, not a reward classifier"
    specs = {spec.name: spec for spec in observation}
    for camera, spec in policy.config.observation.items():
        mine = specs.get(camera)
        if mine is None:
            cameras = ", ".join(name for name, s in specs.items() if np.dtype(s.dtype) == np.uint8) or "none"
            return f"it sees camera {camera!r}, which this robot lacks (its cameras: {cameras})"
        if np.dtype(mine.dtype) != np.uint8 or tuple(mine.shape) != tuple(spec.shape):
            shape = tuple(mine.shape)
            return f"camera {camera!r} gives {mine.dtype} {shape} here; it was trained on uint8 {tuple(spec.shape)}"
    return ""


class OutcomeWorker:
    """Judges the running episode's frames on its own thread. ``on_applied(name, version, bytes)`` and
    ``on_rejected(name, version, reason, bad)`` report each version to the cloud (from the worker thread)."""

    def __init__(
        self,
        resource_id: str,
        observation: Sequence[ArraySpec],
        config: OutcomeJudgeConfig,
        on_applied: Callable[[str, int, int], None],
        on_rejected: Callable[[str, int, str, bool], None],
    ) -> None:
        self.resource_id = resource_id
        self.observation = tuple(observation)
        self.config = config
        self._on_applied, self._on_rejected = on_applied, on_rejected
        self._lock = threading.Condition()
        self._frame: tuple[str, dict[str, np.ndarray]] | None = None  # the newest frame not yet judged
        self._weights: tuple[str, int, bytes] | None = None  # the newest version not yet loaded
        self._success: Success | None = None
        self._closed = False
        self.judge: OutcomeJudge | None = None
        self.name, self.version = "", 0
        self._cameras: tuple[str, ...] = ()  # the cameras the loaded classifier sees
        self._held: dict[int, HeldState] = {}  # the loaded version's tensors: the base a delta applies to
        self._episode = ""  # the episode whose frames the judge's streak counts
        self._failed_version = 0  # a version whose judging failed (logged once)
        self.judged = 0  # frames judged so far
        self._thread = threading.Thread(target=self._run, name="outcome-judge", daemon=True)
        self._thread.start()

    def load(self, name: str, version: int, weights: bytes) -> None:
        """A verified version from the tunnel thread; returns at once (a newer one replaces one not yet loaded)."""
        with self._lock:
            if self._weights is None or version > self._weights[1]:
                self._weights = (name, version, weights)
                self._lock.notify()

    def offer(self, episode: str, observation: Mapping[str, np.ndarray]) -> None:
        """This tick's frame of ``episode``, from the control thread; never waits on the classifier."""
        cameras = self._cameras
        if not cameras:  # no classifier yet: nothing to judge
            return
        frames = {name: np.array(observation[name], copy=True) for name in cameras if name in observation}
        with self._lock:
            self._frame = (episode, frames)
            self._lock.notify()

    def take_success(self, episode: str) -> Success | None:
        """The worker's success on a frame of ``episode``, once; one on an earlier episode's frame is dropped."""
        with self._lock:
            success, self._success = self._success, None
        return success if success is not None and success.episode == episode else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and self._weights is None and self._frame is None:
                    self._lock.wait()
                if self._closed:
                    return
                weights, self._weights = self._weights, None
                frame = None
                if weights is None:  # a new version first: it is swapped in between two frames
                    frame, self._frame = self._frame, None
            if weights is not None:
                self._load(*weights)
            elif frame is not None:
                self._judge(*frame)

    def _load(self, name: str, version: int, weights: bytes) -> None:
        if version <= self.version:
            log.info("%s already judges with %s v%d; v%d is not newer", self.resource_id, name, self.version, version)
            return
        try:
            policy, held = apply_update(weights, self._held)
        except DeltaBaseError as err:  # on a version it does not hold: a snapshot will do
            log.warning("%s could not apply reward classifier %s v%d: %s", self.resource_id, name, version, err)
            self._on_rejected(name, version, str(err), False)
            return
        except Exception as err:  # weights that build nothing (or are not the learner's): sent again, still not
            self._refuse(name, version, f"cannot build it: {err}")
            return
        problem = unusable(policy, self.observation)
        if problem or not isinstance(policy, RewardClassifier):
            self._refuse(name, version, problem)
            return
        if self.judge is None:
            self.judge = OutcomeJudge(policy, self.config)
        else:
            self.judge.swap(policy)
        self._held = {version: dataclasses.replace(held, version=version)}
        self.name, self.version, self._cameras = name, version, tuple(policy.cameras)
        log.info("%s judges success with reward classifier %s v%d", self.resource_id, name, version)
        self._on_applied(name, version, len(weights))

    def _refuse(self, name: str, version: int, problem: str) -> None:
        """A version this robot cannot use: said, and reported unusable so that the cloud does not send it again."""
        log.error("%s refuses %s v%d as its reward classifier: %s", self.resource_id, name, version, problem)
        self._on_rejected(name, version, problem, True)

    def _judge(self, episode: str, frames: dict[str, np.ndarray]) -> None:
        judge = self.judge
        if judge is None:
            return
        if episode != self._episode:  # a new episode: the last one's frames do not count
            judge.reset()
            self._episode = episode
        try:
            verdict = judge.judge(frames)
        except Exception as err:  # a frame the classifier cannot take: say so once per version, judge on
            if self._failed_version != self.version:
                self._failed_version = self.version
                log.error(
                    "%s: reward classifier %s v%d cannot judge a frame: %s",
                    self.resource_id,
                    self.name,
                    self.version,
                    err,
                )
            return
        self.judged += 1
        if verdict.success:
            by = f"reward-classifier {self.name} v{self.version}"[:MAX_ID_LENGTH]
            with self._lock:
                self._success = Success(episode, by, verdict.probability, verdict.streak)
