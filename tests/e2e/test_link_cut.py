"""With the link cut for 60 seconds, an edge keeps controlling its robot with the last policy, spools to disk,
and uploads everything once the link is back."""

from __future__ import annotations

import time

import numpy as np

from cloud.data.store import EpisodeStore
from tests.e2e.fleet import Fleet, publish_untrained_policy, wait_until
from tests.e2e.store_checks import check_store
from tests.faults import LinkProxy

DATASET = "panda_pick_cube"
HZ = 20.0
CUT_S = 60.0
SILENT_S = 25.0  # the first part of the cut: a link that silently drops everything (no reset, no FIN)


def spooled_steps(fleet: Fleet, robot: str) -> int:
    spool = fleet.spool(robot)
    try:
        return spool.counts()[1]
    finally:
        spool.close()


def stored_rows(store: EpisodeStore) -> int:
    store.refresh()
    return store.committed_rows(DATASET) if DATASET in store.datasets() else 0


def test_edge_works_through_a_60_s_link_cut_and_uploads_everything_after(fleet: Fleet) -> None:
    publish_untrained_policy(fleet.root, DATASET)  # v1: the robot moves with no operator
    fleet.start_cloud()
    with LinkProxy(fleet.port) as proxy:
        edge = fleet.start_edge("robot-1", "--operator", "none", hz=HZ, cloud=proxy.address)
        store = EpisodeStore(fleet.root / "data" / "store", read_only=True)

        def runs_v1() -> bool:
            if stored_rows(store) < 40:
                return False
            return bool((store.read(DATASET, columns=["policy_version"])["policy_version"] == 1).any())

        wait_until(runs_v1, 120, "steps under v1 in the store")

        log_at_cut = len(fleet.log("robot-1"))
        # First a silent link: connections stay open, nothing gets through. The edge must find out by itself.
        proxy.cut(blackhole=True)
        cut_ns = time.monotonic_ns()
        wait_until(
            lambda: "link to the cloud" in fleet.log("robot-1")[log_at_cut:],
            SILENT_S - 2,
            "the edge to notice the silent link (dead-peer detection)",
        )
        rows_during_cut = stored_rows(store)  # what was in flight at the cut has landed by now; nothing more may
        samples = []
        cut_mode = "silent"
        while time.monotonic_ns() - cut_ns < CUT_S * 1e9:
            assert edge.poll() is None, f"the edge exited during the cut:\n{fleet.log('robot-1')[-3000:]}"
            if cut_mode == "silent" and time.monotonic_ns() - cut_ns > SILENT_S * 1e9:
                proxy.cut()  # then a link that resets every connection and refuses new ones
                cut_mode = "reset"
            samples.append(spooled_steps(fleet, "robot-1"))
            time.sleep(5)
        assert stored_rows(store) == rows_during_cut, "steps reached the store through a cut link"
        assert proxy.stats.refused > 0, "the edge never tried to reconnect during the cut"
        proxy.restore()
        restore_ns = time.monotonic_ns()

        # The spool grew all through the outage: the robot kept working and recording.
        assert samples[-1] >= 0.7 * HZ * (CUT_S - 5), f"spooled steps during the cut: {samples}"
        assert all(b >= a for a, b in zip(samples, samples[1:], strict=False)), f"the spool shrank: {samples}"

        wait_until(
            lambda: spooled_steps(fleet, "robot-1") == 0 and stored_rows(store) > rows_during_cut,
            60,
            "the spool to drain after the link came back",
        )
        assert fleet.stop("robot-1") == 0

    stats = fleet.stats("robot-1")
    assert stats["unacked_steps"] == 0
    assert fleet.spool("robot-1").counts() == (0, 0)
    per_resource = check_store(EpisodeStore(fleet.root / "data" / "store", read_only=True), DATASET)
    mine = per_resource["robot-1"]
    assert mine.steps == stats["ticks"], f"the edge produced {stats['ticks']} steps, the store holds {mine.steps}"
    assert mine.digest == stats["digest"], "the stored steps differ from what the edge produced"

    # Steps made while the link was down: about one per tick, all under the last policy, none by a person.
    during = (mine.t_mono_ns > cut_ns) & (mine.t_mono_ns < restore_ns)
    assert during.sum() >= 0.8 * HZ * CUT_S, f"{during.sum()} steps recorded in {CUT_S:.0f} s at {HZ:.0f} Hz"
    assert (mine.versions_in_time_order[during] == 1).all(), "steps during the cut do not carry the last version"
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    order = np.argsort(store.read(DATASET, columns=["t_mono_ns"])["t_mono_ns"], kind="stable")
    intervention = store.read(DATASET, columns=["intervention"])["intervention"][order]
    assert not intervention[during].any()
    assert "holds still" not in fleet.log("robot-1")[log_at_cut:], "the robot held still during the outage"
