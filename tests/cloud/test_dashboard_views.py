"""The dashboard's numbers: Wilson intervals, per-version curves from episode records, fleet rows and their rates."""

from __future__ import annotations

import math
from dataclasses import astuple

import pytest

from cloud.channels.dashboard_views import Z95, FleetRate, fleet_rows, mean_interval, version_curve
from cloud.data.episodes import EpisodeRecord
from cloud.gateway.canary_rule import wilson as wilson_interval
from cloud.gateway.fleet import Backlog, FleetMember, State
from hal.resource import ArraySpec, Capabilities, ResourceInfo


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """The two-sided 95% Wilson interval the dashboard draws."""
    return astuple(wilson_interval(successes, trials, Z95))


def test_wilson_interval_matches_its_formula_and_stays_inside_0_1() -> None:
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)  # nothing known yet


def test_mean_interval_over_episodes() -> None:
    mean, low, high = mean_interval([0.0, 0.5, 1.0])
    assert mean == 0.5 and low == 0.0 and high == 1.0  # clipped
    mean, low, high = mean_interval([0.1, 0.1, 0.1, 0.1])
    assert (mean, low, high) == pytest.approx((0.1, 0.1, 0.1))
    assert mean_interval([0.3]) == (0.3, 0.0, 1.0)  # one episode says nothing about the spread


def record(
    version: int, success: bool, driven: int, steps: int = 10, done: bool = True, label: str = ""
) -> EpisodeRecord:
    return EpisodeRecord(
        "d", 0, f"e{version}-{success}-{driven}", "r1", "sim", "d", steps, driven, success, done, version, label=label
    )


def test_version_curve_counts_autonomous_successes_per_starting_version() -> None:
    episodes = [
        record(1, True, 0),
        record(1, True, 5),  # succeeded with a person's help: not autonomous
        record(1, False, 0),
        record(2, True, 0),
        record(2, True, 0),
        record(2, True, 0, done=False),  # still running: not counted
        record(2, False, 0, label="discarded"),  # re-recorded: not counted
    ]
    one, two = version_curve(episodes)
    assert (one["version"], one["episodes"], one["successes"]) == (1, 3, 1)
    assert one["success"] == pytest.approx(1 / 3, abs=1e-4)
    assert (one["success_low"], one["success_high"]) == pytest.approx(wilson(1, 3), abs=1e-4)
    assert one["intervention_rate"] == pytest.approx(0.5 / 3, abs=1e-4)
    assert (two["episodes"], two["successes"], two["success"], two["intervention_rate"]) == (2, 2, 1.0, 0.0)


def member(robot: str, steps: int, interventions: int) -> FleetMember:
    caps = Capabilities(
        observation=(ArraySpec("state", "float32", (3,)),),
        action=ArraySpec("action", "float32", (2,)),
        control_hz=10,
        embodiment="d",
    )
    resource = ResourceInfo(id=robot, kind="robot", capabilities=caps, source="sim")
    return FleetMember(resource, State.RUNNING, "t", 0.0, 4, steps, interventions, backlog=Backlog(12, 3000, 1.5))


def test_fleet_rows_rate_from_the_previous_snapshot_and_only_visible_robots() -> None:
    rates: dict[str, FleetRate] = {}
    members = [member("a", 100, 10), member("b", 50, 0)]
    first = fleet_rows(members, {}, 10.0, rates, visible=lambda robot: robot == "a")
    assert [row["id"] for row in first] == ["a"] and first[0]["steps_per_s"] == 0.0
    members[0].steps = 130
    (row,) = fleet_rows(members, {}, 12.0, rates, visible=lambda robot: robot == "a", canary=lambda _r: "canary")
    assert row["steps_per_s"] == 15.0 and row["intervention_rate"] == pytest.approx(10 / 130, abs=1e-3)
    assert (row["state"], row["version"], row["backlog_steps"], row["canary"]) == ("running", 4, 12, "canary")
    assert row["takeover"] == "/takeover/a" and not row["connected"] and math.isclose(row["seen_s_ago"], 12.0)


def test_rollout_rows_newest_first_open_only_while_a_canary_runs_and_only_visible_policies() -> None:
    from cloud.channels.dashboard_views import rollout_rows
    from cloud.data.rollout_records import CANARY, PROMOTED, ROLLED_BACK, PolicyRollouts, RolloutRecord

    counts = {"episodes": 6, "autonomous": 1, "intervened": 2}
    reach = PolicyRollouts(
        "reach",
        2,
        [
            RolloutRecord(1, 0, PROMOTED, decided_by="first version"),
            RolloutRecord(2, 1, PROMOTED, ["r1"], decided_by="rule", reason="not worse", canary_counts=counts),
            RolloutRecord(3, 2, ROLLED_BACK, ["r2"], decided_by="operator", reason="by an operator (bad)"),
            RolloutRecord(4, 2, CANARY, ["r3"]),
        ],
    )
    rows = rollout_rows(
        {"reach": reach, "other": PolicyRollouts("other", 1, [RolloutRecord(1, 0)])}, lambda p: p != "other"
    )
    assert list(rows) == ["reach"] and rows["reach"]["incumbent"] == 2
    listed = rows["reach"]["records"]
    assert [(r["version"], r["state"], r["open"]) for r in listed] == [
        (4, "canary", True),
        (3, "rolled back", False),
        (2, "promoted", False),
        (1, "promoted", False),
    ]
    assert listed[2]["canary_counts"] == counts and listed[2]["canary_robots"] == ["r1"]


def test_losses_are_read_back_from_the_learners_tensorboard_run(tmp_path) -> None:
    from cloud.channels.dashboard_views import losses
    from cloud.learning.tracking import TensorBoardTracker

    tracker = TensorBoardTracker(tmp_path / "reach")
    for step in range(1, 501):
        tracker.log_scalars(step * 10, {"train/loss": 1.0 / step, "throughput/steps_per_s": 100.0})
    tracker.close()
    read = losses(tmp_path, "reach", most=50)
    assert list(read) == ["loss"]  # training losses only
    assert len(read["loss"]) == 50 and read["loss"][0] == [10, 1.0] and read["loss"][-1] == [5000, 0.002]
    assert losses(tmp_path, "nothing-logged") == {}
