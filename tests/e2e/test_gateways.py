"""Several gateways on one store: two ``fleetloop cloud --gateway-id`` processes on one ``--store s3://...`` (moto's
S3 server on loopback), edges split between them, one edge moved to the other gateway mid-episode (its link's address
now leads there, as behind one load balancer), the second gateway SIGKILLed mid-write and restarted, and the first
one's learner reading every partition. Every step each edge produced is in the union exactly once with the content
the edge made, the moved episode continues in the second partition at the right seq, and ``fleetloop export`` of the
union reads back as a LeRobotDataset."""

from __future__ import annotations

import subprocess
import sys

from cloud.data.partitions import partition_root
from cloud.data.store import EpisodeStore
from cloud.data.store_union import StoreUnion
from cloud.data.version_registry import PolicyRegistry
from tests.e2e.fleet import ENV, Fleet, free_port, wait_until
from tests.e2e.store_checks import check_store
from tests.faults import LinkProxy
from tests.s3_server import S3Server

DATASET = "panda_pick_cube"
LEARNER_ARGS = ("--first-round-episodes", "1", "--round-episodes", "2", "--train-steps", "30")
ROBOTS = ("robot-1", "robot-2", "robot-3")


def resources_in(store: EpisodeStore) -> dict[str, int]:
    """resource -> steps that partition holds of it."""
    store.refresh()
    if DATASET not in store.datasets():
        return {}
    held: dict[str, int] = {}
    for record in store.episodes(DATASET):
        held[record.resource_id] = held.get(record.resource_id, 0) + record.num_steps
    return held


def test_two_gateways_write_one_store_an_edge_moves_between_them_and_nothing_is_lost(
    fleet: Fleet, s3_server: S3Server, s3_url: str
) -> None:
    env = s3_server.env()
    port_b = free_port()
    fleet.start_cloud("--store", s3_url, "--gateway-id", "gw-a", *LEARNER_ARGS, learner=True, env=env)
    gateway_b = ("--store", s3_url, "--gateway-id", "gw-b")
    fleet.start_cloud(*gateway_b, env=env, name="cloud-b", port=port_b)
    proxies = {robot: LinkProxy(port) for robot, port in zip(ROBOTS, (fleet.port, port_b, fleet.port), strict=True)}
    for robot, proxy in proxies.items():
        proxy.start()
        operator = ("--operator", "none") if robot == "robot-3" else ()  # 100-step episodes: moved mid-episode
        fleet.start_edge(robot, "--duration", "120", *operator, hz=25, seed=ROBOTS.index(robot), cloud=proxy.address)
    base = f"{s3_url}/store"
    part_a = EpisodeStore(partition_root(base, "gw-a"), read_only=True)

    def robot_3_mid_episode() -> bool:
        mine = [e for e in part_a.episodes(DATASET) if e.resource_id == "robot-3"] if resources_in(part_a) else []
        return bool(mine) and not mine[-1].done and mine[-1].num_steps >= 3

    wait_until(robot_3_mid_episode, 90, "robot-3 mid-episode in gw-a's partition", interval_s=0.05)
    proxies["robot-3"].target = ("127.0.0.1", port_b)  # its link now leads to the other gateway
    proxies["robot-3"].cut(duration_s=0.2)
    part_b = EpisodeStore(partition_root(base, "gw-b"), read_only=True)
    wait_until(lambda: resources_in(part_b).get("robot-3", 0) > 10, 60, "robot-3's steps in gw-b's partition")

    fleet.kill("cloud-b")  # robot-2 and robot-3 stream to it: most likely mid-write
    fleet.start_cloud(*gateway_b, "--take-over-store", env=env, name="cloud-b", port=port_b)
    registry = PolicyRegistry(f"{s3_url}/registry")
    wait_until(lambda: registry.latest(DATASET) is not None, 90, "the learner's first version")
    wait_until(lambda: resources_in(part_b).get("robot-2", 0) > 2 * 25, 60, "gw-b taking steps again")

    for robot in ROBOTS:
        fleet.processes[robot].send_signal(15)  # the loop stops; the edge waits for its spool to be acked
    for robot in ROBOTS:
        assert fleet.processes[robot].wait(timeout=60) == 0, fleet.log(robot)[-3000:]
    assert fleet.stop("cloud-b") == 0 and fleet.stop("cloud") == 0

    union = StoreUnion(base)
    stored = check_store(union, DATASET)  # every episode's seqs 0..n-1 exactly once, across partitions
    for robot in ROBOTS:
        stats = fleet.stats(robot)
        assert stats["unacked_steps"] == 0 and fleet.spool(robot).counts() == (0, 0)
        assert stored[robot].steps == stats["ticks"], f"{robot}: {stats['ticks']} made, {stored[robot].steps} stored"
        assert stored[robot].episodes == stats["episode_digests"], f"{robot}: stored content differs"
    part_a.refresh()
    part_b.refresh()
    moved = [
        e.episode_id
        for e in part_a.episodes(DATASET)
        if e.resource_id == "robot-3" and part_b.episode(e.episode_id) is not None
    ]
    assert moved, "robot-3's episode did not continue in gw-b's partition"
    first, second = part_a.episode(moved[0]), part_b.episode(moved[0])
    # gw-b continued where gw-a's rows end, with no gap. It may hold again the last steps gw-a had acked when their
    # acks were lost in the cut (gw-b could not yet see them in gw-a's partition: they were in gw-a's ingest log);
    # the union reads each of those once (check_store above).
    second_first = second.last_seq - second.num_steps + 1
    assert first.next_seq - first.num_steps <= second_first <= first.next_seq, (first, second)

    out = fleet.root / "exported"
    export = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", "export", "--root", str(fleet.root / "data"), "--store", s3_url]
        + ["--dataset", DATASET, "--out", str(out), "--include-unfinished", "--fps", "25"],
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(f"fleetloop/{DATASET}", root=out)
    assert dataset.num_frames == union.committed_rows(DATASET)
    lengths = {int(e["length"]) for e in dataset.meta.episodes}
    assert union.episode(moved[0]).num_steps in lengths
