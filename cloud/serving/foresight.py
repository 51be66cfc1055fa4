"""Visual foresight error: how far the policy's predicted trajectory was from what the demonstrator then did.

When a phone stops an episode, the cloud asks the current ``phone`` policy what it would have done from each
step's frame and pose (the same question the page's foresight overlay asks while recording) and compares the
predicted end-effector positions (x y z of each action in the chunk) with the positions the demonstration
actually reached over the same horizon: the step's own action (the next pose), then the following steps'
actions, holding the last one past the episode's end. The error of a step is the mean distance over that
horizon, in metres, and is stored with the step (``meta.foresight_error``, and ``meta.foresight_version``: the
version that was asked, 0 where none answered).

The learner samples steps where the foresight was wrong more often (``foresight_weights``, used by
``cloud.learning.sampler``): a demonstrator who moves away from what the overlay showed is showing exactly what the
policy does not know yet.
"""

from __future__ import annotations

import numpy as np

ERROR_COLUMN = "meta.foresight_error"  # float32 metres; NaN: no policy answered for this step
VERSION_COLUMN = "meta.foresight_version"  # int64: the policy version whose prediction was scored (0: none)
COLUMNS = {ERROR_COLUMN: ("<f4", ()), VERSION_COLUMN: ("<i8", ())}


def step_error(predicted: np.ndarray, actions: np.ndarray, step: int) -> float:
    """Mean distance (m) between the predicted chunk's positions, shape (C, >=3), and the demonstrated actions'
    positions from ``step`` on (``actions``: the whole episode, (N, >=3)), holding the last action."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, np.shape(predicted)[-1])
    if predicted.shape[1] < 3 or np.shape(actions)[-1] < 3:
        raise ValueError("foresight needs actions that start with x y z")
    rows = np.minimum(np.arange(step, step + len(predicted)), len(actions) - 1)
    reached = np.asarray(actions, dtype=np.float64)[rows, :3]
    return float(np.linalg.norm(predicted[:, :3] - reached, axis=1).mean())


def foresight_weights(errors: np.ndarray, tolerance_m: float, max_weight: float) -> np.ndarray:
    """Sampling weight per step: 1 while the foresight was within ``tolerance_m``, else error / tolerance, up to
    ``max_weight`` (1 turns the boost off). Steps without a score (NaN) weigh 1."""
    errors = np.asarray(errors, dtype=np.float64)
    scored = np.where(np.isfinite(errors), errors, 0.0)
    return np.clip(scored / tolerance_m, 1.0, max_weight)
