"""The staleness budget: exact weights per mode, who is exempt, and how it reaches the learner."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.learning.config import LearnerConfig
from cloud.learning.learner import Learner
from cloud.learning.sampler import LABELLED_KINDS, Sampler, load_steps
from cloud.learning.staleness import StalenessBudget
from fleetloop.cli import build_parser
from fleetloop.commands.learner import learner_config
from tests.factories import episode_rows, step_columns, store_schema

AGES = np.array([0, 1, 2, 3, 4, 5, 8])


def test_no_budget_weighs_every_step_one() -> None:
    np.testing.assert_array_equal(StalenessBudget().age_weights(AGES), np.ones(7))


def test_drop_keeps_steps_up_to_the_budget() -> None:
    np.testing.assert_array_equal(StalenessBudget(2, "drop").age_weights(AGES), [1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(StalenessBudget(0, "drop").age_weights(AGES), [1, 0, 0, 0, 0, 0, 0])


def test_downweight_exp_halves_every_budget_versions() -> None:
    weights = StalenessBudget(2, "downweight", "exp").age_weights(AGES)
    np.testing.assert_allclose(weights, [1, 2**-0.5, 0.5, 2**-1.5, 0.25, 2**-2.5, 1 / 16])


def test_downweight_linear_reaches_zero_after_the_budget() -> None:
    weights = StalenessBudget(3, "downweight", "linear").age_weights(AGES)
    np.testing.assert_allclose(weights, [1, 0.75, 0.5, 0.25, 0, 0, 0])


def test_a_step_newer_than_the_learner_counts_as_age_zero() -> None:
    np.testing.assert_array_equal(StalenessBudget(1, "drop").age_weights(np.array([-3, -1])), [1, 1])


def test_labelled_steps_are_exempt_and_demonstrations_always() -> None:
    versions = np.array([5, 1, 1, 0, 1])
    intervention = np.array([False, False, True, True, True])
    offline = np.array([False, False, False, False, True])
    budget = StalenessBudget(1, "drop")
    # at v5: ages 0, 4 (online: dropped), 4 (intervention: exempt), demo, offline
    np.testing.assert_array_equal(budget.weights(5, versions, intervention, offline), [1, 0, 1, 1, 1])
    aging = StalenessBudget(1, "drop", include_interventions=True)
    np.testing.assert_array_equal(aging.weights(5, versions, intervention, offline), [1, 0, 0, 1, 1])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"budget": -1}, "staleness.budget"),
        ({"budget": 0, "mode": "downweight"}, "staleness.budget"),
        ({"budget": 1.5}, "staleness.budget"),
        ({"mode": "forget"}, "staleness.mode"),
        ({"decay": "cosine"}, "staleness.decay"),
    ],
)
def test_bad_budgets_name_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        StalenessBudget(**kwargs)


def test_learner_config_and_flags_carry_the_budget() -> None:
    with pytest.raises(ValueError, match="learner.staleness_mode"):
        LearnerConfig(staleness_budget=2, staleness_mode="forget")
    with pytest.raises(ValueError, match="learner.staleness_budget"):
        LearnerConfig(staleness_budget=-1)
    args = build_parser().parse_args(
        ["learner", "--staleness-budget", "3", "--staleness-mode", "downweight", "--staleness-decay", "linear"]
    )
    config = learner_config(args)
    assert config.staleness == StalenessBudget(3, "downweight", "linear")
    bad = build_parser().parse_args(["learner", "--staleness-budget", "0", "--staleness-mode", "downweight"])
    with pytest.raises(ValueError, match="--staleness-budget"):
        learner_config(bad)


def _episode(store: EpisodeStore, episode_id: str, version: int, intervention: bool, n: int = 10) -> None:
    state = np.full((n, 3), version, np.float32)
    columns = step_columns(
        n, state=state, action=state[:, :2], intervention=intervention, done_at_end=True, policy_version=version
    )
    store.write([episode_rows("toy", episode_id, columns)])


def test_staleness_decides_which_store_rows_a_learner_round_draws(tmp_path) -> None:
    store = EpisodeStore(tmp_path / "store")
    store.ensure_dataset("toy", store_schema(state_dim=3, action_dim=2))
    _episode(store, "demo", 0, intervention=True)
    for version in (1, 2, 3, 4):
        _episode(store, f"online-v{version}", version, intervention=False)
        _episode(store, f"corrections-v{version}", version, intervention=True)
    table = load_steps(store, "toy", ["obs.state", "action"])
    budget = StalenessBudget(1, "drop", include_interventions=True)
    sampler = Sampler.build(table, None, LABELLED_KINDS, budget, current_version=4)
    drawn_versions = set(table.columns["policy_version"][sampler.rows].tolist())
    assert drawn_versions == {0, 3, 4}  # the demo, and corrections of v3 and v4; online steps are never labels
    assert sampler.size == 30

    # Through the learner: HG-DAgger with this budget trains on those 30 steps (the note says so).
    registry = PolicyRegistry(tmp_path / "registry")
    for _ in range(4):
        registry.publish("toy", b"placeholder")  # v1..v4 exist; the next round trains on top of v4
    learner = Learner(
        store,
        registry,
        LearnerConfig(train_steps=5, batch_size=8, hidden=(8,), staleness_budget=1, staleness_interventions=True),
    )
    version = learner.train_and_publish("toy", finished_episodes=9)
    assert version is not None and version.version == 5
    assert "on 30 labelled steps" in version.note
    unbudgeted = Learner(store, registry, LearnerConfig(train_steps=5, batch_size=8, hidden=(8,)))
    assert "on 50 labelled steps" in unbudgeted.train_and_publish("toy", finished_episodes=9).note
