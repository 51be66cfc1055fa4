import numpy as np

from cloud.data.store import EpisodeStore
from cloud.data.version_summary import autonomy_climbed, summarize
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
