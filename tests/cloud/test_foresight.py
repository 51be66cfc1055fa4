"""Foresight error: following an episode's steps, the distance between a predicted and a demonstrated
trajectory, and the sampling weight it becomes."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.foresight import episode_successors, follow, foresight_weights, step_error


def test_follow_walks_each_episode_and_holds_its_last_step() -> None:
    # rows 0, 1, 4 are one episode (written in two batches), rows 2, 3 another
    next_row = np.array([1, 4, 3, -1, -1])
    assert follow(next_row, 3).tolist() == [[0, 1, 4], [1, 4, 4], [2, 3, 3], [3, 3, 3], [4, 4, 4]]
    assert follow(next_row, 1).tolist() == [[0], [1], [2], [3], [4]]
    assert episode_successors(3).tolist() == [1, 2, -1]
    with pytest.raises(ValueError, match="horizon"):
        follow(next_row, 0)


def test_step_error_is_the_mean_distance_over_the_predicted_horizon() -> None:
    actions = np.zeros((4, 8))
    actions[:, 0] = [0.0, 0.1, 0.2, 0.3]  # the demonstrator moves 10 cm a step along x
    predicted = np.zeros((3, 8))  # the policy says: stay at the origin
    assert step_error(predicted, actions, 0) == pytest.approx((0.0 + 0.1 + 0.2) / 3)
    assert step_error(predicted, actions, 2) == pytest.approx((0.2 + 0.3 + 0.3) / 3)  # past the end: the last holds
    predicted[:, 0] = [0.2, 0.3, 0.3]
    assert step_error(predicted, actions, 2) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="x y z"):
        step_error(np.zeros((3, 2)), actions, 0)


def test_weights_grow_with_the_error_beyond_the_tolerance_and_are_capped() -> None:
    errors = np.array([0.0, 0.01, 0.02, 0.04, 0.5, np.nan], np.float32)
    np.testing.assert_allclose(foresight_weights(errors, 0.02, 5.0), [1, 1, 1, 2, 5, 1], rtol=1e-6)
    np.testing.assert_allclose(foresight_weights(errors, 0.02, 1.0), 1)
