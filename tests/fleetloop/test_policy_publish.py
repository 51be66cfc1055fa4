"""``fleetloop policy publish NAME --from DIR|FILE``: a lab's policy checked against the robot (or the dataset its
robots recorded) and published as the next version; anything wrong is one line naming the flag, file and field."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from fleetloop.cli import build_parser
from policies.lerobot_policy import LerobotPolicy
from policies.weights import ORIGIN, policy_from_bytes, policy_to_bytes, read_metadata
from tests.factories import store_schema
from tests.policies.pretrained_folders import PANDA, panda_act_folder, sim_observation, small_mlp, tiny_act

pytestmark = pytest.mark.usefixtures("two_torch_threads")


@pytest.fixture(scope="module")
def act_folder(tmp_path_factory) -> Path:
    return panda_act_folder(tmp_path_factory.mktemp("lab") / "pretrained_model")


def fleetloop(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return args.func(args)


def test_a_lerobot_folder_is_published_as_the_next_version(act_folder, tmp_path, caplog) -> None:
    root = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="fleetloop"):
        code = fleetloop(
            "policy", "publish", PANDA, "--from", str(act_folder), "--root", str(root), "--robot", "sim:" + PANDA
        )
    assert code == 0, caplog.text
    assert f"{PANDA} v1 published from {act_folder} (lerobot act), checked against robot {PANDA}" in caplog.text
    registry = PolicyRegistry(root / "registry")
    assert registry.latest(PANDA).note == f"published from {act_folder} (lerobot act)"
    weights = registry.read(PANDA, 1)
    assert read_metadata(weights)[ORIGIN] == str(act_folder)
    policy = policy_from_bytes(weights).eval()  # what an edge runs
    assert isinstance(policy, LerobotPolicy)
    state = {"state": np.linspace(-1, 1, 21).astype(np.float32)}
    np.testing.assert_allclose(policy.act(state), tiny_act(sim_observation(PANDA), 4).act(state), atol=1e-5)


def recorded_dataset(root: Path, name: str, state_dim: int) -> None:
    store = EpisodeStore(root / "store")
    store.ensure_dataset(name, store_schema(state_dim=state_dim, action_dim=4))
    store.close()


def test_a_weights_file_is_checked_against_the_dataset_its_robots_recorded(tmp_path, caplog) -> None:
    root = tmp_path / "data"
    weights = tmp_path / "mlp.safetensors"
    weights.write_bytes(policy_to_bytes(small_mlp(sim_observation(PANDA))))
    publish = ("policy", "publish", "arm", "--from", str(weights), "--root", str(root))
    with caplog.at_level(logging.INFO, logger="fleetloop"):
        assert fleetloop(*publish) == 2
        assert "--robot or --dataset: no episode store in" in caplog.text
        recorded_dataset(root, "arm", 21)
        recorded_dataset(root, "small_arm", 3)
        assert fleetloop(*publish) == 0  # the dataset named like the policy
        assert "arm v1 published from" in caplog.text and "(fleetloop mlp), checked against dataset arm" in caplog.text
        caplog.clear()
        assert fleetloop(*publish, "--dataset", "small_arm") == 2
    expected = f"policy publish: --from {weights}: observation.state: the policy expects shape [21], dataset small_arm"
    assert f"{expected} gives [3]" in caplog.text
    assert PolicyRegistry(root / "registry").versions("arm") == [1]


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["list", "arm", "--from", "x"], "policy list: --from: only `fleetloop policy publish` takes it"),
        (["publish", "arm"], "policy publish: --from: name the lerobot pretrained_model folder"),
        (["publish", "arm", "--from", "x", "--robot", "sim:pusht", "--dataset", "a"], "--dataset: give the robot"),
        (["publish", "arm", "--from", "x", "--robot", "sim:nope"], "--robot sim:nope: unknown sim task 'nope'"),
        (["publish", "arm", "--from", "x", "--robot", "sim:pusht", "--to", "2"], "--to: only `fleetloop policy roll"),
        (["publish", "no/such", "--from", "x"], "policy_name: 'no/such' must be"),
        (["publish", "arm", "--from", "nowhere", "--robot", "sim:pusht"], "--from nowhere: nowhere: no such folder"),
    ],
)
def test_publish_flags_are_named_when_wrong(argv: list[str], error: str, tmp_path, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="fleetloop"):
        assert fleetloop("policy", *argv, "--root", str(tmp_path)) == 2
    assert error in caplog.text


def test_a_hostile_folder_is_one_line_from_the_command_never_a_traceback(act_folder, tmp_path) -> None:
    folder = tmp_path / "pretrained_model"
    folder.mkdir()
    for name in ("model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        (folder / name).write_bytes((act_folder / name).read_bytes())
    (folder / "config.json").write_text('{"type": "act", "dim_model": ')
    done = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", "policy", "publish", PANDA, "--from", str(folder)]
        + ["--root", str(tmp_path / "data"), "--robot", f"sim:{PANDA}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"policy publish: --from {folder}: config.json: not JSON" in done.stderr
    assert "Traceback" not in done.stderr
    assert PolicyRegistry(tmp_path / "data" / "registry").latest(PANDA) is None


def test_input_maps_a_feature_by_hand_and_a_wrong_one_is_named(act_folder, tmp_path, caplog) -> None:
    publish = (
        "policy",
        "publish",
        PANDA,
        "--from",
        str(act_folder),
        "--root",
        str(tmp_path),
        "--robot",
        f"sim:{PANDA}",
    )
    with caplog.at_level(logging.ERROR, logger="fleetloop"):
        assert fleetloop(*publish, "--input", "observation.state=joints") == 2
    assert "observation.state: robot panda_pick_cube has no observation 'joints' (state)" in caplog.text
    assert fleetloop(*publish, "--input", "observation.state=state") == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["policy", "publish", PANDA, "--from", "x", "--input", "observation.state"])
