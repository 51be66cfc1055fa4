"""Canary rollouts through the real gateway and edges: a worse version runs only on the canary share and is rolled
back; a better one is promoted to every robot; an operator decides by hand with `fleetloop fleet promote|rollback`.

The robots run ``sim:point_reach`` (a point heading for a goal, thousands of steps/s) with no operator, so each
version's autonomous success is its own. The versions are trained by the project's learner on the scripted operator's
demonstrations (tests/e2e/reach_versions.py, once per test process): ``early`` (its first round, on 12
demonstrations: about half the goals), ``good`` (its next round, on 40: nearly every goal) and ``corrupted`` (40
demonstrations with their actions negated: it runs from the goal). The ``reach_versions`` fixture
(tests/e2e/conftest.py) checks that order in the sim before any test relies on it.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from cloud.data.store import EpisodeStore
from fleetloop.fleet_view import fetch
from tests.e2e.fleet import ENV, Fleet, wait_until
from tests.e2e.reach_versions import ReachVersions
from tests.e2e.rollout_checks import POLICY, publish, ran, record_of, rollouts, state_of, times_ran

pytestmark = pytest.mark.e2e
ROBOTS = ("robot-1", "robot-2", "robot-3", "robot-4")


def robots_in_store(fleet: Fleet, version: int) -> set[str]:
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    rows = store.read(POLICY, columns=["episode_index", "policy_version"])
    indices = set(rows["episode_index"][rows["policy_version"] == version].tolist())
    return {e.resource_id for e in store.episodes(POLICY) if e.index in indices}


def start(fleet: Fleet, *canary: str) -> None:
    fleet.start_cloud(*canary, "--canary-episodes", "5")
    for seed, robot in enumerate(ROBOTS, start=1):
        fleet.start_edge(robot, "--operator", "none", robot="sim:point_reach", hz=50, seed=seed)


def test_a_version_trained_on_corrupted_labels_is_rolled_back_and_a_better_trained_one_is_promoted(
    fleet: Fleet, reach_versions: ReachVersions
) -> None:
    assert publish(fleet, reach_versions, "early") == 1
    start(fleet, "--canary", "0.25")
    wait_until(lambda: ran(fleet, 1) == set(ROBOTS), 120, "every robot on v1 (the first version: no canary)")

    assert publish(fleet, reach_versions, "corrupted") == 2
    wait_until(lambda: state_of(fleet, 2) == "rolled back", 180, "v2 rolled back")
    canary = ran(fleet, 2)
    assert len(canary) == 1, f"v2 ran on {sorted(canary)}: more than the canary share (1 of 4)"
    (robot,) = canary
    wait_until(lambda: times_ran(fleet, robot, 1) >= 2, 60, "back on v1")
    assert robots_in_store(fleet, 2) == canary
    record = record_of(fleet, 2)
    assert record["canary_robots"] == [robot] and record["decided_by"] == "rule"
    assert record["canary_counts"]["autonomous"] == 0 and record["success_diff"][1] < 0, record
    assert re.search(r"policy point_reach v2 rolled back \(.*0\.00 over \d+ episodes", fleet.log("cloud"))

    assert publish(fleet, reach_versions, "good") == 3
    wait_until(lambda: state_of(fleet, 3) == "promoted", 180, "v3 promoted")
    record = record_of(fleet, 3)
    assert record["decided_by"] == "rule" and len(record["canary_robots"]) == 1, record
    canary_rate = record["canary_counts"]["autonomous"] / record["canary_counts"]["episodes"]
    incumbent_rate = record["incumbent_counts"]["autonomous"] / record["incumbent_counts"]["episodes"]
    assert canary_rate > incumbent_rate and record["canary_counts"]["episodes"] >= 5, record  # better on the robots
    wait_until(lambda: ran(fleet, 3) == set(ROBOTS), 60, "every robot on v3")
    assert ran(fleet, 2) == canary, "the rolled back v2 reached another robot"
    assert rollouts(fleet)["incumbent"] == 3


def fleet_command(fleet: Fleet, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", "fleet", *args, "--cloud", fleet.target],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )


def test_an_operator_promotes_and_rolls_back_by_hand(fleet: Fleet, reach_versions: ReachVersions) -> None:
    publish(fleet, reach_versions, "good")
    fleet.start_cloud("--canary", "1", "--canary-episodes", "1000")  # the rule never decides: the operator does
    for seed, robot in enumerate(ROBOTS[:2], start=1):
        fleet.start_edge(robot, "--operator", "none", robot="sim:point_reach", hz=20, seed=seed)
    wait_until(lambda: len(ran(fleet, 1)) == 2, 120, "both robots on v1")

    assert publish(fleet, reach_versions, "early") == 2
    wait_until(lambda: len(ran(fleet, 2)) == 1, 60, "v2 on its canary robot")
    members = fetch(fleet.target).members
    assert [m.resource.id for m in members if m.canary_version == 2] == sorted(ran(fleet, 2))  # as the fleet shows
    refused = fleet_command(fleet, "promote", POLICY, "7")
    assert refused.returncode == 2 and "point_reach v7 is not a canary in progress" in refused.stderr
    done = fleet_command(fleet, "promote", POLICY, "2", "--reason", "looks fine")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: len(ran(fleet, 2)) == 2, 60, "both robots on v2")

    assert publish(fleet, reach_versions, "corrupted") == 3
    wait_until(lambda: len(ran(fleet, 3)) == 1, 60, "v3 on its canary robot")
    done = fleet_command(fleet, "rollback", POLICY, "3")
    assert done.returncode == 0, done.stderr
    assert state_of(fleet, 3) == "rolled back" and rollouts(fleet)["incumbent"] == 2
    wait_until(lambda: len(re.findall(rf"now runs {POLICY} v2 ", fleet.log("cloud"))) >= 3, 60, "its robot on v2")
    assert len(ran(fleet, 3)) == 1
