"""The canary rule (cloud/gateway/canary_rule.py) on fixed counts."""

from __future__ import annotations

import pytest

from cloud.gateway.canary_rule import ArmCounts, judge, newcombe, wilson


def test_wilson_bounds_match_the_closed_form() -> None:
    assert wilson(0, 5).low == 0.0
    assert wilson(0, 5).high == pytest.approx(0.3512, abs=1e-4)
    assert wilson(5, 5).low == pytest.approx(0.6488, abs=1e-4)
    assert wilson(0, 0).low == 0.0 and wilson(0, 0).high == 1.0
    interval = wilson(7, 12)
    assert interval.low < 7 / 12 < interval.high


def test_newcombe_is_symmetric_and_holds_the_observed_difference() -> None:
    forward, backward = newcombe(2, 10, 7, 10), newcombe(7, 10, 2, 10)
    assert forward.low == pytest.approx(-backward.high) and forward.high == pytest.approx(-backward.low)
    assert forward.low < 0.2 - 0.7 < forward.high


def test_waits_until_each_arm_has_its_episodes() -> None:
    verdict = judge(ArmCounts(4, 0, 4), ArmCounts(30, 30, 0), min_episodes=5, max_episodes=20)
    assert verdict.decision == "wait" and "4/5 canary" in verdict.reason
    assert judge(ArmCounts(5, 5, 0), ArmCounts(4, 4, 0), 5, 20).decision == "wait"


def test_a_clearly_worse_version_is_rolled_back() -> None:
    verdict = judge(ArmCounts(5, 0, 0), ArmCounts(5, 3, 0), 5, 20)
    assert verdict.decision == "rollback"
    assert verdict.success_diff is not None and verdict.success_diff.high < 0
    assert "0.00 over 5 episodes vs 0.60 over 5" in verdict.reason


def test_more_interventions_alone_roll_back() -> None:
    verdict = judge(ArmCounts(8, 8, 8), ArmCounts(8, 8, 0), 5, 20)  # it succeeded, but only with a person's help
    assert verdict.decision == "rollback"
    assert verdict.intervention_diff is not None and verdict.intervention_diff.low > 0


def test_an_equal_or_better_version_is_promoted() -> None:
    assert judge(ArmCounts(5, 5, 0), ArmCounts(15, 7, 3), 5, 20).decision == "promote"
    assert judge(ArmCounts(5, 3, 1), ArmCounts(5, 3, 1), 5, 20).decision == "promote"  # equal


def test_a_little_worse_waits_then_rolls_back_at_the_most_episodes() -> None:
    assert judge(ArmCounts(5, 2, 0), ArmCounts(5, 3, 0), 5, 20).decision == "wait"
    verdict = judge(ArmCounts(20, 11, 0), ArmCounts(20, 12, 0), 5, 20)
    assert verdict.decision == "rollback" and "(the most)" in verdict.reason


def test_counts_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        ArmCounts(3, 4, 0)
