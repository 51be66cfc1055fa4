"""A lerobot VLA (a tiny SmolVLA, random weights, built offline) served by the cloud to an edge by remote inference.

The VLA's VLM config and tokenizer live in a local directory that the test writes (tests/policies/vla_tiny.py); the
policy names it by absolute path, so the cloud process, which rebuilds the policy from the registry's bytes, reads
the same files: its folder is a model root of that process (``--model-root``), as an operator allows it. Nothing
is downloaded (HF_HUB_OFFLINE=1 is inherited by every process).
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import numpy as np
import pytest

import tests.e2e.fleet as fleet_processes
from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import EpisodeStore
from cloud.serving.inference import InferenceJob, InferenceServer
from policies.lerobot_policy import LerobotPolicy
from policies.model_roots import ENV as MODEL_ROOTS_ENV
from policies.weights import policy_to_bytes, read_metadata
from tests.e2e.fleet import Fleet, wait_until
from tests.policies.lerobot_tiny import fit_data_for_spec
from tests.policies.vla_tiny import tiny_smolvla_config, write_tiny_vlm_dir

DATASET = "pusht"  # the sim task, the robot's embodiment, the dataset and the registry's policy name
ROBOT = "robot-vla"
HZ = 5.0
CHUNK = 10
TASK = "push the T block to the goal"
SPEC = {"pixels": {"shape": [96, 96, 3], "dtype": "uint8"}, "agent_pos": {"shape": [2], "dtype": "float32"}}
LOW, HIGH = np.zeros(2, np.float32), np.full(2, 512.0, np.float32)


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> None:
    """Every process the fleet starts stays off the hub: the VLM's files come from the local directory only.
    (Autouse fixtures come first, so this holds before the ``fleet`` fixture starts the cloud.)"""
    monkeypatch.setitem(fleet_processes.ENV, "HF_HUB_OFFLINE", "1")


def tiny_vla(vlm_dir) -> LerobotPolicy:
    policy = LerobotPolicy(SPEC, 2, "smolvla", tiny_smolvla_config(vlm_dir, CHUNK), task=TASK)
    policy.fit_normalization(fit_data_for_spec(SPEC, LOW, HIGH))  # statistics in pusht's units, so actions are too
    return policy.eval()


def robot_steps(fleet: Fleet) -> dict[str, np.ndarray]:
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    if DATASET not in store.datasets():
        return {"policy_version": np.zeros(0, np.int64), "action": np.zeros((0, 2), np.float32)}
    rows = store.read(DATASET, columns=["episode_index", "policy_version", "action"])
    mine = np.isin(rows["episode_index"], [i for i, e in enumerate(store.episodes(DATASET)) if e.resource_id == ROBOT])
    return {k: v[mine] for k, v in rows.items()}


def test_an_edge_acts_with_a_tiny_smolvla_that_runs_in_the_cloud(fleet: Fleet) -> None:
    started = time.monotonic()
    vlm_dir = write_tiny_vlm_dir(fleet.root / "models" / "tiny-smolvlm")
    fleet.start_cloud("--model-root", str(fleet.root / "models"))
    fleet.start_edge(ROBOT, "--operator", "none", "--remote-policy", robot="sim:pusht", hz=HZ, seed=1)
    wait_until(lambda: f"{ROBOT} connected" in fleet.log("cloud"), 60, f"{ROBOT} to connect")

    weights = policy_to_bytes(tiny_vla(vlm_dir))
    assert json.loads(read_metadata(weights)["config"])["lerobot_config"]["vlm_model_name"] == str(vlm_dir)
    signing_registry(DataLayout(fleet.root / "data")).publish(DATASET, weights)
    published = time.monotonic()

    def acting(n: int) -> bool:
        return int((robot_steps(fleet)["policy_version"] == 1).sum()) >= n

    wait_until(lambda: acting(1), 60, f"{ROBOT}'s first step under the VLA's v1")
    first_action_s = time.monotonic() - published
    wait_until(lambda: acting(3 * CHUNK), 60, f"{ROBOT} acting under v1 for {3 * CHUNK} steps")
    assert f"{ROBOT} now runs {DATASET} v1" in fleet.log("cloud")
    assert "remote inference now serves pusht v1" in fleet.log("cloud")

    assert fleet.stop(ROBOT) == 0
    log = fleet.log(ROBOT)
    assert "received policy" not in log and "loaded from" not in log, "weights reached a remote-inference edge"
    steps = robot_steps(fleet)
    under_v1 = steps["action"][steps["policy_version"] == 1]
    assert len(under_v1) >= 3 * CHUNK
    assert np.isfinite(under_v1).all()
    assert (under_v1 >= LOW).all() and (under_v1 <= HIGH).all()
    assert len(np.unique(under_v1, axis=0)) > CHUNK, "the VLA's actions vary with its observations and noise"
    stats = fleet.stats(ROBOT)

    assert fleet.stop("cloud") == 0
    summary = re.search(r"remote inference: (\d+) forward passes answered (\d+) requests", fleet.log("cloud"))
    assert summary, fleet.log("cloud")[-2000:]
    passes, requests = int(summary[1]), int(summary[2])
    # One chunk of CHUNK actions covers CHUNK ticks: far fewer passes than steps.
    assert 3 <= passes <= requests and passes < len(under_v1)
    print(
        f"\ntiny SmolVLA remote inference at {HZ:.0f} Hz: first action {first_action_s:.1f} s after publishing, "
        f"{len(under_v1)} steps under v1 from {passes} forward passes, {stats['missed_deadlines']} missed deadlines, "
        f"test {time.monotonic() - started:.0f} s"
    )


def test_the_inference_server_adds_little_to_the_tiny_vla_forward_pass(tmp_path, monkeypatch) -> None:
    """The cloud's side of a remote-inference round trip (queue, gather, forward pass, reply) against the same
    policy's own ``act`` in the same run: what the server adds must be small next to the pass itself. (How fast
    the pass is belongs to ``make bench``; on a loaded machine an absolute bound here only measures the load.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the cloud process runs (OMP_NUM_THREADS=1)
    policy = tiny_vla(write_tiny_vlm_dir(tmp_path / "tiny-smolvlm"))
    monkeypatch.setenv(MODEL_ROOTS_ENV, str(tmp_path / "tiny-smolvlm"))  # the server rebuilds it from its bytes
    registry = signing_registry(DataLayout(tmp_path))
    registry.publish(DATASET, policy_to_bytes(policy))
    rng = np.random.default_rng(0)

    async def serve(n: int) -> tuple[list[float], list[float]]:
        server = InferenceServer(registry)
        served, direct = [], []
        for _ in range(n):
            observation = {
                "pixels": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
                "agent_pos": rng.uniform(0, 512, 2).astype(np.float32),
            }
            answered: asyncio.Future = asyncio.get_running_loop().create_future()
            start = time.perf_counter()
            server.submit(DATASET, InferenceJob(observation, lambda *reply, f=answered: f.set_result(reply)))
            actions, version, error, _ = await asyncio.wait_for(answered, 60)
            served.append(time.perf_counter() - start)
            assert error == "" and version == 1 and actions.shape == (CHUNK, 2) and np.isfinite(actions).all()
            start = time.perf_counter()
            policy.reset()
            policy.act(observation)
            direct.append(time.perf_counter() - start)
        await server.close()
        return served, direct

    try:
        served, direct = asyncio.run(serve(12))
    finally:
        torch.set_num_threads(threads)
    warm_served, warm_direct = np.array(served[2:]), np.array(direct[2:])  # the first also loads the policy
    print(
        f"\ntiny SmolVLA: through InferenceServer median {np.median(warm_served) * 1e3:.0f} ms, its own act "
        f"median {np.median(warm_direct) * 1e3:.0f} ms, for a chunk of {CHUNK}"
    )
    assert np.median(warm_served) < 2.0 * np.median(warm_direct) + 0.02
