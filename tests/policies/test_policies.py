import json
import re

import numpy as np
import pytest
import safetensors.torch
import torch

from hal.config import ConfigError
from policies.cnn import CNNConfig, CNNPolicy
from policies.factory import POLICY_TYPES, make_policy
from policies.mlp import MLPConfig, MLPPolicy
from policies.train import train_policy
from policies.weights import policy_from_bytes, policy_to_bytes, read_metadata, sha256_hex

STATE = {"state": {"shape": [6], "dtype": "float32"}}
IMAGE = {"pixels": {"shape": [24, 24, 3], "dtype": "uint8"}, "agent_pos": {"shape": [2], "dtype": "float32"}}


def state_dataset(n: int = 512) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, 6)).astype(np.float32) * 3 + 10  # off-centre, to exercise normalization
    action = np.stack([obs[:, 0] - obs[:, 1], np.tanh(obs[:, 2] - 10)], axis=1).astype(np.float32)
    return {"obs.state": obs, "action": action}


def image_dataset(n: int = 128) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    where = rng.integers(0, 20, size=(n, 2))
    pixels = np.zeros((n, 24, 24, 3), dtype=np.uint8)
    for i, (y, x) in enumerate(where):
        pixels[i, y : y + 4, x : x + 4] = 255  # the action is where the bright square is
    agent_pos = rng.uniform(0, 512, size=(n, 2)).astype(np.float32)
    return {"obs.pixels": pixels, "obs.agent_pos": agent_pos, "action": where.astype(np.float32) * 20}


def gripper_dataset(n: int = 512) -> dict[str, np.ndarray]:
    """A motion that follows the state and a gripper that closes (2) on one side of a line, opens (0) on the
    other: the states near the line are where a regressed gripper lands in between."""
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(n, 6)).astype(np.float32)
    action = np.stack([obs[:, 0], np.where(obs[:, 1] > 0, 2.0, 0.0)], axis=1).astype(np.float32)
    return {"obs.state": obs, "action": action}


def one_observation(dataset: dict[str, np.ndarray], i: int = 0) -> dict[str, np.ndarray]:
    return {k.removeprefix("obs."): v[i] for k, v in dataset.items() if k.startswith("obs.")}


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny nets: a second intra-op thread only adds spin-waiting on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CASES = [
    pytest.param(
        lambda: MLPPolicy(MLPConfig(observation=STATE, action_dim=2, hidden=(64, 64))), state_dataset, 300, id="mlp"
    ),
    pytest.param(
        lambda: CNNPolicy(CNNConfig(observation=IMAGE, action_dim=2, channels=(8, 16), hidden=(64,))),
        image_dataset,
        150,
        id="cnn",
    ),
    pytest.param(
        lambda: MLPPolicy(
            MLPConfig(observation=STATE, action_dim=2, hidden=(64, 64), action_levels=((), (0.0, 1.0, 2.0)))
        ),
        gripper_dataset,
        300,
        id="mlp-with-a-discrete-entry",
    ),
]


@pytest.mark.parametrize("make,data,steps", CASES)
def test_act_shape_and_dtype(make, data, steps) -> None:
    policy, dataset = make(), data()
    chunk = policy.act(one_observation(dataset))
    assert chunk.shape == (1, 2) and chunk.dtype == np.float32
    assert policy.loss({k: torch.as_tensor(v[:5]) for k, v in dataset.items()}).shape == (5,)


def test_action_chunks() -> None:
    policy, dataset = (
        MLPPolicy(MLPConfig(observation=STATE, action_dim=2, chunk_size=3, hidden=(32,))),
        state_dataset(8),
    )
    chunks = np.repeat(dataset["action"][:, None], 3, axis=1)  # (B, chunk, action_dim)
    policy.fit_normalization({**dataset, "action": chunks})
    assert policy.act(one_observation(dataset)).shape == (3, 2)
    assert policy.loss(
        {"obs.state": torch.as_tensor(dataset["obs.state"]), "action": torch.as_tensor(chunks)}
    ).shape == (8,)


def test_discrete_action_entries_are_chosen_not_averaged() -> None:
    torch.manual_seed(0)
    dataset = gripper_dataset()
    levels = ((), (0.0, 1.0, 2.0))
    chosen = MLPPolicy(MLPConfig(observation=STATE, action_dim=2, hidden=(64, 64), action_levels=levels))
    regressed = MLPPolicy(MLPConfig(observation=STATE, action_dim=2, hidden=(64, 64)))
    for policy in (chosen, regressed):
        train_policy(policy, dataset, steps=300, batch_size=64, seed=0)
    observations = [one_observation(dataset, i) for i in range(200)]
    gripper = chosen.act_batch(observations)[:, 0, 1]
    assert set(np.unique(gripper)) <= {0.0, 1.0, 2.0}  # a level, never a value in between
    assert (gripper == dataset["action"][:200, 1]).mean() > 0.9
    # the same data regressed leaves some states half-way between open and close
    assert ((regressed.act_batch(observations)[:, 0, 1] - 1.0).__abs__() < 0.5).any()
    motion = chosen.act_batch(observations)[:, 0, 0]
    assert np.abs(motion - dataset["action"][:200, 0]).mean() < 0.2
    assert chosen.loss({k: torch.as_tensor(v[:5]) for k, v in dataset.items()}).shape == (5,)


@pytest.mark.parametrize(
    "levels,field",
    [(((), (0.0,)), "action_levels[1]"), (((), (2.0, 1.0)), "action_levels[1]"), (((0.0, 1.0),), "action_levels:")],
)
def test_refuses_bad_action_levels(levels, field) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"mlp.{field}")):
        MLPConfig(observation=STATE, action_dim=2, action_levels=levels)


@pytest.mark.parametrize("make,data,steps", CASES)
def test_loss_decreases(make, data, steps) -> None:
    torch.manual_seed(0)
    policy, dataset = make(), data()
    policy.fit_normalization(dataset)
    batch = {k: torch.as_tensor(v) for k, v in dataset.items()}
    with torch.no_grad():
        before = policy.loss(batch).mean().item()
    train_policy(policy, dataset, steps=steps, batch_size=64, fit_normalization=False)
    with torch.no_grad():
        after = policy.loss(batch).mean().item()
    assert after < 0.5 * before, (before, after)


def test_weighted_sampling_follows_weights() -> None:
    torch.manual_seed(0)
    dataset = state_dataset(64)
    dataset["action"][:32] = 5.0  # two contradicting halves; all weight on the second one
    weights = np.r_[np.zeros(32), np.ones(32)]
    policy = MLPPolicy(MLPConfig(observation=STATE, action_dim=2, hidden=(64, 64)))
    train_policy(policy, dataset, steps=150, batch_size=64, weights=weights)
    second = {k: torch.as_tensor(v[32:]) for k, v in dataset.items()}
    with torch.no_grad():
        assert policy.loss(second).mean().item() < 0.1


@pytest.mark.parametrize("make,data,steps", CASES)
def test_bytes_round_trip_gives_identical_actions(make, data, steps) -> None:
    policy, dataset = make(), data()
    policy.fit_normalization(dataset)  # buffers must travel too
    blob = policy_to_bytes(policy)
    assert read_metadata(blob)["type"] == policy.type_name
    assert len(sha256_hex(blob)) == 64
    restored = policy_from_bytes(blob)
    assert type(restored) is type(policy) and restored.config_dict() == policy.config_dict()
    for i in range(3):
        obs = one_observation(dataset, i)
        np.testing.assert_array_equal(restored.act(obs), policy.act(obs))


def test_refuses_wrong_or_missing_type() -> None:
    policy = make_policy("mlp", {"observation": STATE, "action_dim": 2})
    tensors = {k: v.contiguous() for k, v in policy.state_dict().items()}
    config = json.dumps(policy.config_dict())
    with pytest.raises(ValueError, match="unknown policy type 'pickle'"):
        policy_from_bytes(safetensors.torch.save(tensors, metadata={"type": "pickle", "config": config}))
    with pytest.raises(ValueError, match="lack"):
        policy_from_bytes(safetensors.torch.save(tensors))
    # A known type whose tensors do not fit it (mlp weights labelled as a cnn) is refused too.
    with pytest.raises(ValueError):
        policy_from_bytes(safetensors.torch.save(tensors, metadata={"type": "cnn", "config": config}))
    with pytest.raises(ValueError):
        policy_from_bytes(b"\xff" * 16)


def test_registry() -> None:
    assert {"mlp": MLPPolicy, "cnn": CNNPolicy}.items() <= POLICY_TYPES.items()
    assert {"lora", "lerobot", "sac_actor"} <= set(POLICY_TYPES)
    assert isinstance(make_policy("mlp", {"observation": STATE, "action_dim": 2}), MLPPolicy)
    with pytest.raises(ValueError):
        make_policy("nope", {})
