"""A lab's lerobot ACT, published with `fleetloop policy publish`, runs on a real edge; `fleetloop learner --init`
then fine-tunes it: version 2 starts from version 1's weights and statistics, and reaches the edge too."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from policies.lerobot_policy import LerobotPolicy
from policies.lora import LoraPolicy
from policies.weights import policy_from_bytes
from tests.e2e.fleet import ENV, Fleet, wait_until
from tests.policies.pretrained_folders import PANDA, panda_act_folder, sim_observation, tiny_act

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = [k for k in a if k.startswith("model.")]
    return float(torch.sqrt(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in keys)))


def publish(folder: Path, fleet: Fleet) -> Path:
    """`fleetloop policy publish` of a lab's folder as the Panda's v1; the fleet's data folder."""
    data = fleet.root / "data"
    published = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", "policy", "publish", PANDA, "--from", str(folder)]
        + ["--root", str(data), "--robot", f"sim:{PANDA}"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**ENV, **OFFLINE},
    )
    assert published.returncode == 0, published.stderr
    return data


def test_a_published_lerobot_folder_runs_on_the_edge_and_the_learner_fine_tunes_it(tmp_path, fleet: Fleet) -> None:
    folder = panda_act_folder(tmp_path / "lab" / "pretrained_model", seed=5)
    data = publish(folder, fleet)
    registry = PolicyRegistry(data / "registry")
    v1 = policy_from_bytes(registry.read(PANDA, 1)).state_dict()

    fleet.start_cloud()
    fleet.start_edge("arm-1", "--preload", "lerobot", hz=50, env=OFFLINE)
    wait_until(lambda: "arm-1 switched to policy panda_pick_cube v1" in fleet.log("arm-1"), 120, "the edge to run v1")
    store = EpisodeStore(data / "store", read_only=True)

    def autonomous_steps(version: int) -> np.ndarray:
        store.refresh()
        rows = store.read(PANDA, columns=["policy_version", "intervention", "action"])
        return rows["action"][(rows["policy_version"] == version) & ~rows["intervention"]]

    wait_until(lambda: len(autonomous_steps(1)) >= 20, 60, "steps the lab's ACT v1 drove")
    actions = autonomous_steps(1)
    assert np.isfinite(actions).all() and actions.std(axis=0).max() > 0  # the policy's own, changing actions

    learner = ["--init", f"{PANDA}=registry", "--round-episodes", "2", "--train-steps", "20", "--batch-size", "32"]
    fleet.start_learner(*learner)
    wait_until(lambda: registry.latest(PANDA).version >= 2, 240, "the learner to publish the fine-tuned v2")
    assert f"hg-dagger (lerobot act) from {PANDA} v1" in registry.latest(PANDA).note
    assert f"{PANDA} starts its rounds from {PANDA} v1" in fleet.log("learner")
    v2 = policy_from_bytes(registry.read(PANDA, 2))
    assert isinstance(v2, LerobotPolicy) and v2.lerobot_type == "act"
    # Started from v1: much nearer to it than a policy of the same architecture started elsewhere.
    elsewhere = tiny_act(sim_observation(PANDA), 4, seed=11).state_dict()
    tuned = v2.state_dict()
    assert distance(tuned, v1) < 0.5 * distance(elsewhere, v1), (distance(tuned, v1), distance(elsewhere, v1))
    for key in (k for k in v1 if k.startswith("processors.")):
        torch.testing.assert_close(tuned[key], v1[key])  # v1's statistics, not ones fitted to the new steps

    wait_until(lambda: "arm-1 switched to policy panda_pick_cube v2" in fleet.log("arm-1"), 60, "the edge to run v2")
    assert fleet.stop("arm-1") == 0
    assert "Traceback" not in fleet.log("learner") + fleet.log("cloud")


def test_lora_adapters_around_the_lab_s_act_reach_the_edge_as_deltas_of_a_tenth_of_the_model(
    tmp_path, fleet: Fleet
) -> None:
    """`--adapters` trains only LoRA adapters around the published ACT: from the second trained version on, the
    gateway pushes a delta holding the adapters (the frozen weights never travel again), at most a tenth of the
    model's bytes, and the edge runs it."""
    # An ACT of a few MB: with the tiny one (0.17 MB), the delta's per-tensor digests outweigh its adapters.
    folder = panda_act_folder(tmp_path / "lab" / "pretrained_model", seed=5, dim_model=256, dim_feedforward=1024)
    data = publish(folder, fleet)
    registry = PolicyRegistry(data / "registry")
    fleet.start_cloud()
    fleet.start_edge("arm-1", "--preload", "lerobot", hz=50, env=OFFLINE)
    learner = ["--init", f"{PANDA}=registry", "--adapters", f"{PANDA}=4", "--round-episodes", "2"]
    fleet.start_learner(*learner, "--train-steps", "10", "--batch-size", "16", "--no-train-between", env=OFFLINE)
    wait_until(lambda: "arm-1 switched to policy panda_pick_cube v3" in fleet.log("arm-1"), 300, "the edge to run v3")
    assert "with LoRA adapters of rank 4" in registry.latest(PANDA).note
    v3 = policy_from_bytes(registry.read(PANDA, 3))
    assert isinstance(v3, LoraPolicy) and isinstance(v3.inner, LerobotPolicy)
    v1 = policy_from_bytes(registry.read(PANDA, 1)).state_dict()
    adapted = v3.inner.state_dict()
    for key in (k for k in v1 if k.startswith("model.")):  # the lab's weights, frozen under the adapters
        prefix, _, leaf = key.rpartition(".")
        torch.testing.assert_close(adapted.get(f"{prefix}.base.{leaf}", adapted.get(key)), v1[key])
    pushes = re.findall(
        r"pushing panda_pick_cube v3 to arm-1 as a delta on v2: ([\d.]+) MB instead of ([\d.]+) MB", fleet.log("cloud")
    )
    assert pushes, fleet.log("cloud")[-3000:]
    sent, full = map(float, pushes[0])
    assert sent <= 0.1 * full, (sent, full)
    assert "Traceback" not in fleet.log("learner") + fleet.log("cloud")
