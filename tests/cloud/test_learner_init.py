"""``--init``: the learner's rounds start from a lab's policy (a pretrained_model folder, a weights file or a version
published into the registry) instead of random weights, keeping its normalization; a misfit is named at start."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.policy_import import newest_imported, publish_policy
from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.learning.config import LearnerConfig
from cloud.learning.init_weights import InitSource
from cloud.learning.learner import Learner
from fleetloop.cli import build_parser
from fleetloop.commands.learner import learner_config
from policies.lerobot_policy import LerobotPolicy
from policies.spec import PolicySpec
from policies.weights import policy_from_bytes, policy_to_bytes
from tests.factories import episode_rows, step_columns, store_schema
from tests.policies.lerobot_tiny import TINY
from tests.policies.pretrained_folders import panda_act_folder, small_mlp

DATASET = "arm"
STATE = {"state": {"shape": [21], "dtype": "float32"}}


pytestmark = pytest.mark.usefixtures("two_torch_threads")


@pytest.fixture(scope="module")
def act_folder(tmp_path_factory) -> Path:
    return panda_act_folder(tmp_path_factory.mktemp("act") / "pretrained_model", seed=7)


def recorded(root: Path, episodes: int = 2, state_dim: int = 21, dataset: str = DATASET) -> DataLayout:
    """A data folder whose store holds ``episodes`` operator-driven episodes of a 21-state, 4-action robot."""
    layout = DataLayout(root)
    store = EpisodeStore(layout.store)
    store.ensure_dataset(dataset, store_schema(state_dim=state_dim, action_dim=4))
    rng = np.random.default_rng(0)
    for index in range(episodes):
        state = rng.uniform(-1, 1, (30, state_dim)).astype(np.float32)
        columns = step_columns(
            30, state=state, action=np.tile(state, (1, 4))[:, :4] * 3, intervention=True, done_at_end=True
        )
        store.write([episode_rows(dataset, f"e{index}", columns)])
    store.close()
    return layout


def first_version(layout: DataLayout, config: LearnerConfig, dataset: str = DATASET):
    store = EpisodeStore(layout.store, read_only=True)
    registry = signing_registry(layout)
    try:
        published = Learner(store, registry, config).poll_once()
    finally:
        store.close()
    return published, registry


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "model.") -> float:
    keys = [k for k in a if k.startswith(prefix)]
    return float(torch.sqrt(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in keys)))


def test_the_first_version_fine_tunes_the_folder_s_weights_and_keeps_its_statistics(act_folder, tmp_path) -> None:
    settings = {"first_round_episodes": 2, "train_steps": 20, "batch_size": 16, "learning_rate": 1e-4}
    init_layout = recorded(tmp_path / "init")
    [v1], registry = first_version(init_layout, LearnerConfig(**settings, init={DATASET: str(act_folder)}))
    assert f"from {act_folder}" in v1.note and "lerobot act" in v1.note
    tuned = policy_from_bytes(registry.read(DATASET, 1))
    assert isinstance(tuned, LerobotPolicy) and tuned.inputs["observation.state"] == ["state"]

    random_layout = recorded(tmp_path / "random")
    tiny = {k: v for k, v in TINY["act"].items()}
    config = LearnerConfig(**settings, policies={DATASET: ("act", tiny)})
    _, random_registry = first_version(random_layout, config)
    scratch = policy_from_bytes(random_registry.read(DATASET, 1))

    start = PolicyRegistry(tmp_path / "start")
    spec = PolicySpec(STATE, 4, f"dataset {DATASET}")
    publish_policy(start, DATASET, act_folder, spec)
    init = policy_from_bytes(start.read(DATASET, 1)).state_dict()
    from_init, from_scratch = distance(tuned.state_dict(), init), distance(scratch.state_dict(), init)
    assert from_init < 0.25 * from_scratch, (from_init, from_scratch)
    # The folder's normalization stays: its statistics, not ones fitted to this data (actions 3x the state here).
    statistics = [k for k in init if k.startswith("processors.") and k.endswith(".mean")]
    assert statistics
    for key in statistics:
        torch.testing.assert_close(tuned.state_dict()[key], init[key])
    assert any(not torch.allclose(scratch.state_dict()[k], init[k]) for k in statistics)


def test_registry_starts_from_the_newest_version_a_person_published(tmp_path) -> None:
    layout = recorded(tmp_path / "data")
    registry = signing_registry(layout)
    spec = PolicySpec(STATE, 4, f"dataset {DATASET}")
    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(policy_to_bytes(small_mlp(STATE)))
    with pytest.raises(ValueError, match="no version of arm was published with `fleetloop policy publish`"):
        InitSource.parse(DATASET, "registry").pinned(registry)
    publish_policy(registry, DATASET, weights, spec)  # v1, from outside
    registry.publish(DATASET, policy_to_bytes(small_mlp(STATE, 8)))  # v2, as the learner publishes
    assert newest_imported(registry, DATASET) == 1
    assert InitSource.parse(DATASET, "registry").pinned(registry).version == 1
    assert InitSource.parse(DATASET, "registry:v2").pinned(registry).version == 2
    with pytest.raises(ValueError, match="the registry holds no v9 of arm"):
        InitSource.parse(DATASET, "registry:v9").pinned(registry)

    config = LearnerConfig(first_round_episodes=2, round_episodes=2, train_steps=30, init={DATASET: "registry"})
    store = EpisodeStore(layout.store, read_only=True)
    learner = Learner(store, registry, config)
    assert learner.poll_once() == []  # the learner resumes at the published v2 and waits for new episodes
    store_rw = EpisodeStore(layout.store)  # two more: a round
    rng = np.random.default_rng(1)
    for index in (2, 3):
        state = rng.uniform(-1, 1, (30, 21)).astype(np.float32)
        columns = step_columns(30, state=state, action=state[:, :4], intervention=True, done_at_end=True)
        store_rw.write([episode_rows(DATASET, f"e{index}", columns)])
    store_rw.close()
    [v3] = learner.poll_once()
    store.close()
    assert v3.version == 3 and "from arm v1" in v3.note
    assert policy_from_bytes(registry.read(DATASET, 3)).config.hidden == (16,)  # v1's architecture, not v2's


def parse_learner(*argv: str):
    return learner_config(build_parser().parse_args(["learner", *argv]))


def test_init_flags_are_checked_at_start_naming_the_flag_and_feature(act_folder, tmp_path) -> None:
    layout = recorded(tmp_path / "data", state_dim=3)  # this dataset's robots give 3 values, the folder takes 21
    root = ["--root", str(layout.root)]
    with pytest.raises(ValueError) as refused:
        parse_learner(*root, "--init", f"{DATASET}={act_folder}")
    expected = f"--init {DATASET}={act_folder}: observation.state: the policy expects shape [21], dataset arm gives [3]"
    assert str(refused.value) == expected
    with pytest.raises(ValueError, match=r"^--init: learner.init.arm: sac trains its own actor"):
        parse_learner(*root, "--algorithm", "sac", "--init", f"{DATASET}={act_folder}")
    with pytest.raises(ValueError, match=r"^--init: learner.init.arm: the starting policy fixes the architecture"):
        parse_learner(*root, "--policy", f"{DATASET}=act", "--init", f"{DATASET}={act_folder}")
    with pytest.raises(ValueError, match=r"^--init arm=nowhere: nowhere: no such folder or file"):
        parse_learner(*root, "--init", f"{DATASET}=nowhere")
    with pytest.raises(ValueError, match=r"^--init arm=registry: no version of arm was published"):
        parse_learner(*root, "--init", f"{DATASET}=registry")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"type": "nope"}))
    with pytest.raises(ValueError, match=r"^--init other=.*broken: config.json: type: 'nope' is no lerobot"):
        parse_learner(*root, "--init", f"other={broken}")  # a dataset not recorded yet: the folder alone is checked
    assert parse_learner(*root, "--init", f"other={act_folder}").init == (("other", str(act_folder)),)


def test_a_dataset_recorded_after_start_that_does_not_fit_gets_no_version(act_folder, tmp_path, caplog) -> None:
    layout = recorded(tmp_path / "data", state_dim=3)
    config = LearnerConfig(first_round_episodes=2, train_steps=10, init={DATASET: str(act_folder)})
    with caplog.at_level(logging.ERROR, logger="fleetloop.learner"):
        published, registry = first_version(layout, config)
    assert published == [] and registry.latest(DATASET) is None
    assert "observation.state: the policy expects shape [21], dataset arm gives [3]" in caplog.text
    assert "the learner trains no version of arm" in caplog.text
