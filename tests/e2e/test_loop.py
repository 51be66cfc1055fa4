"""The loop end to end: a real gateway, edges in separate processes, a zarr store on disk."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import EpisodeStore
from cloud.learning.policy_choice import policy_for_schema
from edge.segment_spool import open_spool
from edge.spool import Spool
from policies.weights import policy_to_bytes
from tests.e2e.fleet import Fleet, wait_until
from tests.e2e.store_checks import wait_compacted

DATASET = "panda_pick_cube"


def open_store(fleet: Fleet) -> EpisodeStore:
    return EpisodeStore(fleet.root / "data" / "store", read_only=True)


def rows_of(store: EpisodeStore) -> dict[str, np.ndarray]:
    store.refresh()
    if DATASET not in store.datasets():
        return {"seq": np.zeros(0, np.int64)}
    return store.read(DATASET, columns=["seq", "episode_index", "policy_version", "intervention", "t_mono_ns"])


def episodes_by_resource(store: EpisodeStore) -> dict[str, list]:
    out: dict[str, list] = {}
    for episode in store.episodes(DATASET) if DATASET in store.datasets() else []:
        out.setdefault(episode.resource_id, []).append(episode)
    return out


def assert_each_episode_contiguous_and_unique(store: EpisodeStore) -> None:
    rows = rows_of(store)
    episodes = store.episodes(DATASET)
    for index, episode in enumerate(episodes):
        seqs = np.sort(rows["seq"][rows["episode_index"] == index])
        np.testing.assert_array_equal(seqs, np.arange(len(seqs)), err_msg=f"episode {episode.episode_id}")
        assert len(seqs) == episode.num_steps


def test_two_edges_stream_every_step_once_and_both_get_the_new_version(fleet: Fleet) -> None:
    fleet.start_cloud()
    fleet.start_edge("robot-1", seed=1)
    fleet.start_edge("robot-2", seed=2)
    store = open_store(fleet)
    wait_until(
        lambda: rows_of(store)["seq"].size and len(episodes_by_resource(store)) == 2,
        90,
        "steps from both robots in the store",
    )

    policy = policy_for_schema(store.schema(DATASET), hidden=(32, 32))
    version = signing_registry(DataLayout(fleet.root / "data")).publish(DATASET, policy_to_bytes(policy))
    assert version.version == 1

    def both_run_v1() -> bool:
        rows = rows_of(store)
        episodes = store.episodes(DATASET)
        resources = {episodes[i].resource_id for i in np.unique(rows["episode_index"][rows["policy_version"] == 1])}
        return resources == {"robot-1", "robot-2"}

    wait_until(both_run_v1, 60, "steps under v1 from both robots")
    for robot in ("robot-1", "robot-2"):
        assert fleet.stop(robot) == 0
    fleet.stop("cloud")

    store = open_store(fleet)
    rows = rows_of(store)
    episodes = store.episodes(DATASET)
    assert_each_episode_contiguous_and_unique(store)
    for robot in ("robot-1", "robot-2"):
        stats = fleet.stats(robot)
        mine = [i for i, e in enumerate(episodes) if e.resource_id == robot]
        stored = int(np.isin(rows["episode_index"], mine).sum())
        assert stats["unacked_steps"] == 0
        assert stored == stats["ticks"], f"{robot} produced {stats['ticks']} steps, the store holds {stored}"
        assert fleet.spool(robot).counts() == (0, 0)
        # Provenance: source, and versions in time order never go back after the swap.
        assert {episodes[i].source for i in mine} == {"sim"}
        order = np.argsort(rows["t_mono_ns"][np.isin(rows["episode_index"], mine)], kind="stable")
        versions = rows["policy_version"][np.isin(rows["episode_index"], mine)][order]
        assert set(versions.tolist()) == {0, 1}
        first_v1 = int(np.argmax(versions == 1))
        assert (versions[first_v1:] == 1).all(), f"{robot} ran v0 after it swapped to v1"
    assert "robot-1 now runs panda_pick_cube v1" in fleet.log("cloud")
    assert "robot-2 now runs panda_pick_cube v1" in fleet.log("cloud")


def as_old_sqlite_spool(path: Path) -> None:
    """Leaves the segment log's batches at ``path`` as the SQLite spool file an edge of the release before wrote."""
    log = open_spool(path, read_only=True)
    old = Spool(path)
    for spooled in log.pending(limit=100_000):
        old.append(spooled.batch)
    old.close()
    log.close()
    shutil.rmtree(path.with_suffix(".spool"))


@pytest.mark.parametrize("old_spool", [False, True], ids=["segment-log", "old-sqlite-spool"])
def test_sigkilled_edge_loses_no_acked_step_and_resends_its_spool(fleet: Fleet, old_spool: bool) -> None:
    cloud = fleet.start_cloud()
    edge = fleet.start_edge("robot-1")
    store = open_store(fleet)
    wait_until(lambda: rows_of(store)["seq"].size > 30, 90, "the first steps in the store")

    cloud.send_signal(signal.SIGSTOP)  # the cloud stops acking: new steps pile up in the edge's spool
    try:
        wait_until(lambda: fleet.spool("robot-1").counts()[1] > 20, 30, "unacked steps in the spool")
        edge.kill()
        edge.wait()
    finally:
        cloud.send_signal(signal.SIGCONT)
    acked_before = rows_of(store)["seq"].size
    spooled = fleet.spool("robot-1")
    held = spooled.held()
    _, unacked_steps = spooled.counts()
    spooled.close()
    assert unacked_steps > 20 and held
    if old_spool:  # the restarted edge moves the old file's batches into its log and uploads them
        as_old_sqlite_spool(fleet.spool_path("robot-1"))

    fleet.start_edge("robot-1", "--episodes", "1")  # same id, same spool
    wait_until(lambda: fleet.processes["robot-1"].poll() is not None, 120, "the restarted edge to finish")
    assert fleet.processes["robot-1"].returncode == 0
    fleet.stop("cloud")

    store = open_store(fleet)
    rows = rows_of(store)
    assert rows["seq"].size >= acked_before + unacked_steps
    assert_each_episode_contiguous_and_unique(store)
    for episode_id, first_unacked in held.items():
        [episode] = [e for e in store.episodes(DATASET) if e.episode_id == episode_id]
        assert episode.num_steps > first_unacked, "the spooled steps of the killed episode were not resent"
    assert fleet.spool("robot-1").counts() == (0, 0)
    assert not fleet.spool_path("robot-1").exists()


def test_image_steps_from_pusht_land_in_the_store_and_a_cnn_version_reaches_the_edge(fleet: Fleet) -> None:
    fleet.start_cloud()
    fleet.start_edge("pusht-1", "--operator", "none", robot="sim:pusht", hz=20)
    store = open_store(fleet)

    def rows() -> int:
        store.refresh()
        return store.committed_rows("pusht") if "pusht" in store.datasets() else 0

    wait_until(lambda: "pusht" in store.datasets() or store.refresh(), 90, "the image robot to connect")
    time.sleep(1.0)
    assert rows() == 0, "with no policy and no operator the robot must hold still"
    schema = store.schema("pusht")
    assert schema["obs.pixels"].shape == (96, 96, 3)
    policy = policy_for_schema(schema, hidden=(32,))
    assert policy.type_name == "cnn"
    signing_registry(DataLayout(fleet.root / "data")).publish("pusht", policy_to_bytes(policy))
    wait_until(lambda: rows() > 10, 60, "image steps under the CNN policy v1")
    store.refresh()
    assert (store.read("pusht", columns=["policy_version"])["policy_version"] == 1).all()
    assert fleet.stop("pusht-1") == 0
    stats = fleet.stats("pusht-1")
    wait_compacted(fleet.root / "data" / "store")  # acked steps reach the store once the uplink pauses
    store.refresh()
    assert store.committed_rows("pusht") == stats["ticks"]
    pixels = store.read("pusht", columns=["obs.pixels"], start=0, stop=5)["obs.pixels"]
    assert pixels.dtype == np.uint8 and pixels.std() > 0  # real rendered frames, not zeros
