"""Versions of the ``point_reach`` policy trained by the project's learner, for the canary tests.

``ReachExpert`` (the sim robots' scripted operator) drives ``PointReachEnv``; each of its steps is a labelled
demonstration in a real ``EpisodeStore``, and the learner's own HG-DAgger rounds (``Learner.poll_once``) train a
small MLP on them and publish it to a scratch registry. The tests publish those weights with the learner's key.

- ``early``: the learner's first round, on the first ``EARLY_EPISODES`` demonstrations: it reaches some goals
  (about half). The incumbent a canary is compared with.
- ``good``: its next round, on all ``GOOD_EPISODES``: it reaches nearly every goal.
- ``corrupted``: a first round on the same ``GOOD_EPISODES`` demonstrations with every action negated (corrupted
  labels): it runs from the goal.

Everything is seeded (the demonstrations' starts and goals, the learner's initialization and batches) and trained on
one thread, so the weights are the same on every run; ``check_premises`` measures each version in the sim so a test
says so plainly if they ever stop being worse / better than one another.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cloud.data.store import EpisodeStore, StepRows
from cloud.data.version_registry import PolicyRegistry
from cloud.learning.config import LearnerConfig
from cloud.learning.learner import Learner
from hal.reach_sim import PointReachEnv, ReachExpert
from policies.weights import policy_from_bytes
from tests.factories import store_schema

DATASET = "point_reach"
EARLY_EPISODES = 12
GOOD_EPISODES = 40
# A 2x32 MLP and 1000 gradient steps: about a second per round on one CPU thread.
CONFIG = {"hidden": (32, 32), "train_steps": 1000, "batch_size": 64, "learning_rate": 3e-3, "track": "none"}


@dataclass(frozen=True)
class ReachVersions:
    """Each version's weights (safetensors bytes, unsigned: a test publishes them with the learner's key)."""

    early: bytes
    good: bytes
    corrupted: bytes


def demonstration(env: PointReachEnv, seed: int, negate: bool) -> dict[str, np.ndarray]:
    """One episode of the scripted operator as store columns, every step labelled (a demonstration: no policy ran)."""
    expert = ReachExpert()
    obs, _ = env.reset(seed=seed)
    states, actions, success = [], [], False
    for _ in range(env.max_steps):
        action = expert.act(obs)
        states.append(obs["state"])
        actions.append(-action if negate else action)
        obs, _, success, truncated, _ = env.step(action)
        if success or truncated:
            break
    last = np.arange(len(states)) == len(states) - 1
    return {
        "obs.state": np.stack(states).astype(np.float32),
        "action": np.stack(actions).astype(np.float32),
        "reward": (last & success).astype(np.float32),
        "done": last,
        "success": last & success,
        "intervention": np.ones(len(states), bool),
        "policy_version": np.zeros(len(states), np.int64),
        "t_mono_ns": np.arange(len(states), dtype=np.int64) * 20_000_000,
    }


def _demonstrate(store: EpisodeStore, env: PointReachEnv, indices: range, negate: bool) -> None:
    for index in indices:
        columns = demonstration(env, index, negate)
        store.write([StepRows(DATASET, f"demo-{index}", "operator", "sim", DATASET, 0, columns)])


def _rounds(root: Path, first: int, then: int, negate: bool) -> list[bytes]:
    """The weights of the learner's first round after ``first`` demonstrations and, if ``then``, of its next round
    after ``then`` more."""
    store = EpisodeStore(root / "store")
    store.ensure_dataset(DATASET, store_schema(state_dim=4, action_dim=2))
    registry = PolicyRegistry(root / "registry")
    config = LearnerConfig(first_round_episodes=first, round_episodes=max(then, 1), loader_workers=0, **CONFIG)
    learner = Learner(store, registry, config)
    env = PointReachEnv()
    _demonstrate(store, env, range(first), negate)
    published = learner.poll_once()
    if then:
        _demonstrate(store, env, range(first, first + then), negate)
        published += learner.poll_once()
    assert len(published) == (2 if then else 1), f"the learner published {published}"
    return [registry.read(DATASET, version.version) for version in published]


@contextmanager
def _one_thread() -> Iterator[None]:
    """Training on one thread: the same weights on any machine, and no fight for a busy machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_versions(root: Path) -> ReachVersions:
    with _one_thread():
        early, good = _rounds(root / "correct", EARLY_EPISODES, GOOD_EPISODES - EARLY_EPISODES, negate=False)
        [corrupted] = _rounds(root / "corrupted", GOOD_EPISODES, 0, negate=True)
    return ReachVersions(early, good, corrupted)


def measured_success(weights: bytes, episodes: int = 200, seed: int = 10_000) -> float:
    """The share of ``episodes`` sim episodes the version wins on its own (seeds apart from the demonstrations')."""
    policy = policy_from_bytes(weights)
    env = PointReachEnv()
    wins = 0
    for index in range(episodes):
        obs, _ = env.reset(seed=seed + index)
        for _ in range(env.max_steps):
            obs, _, success, truncated, _ = env.step(np.clip(policy.act(obs)[0], -1.0, 1.0))
            if success or truncated:
                wins += success
                break
    return wins / episodes


def check_premises(versions: ReachVersions) -> dict[str, float]:
    """Each version's success in the sim, asserted to be ordered as the tests need: corrupted (about 0) well below
    early (about half), early well below good (about 1)."""
    measured = {name: measured_success(getattr(versions, name)) for name in ("early", "good", "corrupted")}
    ordered = measured["corrupted"] <= 0.05 and 0.3 <= measured["early"] <= 0.85 and measured["good"] >= 0.95
    assert ordered, f"the trained versions' sim success is not ordered as the canary tests need: {measured}"
    return measured
