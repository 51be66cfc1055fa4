"""Foresight error: the distance between a predicted and a demonstrated
trajectory, and the sampling weight it becomes."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.serving.foresight import foresight_weights, step_error


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
