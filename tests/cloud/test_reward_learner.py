"""``--reward-classifier``: the learner trains lerobot's reward classifier on a dataset's labelled frames and publishes
it as ``<dataset>.reward``; an edge-side judge loads those bytes and gives the learner's verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.data.store import ColumnSpec, EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from cloud.learning.algorithms.reward import FAILURE, SUCCESS, UNUSED, frame_labels
from cloud.learning.config import LearnerConfig, RewardTraining
from cloud.learning.learner import Learner
from edge.outcome import OutcomeJudge, OutcomeJudgeConfig
from fleetloop.cli import build_parser
from fleetloop.commands.learner import learner_config
from protocol.steps import schema_for
from tests.factories import episode_rows, step_columns
from tests.policies.reward_frames import SIZE, TINY_ENCODER, TINY_HEAD, frames, held_out

DATASET = "bench"
STEPS = 12  # per episode
RULE = {"positive_steps": 3, "ambiguous_steps": 3, "train_steps": 200, "batch_size": 32, "learning_rate": 3e-3}

pytestmark = pytest.mark.usefixtures("two_torch_threads")


def test_frames_are_labelled_by_outcome_and_position_from_the_end() -> None:
    # episode 0: success in 8 steps; 1: finished without success; 2: still running (rows interleave).
    episode = np.array([0] * 8 + [1] * 4 + [2] * 3)
    seq = np.r_[np.arange(8), np.arange(4), np.arange(3)]
    done = np.zeros(15, bool)
    done[[7, 11]] = True
    success = np.zeros(15, bool)
    success[7] = True
    order = np.random.default_rng(0).permutation(15)
    labels = frame_labels(episode[order], seq[order], done[order], success[order], RewardTraining())
    expected = [FAILURE, FAILURE, UNUSED, UNUSED, UNUSED, SUCCESS, SUCCESS, SUCCESS] + [FAILURE] * 4 + [UNUSED] * 3
    np.testing.assert_array_equal(labels, np.array(expected)[order])


def record(store: EpisodeStore, rng: np.random.Generator, episodes: int) -> None:
    """Half the episodes succeed: the square shows in their last 3 frames; failed episodes never show it."""
    schema = schema_for([("front", "uint8", (SIZE, SIZE, 3)), ("state", "float32", (3,))], ("float32", (2,)))
    store.ensure_dataset(DATASET, {name: ColumnSpec(dtype, shape) for name, (dtype, shape) in schema.items()})
    for index in range(episodes):
        won = index % 2 == 0
        images = frames(rng, STEPS, False)
        if won:
            images[-3:] = frames(rng, 3, True)
        columns = step_columns(STEPS, intervention=True, done_at_end=True, success_at_end=won)
        columns["obs.front"] = images
        store.write([episode_rows(DATASET, f"e{index}", columns)])


def test_the_learner_publishes_a_classifier_that_judges_held_out_frames_and_the_edge_agrees(tmp_path) -> None:
    store = EpisodeStore(tmp_path / "store")
    record(store, np.random.default_rng(5), episodes=12)
    registry = PolicyRegistry(tmp_path / "registry")
    reward = RewardTraining.model_validate({**RULE, "encoder": TINY_ENCODER, **TINY_HEAD})
    config = LearnerConfig(
        first_round_episodes=4, train_steps=2, batch_size=8, reward_classifiers=(DATASET,), reward=reward
    )
    learner = Learner(store, registry, config, checkpoint_dir=tmp_path / "checkpoint")
    published = {version.policy_name: version for version in learner.poll_once()}
    assert set(published) == {DATASET, f"{DATASET}.reward"}  # the policy as before, and the classifier beside it
    assert "18 success and 108 failure frames" in published[f"{DATASET}.reward"].note

    judge = OutcomeJudge.from_weights(registry.read(f"{DATASET}.reward", 1), OutcomeJudgeConfig(consecutive=1))
    images, labels = held_out(seed=9)
    verdicts = np.array([judge.judge({"front": image, "state": np.zeros(3, np.float32)}).success for image in images])
    assert (verdicts == labels).mean() >= 0.85  # chance is 0.5; 18 success frames to learn from
    trained = learner._datasets[f"{DATASET}.reward"].trainable.policy  # the learner's own copy
    learner_verdicts = trained.probabilities([{"front": image} for image in images]) > 0.5
    np.testing.assert_array_equal(verdicts, learner_verdicts)

    assert learner.poll_once() == []  # no new episodes: no new version of either
    restarted = Learner(store, registry, config, checkpoint_dir=tmp_path / "checkpoint")
    assert restarted.poll_once() == []  # it carries on from its checkpoints rather than retrain at once
    restored = restarted._datasets[f"{DATASET}.reward"].trainable.policy.eval()
    assert (restored.probabilities([{"front": image} for image in images]) > 0.5).tolist() == verdicts.tolist()
    store.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--reward-classifier", "bad/name"], "--reward-classifier: learner.reward_classifiers[0]"),
        (["--reward-classifier", "x" * 60], "--reward-classifier: learner.reward_classifiers[0]"),
        (["--reward-classifier", "bench.reward"], "names a classifier"),
        (["--reward-classifier", "a", "--reward-classifier", "a"], "reward_classifiers[1]: 'a' is named twice"),
    ],
)
def test_a_bad_reward_classifier_flag_stops_the_learner_at_start_naming_the_flag(tmp_path, flags, message) -> None:
    args = build_parser().parse_args(["learner", "--root", str(tmp_path), *flags])
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        learner_config(args)


def test_the_flag_reaches_the_learner_config(tmp_path) -> None:
    args = build_parser().parse_args(["learner", "--root", str(tmp_path), "--reward-classifier", DATASET])
    assert learner_config(args).reward_classifiers == (DATASET,)
