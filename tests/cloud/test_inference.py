"""The cloud's inference server: concurrent requests share one forward pass of the newest version."""

from __future__ import annotations

import asyncio

import numpy as np

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.serving.inference import InferenceJob, InferenceServer
from policies.factory import make_policy
from policies.weights import policy_to_bytes

CONFIG = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "chunk_size": 4, "hidden": [8]}


def test_requests_from_several_robots_share_a_forward_pass_and_name_the_version(tmp_path) -> None:
    registry = signing_registry(DataLayout(tmp_path))
    policy = make_policy("mlp", CONFIG)
    registry.publish("p", policy_to_bytes(policy))
    observations = [{"state": np.full(3, i, np.float32)} for i in range(3)]
    passes: list[int] = []

    async def scenario() -> list[tuple]:
        server = InferenceServer(registry, gather_s=0.05)
        replies: list[tuple] = []
        done = asyncio.Event()

        def reply(actions, version, error, batch_size):
            replies.append((actions, version, error, batch_size))
            if len(replies) == len(observations):
                done.set()

        for observation in observations:  # three robots' requests arrive within the gathering window
            server.submit("p", InferenceJob(observation, reply))
        await asyncio.wait_for(done.wait(), timeout=10)
        passes.append(server.stats.forward_passes)
        await server.close()
        return replies

    replies = asyncio.run(scenario())
    assert passes == [1]
    for (actions, version, error, batch_size), observation in zip(replies, observations, strict=True):
        assert (version, error, batch_size) == (1, "", 3)
        np.testing.assert_allclose(actions, policy.act(observation), rtol=1e-5, atol=1e-6)


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
