"""The staleness budget: how much a step still counts once the policy that produced it is old.

Every step carries ``policy_version``, the version the robot ran when it recorded the step (0: no policy yet).
When the learner trains on top of version ``V`` (the newest it published), a step's age is ``V - v``:
0 for steps of the policy now running, 1 for the one before it, and so on.

Modes (``budget`` is ``B``, a whole number of versions):

- ``drop``: a step counts fully while ``age <= B`` and not at all beyond (weight 1 or 0).
- ``downweight`` with ``decay="exp"``: weight ``0.5 ** (age / B)``, i.e. ``B`` is the half-life in versions
  (age 0 -> 1, age B -> 0.5, age 2B -> 0.25). Nothing is ever dropped outright.
- ``downweight`` with ``decay="linear"``: weight ``max(0, 1 - age / (B + 1))``; age ``B + 1`` and older reach 0
  (with B=3: 1, 0.75, 0.5, 0.25, 0, ...).

A negative age (a step newer than the learner's version, which only happens when a learner restarts from an older
registry) counts as age 0.

Who is exempt: the budget is about *on-policy* data, whose action (and, for RL, whose return) describes a policy
that is no longer the one being improved. A step a person labelled (an intervention, or a demonstration recorded
while no policy ran) carries the person's action: that label stays correct however old the policy was that drove
the robot into the state, and HG-DAgger aggregates such labels on purpose (DAgger's dataset aggregation); SAC keeps
them in its demonstration buffer for the same reason. So labelled steps get weight 1 by default. With
``include_interventions=True`` an intervention's weight follows its ``policy_version`` like any other step's (the
states it covers came from that older policy's distribution); demonstrations recorded with no policy (version 0)
and imported offline data stay exempt whatever the setting, since no policy produced them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import model_validator

from hal.config import CodeConfig, invalid

StalenessMode = Literal["drop", "downweight"]
StalenessDecay = Literal["exp", "linear"]


class StalenessBudget(CodeConfig):
    """``budget``: versions (None: no budget, every step weighs 1). See the module docstring for the modes."""

    config_name = "staleness"

    budget: int | None = None
    mode: StalenessMode = "drop"
    decay: StalenessDecay = "exp"  # downweight's decay: exp (budget = half-life) | linear
    include_interventions: bool = False

    # Positional too (``StalenessBudget(2, "drop")``): a budget reads as its numbers.
    def __init__(
        self,
        budget: int | None = None,
        mode: StalenessMode = "drop",
        decay: StalenessDecay = "exp",
        include_interventions: bool = False,
    ) -> None:
        super().__init__(budget=budget, mode=mode, decay=decay, include_interventions=include_interventions)

    @model_validator(mode="after")
    def _budget_fits_the_mode(self) -> StalenessBudget:
        minimum = 1 if (self.mode == "downweight" and self.decay == "exp") else 0
        if self.budget is not None and self.budget < minimum:
            raise invalid(f"must be >= {minimum} for mode {self.mode!r}, got {self.budget}", "budget")
        return self

    @property
    def active(self) -> bool:
        return self.budget is not None

    def age_weights(self, ages: np.ndarray) -> np.ndarray:
        """Weights in [0, 1] for step ages (versions), float64, before any exemption."""
        ages = np.maximum(np.asarray(ages, dtype=np.int64), 0)
        if self.budget is None:
            return np.ones(ages.shape, np.float64)
        if self.mode == "drop":
            return (ages <= self.budget).astype(np.float64)
        if self.decay == "exp":
            return np.power(0.5, ages / self.budget)
        return np.clip(1.0 - ages / (self.budget + 1), 0.0, 1.0)

    def weights(
        self,
        current_version: int,
        policy_version: np.ndarray,
        intervention: np.ndarray,
        exempt: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per-step weights for a learner at ``current_version``.

        ``intervention``: the steps a person chose; ``exempt``: further steps no policy produced (offline
        imports). Demonstrations (intervention with policy_version 0) are always exempt.
        """
        policy_version = np.asarray(policy_version, dtype=np.int64)
        intervention = np.asarray(intervention, dtype=bool)
        weights = self.age_weights(current_version - policy_version)
        keep = intervention & (policy_version <= 0) if self.include_interventions else intervention.copy()
        if exempt is not None:
            keep |= np.asarray(exempt, dtype=bool)
        weights[keep] = 1.0
        return weights
