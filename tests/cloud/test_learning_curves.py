"""The learner's curves, read back from the files each tracker writes after real (tiny) learner rounds."""

import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cloud.data.layout import DataLayout
from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.data.version_summary import summarize
from cloud.learning.config import LearnerConfig
from cloud.learning.learner import Learner
from cloud.learning.tracking import check_backend
from fleetloop.cli import build_parser
from fleetloop.commands.learner import learner_config, learning_curves
from tests.factories import episode_rows, step_columns, store_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = store_schema(state_dim=3, action_dim=2)
STEPS = 40


def add(store: EpisodeStore, name: str, version: int, interventions: int, success: bool, done: bool = True) -> None:
    n = 12
    state = np.random.default_rng(len(name)).normal(size=(n, 3)).astype(np.float32)
    columns = step_columns(
        n,
        state=state,
        action=state[:, :2],
        intervention=np.arange(n) < interventions,
        done_at_end=done,
        success_at_end=success,
        policy_version=version,
        step_ns=100_000_000,
    )
    store.write([episode_rows("toy", name, columns)])


def learner_on(root: Path, track: str) -> tuple[Learner, EpisodeStore]:
    store = EpisodeStore(root / "store", durable=False)
    store.ensure_dataset("toy", SCHEMA)
    config = LearnerConfig(
        first_round_episodes=2, round_episodes=2, train_steps=STEPS, batch_size=16, hidden=(16,), track=track
    )
    layout = DataLayout(root)
    learner = Learner(store, PolicyRegistry(root / "registry"), config, curves=learning_curves(layout, config))
    return learner, store


def three_rounds(learner: Learner, store: EpisodeStore) -> None:
    """v0: two demonstrations; v1: one autonomous success, one corrected; v2: one autonomous failure, one
    corrected, while an episode that started under v1 is still running."""
    add(store, "demo-a", 0, interventions=12, success=True)
    add(store, "demo-b", 0, interventions=12, success=True)
    assert [v.version for v in learner.poll_once()] == [1]
    add(store, "v1-alone", 1, interventions=0, success=True)
    add(store, "v1-helped", 1, interventions=6, success=True)
    assert [v.version for v in learner.poll_once()] == [2]
    add(store, "v1-late", 1, interventions=0, success=True, done=False)
    add(store, "v2-fail", 2, interventions=0, success=False)
    add(store, "v2-helped", 2, interventions=4, success=True)
    assert [v.version for v in learner.poll_once()] == [3]


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_each_rounds_numbers_and_each_settled_versions_success(tmp_path) -> None:
    learner, store = learner_on(tmp_path, "tensorboard")
    three_rounds(learner, store)
    logdir = tmp_path / "runs" / "toy"
    during = scalars(logdir)
    assert [step for step, _ in during["train/loss"]] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert all(math.isfinite(v) and v >= 0 for _, v in during["train/loss"])
    assert [v for _, v in during["policy/version"]] == [1, 2, 3]
    assert [v for _, v in during["data/episodes"]] == [2, 4, 6]
    assert all(v > 0 for _, v in during["throughput/steps_per_s"])
    for (_, steps_per_s), (_, samples_per_s) in zip(
        during["throughput/steps_per_s"], during["throughput/samples_per_s"], strict=True
    ):
        assert samples_per_s == pytest.approx(16 * steps_per_s, rel=1e-4)  # batch 16, one rank
    # Round 3 trains on v2 over corrections made under v1 (age 1) and v2 (age 0); demonstrations have no age.
    assert [v for _, v in during["staleness/max_age"]] == [0, 0, 1]
    assert 0 < during["staleness/stale_share"][-1][1] < 1
    assert 0 < during["staleness/mean_age"][-1][1] < 1
    # v0 settled when v1's episodes came; v1 waits for its running episode, v2 for a newer version.
    assert [step for step, _ in during["per_version/episodes"]] == [0]

    learner.close()
    after = scalars(logdir)
    expected = {s.version: s for s in summarize(store, "toy")}
    assert [step for step, _ in after["per_version/episodes"]] == [0, 1, 2]  # each version once
    for version, success in after["per_version/autonomous_success"]:
        assert 0 <= success <= 1
        assert success == pytest.approx(expected[version].autonomous_success)
    assert dict(after["per_version/autonomous_success"]) == pytest.approx({0: 0.0, 1: 0.5, 2: 0.0})
    rates = dict(after["per_version/intervention_rate"])
    assert rates == pytest.approx({v: expected[v].intervention_rate for v in (0, 1, 2)}, abs=1e-6)
    assert rates[0] == 1.0 and 0 < rates[1] < 1
    assert dict(after["per_version/episodes"]) == {0: 2, 1: 2, 2: 2}

    # A restarted learner does not log the same versions again.
    store.close()
    again, _ = learner_on(tmp_path, "tensorboard")
    again.poll_once()
    again.close()
    assert [step for step, _ in scalars(logdir)["per_version/episodes"]] == [0, 1, 2]


def test_wandb_offline_keeps_the_run_with_its_keys_under_the_data_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no login
    monkeypatch.setenv("WANDB_SILENT", "true")
    learner, store = learner_on(tmp_path, "wandb")
    three_rounds(learner, store)
    learner.close()
    [run] = (tmp_path / "runs" / "toy" / "wandb").glob("offline-run-*")
    [records] = run.glob("run-*.wandb")
    data = records.read_bytes()
    for key in ("train/loss", "throughput/samples_per_s", "staleness/mean_age", "per_version/autonomous_success"):
        assert key.encode() in data, key
    assert b"per_version/step" in data  # each group's own x axis


def test_trackio_keeps_its_database_under_the_data_folder(tmp_path) -> None:
    script = (
        "import sys; from pathlib import Path; from cloud.learning.tracking import open_tracker\n"
        "run = open_tracker('trackio', Path(sys.argv[1]), 'toy', {'train_steps': 40})\n"
        "run.log_scalars(40, {'train/loss': 0.5}); run.log_scalars(1, {'per_version/autonomous_success': 0.75})\n"
        "run.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRACKIO_DIR"} | {"PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "runs")], check=True, env=env, timeout=120)
    with sqlite3.connect(tmp_path / "runs" / "trackio" / "fleetloop.db") as db:
        rows = [
            (name, step, json.loads(m)) for name, step, m in db.execute("select run_name, step, metrics from metrics")
        ]
    assert ("toy", 40, {"train/loss": 0.5}) in rows
    assert ("toy", 1, {"per_version/autonomous_success": 0.75}) in rows


def test_the_track_flag_is_checked_and_a_missing_package_says_how_to_install_it(monkeypatch, capsys) -> None:
    parser = build_parser()
    assert learner_config(parser.parse_args(["learner"])).track == "tensorboard"
    assert learner_config(parser.parse_args(["learner", "--track", "none"])).track == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(["learner", "--track", "mlflow"])
    assert "--track" in capsys.readouterr().err
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"--track wandb: the wandb package is not installed.*pip install 'wandb=="):
        check_backend("wandb")
    with pytest.raises(ValueError, match="--track"):
        learner_config(parser.parse_args(["learner", "--track", "trackio"]))


def test_track_none_writes_nothing(tmp_path) -> None:
    learner, store = learner_on(tmp_path, "none")
    three_rounds(learner, store)
    learner.close()
    assert not (tmp_path / "runs").exists()
