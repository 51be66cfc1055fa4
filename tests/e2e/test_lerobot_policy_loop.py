"""lerobot ACT, then lerobot diffusion, pushed to a real edge process that runs them on the pusht sim's images."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import EpisodeStore
from hal.sim import SIM_TASKS
from policies.lerobot_policy import LerobotPolicy
from policies.weights import policy_from_bytes, policy_to_bytes
from tests.e2e.fleet import Fleet, wait_until
from tests.e2e.store_checks import wait_compacted
from tests.policies.lerobot_tiny import TINY, fit_data_for_spec

DATASET = "pusht"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def tiny_lerobot_policy(lerobot_type: str) -> LerobotPolicy:
    spec = SIM_TASKS[DATASET]
    observation = {s.name: {"shape": list(s.shape), "dtype": s.dtype} for s in spec.observation}
    torch.manual_seed(0)
    policy = LerobotPolicy(observation, spec.action.shape[0], lerobot_type, TINY[lerobot_type])
    # Untrained, but with statistics in the robot's units so its actions land in the arena.
    low, high = np.asarray(spec.action.low, np.float32), np.asarray(spec.action.high, np.float32)
    policy.fit_normalization(fit_data_for_spec(observation, low, high))
    return policy.eval()


def test_lerobot_act_then_diffusion_run_on_the_edge(tmp_path, fleet: Fleet) -> None:
    started = time.monotonic()
    fleet.start_cloud()
    fleet.start_edge("pusht-1", "--operator", "none", robot="sim:pusht", hz=10, env=OFFLINE)
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    registry = signing_registry(DataLayout(fleet.root / "data"))

    def rows(version: int) -> int:
        store.refresh()
        if DATASET not in store.datasets():
            return 0
        return int((store.read(DATASET, columns=["policy_version"])["policy_version"] == version).sum())

    wait_until(lambda: DATASET in store.datasets() or store.refresh(), 60, "the pusht edge to connect")
    act_policy = tiny_lerobot_policy("act")
    assert registry.publish(DATASET, policy_to_bytes(act_policy)).version == 1
    wait_until(lambda: rows(1) >= 15, 60, "steps under lerobot ACT v1")

    diffusion_policy = tiny_lerobot_policy("diffusion")
    assert registry.publish(DATASET, policy_to_bytes(diffusion_policy)).version == 2
    wait_until(lambda: rows(2) >= 15, 60, "steps under lerobot diffusion v2")
    assert fleet.stop("pusht-1") == 0

    wait_compacted(fleet.root / "data" / "store")  # acked steps reach the store once the uplink pauses
    store.refresh()
    data = store.read(DATASET, columns=["policy_version", "action", "intervention", "t_mono_ns", "obs.pixels"])
    assert store.committed_rows(DATASET) == fleet.stats("pusht-1")["ticks"]
    versions = data["policy_version"][np.argsort(data["t_mono_ns"], kind="stable")]
    assert set(versions.tolist()) == {1, 2}, "with no operator every step comes from a policy"
    first_v2 = int(np.argmax(versions == 2))
    assert (versions[:first_v2] == 1).all() and (versions[first_v2:] == 2).all(), "ran v1 after swapping to v2"
    assert not data["intervention"].any()
    actions = data["action"]
    assert actions.shape[1:] == (2,) and np.isfinite(actions).all()
    low, high = SIM_TASKS[DATASET].action.low, SIM_TASKS[DATASET].action.high
    assert (actions >= low).all() and (actions <= high).all()
    for version in (1, 2):
        mine = actions[data["policy_version"] == version]
        assert mine.std(axis=0).max() > 0, f"v{version}'s actions never changed: not the policy's chunks"
    assert data["obs.pixels"].std() > 0  # the policies saw real rendered frames
    # Without --preload lerobot the edge imports lerobot when v1 arrives, while its loop runs: it says so.
    assert "is a lerobot policy and lerobot is not imported yet" in fleet.log("pusht-1")
    fleet.stop_all()  # the bound below counts the shutdown too
    assert time.monotonic() - started < 150


def test_the_cloud_s_learner_trains_lerobot_act_from_operator_demos_and_the_edge_runs_it(
    tmp_path, fleet: Fleet
) -> None:
    """`fleetloop cloud --policy panda_pick_cube=act --policy-config ...`: the learner trains a tiny ACT (random
    init, lerobot's loss) on the scripted operator's demonstrations streamed by a real edge, publishes it, and the
    edge runs it (its steps carry v1 and the policy's own actions)."""
    task = "panda_pick_cube"
    config = tmp_path / "tiny_act.json"
    config.write_text(json.dumps(TINY["act"]))
    learner = ["--policy", f"{task}=act", "--policy-config", f"{task}={config}", "--first-round-episodes", "2"]
    learner += ["--round-episodes", "1000", "--train-steps", "40", "--batch-size", "32"]
    fleet.start_cloud(*learner, learner=True)
    fleet.start_edge("arm-1", "--preload", "lerobot", hz=50, env=OFFLINE)
    registry = signing_registry(DataLayout(fleet.root / "data"))
    wait_until(lambda: registry.latest(task) is not None, 180, "the learner to publish lerobot ACT v1")
    policy = policy_from_bytes(registry.read(task, 1))
    assert isinstance(policy, LerobotPolicy) and policy.lerobot_type == "act" and policy.chunk_size == 5
    assert "hg-dagger (lerobot act)" in registry.latest(task).note
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)

    def autonomous_v1_steps() -> int:
        store.refresh()
        rows = store.read(task, columns=["policy_version", "intervention"])
        return int(((rows["policy_version"] == 1) & ~rows["intervention"]).sum())

    wait_until(lambda: autonomous_v1_steps() >= 20, 90, "the edge to act with ACT v1")
    assert fleet.stop("arm-1") == 0
    store.refresh()
    rows = store.read(task, columns=["policy_version", "intervention", "action"])
    mine = rows["action"][(rows["policy_version"] == 1) & ~rows["intervention"]]
    assert np.isfinite(mine).all() and mine.std(axis=0).max() > 0  # the policy's own, changing actions
    edge_log = fleet.log("arm-1")
    assert "imported lerobot's policy code" in edge_log and "not imported yet" not in edge_log
