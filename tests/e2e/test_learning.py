"""The fleet learns: the real loop (the cloud with its learner, two simulated Pandas with their scripted operators, each
in its own process, over the tunnel into the store) reaches a rolling autonomous success of 0.6 over the last 20
episodes within a fixed number of episodes, in at least two of three seeds.

It counts episodes, not seconds: on a loaded machine the robots, the gateway and the learner all slow down, and
what is checked is how much experience learning needs. The seeds run one after another (side by side, three clouds
starve each other's learners on two cores), and the third only when the first two disagree.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloud.data.layout import DataLayout
from cloud.data.store import EpisodeStore
from cloud.data.version_summary import episode_outcomes, first_reaching, rolling_success
from tests.e2e.fleet import Fleet

DATASET = "panda_pick_cube"
SEEDS = (1, 2, 3)
ROBOTS = 2
HZ = 10.0
TARGET = 0.6
MAX_EPISODES = 60  # the warm-started learner reaches 0.8 in about 30 with two robots on a quiet machine
SEED_TIMEOUT_S = 240.0
LEARNER = ("--train-steps", "500", "--track", "none")  # rounds of ~1 s on a quiet core


def _outcome(fleet: Fleet) -> tuple[int, int | None]:
    """(finished episodes, episodes when the rolling success first reached TARGET, or None)."""
    store_path = DataLayout(fleet.root / "data").store
    if not store_path.exists():
        return 0, None
    store = EpisodeStore(store_path, read_only=True)
    try:
        outcomes = episode_outcomes(store, DATASET)
    finally:
        store.close()
    return len(outcomes), first_reaching(rolling_success(outcomes), TARGET)


def _learn(root: Path, seed: int) -> tuple[int, int | None]:
    """One seed of the loop until the rolling success reached TARGET or MAX_EPISODES ended."""
    fleet = Fleet(root)
    root.mkdir()
    try:
        fleet.start_cloud("--learner-seed", str(seed), *LEARNER, learner=True)
        for robot in range(1, ROBOTS + 1):
            fleet.start_edge(f"robot-{robot}", hz=HZ, seed=1000 * robot + 100_000 * seed)
        deadline = time.monotonic() + SEED_TIMEOUT_S
        while time.monotonic() < deadline:
            episodes, reached = _outcome(fleet)
            if reached is not None or episodes >= MAX_EPISODES:
                return episodes, reached
            time.sleep(1.0)
        return _outcome(fleet)
    finally:
        fleet.stop_all()


@pytest.mark.timeout(3 * SEED_TIMEOUT_S + 120)
def test_the_fleet_learns_the_panda_within_a_budget_of_episodes_in_two_of_three_seeds(tmp_path: Path) -> None:
    results: dict[int, tuple[int, int | None]] = {}
    for seed in SEEDS:
        results[seed] = _learn(tmp_path / f"seed-{seed}", seed)
        learned = sum(1 for _, reached in results.values() if reached is not None and reached <= MAX_EPISODES)
        if learned >= 2 or len(results) - learned >= 2:  # decided
            break
    detail = {
        seed: f"{episodes} episodes, rolling {TARGET} at {reached}" for seed, (episodes, reached) in results.items()
    }
    assert learned >= 2, f"learned within {MAX_EPISODES} episodes in {learned} of {len(results)} seeds: {detail}"
