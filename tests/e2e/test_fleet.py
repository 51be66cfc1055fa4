"""The fleet over the real gateway: capability matching, a SIGKILLed robot's task moves, joiners work, e-stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cloud.data.store import EpisodeStore
from edge.segment_spool import open_spool
from fleetloop.fleet_view import command, fetch
from tests.e2e.fleet import Fleet, publish_untrained_policy, wait_until

TASKS = """
- name: pick
  policy: panda_pick_cube
  instruction: pick up the cube
  count: 1
  requires: {embodiment: panda_pick_cube}
- name: push
  policy: pusht
  count: 2
  requires: {embodiment: pusht, cameras: [pixels]}
"""


@pytest.fixture
def cloud_with_tasks(fleet: Fleet) -> None:
    """The fleet's cloud runs TASKS and calls a robot lost after 2 s without a heartbeat."""
    (fleet.root / "tasks.yaml").write_text(TASKS)
    fleet.start_cloud("--tasks", str(fleet.root / "tasks.yaml"), "--lost-after", "2")
    publish_untrained_policy(fleet.root, "pusht")  # the carts run without an operator: give them a policy


pytestmark = pytest.mark.usefixtures("cloud_with_tasks")


def states(fleet: Fleet) -> dict[str, tuple[str, str]]:
    return {m.resource.id: (m.state, m.task) for m in fetch(fleet.target).members}


def rows_from(store: EpisodeStore, dataset: str, resource_id: str) -> int:
    store.refresh()
    if dataset not in store.datasets():
        return 0
    return sum(e.num_steps for e in store.episodes(dataset) if e.resource_id == resource_id)


def test_tasks_follow_capabilities_lost_robots_and_joiners(fleet: Fleet) -> None:
    fleet.start_edge("arm-1", hz=20, seed=1)
    wait_until(lambda: states(fleet).get("arm-1", ("", ""))[0] == "running", 60, "arm-1 running")
    fleet.start_edge("arm-2", hz=20, seed=2)
    fleet.start_edge("cart-1", "--operator", "none", robot="sim:pusht", hz=20)
    wait_until(lambda: len(states(fleet)) == 3 and states(fleet)["cart-1"][0] == "running", 60, "three robots")
    now = states(fleet)
    assert now["arm-1"] == ("running", "pick")
    assert now["arm-2"] == ("idle", "")  # pick wants one robot; pusht's task wants pixels, which arms lack
    assert now["cart-1"] == ("running", "push")

    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    idle_rows = rows_from(store, "panda_pick_cube", "arm-2")
    assert idle_rows == 0, "an idle robot holds still and records nothing"

    fleet.processes["arm-1"].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: states(fleet)["arm-1"][0] == "lost", 10, "arm-1 marked lost")
    assert time.monotonic() - killed < 2 + 1.5  # within the configured --lost-after, plus polling
    wait_until(lambda: states(fleet)["arm-2"] == ("running", "pick"), 30, "arm-2 to take over the pick task")
    wait_until(lambda: rows_from(store, "panda_pick_cube", "arm-2") > 0, 30, "arm-2's steps in the store")

    fleet.start_edge("cart-2", "--operator", "none", robot="sim:pusht", hz=20)  # joins mid-run
    wait_until(lambda: states(fleet).get("cart-2") == ("running", "push"), 60, "the joiner put to work")


def test_emergency_stop_reaches_the_robot_and_release_resumes(fleet: Fleet) -> None:
    fleet.start_edge("cart-1", "--operator", "none", robot="sim:pusht", hz=20)
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    wait_until(lambda: rows_from(store, "pusht", "cart-1") > 20, 60, "cart-1 streaming")
    reply = command(fleet.target, "cart-1", "estop", reason="person in the cell")
    assert reply.ok, reply.message
    wait_until(lambda: "EMERGENCY STOP (person in the cell)" in fleet.log("cart-1"), 5, "the edge to stop")
    time.sleep(1.0)  # let steps recorded before the stop drain into the store
    stopped_at = rows_from(store, "pusht", "cart-1")
    time.sleep(1.5)
    assert rows_from(store, "pusht", "cart-1") == stopped_at, "the robot moved after the emergency stop"
    assert states(fleet)["cart-1"][0] == "e-stopped", "the fleet table still showed the stopped robot running"
    assert command(fleet.target, "cart-1", "release").ok
    assert states(fleet)["cart-1"][0] == "running"
    wait_until(lambda: rows_from(store, "pusht", "cart-1") > stopped_at + 10, 30, "motion after the release")
    assert not command(fleet.target, "nobody", "pause").ok
    shown = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", "fleet", "--cloud", fleet.target],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "cart-1" in shown.stdout and "running" in shown.stdout and "push" in shown.stdout
    assert np.isfinite(fetch(fleet.target).members[0].seconds_since_seen)


def test_a_robot_set_to_hold_on_link_loss_stops_when_the_cloud_goes_silent(fleet: Fleet) -> None:
    fleet.start_edge("cart-1", "--operator", "none", "--hold-on-link-loss", "1.0", robot="sim:pusht", hz=20)
    spool = fleet.spool_path("cart-1")
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    wait_until(lambda: rows_from(store, "pusht", "cart-1") > 20, 60, "cart-1 streaming")

    def spooled_steps() -> int:
        s = open_spool(spool, read_only=True)
        try:
            return s.counts()[1]
        finally:
            s.close()

    cloud = fleet.processes["cloud"]
    cloud.send_signal(signal.SIGSTOP)  # TCP stays open, the cloud says nothing: only silence tells
    silent_since = time.monotonic()
    try:
        wait_until(lambda: "no word from the cloud" in fleet.log("cart-1"), 10, "the edge to hold")
        assert time.monotonic() - silent_since < 1.0 + 1.0  # the configured 1 s, plus log and poll slack
        time.sleep(0.5)  # the last steps before the hold reach the spool
        held_at = spooled_steps()
        time.sleep(1.0)
        assert spooled_steps() == held_at, "the robot recorded motion while the link was lost"
        resumed_before = fleet.log("cart-1").count("moves again")
    finally:
        cloud.send_signal(signal.SIGCONT)
    wait_until(
        lambda: fleet.log("cart-1").count("moves again") > resumed_before, 20, "motion once the cloud answers again"
    )
