"""lerobot ACT and diffusion behind fleetloop's Policy interface: real lerobot classes, tiny, random weights."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch

from policies.factory import POLICY_TYPES
from policies.lerobot_policy import LerobotPolicy
from policies.train import train_policy
from policies.weights import policy_from_bytes, policy_to_bytes, read_metadata
from tests.policies.lerobot_tiny import TINY

# pusht-like: a camera and a 2-d position; actions are positions far from 0 so normalization must be right.
SPEC = {"pixels": {"shape": [48, 48, 3], "dtype": "uint8"}, "agent_pos": {"shape": [2], "dtype": "float32"}}
ACTION_CENTRE = 1000.0
TYPES = ["act", "diffusion"]


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def episodes(n_episodes: int = 4, length: int = 12, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A bright square moves across the image; the action is where it will be, around ACTION_CENTRE."""
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    pixels = np.zeros((n, 48, 48, 3), dtype=np.uint8)
    position = np.zeros((n, 2), dtype=np.float32)
    for e in range(n_episodes):
        start, velocity = rng.uniform(4, 20, 2), rng.uniform(-1, 1, 2)
        for t in range(length):
            y, x = (start + velocity * t).astype(int)
            pixels[e * length + t, y : y + 6, x : x + 6] = 255
            position[e * length + t] = (y, x)
    action = (ACTION_CENTRE + 5.0 * position + rng.normal(0, 0.5, (n, 2))).astype(np.float32)
    agent_pos = (position * 10).astype(np.float32)
    data = {"obs.pixels": pixels, "obs.agent_pos": agent_pos, "action": action}
    return data, np.repeat(np.arange(n_episodes), length)


def observation_at(data: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k.removeprefix("obs."): v[i] for k, v in data.items() if k.startswith("obs.")}


def make(lerobot_type: str) -> LerobotPolicy:
    torch.manual_seed(0)
    policy = LerobotPolicy(SPEC, 2, lerobot_type, TINY[lerobot_type])
    data, _ = episodes()
    policy.fit_normalization(data)
    return policy.eval()


def act_seeded(policy: LerobotPolicy, observation: dict[str, np.ndarray]) -> np.ndarray:
    torch.manual_seed(123)  # diffusion starts from noise
    return policy.act(observation)


def test_registered_under_its_type_name() -> None:
    assert POLICY_TYPES["lerobot"] is LerobotPolicy


@pytest.mark.parametrize("lerobot_type", TYPES)
def test_act_returns_the_whole_chunk_in_action_units(lerobot_type: str) -> None:
    policy = make(lerobot_type)
    data, _ = episodes()
    expected_chunk = TINY[lerobot_type]["n_action_steps"]
    assert policy.chunk_size == expected_chunk
    assert type(policy.model).__name__ == {"act": "ACTPolicy", "diffusion": "DiffusionPolicy"}[lerobot_type]
    for i in (0, 7):
        chunk = policy.act(observation_at(data, i))
        assert chunk.shape == (expected_chunk, 2) and chunk.dtype == np.float32
        assert np.isfinite(chunk).all()
        # Unnormalized by the fitted statistics: a random net lands near the data's actions, not near 0.
        assert np.abs(chunk - ACTION_CENTRE).max() < 200, chunk
    if lerobot_type == "diffusion":  # MIN_MAX with clipped samples: inside the data's action range
        low, high = data["action"].min(axis=0), data["action"].max(axis=0)
        assert (chunk >= low - 1e-3).all() and (chunk <= high + 1e-3).all()


@pytest.mark.parametrize("lerobot_type", TYPES)
def test_normalization_statistics_change_the_actions(lerobot_type: str) -> None:
    policy = make(lerobot_type)
    data, _ = episodes()
    before = act_seeded(policy, observation_at(data, 3))
    shifted = {**data, "action": data["action"] - ACTION_CENTRE}
    policy.fit_normalization(shifted)
    after = act_seeded(policy, observation_at(data, 3))
    np.testing.assert_allclose(after, before - ACTION_CENTRE, atol=1e-2)


def test_chunk_dataset_builds_action_sequences_within_episodes() -> None:
    policy = LerobotPolicy(SPEC, 2, "act", TINY["act"])  # offsets 0..4
    actions = np.arange(10, dtype=np.float32)[:, None].repeat(2, axis=1)
    out = policy.chunk_dataset({"action": actions}, np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1]))
    assert out["action"].shape == (10, 5, 2)
    np.testing.assert_array_equal(out["action"][0, :, 0], [0, 1, 2, 2, 2])
    np.testing.assert_array_equal(out["action_is_pad"][0], [False, False, False, True, True])
    np.testing.assert_array_equal(out["action"][3, :, 0], [3, 4, 5, 6, 7])
    assert not out["action_is_pad"][3].any()
    diffusion = LerobotPolicy(SPEC, 2, "diffusion", {**TINY["diffusion"], "n_obs_steps": 2})  # offsets -1..6
    out = diffusion.chunk_dataset({"action": actions}, np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1]))
    np.testing.assert_array_equal(out["action"][3, :, 0], [3, 3, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(out["action_is_pad"][3], [True] + [False] * 7)
    with pytest.raises(ValueError, match="grouped by episode"):
        policy.chunk_dataset({"action": actions[:3]}, np.array([1, 0, 1]))


def state_episodes(n_episodes: int = 2, length: int = 8) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """State only (ACT and diffusion then need an environment state): the action moves toward a goal."""
    rng = np.random.default_rng(1)
    n = n_episodes * length
    goal = np.repeat(rng.uniform(-1, 1, (n_episodes, 2)), length, axis=0).astype(np.float32)
    agent_pos = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    action = (ACTION_CENTRE + 50 * (goal - agent_pos)).astype(np.float32)
    return {"obs.agent_pos": agent_pos, "obs.goal": goal, "action": action}, np.repeat(np.arange(n_episodes), length)


@pytest.mark.parametrize("lerobot_type", TYPES)
def test_training_steps_reduce_the_loss_on_a_fixed_batch(lerobot_type: str) -> None:
    torch.manual_seed(0)
    spec = {"agent_pos": {"shape": [2], "dtype": "float32"}, "goal": {"shape": [2], "dtype": "float32"}}
    policy = LerobotPolicy(spec, 2, lerobot_type, TINY[lerobot_type], environment_state=["goal"])
    assert policy.inputs == {"observation.state": ["agent_pos"], "observation.environment_state": ["goal"]}
    data, episode_index = state_episodes()
    dataset = policy.chunk_dataset(data, episode_index)
    batch = {k: torch.from_numpy(v) for k, v in dataset.items()}
    policy.fit_normalization(dataset)

    def measured() -> float:
        torch.manual_seed(7)  # same dropout, VAE and diffusion noise draws before and after
        policy.train()
        with torch.no_grad():
            loss = policy.loss(batch)
        assert loss.shape == (len(data["action"]),) and torch.isfinite(loss).all()
        return loss.mean().item()

    before = measured()
    train_policy(policy, dataset, steps=60, batch_size=16, lr=3e-3, fit_normalization=False)
    after = measured()
    assert after < 0.7 * before, (before, after)
    chunk = policy.eval().act({"agent_pos": data["obs.agent_pos"][0], "goal": data["obs.goal"][0]})
    assert chunk.shape == (TINY[lerobot_type]["n_action_steps"], 2) and np.isfinite(chunk).all()


@pytest.mark.parametrize("lerobot_type", TYPES)
def test_loss_on_image_batches_backpropagates_into_the_backbone(lerobot_type: str) -> None:
    policy = make(lerobot_type).train()
    data, episode_index = episodes(n_episodes=1, length=6)
    sequences = {k: torch.from_numpy(v) for k, v in policy.chunk_dataset(data, episode_index).items()}
    single = {k: torch.from_numpy(v) for k, v in data.items()}  # one action a step: repeated, the rest padding
    for batch in (sequences, single):
        policy.zero_grad()
        loss = policy.loss(batch)
        assert loss.shape == (6,) and torch.isfinite(loss).all()
        loss.mean().backward()
        backbone = [p.grad for n, p in policy.named_parameters() if "backbone" in n and p.requires_grad]
        assert backbone and any(g is not None and g.abs().sum() > 0 for g in backbone)


@pytest.mark.parametrize("lerobot_type", TYPES)
def test_bytes_round_trip_rebuilds_the_same_policy_with_its_statistics(lerobot_type: str) -> None:
    policy = make(lerobot_type)
    data, _ = episodes()
    blob = policy_to_bytes(policy)
    metadata = read_metadata(blob)
    assert metadata["type"] == "lerobot"
    rebuilt = policy_from_bytes(blob)  # built on the meta device, then the weights are assigned
    rebuilt.eval()
    assert isinstance(rebuilt, LerobotPolicy) and rebuilt.lerobot_type == lerobot_type
    assert not any(t.is_meta for t in rebuilt.state_dict().values())
    original_state, rebuilt_state = policy.state_dict(), rebuilt.state_dict()
    assert original_state.keys() == rebuilt_state.keys()
    assert any(k.startswith("processors.pre.") and k.endswith("observation.state.mean") for k in rebuilt_state)
    for key, tensor in original_state.items():
        torch.testing.assert_close(rebuilt_state[key], tensor, rtol=0, atol=0, msg=key)
    for i in (0, 5, 20):
        np.testing.assert_array_equal(
            act_seeded(rebuilt, observation_at(data, i)), act_seeded(policy, observation_at(data, i))
        )
    # Serialized again, the rebuilt policy gives the same config and tensors: nothing lost or added on the way.
    again = policy_to_bytes(rebuilt)
    assert read_metadata(again) == metadata
    reloaded, tensors = safetensors.torch.load(again), safetensors.torch.load(blob)
    assert reloaded.keys() == tensors.keys() and all(torch.equal(reloaded[k], tensors[k]) for k in tensors)


def test_bytes_without_the_normalization_statistics_are_refused() -> None:
    policy = make("act")
    tensors = {k: v.contiguous() for k, v in policy.state_dict().items() if not k.startswith("processors.")}
    metadata = read_metadata(policy_to_bytes(policy))
    with pytest.raises(ValueError, match="processor state"):
        policy_from_bytes(safetensors.torch.save(tensors, metadata=metadata))
    nan_stats = dict(policy.state_dict())
    key = next(k for k in nan_stats if k.startswith("processors.post.") and k.endswith(".std"))
    nan_stats[key] = torch.full_like(nan_stats[key], float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        policy_from_bytes(safetensors.torch.save({k: v.contiguous() for k, v in nan_stats.items()}, metadata=metadata))


def test_a_partial_load_keeps_the_statistics_and_an_unfitted_policy_round_trips() -> None:
    policy = make("act")
    data, _ = episodes()
    before = policy.act(observation_at(data, 2))
    model_only = {k: v for k, v in policy.state_dict().items() if k.startswith("model.")}
    result = policy.load_state_dict(model_only, strict=False)  # e.g. an update that carries changed tensors only
    assert any(k.startswith("processors.pre.") for k in result.missing_keys)
    np.testing.assert_array_equal(policy.act(observation_at(data, 2)), before)

    unfitted = LerobotPolicy(SPEC, 2, "act", TINY["act"]).eval()
    assert not any(k.startswith("processors.") for k in unfitted.state_dict())
    rebuilt = policy_from_bytes(policy_to_bytes(unfitted)).eval()
    np.testing.assert_array_equal(rebuilt.act(observation_at(data, 2)), unfitted.act(observation_at(data, 2)))


def test_no_pretrained_backbone_is_fetched_by_default() -> None:
    config = {k: v for k, v in TINY["act"].items() if k != "pretrained_backbone_weights"}
    policy = LerobotPolicy(SPEC, 2, "act", config)  # lerobot's own default would download ImageNet weights
    assert policy.config.pretrained_backbone_weights is None
    assert policy.config_dict()["lerobot_config"]["pretrained_backbone_weights"] is None


def test_config_errors_are_named() -> None:
    with pytest.raises(ValueError, match="unknown lerobot policy type 'nope'"):
        LerobotPolicy(SPEC, 2, "nope", {})
    with pytest.raises(ValueError, match="environment_state names"):
        LerobotPolicy(SPEC, 2, "act", TINY["act"], environment_state=["missing"])
    with pytest.raises(ValueError, match="chunk_size 3 does not match"):
        LerobotPolicy(SPEC, 2, "act", TINY["act"], chunk_size=3)


@pytest.mark.parametrize("lerobot_type", TYPES)
def test_from_pretrained_dir_loads_what_lerobot_saved(lerobot_type: str, tmp_path) -> None:
    policy = make(lerobot_type)
    data, _ = episodes()
    # Saved as lerobot-train saves a checkpoint's pretrained_model: the policy and both processors.
    policy.model.save_pretrained(tmp_path)
    policy.preprocessor.save_pretrained(tmp_path)
    policy.postprocessor.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"} <= {
        p.name for p in tmp_path.iterdir()
    }

    loaded = LerobotPolicy.from_pretrained_dir(tmp_path)
    # Observation names default to the feature names: observation.state <- "state".
    assert loaded.observation == {
        "pixels": {"shape": [48, 48, 3], "dtype": "uint8"},
        "state": {"shape": [2], "dtype": "float32"},
    }
    for i in (0, 9):
        expected = act_seeded(policy, observation_at(data, i))
        renamed = {"pixels": data["obs.pixels"][i], "state": data["obs.agent_pos"][i]}
        np.testing.assert_array_equal(act_seeded(loaded, renamed), expected)

    # With the robot's own observation names, and on to an edge as bytes.
    mapped = LerobotPolicy.from_pretrained_dir(tmp_path, observation=SPEC, inputs=policy.inputs)
    rebuilt = policy_from_bytes(policy_to_bytes(mapped))
    rebuilt.eval()
    np.testing.assert_array_equal(
        act_seeded(rebuilt, observation_at(data, 4)), act_seeded(policy, observation_at(data, 4))
    )
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LerobotPolicy.from_pretrained_dir(tmp_path / "missing")


def test_act_batch_is_one_forward_pass_that_matches_acting_one_by_one() -> None:
    policy = make("act")  # deterministic, so the batched answer must equal the single ones
    data, _ = episodes()
    observations = [observation_at(data, i) for i in (0, 5, 9)]
    calls = []
    forward = policy.model.predict_action_chunk

    def counted(batch):
        calls.append(len(batch["observation.state"]))
        return forward(batch)

    policy.model.predict_action_chunk = counted
    chunks = policy.act_batch(observations)
    assert calls == [3] and chunks.shape == (3, policy.chunk_size, 2)
    for chunk, observation in zip(chunks, observations, strict=True):
        np.testing.assert_allclose(chunk, policy.act(observation), rtol=1e-4, atol=1e-3)
