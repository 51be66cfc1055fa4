"""Success from a reward classifier the learner published (``<dataset>.reward``, ``policies.reward_classifier``):
an ``OutcomeJudge`` says an episode succeeded once the classifier's probability has stayed above a threshold for a
number of ticks in a row, so one lucky frame does not end an episode.

The classifier runs a CNN per camera: a ResNet-10-sized one takes tens to hundreds of milliseconds per frame on a
CPU, so a control loop should consult the judge off its own thread (or every few ticks), not inside its deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Protocol

import numpy as np
from pydantic import Field

from hal.config import CodeConfig

if TYPE_CHECKING:  # torch is imported only where a classifier is built: the command line reads the config's defaults
    from policies.reward_classifier import RewardClassifier


@dataclass(frozen=True)
class Verdict:
    """One tick's judgement: ``success`` once ``probability`` has been above the threshold ``streak`` >= the
    required ticks in a row (a non-finite probability counts as below)."""

    success: bool
    probability: float
    streak: int


class OutcomeSource(Protocol):
    """Whatever says, tick by tick, whether the running episode has succeeded."""

    def reset(self) -> None:
        """A new episode starts: forget the streak."""

    def judge(self, observation: Mapping[str, np.ndarray]) -> Verdict:
        """This tick's verdict on ``observation`` (the driver's observation, camera names as in its spec)."""
        ...


class OutcomeJudgeConfig(CodeConfig):
    config_name = "outcome"

    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5  # P(success) above this counts
    consecutive: Annotated[int, Field(ge=1, le=1000)] = 3  # ticks in a row above it before success is said


class OutcomeJudge:
    """An ``OutcomeSource`` over a loaded reward classifier (``from_weights``: the bytes of a published version)."""

    def __init__(self, classifier: RewardClassifier, config: OutcomeJudgeConfig | None = None) -> None:
        self.config = config if config is not None else OutcomeJudgeConfig()
        self.classifier = classifier.eval()
        self.streak = 0

    @classmethod
    def from_weights(cls, weights: bytes, config: OutcomeJudgeConfig | None = None) -> OutcomeJudge:
        """ValueError when ``weights`` are not a reward classifier's (e.g. a policy published under that name)."""
        from policies.reward_classifier import RewardClassifier
        from policies.weights import policy_from_bytes

        classifier = policy_from_bytes(weights)
        if not isinstance(classifier, RewardClassifier):
            raise ValueError(f"weights: a {classifier.type_name} policy, not a reward classifier")
        return cls(classifier, config)

    def swap(self, classifier: RewardClassifier) -> None:
        """A newer version between ticks; the streak starts again (the old one's frames do not count)."""
        self.classifier, self.streak = classifier.eval(), 0

    def reset(self) -> None:
        self.streak = 0

    def judge(self, observation: Mapping[str, np.ndarray]) -> Verdict:
        """ValueError naming the camera when ``observation`` lacks one the classifier sees or its frame does not
        fit (shape, dtype): a driver's arrays are checked before they reach the model."""
        frames = {}
        for name, spec in self.classifier.config.observation.items():
            frame = observation.get(name)
            if frame is None:
                raise ValueError(f"{name}: the reward classifier sees this camera; the observation lacks it")
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.shape != tuple(spec.shape):
                why = f"expected uint8 {tuple(spec.shape)} (what it was trained on), got {frame.dtype} {frame.shape}"
                raise ValueError(f"{name}: {why}")
            frames[name] = frame
        probability = self.classifier.success_probability(frames)
        above = math.isfinite(probability) and probability > self.config.threshold
        self.streak = self.streak + 1 if above else 0
        return Verdict(self.streak >= self.config.consecutive, probability, self.streak)
