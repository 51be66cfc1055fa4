"""``OutcomeJudge``: success once a real (tiny, trained) reward classifier stays above its threshold for N ticks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.outcome import OutcomeJudge, OutcomeJudgeConfig
from hal.config import ConfigError
from policies.factory import make_policy
from policies.reward_classifier import LABEL, RewardClassifier
from policies.train import train_policy
from policies.weights import policy_to_bytes
from tests.policies.reward_frames import SIZE, frames, tiny_config

pytestmark = pytest.mark.usefixtures("two_torch_threads")


@pytest.fixture(scope="module")
def classifier() -> RewardClassifier:
    rng = np.random.default_rng(11)
    torch.manual_seed(0)
    model = make_policy("reward_classifier", tiny_config())
    data = {"obs.front": np.concatenate([frames(rng, 60, True), frames(rng, 60, False)])}
    data[LABEL] = np.r_[np.ones(60), np.zeros(60)].astype(np.float32)
    with torch.random.fork_rng(devices=[]):
        train_policy(model, data, steps=200, batch_size=32, lr=3e-3)
    assert isinstance(model, RewardClassifier)
    return model.eval()


def confident(classifier: RewardClassifier, success: bool, n: int, seed: int) -> list[np.ndarray]:
    """``n`` frames the classifier puts clearly on the ``success`` side (the judge's logic is under test here)."""
    rng = np.random.default_rng(seed)
    chosen = []
    while len(chosen) < n:
        image = frames(rng, 1, success)[0]
        p = classifier.success_probability({"front": image})
        if (p > 0.8) if success else (p < 0.2):
            chosen.append(image)
    return chosen


def test_success_needs_the_probability_above_the_threshold_for_n_ticks_in_a_row(classifier) -> None:
    judge = OutcomeJudge.from_weights(policy_to_bytes(classifier), OutcomeJudgeConfig(threshold=0.5, consecutive=3))
    yes, no = confident(classifier, True, 5, seed=1), confident(classifier, False, 2, seed=2)
    ticks = [yes[0], yes[1], no[0], yes[2], yes[3], yes[4], no[1]]
    verdicts = [judge.judge({"front": image}) for image in ticks]
    assert [v.streak for v in verdicts] == [1, 2, 0, 1, 2, 3, 0]
    assert [v.success for v in verdicts] == [False, False, False, False, False, True, False]
    judge.judge({"front": yes[0]})
    judge.reset()  # a new episode: the streak starts again
    assert judge.judge({"front": yes[1]}).streak == 1


def test_a_frame_that_does_not_fit_is_refused_naming_the_camera(classifier) -> None:
    judge = OutcomeJudge(classifier)
    with pytest.raises(ValueError, match="front: the reward classifier sees this camera"):
        judge.judge({"wrist": np.zeros((SIZE, SIZE, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"front: expected uint8 \(32, 32, 3\)"):
        judge.judge({"front": np.zeros((SIZE, SIZE, 3), np.float32)})
    with pytest.raises(ValueError, match=r"front: expected uint8 \(32, 32, 3\)"):
        judge.judge({"front": np.zeros((SIZE * 100, SIZE, 3), np.uint8)})
    assert judge.streak == 0


def test_weights_of_another_policy_type_are_not_a_judge() -> None:
    mlp = make_policy("mlp", {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2})
    with pytest.raises(ValueError, match="weights: a mlp policy, not a reward classifier"):
        OutcomeJudge.from_weights(policy_to_bytes(mlp))


@pytest.mark.parametrize(
    ("fields", "message"), [({"threshold": 1.5}, "outcome.threshold"), ({"consecutive": 0}, "outcome.consecutive")]
)
def test_judge_settings_are_checked(fields, message) -> None:
    with pytest.raises(ConfigError, match=message):
        OutcomeJudgeConfig(**fields)
