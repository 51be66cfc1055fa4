"""Remote inference at the edge: late actions are dropped, overlapping chunks blended, requests paced."""

from __future__ import annotations

import threading
import time

import numpy as np

from edge.remote_runtime import ActionSchedule, RemotePolicyRuntime
from protocol import tunnel_pb2 as pb
from protocol.arrays import encode_array

PERIOD = 0.1


def chunk(values: list[float]) -> np.ndarray:
    return np.array([[v, -v] for v in values], np.float32)


def test_actions_whose_moment_passed_are_dropped() -> None:
    schedule = ActionSchedule(PERIOD)
    # A chunk observed at t=0 arrives at t=0.22: its actions for t=0 and t=0.1 are too late.
    schedule.add_chunk(0.0, chunk([1, 2, 3, 4]), version=1, now=0.22)
    assert schedule.dropped_late == 2
    assert schedule.pop(0.2).action[0] == 3
    assert schedule.pop(0.3).action[0] == 4
    assert schedule.pop(0.4) is None


def test_overlapping_chunks_blend_towards_the_new_one() -> None:
    schedule = ActionSchedule(PERIOD)
    schedule.add_chunk(0.0, chunk([0, 0, 0, 0]), version=1, now=0.0)
    schedule.add_chunk(0.1, chunk([9, 9, 9, 9, 9]), version=2, now=0.1)  # overlaps t=0.1, 0.2, 0.3
    assert schedule.blended == 3
    assert schedule.dropped_late == 1  # the old chunk's action for t=0 was due before the new one arrived
    got = [schedule.pop(t / 10).action[0] for t in range(1, 6)]
    np.testing.assert_allclose(got, [9 * 1 / 4, 9 * 2 / 4, 9 * 3 / 4, 9, 9])
    assert schedule.pop(0.6) is None


def test_the_runtime_asks_when_it_runs_low_and_the_loop_never_waits() -> None:
    sent: list[pb.InferenceRequest] = []
    swapped: list[int] = []
    runtime = RemotePolicyRuntime(
        PERIOD,
        send=lambda request: sent.append(request) or True,
        observation_dtypes={"state": "float32"},
        on_swapped=lambda name, version: swapped.append(version),
        policy_name="p",
        low_water=1,
    )
    observation = {"state": np.ones(3, np.float64)}
    started = time.monotonic()
    action, version = runtime.next_action(observation, deadline=time.monotonic() + 0.03)
    waited = time.monotonic() - started
    assert action is None and version == 0 and 0.02 < waited < 0.2  # waits for an answer only until the deadline
    assert len(sent) == 1 and sent[0].observation["state"].dtype == "<f4"
    runtime.next_action(observation, deadline=time.monotonic() + 0.01)
    assert len(sent) == 1, "one request in flight at a time"
    reply = pb.InferenceReply(request_id=sent[0].request_id, policy_version=3)
    reply.actions.CopyFrom(encode_array(chunk([5, 6, 7])))
    runtime.on_reply(reply)
    runtime.on_reply(reply)  # a duplicate answer is ignored
    assert runtime.begin_tick() and swapped == [3]
    values = []
    for _ in range(3):
        action, version = runtime.next_action(observation, deadline=time.monotonic() + 0.01)
        if action is not None:
            values.append(action[0])
        time.sleep(PERIOD)
    assert values and set(values) <= {5, 6, 7} and version == 3
    assert len(sent) == 2, "a new observation went up once the queue ran low"
    runtime.reset()
    assert len(runtime.schedule) == 0


def test_an_answer_within_the_tick_is_used_in_that_tick() -> None:
    runtime: RemotePolicyRuntime

    def answer_soon(request: pb.InferenceRequest) -> bool:
        def reply() -> None:
            time.sleep(0.01)
            answer = pb.InferenceReply(request_id=request.request_id, policy_version=1)
            answer.actions.CopyFrom(encode_array(chunk([4])))
            runtime.on_reply(answer)

        threading.Thread(target=reply, daemon=True).start()
        return True

    runtime = RemotePolicyRuntime(PERIOD, send=answer_soon, observation_dtypes={"state": "float32"})
    action, version = runtime.next_action({"state": np.zeros(3)}, deadline=time.monotonic() + PERIOD / 2)
    assert action is not None and action[0] == 4 and version == 1
