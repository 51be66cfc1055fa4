import numpy as np
import pytest

from cloud.learner import HGDaggerLearner, LearnerConfig
from cloud.registry import PolicyRegistry
from cloud.store import ColumnSpec, EpisodeStore, StepRows
from policies.weights import policy_from_bytes
from protocol.steps import schema_for

SCHEMA = {k: ColumnSpec(d, s) for k, (d, s) in schema_for([("state", "float32", (3,))], ("float32", (2,))).items()}


def episode(store: EpisodeStore, episode_id: str, n: int, intervention: bool) -> None:
    state = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    store.write(
        [
            StepRows(
                dataset="toy",
                episode_id=episode_id,
                resource_id="r1",
                source="sim",
                task="toy",
                first_seq=0,
                columns={
                    "obs.state": state,
                    "action": state[:, :2] * 2,
                    "reward": np.zeros(n, np.float32),
                    "done": np.arange(n) == n - 1,
                    "success": np.zeros(n, bool),
                    "intervention": np.full(n, intervention),
                    "policy_version": np.zeros(n, np.int64),
                    "t_mono_ns": np.arange(n, dtype=np.int64),
                },
            )
        ]
    )


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
