import numpy as np

from cloud.data.store import EpisodeStore
from cloud.data.version_summary import autonomy_climbed, episode_outcomes, first_reaching, rolling_success, summarize
from tests.factories import episode_rows, step_columns, store_schema

SCHEMA = store_schema(state_dim=1, action_dim=1)


def add(store: EpisodeStore, episode_id: str, version: int, interventions: int, success: bool, n: int = 10) -> None:
    columns = step_columns(
        n,
        state=1,
        action=1,
        intervention=np.arange(n) < interventions,
        done_at_end=True,
        success_at_end=success,
        policy_version=version,
        step_ns=100_000_000,
    )
    store.write([episode_rows("d", episode_id, columns, resource_id="r")])


def test_summary_per_version(tmp_path) -> None:
    store = EpisodeStore(tmp_path)
    store.ensure_dataset("d", SCHEMA)
    add(store, "a", 0, interventions=10, success=True)
    add(store, "b", 1, interventions=0, success=True)
    add(store, "c", 1, interventions=5, success=True)
    add(store, "d", 1, interventions=0, success=False)
    v0, v1 = summarize(store, "d")
    assert (v0.version, v0.episodes, v0.autonomous_success, v0.intervention_rate) == (0, 1, 0.0, 1.0)
    assert (v1.version, v1.episodes, v1.autonomous_success, v1.steps) == (1, 3, 0.333, 30)
    assert v1.intervention_rate == round(5 / 30, 3)
    assert autonomy_climbed([v0, v1], min_episodes=1) == (0.0, 0.333)


def test_a_version_with_no_finished_episode_has_no_success_rate(tmp_path) -> None:
    store = EpisodeStore(tmp_path)
    store.ensure_dataset("d", SCHEMA)
    add(store, "a", 1, interventions=0, success=True)
    columns = step_columns(4, state=1, action=1, policy_version=2, step_ns=100_000_000)  # v2's first, still running
    store.write([episode_rows("d", "b", columns, resource_id="r")])
    v1, v2 = summarize(store, "d")
    assert (v1.episodes, v1.autonomous_success) == (1, 1.0)
    assert (v2.episodes, v2.autonomous_success, v2.steps) == (0, None, 4)  # not 0.0: nothing to rate yet
    assert autonomy_climbed([v1, v2], min_episodes=0) == (1.0, 1.0)


def test_episodes_in_the_order_they_ended_and_the_rolling_success(tmp_path) -> None:
    """Two robots' episodes reach the store out of order; the outcomes follow their last steps' times."""
    store = EpisodeStore(tmp_path)
    store.ensure_dataset("d", SCHEMA)
    plan = [("late", 5.0, 1, 0, True), ("first", 1.0, 0, 10, True), ("second", 2.0, 1, 0, False)]
    plan += [("third", 3.0, 1, 0, True), ("fourth", 4.0, 1, 2, True)]
    for episode_id, end_s, version, interventions, success in plan:
        columns = step_columns(
            10,
            state=1,
            action=1,
            intervention=np.arange(10) < interventions,
            done_at_end=True,
            success_at_end=success,
            policy_version=version,
            step_ns=1000,
        )
        columns["t_mono_ns"] = columns["t_mono_ns"] + int(end_s * 1e9) - 9000
        store.write([episode_rows("d", episode_id, columns, resource_id="r")])
    outcomes = episode_outcomes(store, "d")
    assert [round(o.ended_s, 3) for o in outcomes] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [o.autonomous for o in outcomes] == [False, False, True, False, True]
    assert [o.version for o in outcomes] == [0, 1, 1, 1, 1]
    rolling = rolling_success(outcomes, window=3)
    assert rolling[:2] == [None, None] and rolling[2:] == [1 / 3, 1 / 3, 2 / 3]
    assert first_reaching(rolling, 0.6) == 5 and first_reaching(rolling, 0.9) is None
