import numpy as np
import pytest

from cloud.learner import HGDaggerLearner, LearnerConfig
from cloud.registry import PolicyRegistry
from cloud.store import EpisodeStore
from policies.weights import policy_from_bytes
from tests.factories import episode_rows, step_columns, store_schema

SCHEMA = store_schema(state_dim=3, action_dim=2)


def episode(store: EpisodeStore, episode_id: str, n: int, intervention: bool) -> None:
    state = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    columns = step_columns(n, state=state, action=state[:, :2] * 2, intervention=intervention, done_at_end=True)
    store.write([episode_rows("toy", episode_id, columns)])


def test_learner_publishes_after_enough_episodes_and_trains_on_labelled_steps(tmp_path) -> None:
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("toy", SCHEMA)
    registry = PolicyRegistry(tmp_path / "registry")
    learner = HGDaggerLearner(
        store, registry, LearnerConfig(first_round_episodes=2, round_episodes=2, train_steps=300, hidden=(32,))
    )
    episode(store, "a", 50, intervention=True)
    assert learner.poll_once() == []
    episode(store, "b", 50, intervention=True)
    [v1] = learner.poll_once()
    assert v1.version == 1 and "100 labelled steps" in v1.note
    policy = policy_from_bytes(registry.read("toy", 1))
    x = np.array([0.5, -0.5, 0.1], np.float32)
    assert np.allclose(policy.act({"state": x})[0], x[:2] * 2, atol=0.3)
    episode(store, "c", 50, intervention=False)
    assert learner.poll_once() == []
    episode(store, "d", 50, intervention=False)
    [v2] = learner.poll_once()
    assert v2.version == 2 and "100 labelled steps" in v2.note  # autonomous steps carry no label


def test_learner_config_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="learner.round_episodes"):
        LearnerConfig(round_episodes=0)
