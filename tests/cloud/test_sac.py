"""SAC with interventions: the actor as a policy, and a test-sized run whose success grows over versions."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
from cloud.data.version_registry import PolicyRegistry
from cloud.learning.algorithms.sac_agent import SACConfig
from cloud.learning.checkpoint import LearnerCheckpoint
from cloud.learning.config import LearnerConfig
from cloud.learning.learner import Learner
from edge.operator import HGDaggerOperator, TakeoverRule
from fleetloop.cli import build_parser
from fleetloop.commands.learner import learner_config
from hal.config import ConfigError
from hal.reach_sim import PointReachEnv, ReachExpert, ReachRobot
from policies.sac_actor import SACActorConfig, SACActorPolicy
from policies.weights import policy_from_bytes, policy_to_bytes
from protocol.steps import schema_for

OBS = {"state": {"shape": [4], "dtype": "float32"}}


def test_actor_acts_with_its_mean_inside_the_limits_and_survives_safetensors() -> None:
    torch.manual_seed(0)
    actor = SACActorPolicy(
        SACActorConfig(observation=OBS, action_dim=2, action_low=[0.0, -2.0], action_high=[1.0, 2.0], hidden=[16])
    )
    observation = {"state": np.array([0.3, -0.2, 0.5, 0.1], np.float32)}
    action = actor.act(observation)
    assert action.shape == (1, 2) and action.dtype == np.float32
    assert 0.0 <= action[0, 0] <= 1.0 and -2.0 <= action[0, 1] <= 2.0
    mean, _ = actor.gaussian({"obs.state": torch.as_tensor(observation["state"])[None]})
    expected = np.tanh(mean.detach().numpy()[0]) * np.array([0.5, 2.0]) + np.array([0.5, 0.0])
    np.testing.assert_allclose(action[0], expected, rtol=1e-6)
    restored = policy_from_bytes(policy_to_bytes(actor))
    assert restored.type_name == "sac_actor"
    np.testing.assert_array_equal(restored.act(observation), action)


def test_sampled_log_probability_matches_a_tanh_transformed_gaussian() -> None:
    torch.manual_seed(1)
    actor = SACActorPolicy(
        SACActorConfig(observation=OBS, action_dim=2, action_low=[-1.0, -1.0], action_high=[1.0, 1.0], hidden=[8])
    )
    batch = {"obs.state": torch.randn(64, 4)}
    action, logp = actor.sample(batch, torch.Generator().manual_seed(0))
    mean, log_std = actor.gaussian(batch)
    reference = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()]
    )
    inside = action.abs() < 0.999  # atanh of a saturated sample loses precision in the reference
    expected = reference.log_prob(action.clamp(-0.999, 0.999)).sum(-1)
    rows = inside.all(-1)
    assert rows.sum() > 32
    torch.testing.assert_close(logp[rows], expected[rows], rtol=1e-3, atol=1e-3)


def test_sac_config_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="sac.gamma"):
        SACConfig(gamma=1.0)
    with pytest.raises(ValueError, match="sac.demo_ratio"):
        SACConfig(demo_ratio=1.5)
    with pytest.raises(ValueError, match="sac.action_limits.arm"):
        SACConfig(action_limits=(("arm", (1.0,), (0.0,)),))
    with pytest.raises(ValueError, match="learner.algorithm"):
        LearnerConfig(algorithm="ppo")


EVAL_SEEDS = range(1000, 1040)


def autonomous_success(policy) -> float:
    """Success with no operator at all, over fixed episodes."""
    wins = 0
    for seed in EVAL_SEEDS:
        env = PointReachEnv()
        observation, _ = env.reset(seed=seed)
        for _ in range(env.max_steps):
            observation, _, terminated, truncated, info = env.step(policy.act(observation)[0])
            if terminated or truncated:
                break
        wins += bool(info["is_success"])
    return wins / len(EVAL_SEEDS)


def run_episode(robot, operator, policy, version: int) -> dict[str, np.ndarray]:
    """One episode as the edge runs it: the published actor acts (sampling: explore), the operator takes over
    when it drifts."""
    observation, rows = robot.reset(), []
    operator.reset()
    for step in range(100):
        policy_action = policy.act(observation)[0] if policy is not None else None
        action, intervention = operator.decide(observation, policy_action, step)
        transition = robot.apply(action)
        rows.append((observation["state"], action, transition, intervention))
        observation = transition.observation
        if transition.done:
            break
    return {
        "obs.state": np.stack([r[0] for r in rows]).astype(np.float32),
        "action": np.stack([r[1] for r in rows]).astype(np.float32),
        "reward": np.array([r[2].reward for r in rows], np.float32),
        "done": np.array([r[2].done for r in rows]),
        "success": np.array([r[2].success for r in rows]),
        "intervention": np.array([r[3] for r in rows]),
        "policy_version": np.full(len(rows), version, np.int64),
        "t_mono_ns": np.arange(len(rows), dtype=np.int64),
    }


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the learner's setting (run_learner); also keeps the result independent of the cores
    yield
    torch.set_num_threads(threads)


def test_rl_with_interventions_improves_autonomous_success_over_versions(tmp_path, caplog, one_thread) -> None:
    torch.manual_seed(0)
    started = time.process_time()
    store = EpisodeStore(tmp_path / "store", durable=False)
    schema = schema_for([("state", "float32", (4,))], ("float32", (2,)))
    store.ensure_dataset("point_reach", {name: ColumnSpec(*spec) for name, spec in schema.items()})
    registry = PolicyRegistry(tmp_path / "registry")
    config = LearnerConfig(
        algorithm="sac",
        first_round_episodes=2,
        round_episodes=5,
        train_steps=500,
        batch_size=128,
        hidden=(64, 64),
        sac=SACConfig(critic_hidden=(64, 64)),  # the defaults otherwise: 50/50 buffers, bc_weight 1
    )
    checkpoints = tmp_path / "checkpoint"
    learner = Learner(store, registry, config, checkpoint_dir=checkpoints)
    robot = ReachRobot(seed=0)
    operator = HGDaggerOperator(ReachExpert(), TakeoverRule(takeover_distance=1.0, deadline_step=20))
    policy, version, episodes, success, operator_share = None, 0, 0, [], []
    for _ in range(8):
        columns = [run_episode(robot, operator, policy, version) for _ in range(2 if policy is None else 5)]
        if policy is not None:
            operator_share.append(np.mean(np.concatenate([c["intervention"] for c in columns])))
        for c in columns:
            store.write([StepRows("point_reach", f"ep{episodes}", "reach-1", "sim", "point_reach", 0, c)])
            episodes += 1
        [published] = learner.poll_once()
        assert published.version == version + 1
        assert "sac on" in published.note
        version = published.version
        policy = policy_from_bytes(registry.read("point_reach", version))
        assert policy.type_name == "sac_actor"
        success.append(autonomous_success(policy))
    cpu_s = time.process_time() - started
    shares = [round(float(s), 2) for s in operator_share]
    print(f"autonomous success per version: {success}; operator share per round: {shares}; {cpu_s:.1f}s CPU")
    assert success[0] <= 0.2, success
    assert success[-1] >= 0.6, success
    assert np.mean(success[-3:]) >= 0.7, success  # not one lucky version
    assert "online" in published.note and "intervention+demo+offline" in published.note

    # The checkpoint holds the whole SAC state: a restarted learner carries on from v8 with the same critics.
    saved = LearnerCheckpoint(checkpoints / "point_reach").load()
    assert saved is not None and saved.algorithm == "sac" and saved.version == version
    caplog.set_level(logging.INFO, logger="fleetloop.learner")
    restarted = Learner(store, registry, config, checkpoint_dir=checkpoints)
    assert restarted.poll_once() == []
    assert f"resuming from checkpoint: v{version}, step {500 * 8}" in caplog.text
    live, resumed = learner._datasets["point_reach"].trainable, restarted._datasets["point_reach"].trainable
    assert resumed is not None
    for name, module in live.modules().items():
        for key, tensor in module.state_dict().items():
            torch.testing.assert_close(resumed.modules()[name].state_dict()[key], tensor, msg=f"{name}.{key}")
    assert resumed.critic_optimizer.state_dict()["state"].keys() == live.critic_optimizer.state_dict()["state"].keys()


def test_an_exploring_actor_samples_within_the_limits_and_the_mean_actor_does_not() -> None:
    observation = {"state": {"shape": [4], "dtype": "float32"}}
    torch.manual_seed(0)
    limits = {"action_low": [-1.0, 0.0], "action_high": [1.0, 2.0]}
    explorer = SACActorPolicy(
        SACActorConfig(observation=observation, action_dim=2, **limits, hidden=(16,), explore=True)
    )
    mean = policy_from_bytes(policy_to_bytes(explorer))
    assert mean.explore  # travels in the config
    mean.explore = False
    state = {"state": np.array([0.1, -0.2, 0.3, 0.0], np.float32)}
    draws = np.stack([explorer.act(state)[0] for _ in range(200)])
    assert draws.std(axis=0).min() > 0.05  # sampled: they differ
    assert (draws >= [-1.0, 0.0]).all() and (draws <= [1.0, 2.0]).all()
    np.testing.assert_array_equal(mean.act(state), mean.act(state))  # the mean: the same every time
    assert abs(draws.mean(axis=0) - mean.act(state)[0]).max() < 0.3
    with pytest.raises(ConfigError, match=r"^sac_actor\.explore: should be a valid boolean, got 'yes'$"):
        SACActorConfig(observation=observation, action_dim=2, **limits, explore="yes")
    args = build_parser().parse_args(["learner", "--algorithm", "sac"])
    assert learner_config(args).sac.explore
    assert not learner_config(build_parser().parse_args(["learner", "--no-sac-explore"])).sac.explore


def test_sac_trains_actor_and_critics_on_camera_images_and_resumes_them(tmp_path) -> None:
    """Camera observations: the actor and the critics each see the image through their own CNN; a checkpoint
    carries both. (Whether SAC learns from pixels is bench (h), too slow for a test: `--only sac-camera`.)"""
    from bench.sac_camera import SIZE, camera, learning_curve

    success, actor = learning_curve(tmp_path, rounds=2, train_steps=20, episodes_per_round=2)
    assert len(success) == 2 and all(0 <= s <= 1 for s in success)
    assert actor.image_keys == ["camera"] and actor.state_keys == ["state"] and actor.explore
    state = np.array([0.2, -0.3, -0.5, 0.6], np.float32)
    actions = np.stack([actor.act({"state": state[:2], "camera": camera(state)})[0] for _ in range(20)])
    assert actions.shape == (20, 2) and (np.abs(actions) <= 1).all() and actions.std(axis=0).min() > 0

    saved = LearnerCheckpoint(tmp_path / "checkpoint" / "point_reach").load()
    assert saved is not None and saved.version == 2 and saved.policy.image_keys == ["camera"]
    critic = saved.module_states["critic"]
    assert any(k.startswith("encoders.camera.") for k in critic), sorted(critic)[:5]
    assert camera(state).shape == (SIZE, SIZE, 3)
