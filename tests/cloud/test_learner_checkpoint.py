"""The learner's checkpoint: saved after each publish, whole or absent, and a restarted learner resumes from it."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.learning.checkpoint import LearnerCheckpoint
from cloud.learning.config import LearnerConfig
from cloud.learning.learner import HGDaggerLearner, Learner
from policies.weights import policy_from_bytes
from tests.factories import episode_rows, step_columns, store_schema

CONFIG = LearnerConfig(first_round_episodes=2, round_episodes=2, train_steps=40, batch_size=32, hidden=(16,))


def episode(store: EpisodeStore, episode_id: str, n: int = 30) -> None:
    state = np.random.default_rng(len(episode_id)).normal(size=(n, 3)).astype(np.float32)
    columns = step_columns(n, state=state, action=state[:, :2] * 2, intervention=True, done_at_end=True)
    store.write([episode_rows("toy", episode_id, columns)])


def learner_after_its_first_version(tmp_path):
    """A store with two finished demos, a learner with a checkpoint folder, and the v1 it published."""
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("toy", store_schema(state_dim=3, action_dim=2))
    registry = PolicyRegistry(tmp_path / "registry")
    checkpoints = tmp_path / "learner" / "checkpoint"
    learner = HGDaggerLearner(store, registry, CONFIG, checkpoint_dir=checkpoints)
    for name in ("a", "b"):
        episode(store, name)
    [v1] = learner.poll_once()
    return store, registry, checkpoints, learner, v1


def test_checkpoint_round_trip_and_resume_after_a_restart(tmp_path, caplog) -> None:
    store, registry, checkpoints, learner, v1 = learner_after_its_first_version(tmp_path)
    episode(store, "c")
    episode(store, "d")
    [v2] = learner.poll_once()
    assert (v1.version, v2.version) == (1, 2)

    folder = checkpoints / "toy"
    meta = json.loads((folder / "checkpoint.json").read_text())
    assert meta["version"] == 2 and meta["total_steps"] == 80 and meta["episodes_at_version"] == 4
    assert meta["rows_at_version"] == 4 * 30  # the rows v2's round saw: a restart publishes only past them
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "state-v000002.safetensors"]

    saved = LearnerCheckpoint(folder).load()
    assert saved is not None
    published = policy_from_bytes(registry.read("toy", 2))
    for name, tensor in published.state_dict().items():
        torch.testing.assert_close(saved.policy.state_dict()[name], tensor, msg=name)
    live = learner._datasets["toy"].trainable.optimizer.state_dict()
    restored = saved.optimizer.state_dict()
    assert restored["param_groups"][0]["lr"] == live["param_groups"][0]["lr"]
    assert tuple(restored["param_groups"][0]["betas"]) == tuple(live["param_groups"][0]["betas"])
    assert live["state"].keys() == restored["state"].keys() and live["state"]
    for index, values in live["state"].items():
        for key, value in values.items():
            torch.testing.assert_close(torch.as_tensor(restored["state"][index][key]), torch.as_tensor(value))
    # The restored optimizer takes a step (its state fits the restored parameters).
    saved.policy.loss({"obs.state": torch.zeros(4, 3), "action": torch.zeros(4, 2)}).mean().backward()
    saved.optimizer.step()

    # A restarted learner: resumes at v2 / step 80, waits for round_episodes new episodes, then publishes v3.
    caplog.set_level(logging.INFO, logger="fleetloop.learner")
    restarted = HGDaggerLearner(store, registry, CONFIG, checkpoint_dir=checkpoints)
    episode(store, "e")
    assert restarted.poll_once() == []
    assert "resuming from checkpoint: v2, step 80" in caplog.text
    episode(store, "f")
    [v3] = restarted.poll_once()
    assert v3.version == 3
    assert json.loads((folder / "checkpoint.json").read_text())["total_steps"] == 120


def test_a_checkpoint_older_than_the_registry_gives_way_to_the_registry(tmp_path, caplog) -> None:
    store, registry, checkpoints, learner, v1 = learner_after_its_first_version(tmp_path)
    registry.publish("toy", registry.read("toy", 1))  # v2 published; the learner died before saving
    caplog.set_level(logging.INFO, logger="fleetloop.learner")
    restarted = HGDaggerLearner(store, registry, CONFIG, checkpoint_dir=checkpoints)
    assert restarted.poll_once() == []
    assert "carrying on from the registry" in caplog.text
    assert restarted._datasets["toy"].episodes_at_last_version == 2
    for name in ("c", "d"):
        episode(store, name)
    [v3] = restarted.poll_once()
    assert v3.version == 3  # versions only go up


def test_switching_the_algorithm_is_a_routine_event_logged_as_one(tmp_path, caplog) -> None:
    """The other algorithm's checkpoint does not fit: said at INFO in an operator's words, never as an ERROR."""
    store, registry, checkpoints, learner, v1 = learner_after_its_first_version(tmp_path)
    caplog.set_level(logging.INFO, logger="fleetloop.learner")
    switched = Learner(store, registry, CONFIG.model_copy(update={"algorithm": "sac"}), checkpoint_dir=checkpoints)
    assert switched.poll_once() == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "toy was trained by hg-dagger until now; sac starts on it afresh from the published version" in caplog.text
    assert "resuming toy from the published v1" in caplog.text
    assert switched._datasets["toy"].episodes_at_last_version == 2 and switched._datasets["toy"].trainable is None
