"""Chaos: four edges stream through a flaky link while the gateway is SIGKILLed twice and the learner once.

Afterwards the store holds exactly the steps the edges produced (count and a sha256 over their content), each
(episode_id, seq) once, and no edge ever ran an older policy version after a newer one.
"""

from __future__ import annotations

import time

from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from tests.e2e.fleet import Fleet, wait_until
from tests.e2e.store_checks import assert_versions_never_go_back, check_store
from tests.faults import LinkProxy

DATASET = "panda_pick_cube"
ROBOTS = [f"robot-{i}" for i in range(1, 5)]
LEARNER_ARGS = ("--first-round-episodes", "1", "--round-episodes", "2", "--train-steps", "50")


def latest_version(fleet: Fleet) -> int:
    latest = PolicyRegistry(fleet.root / "data" / "registry").latest(DATASET)
    return latest.version if latest else 0


def test_gateway_and_learner_crashes_and_a_flaky_link_lose_and_duplicate_nothing(fleet: Fleet) -> None:
    started = time.monotonic()
    timeline: list[str] = []

    def mark(what: str) -> None:
        timeline.append(f"{time.monotonic() - started:6.1f} s  {what}")

    fleet.start_cloud()
    fleet.start_learner(*LEARNER_ARGS)
    with LinkProxy(fleet.port) as proxy:
        for seed, robot in enumerate(ROBOTS, start=1):
            # --duration only caps a run the test failed to stop; the test stops them once the chaos is over.
            fleet.start_edge(robot, "--duration", "240", hz=10, seed=seed, cloud=proxy.address)
        store = EpisodeStore(fleet.root / "data" / "store", read_only=True)

        def streaming(robots: list[str]) -> bool:
            store.refresh()
            if DATASET not in store.datasets():
                return False
            return set(robots) <= {e.resource_id for e in store.episodes(DATASET)}

        wait_until(lambda: streaming(ROBOTS), 120, "steps from all four robots")
        mark("all four robots stream")
        wait_until(lambda: latest_version(fleet) >= 1, 60, "the learner's first version")
        mark(f"learner published v{latest_version(fleet)}")

        proxy.set_delay(0.05)  # 50 ms each way from now on
        time.sleep(4)
        fleet.kill("cloud")
        mark("gateway SIGKILLed (1)")
        time.sleep(2)
        fleet.start_cloud()
        mark("gateway back")
        time.sleep(3)

        version_at_kill = latest_version(fleet)
        fleet.kill("learner")
        mark(f"learner SIGKILLed at v{version_at_kill}")
        time.sleep(1)
        fleet.start_learner(*LEARNER_ARGS)
        time.sleep(4)

        proxy.cut(duration_s=6)
        mark("link cut for 6 s (connections reset, new ones refused)")
        time.sleep(9)

        fleet.kill("cloud")
        mark("gateway SIGKILLed (2)")
        time.sleep(1)
        fleet.start_cloud()
        mark("gateway back")
        time.sleep(4)

        proxy.cut(blackhole=True)
        mark("link blackholed (connections open, traffic dropped)")
        time.sleep(4)
        proxy.restore()
        proxy.set_delay(0.0)
        mark("link back, no delay")

        wait_until(lambda: latest_version(fleet) > version_at_kill, 60, "a version from the restarted learner")
        mark(f"restarted learner published v{latest_version(fleet)}")
        time.sleep(3)
        for robot in ROBOTS:  # SIGTERM: the loop stops, the edge waits for the cloud to ack its spool
            fleet.processes[robot].send_signal(15)
        for robot in ROBOTS:
            assert fleet.processes[robot].wait(timeout=60) == 0, fleet.log(robot)[-3000:]
        mark("edges stopped")
    fleet.stop("learner")
    assert fleet.stop("cloud") == 0
    mark("cloud stopped")

    per_resource = check_store(EpisodeStore(fleet.root / "data" / "store", read_only=True), DATASET)
    mark("store checked")
    report = "\n".join(timeline)
    assert set(per_resource) == set(ROBOTS), report
    newest = 0
    for robot in ROBOTS:
        stats = fleet.stats(robot)
        stored = per_resource[robot]
        assert stats["unacked_steps"] == 0, f"{robot} stopped with unacked steps\n{report}"
        assert fleet.spool(robot).counts() == (0, 0)
        assert stored.steps == stats["ticks"], (
            f"{robot} produced {stats['ticks']} steps, the store holds {stored.steps}\n{report}"
        )
        edge_episodes = stats["episode_digests"]
        assert stored.episodes.keys() == edge_episodes.keys(), f"{robot}: episodes differ"
        differ = [e for e in edge_episodes if stored.episodes[e] != edge_episodes[e]]
        assert not differ, f"{robot}: stored content differs in episodes {differ}"
        assert stored.digest == stats["digest"]
        assert_versions_never_go_back(robot, stored.versions_in_time_order)
        assert stored.versions_in_time_order[-1] >= 1, f"{robot} never ran a learned version"
        newest = max(newest, int(stored.versions_in_time_order.max()))
    assert newest >= 2, f"no robot ran a version past v1 (newest v{newest})\n{report}"

    cloud_log = fleet.log("cloud")
    assert cloud_log.count("gateway listening") == 3, "the gateway did not start three times"
    learner_log = fleet.log("learner")
    assert f"resuming from checkpoint: v{version_at_kill}" in learner_log or (
        "carrying on from the registry" in learner_log
    ), learner_log[-2000:]
    print(report)
