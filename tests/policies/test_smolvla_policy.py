"""lerobot's SmolVLA behind fleetloop's Policy interface, built offline from a tiny local VLM config, random weights."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import safetensors.torch
import torch

from policies.lerobot_policy import LerobotPolicy
from policies.model_roots import ENV as MODEL_ROOTS_ENV
from policies.weights import policy_from_bytes, policy_to_bytes, read_metadata
from tests.policies.lerobot_tiny import fit_data_for_spec
from tests.policies.vla_tiny import tiny_smolvla_config, write_tiny_vlm_dir

# pusht as the sim serves it: a 96x96 camera and the pusher's position, actions are target positions in [0, 512].
SPEC = {"pixels": {"shape": [96, 96, 3], "dtype": "uint8"}, "agent_pos": {"shape": [2], "dtype": "float32"}}
LOW, HIGH = np.array([0.0, 0.0], np.float32), np.array([512.0, 512.0], np.float32)
TASK = "push the T block to the goal"
CHUNK = 10


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return write_tiny_vlm_dir(tmp_path_factory.mktemp("tiny_smolvlm"))


@pytest.fixture(autouse=True)
def model_roots(vlm_dir, monkeypatch) -> None:
    """The VLM's folder is a model root, as the operator allows it (FLEETLOOP_MODEL_ROOTS): a policy rebuilt from
    its bytes may name it."""
    monkeypatch.setenv(MODEL_ROOTS_ENV, str(vlm_dir))


def make(vlm_dir, task: str = TASK) -> LerobotPolicy:
    torch.manual_seed(0)
    policy = LerobotPolicy(SPEC, 2, "smolvla", tiny_smolvla_config(vlm_dir, CHUNK), task=task)
    policy.fit_normalization(fit_data_for_spec(SPEC, LOW, HIGH))
    return policy.eval()


def observation(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "pixels": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
        "agent_pos": rng.uniform(0, 512, 2).astype(np.float32),
    }


def act_seeded(policy: LerobotPolicy, obs: dict[str, np.ndarray], seed: int = 123) -> np.ndarray:
    torch.manual_seed(seed)  # flow matching starts from noise
    return policy.act(obs)


def test_a_tiny_smolvla_builds_offline_and_acts_in_action_units(vlm_dir) -> None:
    policy = make(vlm_dir)
    assert type(policy.model).__name__ == "SmolVLAPolicy"
    assert policy.chunk_size == CHUNK
    vlm = policy.model.model.vlm_with_expert
    assert vlm.config.text_config.hidden_size == 64 and vlm.num_vlm_layers == 2  # the tiny config, not the hub's
    assert sum(p.numel() for p in policy.parameters()) < 1_000_000
    for seed in (0, 1):
        chunk = act_seeded(policy, observation(seed))
        assert chunk.shape == (CHUNK, 2) and chunk.dtype == np.float32
        assert np.isfinite(chunk).all()
        # Unnormalized by the fitted statistics (mean 256, std ~148): around the arena's centre, not around 0.
        assert abs(float(chunk.mean()) - 256) < 200, chunk
    # The instruction reaches the model: another task, same noise, other actions.
    other = make(vlm_dir, task="pick up the cube")
    assert not np.allclose(act_seeded(policy, observation()), act_seeded(other, observation()))
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        policy.act(observation())
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.5, timings  # one chunk well within a 5 Hz tick on 2 shared CPU cores


def test_bytes_round_trip_gives_identical_actions(vlm_dir) -> None:
    policy = make(vlm_dir)
    data = policy_to_bytes(policy)
    config = json.loads(read_metadata(data)["config"])
    assert config["task"] == TASK
    assert config["lerobot_config"]["vlm_model_name"] == str(vlm_dir)
    assert config["lerobot_config"]["load_vlm_weights"] is False
    rebuilt = policy_from_bytes(data).eval()
    assert rebuilt.config_dict() == policy.config_dict()
    # transformers' rotary inv_freq is no part of the weights: recomputed after the meta-device build.
    buffers = dict(policy.named_buffers())
    for name, buffer in rebuilt.named_buffers():
        assert not buffer.is_meta, name
        torch.testing.assert_close(buffer, buffers[name], rtol=0, atol=0)
    model = rebuilt.model.model
    assert model.global_image_start_token.device.type == "cpu" and model.image_end_token.device.type == "cpu"
    for seed in (0, 1):
        np.testing.assert_array_equal(act_seeded(rebuilt, observation(seed)), act_seeded(policy, observation(seed)))
    # The same weights again (not byte for byte: safetensors writes its metadata map in no fixed order).
    again = safetensors.torch.load(policy_to_bytes(rebuilt))
    original = safetensors.torch.load(data)
    assert again.keys() == original.keys()
    for name, tensor in original.items():
        torch.testing.assert_close(again[name], tensor, rtol=0, atol=0)


def test_the_learner_can_train_it(vlm_dir) -> None:
    policy = make(vlm_dir).train()
    data = fit_data_for_spec(SPEC, LOW, HIGH, n=4)
    episode = np.zeros(4, dtype=np.int64)
    batch = {k: torch.as_tensor(v) for k, v in policy.chunk_dataset(data, episode).items()}
    loss = policy.loss(batch)
    assert loss.shape == (4,) and torch.isfinite(loss).all()
    loss.mean().backward()
    trained = [p for p in policy.parameters() if p.grad is not None]
    assert trained and all(torch.isfinite(p.grad).all() for p in trained)


def test_several_robots_observations_go_through_one_batched_pass(vlm_dir) -> None:
    policy = make(vlm_dir)
    chunks = policy.act_batch([observation(seed) for seed in range(3)])
    assert chunks.shape == (3, CHUNK, 2) and np.isfinite(chunks).all()
    assert not np.allclose(chunks[0], chunks[1])  # each robot gets its own answer
