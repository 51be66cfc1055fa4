"""Policy updates at scale: a LoRA-adapted model's new version travels as a small delta, verified at the edge."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import EpisodeStore
from policies.factory import make_policy
from policies.lora import LoraConfig, LoraPolicy
from policies.train import train_policy
from policies.weights import policy_to_bytes
from protocol import tunnel_pb2 as pb
from tests.e2e.fleet import Fleet, wait_until
from tests.e2e.raw_edge import RESOURCE, RawEdge, last_policy_chunk

DATASET = "panda_pick_cube"
OBSERVATION = {"state": {"shape": [21], "dtype": "float32"}}
pytestmark = pytest.mark.cloud("--lost-after", "120")  # every test here; hand-driven edges send no heartbeats


def lora_policy() -> LoraPolicy:
    base = {"observation": OBSERVATION, "action_dim": 4, "chunk_size": 1, "hidden": [768, 768]}  # 0.6M parameters
    return LoraPolicy(LoraConfig(base_type="mlp", base_config=base, rank=4))


def fine_tune(policy: LoraPolicy, seed: int) -> None:
    rng = np.random.default_rng(seed)
    state = rng.normal(size=(256, 21)).astype(np.float32)
    batch = {"obs.state": state, "action": np.clip(state[:, :4], -1, 1).astype(np.float32)}
    train_policy(policy, batch, steps=20, batch_size=64, seed=seed, fit_normalization=False)


def versions_in_store(fleet: Fleet, robot: str) -> set[int]:
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    if DATASET not in store.datasets():
        return set()
    rows = store.read(DATASET, columns=["episode_index", "policy_version"])
    mine = [i for i, e in enumerate(store.episodes(DATASET)) if e.resource_id == robot]
    return set(rows["policy_version"][np.isin(rows["episode_index"], mine)].tolist())


def test_a_lora_update_sends_under_5_percent_of_the_model_and_both_edges_swap_it_in(fleet: Fleet) -> None:
    registry = signing_registry(DataLayout(fleet.root / "data"))
    policy = lora_policy()
    v1 = registry.publish(DATASET, policy_to_bytes(policy))
    for robot, seed in (("robot-1", 1), ("robot-2", 2)):
        fleet.start_edge(robot, "--operator", "none", hz=20, seed=seed)
    for robot in ("robot-1", "robot-2"):
        wait_until(lambda r=robot: f"{r} now runs {DATASET} v1" in fleet.log("cloud"), 90, f"{robot} on v1")

    fine_tune(policy, seed=3)  # only the adapters move
    v2 = registry.publish(DATASET, policy_to_bytes(policy))
    for robot in ("robot-1", "robot-2"):
        wait_until(lambda r=robot: f"{r} now runs {DATASET} v2" in fleet.log("cloud"), 60, f"{robot} on v2")
        wait_until(lambda r=robot: 2 in versions_in_store(fleet, r), 60, f"{robot}'s steps under v2")

    log = fleet.log("cloud")
    full_sizes = [int(n) for n in re.findall(rf"now runs {DATASET} v1 \(its update was (\d+) bytes\)", log)]
    delta_sizes = [int(n) for n in re.findall(rf"now runs {DATASET} v2 \(its update was (\d+) bytes\)", log)]
    assert full_sizes == [v1.size_bytes] * 2  # the first version is a full snapshot
    assert len(delta_sizes) == 2 and all(0 < size < 0.05 * v2.size_bytes for size in delta_sizes), (
        delta_sizes,
        v2.size_bytes,
    )
    assert log.count("as a delta on v1") == 2
    for robot in ("robot-1", "robot-2"):
        edge_log = fleet.log(robot)
        assert f"switched to policy {DATASET} v2" in edge_log and "not applied" not in edge_log


def test_an_edge_that_cannot_apply_a_delta_gets_a_full_snapshot(fleet: Fleet) -> None:
    registry = signing_registry(DataLayout(fleet.root / "data"))
    policy = lora_policy()
    registry.publish(DATASET, policy_to_bytes(policy))
    fine_tune(policy, seed=4)
    v2 = registry.publish(DATASET, policy_to_bytes(policy))
    # This edge claims to run v1 (say, it restarted and lost it): the cloud offers v2 as a delta on v1.
    edge = RawEdge(fleet.target, RESOURCE, policy_name=DATASET, policy_version=1)
    try:
        chunks = edge.received("policy", 30, until=last_policy_chunk)
        assert chunks and {c.policy.kind for c in chunks} == {"delta"} and chunks[0].policy.base_version == 1
        edge.outgoing.put(
            pb.EdgeMessage(rejected=pb.PolicyRejected(policy_name=DATASET, version=2, reason="no v1 here"))
        )
        chunks = edge.received("policy", 30, until=last_policy_chunk)
        assert chunks and {c.policy.kind for c in chunks} == {"full"} and chunks[0].policy.version == 2
        assert sum(len(c.policy.data) for c in chunks) == chunks[0].policy.total_bytes == v2.size_bytes
    finally:
        edge.close()
    assert "could not apply panda_pick_cube v2 (no v1 here); sending a full snapshot" in fleet.log("cloud")


@pytest.mark.parametrize("change", ["every tensor", "the architecture"])
def test_a_version_no_delta_can_carry_travels_as_the_registry_file_itself(fleet: Fleet, change: str) -> None:
    registry = signing_registry(DataLayout(fleet.root / "data"))
    policy = lora_policy()
    registry.publish(DATASET, policy_to_bytes(policy))
    if change == "every tensor":  # full fine-tuning: every tensor moves, so a delta is not worth it
        for parameter in policy.parameters():
            parameter.data.add_(0.01)
    else:  # the learner switched to another model under the same policy name
        policy = make_policy("mlp", {"observation": OBSERVATION, "action_dim": 4, "chunk_size": 1, "hidden": [32]})
    v2 = registry.publish(DATASET, policy_to_bytes(policy))
    edge = RawEdge(fleet.target, RESOURCE, policy_name=DATASET, policy_version=1)  # it runs v1
    try:
        chunks = edge.received("policy", 30, until=last_policy_chunk)
    finally:
        edge.close()
    assert chunks and {c.policy.kind for c in chunks} == {"full"} and chunks[0].policy.version == 2
    assert chunks[0].policy.sha256 == v2.sha256  # the published file, not a second serialization of it
    assert b"".join(c.policy.data for c in chunks) == registry.read(DATASET, 2)
