"""``OutcomeWorker``: the reward classifier judging frames off the control thread, with real tiny classifiers (their
last layer set to always, or never, say success): the one-slot mailbox, verdicts on an earlier episode's frames, swaps
between frames, deltas, and versions it cannot use."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from edge.outcome import OutcomeJudgeConfig
from edge.outcome_worker import OutcomeWorker
from hal.resource import ArraySpec
from policies.factory import make_policy
from policies.updates import WireState, build_update
from policies.weights import policy_to_bytes
from tests.policies.reward_frames import SIZE, constant_classifier

pytestmark = pytest.mark.usefixtures("two_torch_threads")

NAME = "cell.reward"
OBSERVATION = (ArraySpec("front", "uint8", (SIZE, SIZE, 3)), ArraySpec("state", "float32", (3,)))


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def frame(value: int = 0) -> dict[str, np.ndarray]:
    return {"front": np.full((SIZE, SIZE, 3), value, np.uint8), "state": np.zeros(3, np.float32)}


class Reports:
    """What the worker reported to the cloud."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, int, int]] = []
        self.rejected: list[tuple[str, int, str, bool]] = []

    def worker(self, consecutive: int = 3) -> OutcomeWorker:
        config = OutcomeJudgeConfig(threshold=0.5, consecutive=consecutive)
        return OutcomeWorker(
            "robot-1",
            OBSERVATION,
            config,
            lambda *a: self.applied.append(a),
            lambda *a: self.rejected.append(a),
        )


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def worker(reports: Reports):
    worker = reports.worker()
    yield worker
    worker.close()


def load(worker: OutcomeWorker, reports: Reports, weights: bytes, version: int) -> None:
    seen = len(reports.applied) + len(reports.rejected)
    worker.load(NAME, version, weights)
    wait_for(lambda: len(reports.applied) + len(reports.rejected) > seen, f"v{version} applied or rejected")


def judge(worker: OutcomeWorker, episode: str, n: int, value: int = 0) -> None:
    """Offers ``n`` frames of ``episode`` one at a time, each judged before the next."""
    for _ in range(n):
        judged = worker.judged
        worker.offer(episode, frame(value))
        wait_for(lambda: worker.judged > judged, "a frame judged")  # noqa: B023 (judged is read at once)


YES, NO = policy_to_bytes(constant_classifier(True)), policy_to_bytes(constant_classifier(False))


def test_success_after_n_frames_in_a_row_of_the_running_episode(worker, reports, caplog) -> None:
    worker.offer("e1", frame())  # no classifier yet: nothing is judged, nothing waits
    assert worker.take_success("e1") is None
    with caplog.at_level(logging.INFO, logger="fleetloop.edge"):
        load(worker, reports, YES, 1)
    assert reports.applied == [(NAME, 1, len(YES))]
    assert "robot-1 judges success with reward classifier cell.reward v1" in caplog.text
    judge(worker, "e1", 2)
    assert worker.take_success("e1") is None  # 2 of 3 frames
    judge(worker, "e1", 1)
    success = worker.take_success("e1")
    assert success is not None and success.by == "reward-classifier cell.reward v1" and success.streak == 3
    assert success.probability > 0.99
    assert worker.take_success("e1") is None  # said once


def test_a_verdict_on_an_earlier_episodes_frame_never_ends_the_next(worker, reports) -> None:
    load(worker, reports, YES, 1)
    judge(worker, "e1", 3)  # success on e1's frames; e1 ended on its own before the loop asked
    assert worker.take_success("e2") is None
    assert worker.take_success("e1") is None  # dropped, not kept for later
    judge(worker, "e2", 2)  # the streak starts again with e2's frames: 2 of 3
    assert worker.take_success("e2") is None
    judge(worker, "e2", 1)
    assert worker.take_success("e2") is not None


def test_the_mailbox_holds_a_copy_of_the_newest_frame_and_the_control_thread_never_waits(worker, reports) -> None:
    load(worker, reports, YES, 1)
    assert worker.judge is not None
    release, busy, seen = threading.Event(), threading.Event(), []
    real = worker.judge.judge

    def slow(frames):  # a classifier far slower than a tick
        seen.append(int(frames["front"][0, 0, 0]))
        busy.set()
        release.wait(10)
        return real(frames)

    worker.judge.judge = slow  # type: ignore[method-assign]
    worker.offer("e1", frame(1))
    assert busy.wait(10)
    started = time.monotonic()
    for value in (2, 3, 4):  # the worker is busy with frame 1: each replaces the last one waiting
        observation = frame(value)
        worker.offer("e1", observation)
    assert time.monotonic() - started < 0.5
    observation["front"][:] = 0  # the driver reuses its buffer: what waits is a copy
    release.set()
    wait_for(lambda: worker.judged == 2, "frames 1 and 4 judged")
    time.sleep(0.1)
    assert seen == [1, 4] and worker.judged == 2


def test_a_newer_version_is_swapped_in_between_frames_and_its_streak_starts_again(worker, reports) -> None:
    load(worker, reports, YES, 1)
    judge(worker, "e1", 2)
    load(worker, reports, NO, 2)  # never says success
    assert reports.applied[-1][:2] == (NAME, 2) and worker.version == 2
    judge(worker, "e1", 5)
    assert worker.take_success("e1") is None
    load(worker, reports, policy_to_bytes(constant_classifier(True, seed=1)), 3)
    judge(worker, "e1", 2)
    assert worker.take_success("e1") is None  # the streak started again at the swap
    judge(worker, "e1", 1)
    success = worker.take_success("e1")
    assert success is not None and success.by == "reward-classifier cell.reward v3"
    applied = len(reports.applied)
    worker.load(NAME, 2, NO)  # an older version: not swapped back
    judge(worker, "e1", 1)
    assert worker.version == 3 and len(reports.applied) == applied


def test_a_delta_applies_on_the_version_it_holds(worker, reports) -> None:
    yes, no = constant_classifier(True), constant_classifier(False)  # one encoder, heads apart
    base = WireState.from_weights(policy_to_bytes(yes), 1)
    load(worker, reports, base_bytes := build_update(base).payload, 1)
    assert reports.applied[-1][:2] == (NAME, 1) and base_bytes
    delta = build_update(WireState.from_weights(policy_to_bytes(no), 2), base, max_delta_fraction=1.0)
    assert delta.kind == "delta"
    load(worker, reports, delta.payload, 2)
    assert reports.applied[-1] == (NAME, 2, len(delta.payload))
    judge(worker, "e1", 4)
    assert worker.take_success("e1") is None  # it judges with v2's head
    orphan = build_update(WireState.from_weights(policy_to_bytes(yes), 4), WireState.from_weights(YES, 3), 1.0)
    load(worker, reports, orphan.payload, 4)  # on v3, which it never held: a snapshot will do
    assert reports.rejected[-1][:2] == (NAME, 4) and reports.rejected[-1][3] is False
    assert "v3, which this edge does not hold" in reports.rejected[-1][2]


@pytest.mark.parametrize(
    ("weights", "why"),
    [
        (
            lambda: policy_to_bytes(
                make_policy("mlp", {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2})
            ),
            "a mlp policy, not a reward classifier",
        ),
        (lambda: policy_to_bytes(constant_classifier(True, ("wrist",))), "it sees camera 'wrist', which this robot"),
        (lambda: policy_to_bytes(constant_classifier(True, side=48)), "it was trained on uint8 (48, 48, 3)"),
        (lambda: b"not weights", "not a safetensors file"),
    ],
)
def test_a_version_it_cannot_use_is_refused_and_reported_unusable(worker, reports, caplog, weights, why) -> None:
    with caplog.at_level(logging.ERROR, logger="fleetloop.edge"):
        load(worker, reports, weights(), 1)
    assert reports.applied == [] and worker.version == 0
    name, version, reason, bad = reports.rejected[0]
    assert (name, version) == (NAME, 1) and why in reason
    assert bad, "a snapshot the same as this one would be refused again"
    assert "robot-1 refuses cell.reward v1 as its reward classifier: " in caplog.text and why in caplog.text
    load(worker, reports, YES, 2)  # it keeps working: the next good version is taken
    assert reports.applied == [(NAME, 2, len(YES))]
