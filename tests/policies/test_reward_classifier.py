"""The reward classifier policy type: lerobot's Classifier built offline, trained on frames, rebuilt from its bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hal.config import ConfigError
from policies.factory import make_policy
from policies.reward_classifier import LABEL, RewardClassifier
from policies.train import train_policy
from policies.weights import policy_from_bytes, policy_to_bytes
from tests.policies.reward_frames import frames, held_out, tiny_config

pytestmark = pytest.mark.usefixtures("two_torch_threads")


def test_two_cameras_share_one_backbone_saved_once_and_the_bytes_rebuild_the_same_classifier() -> None:
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    classifier = make_policy("reward_classifier", tiny_config(("front", "wrist")))
    success, failure = frames(rng, 60, True), frames(rng, 60, False)
    data = {
        "obs.front": np.concatenate([success, failure]),
        "obs.wrist": np.concatenate([failure[::-1], failure]),  # the wrist camera sees nothing useful
        LABEL: np.r_[np.ones(60), np.zeros(60)].astype(np.float32),
    }
    train_policy(classifier, data, steps=200, batch_size=32, lr=3e-3)
    classifier.eval()
    images, labels = held_out(seed=2)
    observations = [{"front": image, "wrist": images[-1]} for image in images]
    probabilities = classifier.probabilities(observations)
    assert ((probabilities > 0.5) == labels).mean() >= 0.9

    weights = policy_to_bytes(classifier)
    backbones = {k.split(".0.")[0] for k in classifier.state_dict() if ".0.embedder." in k}
    assert backbones == {"model.encoders.observation_image_front"}  # the wrist's copy is not saved again
    rebuilt = policy_from_bytes(weights)
    assert isinstance(rebuilt, RewardClassifier)
    np.testing.assert_array_equal(rebuilt.eval().probabilities(observations), probabilities)
    assert rebuilt.act(observations[0]).shape == (1, 1)


def test_the_encoder_stays_frozen_and_in_eval_mode_while_the_head_trains() -> None:
    classifier = make_policy("reward_classifier", tiny_config())
    backbone = classifier.model.encoders["observation_image_front"][0]
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng = np.random.default_rng(3)
    data = {"obs.front": frames(rng, 16, True), LABEL: np.ones(16, np.float32)}
    train_policy(classifier, data, steps=3, batch_size=8)
    assert not backbone.training
    for key, value in backbone.state_dict().items():  # batch norms' running statistics too
        torch.testing.assert_close(value, before[key])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"observation": {"joints": {"shape": [7], "dtype": "float32"}}}, "reward_classifier.observation.joints"),
        ({"encoder": {"hidden_sizes": [8, 16], "depths": [1]}}, "reward_classifier.encoder.depths"),
        ({"encoder": {"hidden_sizes": [8] * 6, "depths": [1] * 6}}, "reward_classifier.encoder.hidden_sizes"),
        ({"hidden_dim": 1 << 20}, "reward_classifier.hidden_dim"),
    ],
)
def test_a_bad_or_hostile_config_is_refused_naming_the_field_before_anything_is_built(change, message) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        make_policy("reward_classifier", {**tiny_config(), **change})
