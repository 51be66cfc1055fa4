import numpy as np

from cloud.store import ColumnSpec, EpisodeStore, StepRows
from launch.summary import autonomy_climbed, summarize
from protocol.steps import schema_for

SCHEMA = {k: ColumnSpec(d, s) for k, (d, s) in schema_for([("state", "float32", (1,))], ("float32", (1,))).items()}


def add(store: EpisodeStore, episode_id: str, version: int, interventions: int, success: bool, n: int = 10) -> None:
    store.write(
        [
            StepRows(
                dataset="d",
                episode_id=episode_id,
                resource_id="r",
                source="sim",
                task="t",
                first_seq=0,
                columns={
                    "obs.state": np.zeros((n, 1), np.float32),
                    "action": np.zeros((n, 1), np.float32),
                    "reward": np.zeros(n, np.float32),
                    "done": np.arange(n) == n - 1,
                    "success": (np.arange(n) == n - 1) & success,
                    "intervention": np.arange(n) < interventions,
                    "policy_version": np.full(n, version, np.int64),
                    "t_mono_ns": np.arange(n, dtype=np.int64) * 100_000_000,
                },
            )
        ]
    )


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
