"""The cloud's inference server: continuous batching. A request that finds the policy idle goes into a forward
pass at once; requests that arrive during a pass share the next one; each reply names the version.

The policy here is a real MLP whose forward pass waits at a gate the test opens, so which requests share a pass
is decided by the test, not by the machine's speed."""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pytest
import torch

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import EpisodeStore
from cloud.gateway.config import GatewayConfig
from cloud.gateway.server import Gateway
from cloud.serving.inference import InferenceJob, InferenceServer
from policies.factory import make_policy
from policies.mlp import MLPPolicy
from policies.weights import policy_to_bytes
from protocol import tunnel_pb2 as pb
from protocol.arrays import decode_array, encode_array
from tests.e2e.raw_edge import RESOURCE, RawEdge

CONFIG = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "chunk_size": 4, "hidden": [8]}


class GatedMLP(MLPPolicy):
    """An MLP whose every forward pass says how many observations it got, then waits for the test's go."""

    type_name: ClassVar[str] = "test_gated_mlp"
    entered: ClassVar[queue.Queue[int]] = queue.Queue()
    go: ClassVar[threading.Semaphore] = threading.Semaphore(0)

    def act_batch(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        GatedMLP.entered.put(len(observations))
        if not GatedMLP.go.acquire(timeout=20):
            raise TimeoutError("the test never let the forward pass go")
        return super().act_batch(observations)


@pytest.fixture
def gate() -> Iterator[type[GatedMLP]]:
    GatedMLP.entered, GatedMLP.go = queue.Queue(), threading.Semaphore(0)
    yield GatedMLP
    GatedMLP.go.release(100)  # a pass still held never outlives the test


def entered(gate: type[GatedMLP]) -> int:
    """The size of the next batch that reached the forward pass (blocks this thread, the loop's too, until then)."""
    return gate.entered.get(timeout=20)


def test_a_lone_request_is_served_at_once_and_requests_during_a_pass_share_the_next(tmp_path, gate) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    policy = make_policy("test_gated_mlp", CONFIG)
    registry.publish("p", policy_to_bytes(policy))
    observations = [{"state": np.full(3, i, np.float32)} for i in range(4)]

    async def scenario() -> tuple[list[tuple], dict[int, int], tuple[int, int]]:
        server = InferenceServer(registry)
        replies: list[tuple] = [()] * len(observations)
        done = asyncio.Event()

        def answer(i: int):
            def reply(actions, version, error, batch_size) -> None:
                replies[i] = (actions, version, error, batch_size)
                if all(replies):
                    done.set()

            return reply

        server.submit("p", InferenceJob(observations[0], answer(0)))
        # This blocks the event loop until the pass begins: the lone request needed no timer, no company and no
        # turn of the loop to get into a forward pass.
        lone = entered(gate)
        for i in range(1, 4):  # three robots ask while that pass runs
            server.submit("p", InferenceJob(observations[i], answer(i)))
        waiting = server.waiting("p")
        gate.go.release(2)
        await asyncio.wait_for(done.wait(), timeout=20)
        await server.close()
        return replies, dict(server.stats.batch_sizes), (lone, waiting)

    replies, batch_sizes, (lone, waiting) = asyncio.run(scenario())
    assert (lone, waiting) == (1, 3)  # the lone request's pass held it alone, and 3 waited for the next
    assert entered(gate) == 3  # the next pass took all three
    assert batch_sizes == {1: 1, 3: 1}
    for (actions, version, error, batch_size), observation, size in zip(
        replies, observations, (1, 3, 3, 3), strict=True
    ):
        assert (version, error, batch_size) == (1, "", size)
        np.testing.assert_allclose(actions, policy.act(observation), rtol=1e-5, atol=1e-6)


def test_a_pass_takes_at_most_max_batch_and_the_rest_go_in_the_pass_after(tmp_path, gate) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    registry.publish("p", policy_to_bytes(make_policy("test_gated_mlp", CONFIG)))

    async def scenario() -> list[int]:
        server = InferenceServer(registry, max_batch=2)
        sizes: list[int] = []
        server.submit("p", InferenceJob({"state": np.zeros(3, np.float32)}, lambda *a: sizes.append(a[3])))
        entered(gate)
        for _ in range(3):
            server.submit("p", InferenceJob({"state": np.zeros(3, np.float32)}, lambda *a: sizes.append(a[3])))
        gate.go.release(3)
        while len(sizes) < 4:
            await asyncio.sleep(0.01)
        await server.close()
        return sizes

    assert asyncio.run(scenario()) == [1, 2, 2, 1]
    assert [entered(gate), entered(gate)] == [2, 1]


def test_clients_that_answer_a_batched_pass_at_once_go_together_into_the_next(tmp_path, gate, monkeypatch) -> None:
    """Three robots ask again as soon as their replies come: after their pass of 3, the worker holds the next pass for
    a share of that pass's time until the three are back, instead of serving the first one back alone."""
    import cloud.serving.inference as inference

    monkeypatch.setattr(inference, "REGATHER_MAX_S", 1.0)  # a loaded machine's loop must not decide the test
    registry = signing_registry(DataLayout(tmp_path))
    registry.publish("p", policy_to_bytes(make_policy("test_gated_mlp", CONFIG)))
    observation = {"state": np.zeros(3, np.float32)}

    async def scenario() -> list[int]:
        server = InferenceServer(registry)
        sizes: list[int] = []
        loop = asyncio.get_running_loop()

        def again(*reply) -> None:  # a robot's next request, sent 0, 5 and 10 ms after its reply (a round trip)
            sizes.append(reply[3])
            if len(sizes) <= 4:
                delay = 0.005 * ((len(sizes) - 2) % 3)
                loop.call_later(delay, lambda: server.submit("p", InferenceJob(observation, again)))

        server.submit("p", InferenceJob(observation, lambda *reply: sizes.append(reply[3])))
        entered(gate)
        for _ in range(3):
            server.submit("p", InferenceJob(observation, again))
        gate.go.release(1)  # the lone pass
        assert entered(gate) == 3
        time.sleep(1.0)  # a long pass of 3: its regather time is a share of it (50 ms)
        gate.go.release(10)
        while len(sizes) < 7:
            await asyncio.sleep(0.01)
        await server.close()
        return sizes

    assert asyncio.run(scenario()) == [1, 3, 3, 3, 3, 3, 3]
    assert entered(gate) == 3  # the three came back into one pass, not 1 and then 2


def test_no_published_version_is_an_error_reply_not_a_crash(tmp_path) -> None:
    async def scenario() -> tuple:
        server = InferenceServer(signing_registry(DataLayout(tmp_path)))
        answer = asyncio.get_running_loop().create_future()
        server.submit("p", InferenceJob({"state": np.zeros(3, np.float32)}, lambda *a: answer.set_result(a)))
        result = await asyncio.wait_for(answer, timeout=10)
        await server.close()
        return result

    actions, version, error, _ = asyncio.run(scenario())
    assert actions is None and version == 0 and "no version of p" in error


def test_a_bad_batch_is_answered_with_an_error_and_a_newer_version_serves_the_next(tmp_path) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    registry.publish("p", policy_to_bytes(make_policy("mlp", CONFIG)))
    newer = make_policy("mlp", CONFIG)

    async def ask(server: InferenceServer, observation: dict) -> tuple:
        answer = asyncio.get_running_loop().create_future()
        server.submit("p", InferenceJob(observation, lambda *a: answer.set_result(a)))
        return await asyncio.wait_for(answer, timeout=10)

    async def scenario() -> tuple[tuple, tuple]:
        server = InferenceServer(registry)
        bad = await ask(server, {"state": np.zeros(7, np.float32)})  # the wrong shape: the pass raises
        registry.publish("p", policy_to_bytes(newer))
        good = await ask(server, {"state": np.ones(3, np.float32)})
        await server.close()
        return bad, good

    bad, good = asyncio.run(scenario())
    assert bad[0] is None and bad[2].startswith("internal error (incident ")
    actions, version, error, _ = good
    assert (version, error) == (2, "")
    np.testing.assert_allclose(actions, newer.act({"state": np.ones(3, np.float32)}), rtol=1e-5, atol=1e-6)


class GatewayOnThread:
    """The real gateway on loopback, its event loop on a thread of its own (as `fleetloop cloud` runs it)."""

    def __init__(self, root) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.registry = signing_registry(DataLayout(root))
        self.gateway = Gateway(GatewayConfig(port=0), EpisodeStore(root / "store"), self.registry)
        self.target = f"127.0.0.1:{self.call(self.gateway.start())}"

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def stop(self) -> None:
        self.call(self.gateway.stop(0.2))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def infer_message(request_id: int, state: np.ndarray) -> pb.EdgeMessage:
    request = pb.InferenceRequest(request_id=request_id)
    request.observation["state"].CopyFrom(encode_array(state))
    return pb.EdgeMessage(infer=request)


def test_robots_over_the_tunnel_a_lone_request_alone_then_those_sent_during_its_pass_together(tmp_path, gate) -> None:
    """Four robots run the Panda policy in the cloud over real tunnels: the first robot's request, alone, goes into
    a pass of its own; the other three, sent while that pass runs, share the next; each reply names version 1."""
    cloud = GatewayOnThread(tmp_path)
    name = RESOURCE.capabilities.embodiment
    policy = make_policy("test_gated_mlp", {**CONFIG, "observation": {"state": {"shape": [21], "dtype": "float32"}}})
    cloud.registry.publish(name, policy_to_bytes(policy))
    robots = [
        RawEdge(cloud.target, dataclasses.replace(RESOURCE, id=f"arm-{i}"), policy_name=name, remote_inference=True)
        for i in range(4)
    ]
    try:
        for robot in robots:
            assert robot.received("welcome", 10, until=lambda m: True)
        states = [np.full(21, i, np.float32) for i in range(4)]
        robots[0].outgoing.put(infer_message(1, states[0]))
        assert entered(gate) == 1
        for robot, state in zip(robots[1:], states[1:], strict=True):
            robot.outgoing.put(infer_message(1, state))
        deadline = time.monotonic() + 20
        while cloud.gateway.inference.waiting(name) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.go.release(2)
        replies = [robot.received("actions", 20, until=lambda m: True) for robot in robots]
        assert entered(gate) == 3
    finally:
        for robot in robots:
            robot.close()
        cloud.stop()
    for (message,), state, size in zip(replies, states, (1, 3, 3, 3), strict=True):
        reply = message.actions
        assert (reply.request_id, reply.error, reply.policy_version, reply.batch_size) == (1, "", 1, size)
        expected = policy.act({"state": state})
        np.testing.assert_allclose(decode_array(reply.actions), expected, rtol=1e-5, atol=1e-6)
    assert cloud.gateway.inference.stats.batch_sizes == {1: 1, 3: 1}


class ThreadsSeen(MLPPolicy):
    """An MLP that records the torch thread count each of its forward passes ran with."""

    type_name: ClassVar[str] = "test_threads_seen_mlp"
    seen: ClassVar[list[int]] = []

    def act_batch(self, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
        ThreadsSeen.seen.append(torch.get_num_threads())
        return super().act_batch(observations)


@pytest.mark.parametrize("threads", [1, 3])
def test_passes_run_with_the_configured_torch_threads_and_the_callers_count_is_left_alone(tmp_path, threads) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    registry.publish("p", policy_to_bytes(make_policy("test_threads_seen_mlp", CONFIG)))
    ThreadsSeen.seen = []
    before = torch.get_num_threads()

    async def scenario() -> tuple:
        server = InferenceServer(registry, threads=threads)
        answer = asyncio.get_running_loop().create_future()
        server.submit("p", InferenceJob({"state": np.ones(3, np.float32)}, lambda *a: answer.set_result(a)))
        result = await asyncio.wait_for(answer, timeout=10)
        await server.close()
        return result

    assert asyncio.run(scenario())[2] == ""
    assert ThreadsSeen.seen == [threads]
    assert torch.get_num_threads() == before


def test_a_thread_count_below_one_is_refused_naming_the_field(tmp_path) -> None:
    with pytest.raises(ValueError, match="threads: must be at least 1"):
        InferenceServer(signing_registry(DataLayout(tmp_path)), threads=0)
    with pytest.raises(ValueError, match="inference_threads"):
        GatewayConfig(inference_threads=0)
