"""The statistical rule that ends a canary rollout: promote the new version, roll it back, or wait for episodes.

Two arms are compared on finished episodes (an episode counts for the version that started it):
- **autonomous success**: the share of episodes that succeeded with no intervention (higher is better);
- **intervention rate**: the share of episodes in which a person (or the scripted operator) took over at least once
  (lower is better). Both are proportions of episodes, so each arm is a binomial sample.

For each metric the difference canary - incumbent gets a Newcombe interval (the hybrid score interval built from
each arm's Wilson score interval) with z = 1.645 on each side: each bound is a one-sided 95% bound. The rule:

1. Until both arms have at least ``min_episodes`` finished episodes: wait.
2. **Roll back** when the canary is worse with 95% confidence on either metric: the upper bound of its success
   difference is below 0, or the lower bound of its intervention difference is above 0.
3. **Promote** when it is not shown worse and its observed rates are at least as good as the incumbent's on both
   metrics (success >= and intervention <=): an equal or better version goes to every robot.
4. Otherwise (observed a little worse, not yet significantly): keep gathering until the canary arm has
   ``max_episodes``; with no clear answer then, **roll back**: the incumbent is the version known to work, and a
   candidate that could not show it is as good is not worth the risk (the learner publishes another soon).

With few episodes the intervals are wide: with 5 canary episodes all failing, the rollback is clear once the
incumbent succeeded in 3 of 5 (or 6 of 15) episodes. ``--canary-episodes`` sets that evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_ONE_SIDED_95 = 1.645


@dataclass(frozen=True)
class ArmCounts:
    """One version's finished episodes: how many, how many succeeded autonomously, how many had an intervention."""

    episodes: int
    autonomous: int
    intervened: int

    def __post_init__(self) -> None:
        if self.episodes < 0 or not 0 <= self.autonomous <= self.episodes or not 0 <= self.intervened <= self.episodes:
            raise ValueError(f"episode counts out of range: {self}")

    @property
    def success_rate(self) -> float:
        return self.autonomous / self.episodes if self.episodes else 0.0

    @property
    def intervention_rate(self) -> float:
        return self.intervened / self.episodes if self.episodes else 0.0


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def words(self) -> str:
        return f"[{self.low:+.2f}, {self.high:+.2f}]"


def wilson(successes: int, n: int, z: float = Z_ONE_SIDED_95) -> Interval:
    """The Wilson score interval of a proportion; [0, 1] with no observations."""
    if n == 0:
        return Interval(0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def newcombe(a: int, n_a: int, b: int, n_b: int, z: float = Z_ONE_SIDED_95) -> Interval:
    """Newcombe's hybrid score interval of the difference of proportions a/n_a - b/n_b."""
    p_a, p_b = (a / n_a if n_a else 0.0), (b / n_b if n_b else 0.0)
    wa, wb = wilson(a, n_a, z), wilson(b, n_b, z)
    diff = p_a - p_b
    low = diff - math.sqrt((p_a - wa.low) ** 2 + (wb.high - p_b) ** 2)
    high = diff + math.sqrt((wa.high - p_a) ** 2 + (p_b - wb.low) ** 2)
    return Interval(max(-1.0, low), min(1.0, high))


@dataclass(frozen=True)
class Verdict:
    decision: str  # "promote" | "rollback" | "wait"
    reason: str  # in words, with the numbers
    success_diff: Interval | None = None  # canary - incumbent
    intervention_diff: Interval | None = None


def judge(canary: ArmCounts, incumbent: ArmCounts, min_episodes: int, max_episodes: int) -> Verdict:
    """The rule of this module's docstring applied to the two arms' counts."""
    if canary.episodes < min_episodes or incumbent.episodes < min_episodes:
        need = f"{canary.episodes}/{min_episodes} canary and {incumbent.episodes}/{min_episodes} incumbent episodes"
        return Verdict("wait", f"gathering episodes ({need})")
    success = newcombe(canary.autonomous, canary.episodes, incumbent.autonomous, incumbent.episodes)
    intervention = newcombe(canary.intervened, canary.episodes, incumbent.intervened, incumbent.episodes)
    numbers = (
        f"autonomous success {canary.success_rate:.2f} over {canary.episodes} episodes vs "
        f"{incumbent.success_rate:.2f} over {incumbent.episodes} (difference 95% bounds {success.words()}); "
        f"intervention rate {canary.intervention_rate:.2f} vs {incumbent.intervention_rate:.2f} "
        f"(bounds {intervention.words()})"
    )
    if success.high < 0 or intervention.low > 0:
        return Verdict("rollback", f"worse with 95% confidence: {numbers}", success, intervention)
    as_good = canary.success_rate >= incumbent.success_rate and canary.intervention_rate <= incumbent.intervention_rate
    if as_good:
        return Verdict("promote", f"as good or better: {numbers}", success, intervention)
    if canary.episodes >= max_episodes:
        return Verdict(
            "rollback",
            f"not shown as good after {canary.episodes} episodes (the most): {numbers}",
            success,
            intervention,
        )
    return Verdict("wait", f"no clear answer yet: {numbers}", success, intervention)
