"""A lerobot Robot (one that needs no hardware) driven through the whole loop by configuration alone."""

from __future__ import annotations

import yaml

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import ColumnSpec, EpisodeStore
from cloud.learning.policy_choice import policy_for_schema
from hal.lerobot_robot import make_lerobot_robot
from policies.weights import policy_to_bytes
from protocol.steps import schema_for
from tests.e2e.fleet import Fleet, wait_until


def test_lerobot_robot_runs_the_loop_from_a_config_file(tmp_path, fleet: Fleet) -> None:
    config = yaml.safe_load(open("launch/lerobot/fake_arm.yaml"))
    config["calibration_dir"] = str(tmp_path / "calibration")
    config_path = tmp_path / "arm.yaml"
    config_path.write_text(yaml.safe_dump(config))

    caps = make_lerobot_robot(dict(config)).capabilities  # not connected: only its features are read
    schema = schema_for([(s.name, s.dtype, s.shape) for s in caps.observation], (caps.action.dtype, caps.action.shape))
    policy = policy_for_schema({k: ColumnSpec(d, s) for k, (d, s) in schema.items()}, hidden=(16,))

    fleet.start_cloud()
    signing_registry(DataLayout(fleet.root / "data")).publish(caps.embodiment, policy_to_bytes(policy))
    fleet.start_edge("lerobot-arm-1", "--operator", "none", robot=f"lerobot:{config_path}", hz=10)
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)

    def rows() -> int:
        store.refresh()
        return store.committed_rows(caps.embodiment) if caps.embodiment in store.datasets() else 0

    wait_until(lambda: rows() > 20, 90, "the lerobot robot's steps in the store")
    assert fleet.stop("lerobot-arm-1") == 0
    store.refresh()
    assert rows() == fleet.stats("lerobot-arm-1")["ticks"]
    episodes = store.episodes(caps.embodiment)
    assert {e.source for e in episodes} == {"robot"} and {e.resource_id for e in episodes} == {"lerobot-arm-1"}
    data = store.read(caps.embodiment, columns=["obs.front", "obs.state", "policy_version"])
    assert data["obs.front"].shape[1:] == (48, 64, 3)
    assert (data["policy_version"] == 1).all()
    assert data["obs.state"].std(axis=0).max() > 0, "the arm moved under the policy's actions"
