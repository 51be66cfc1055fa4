"""The cloud on object storage: ``fleetloop cloud --store s3://...`` against moto's real S3 server on loopback, a
real edge, a learner of its own on the same URL. Steps land in the bucket (nothing in the local data folder), the
learner trains from them and publishes into the bucket, the gateway pushes that version, and a gateway SIGKILLed
mid-write comes back only with --take-over-store and loses nothing the edge was acked for."""

from __future__ import annotations

import subprocess
import sys

from cloud.data.store import EpisodeStore
from cloud.data.version_registry import PolicyRegistry
from tests.e2e.fleet import ENV, Fleet, wait_until
from tests.e2e.store_checks import check_store
from tests.s3_server import S3Server

DATASET = "panda_pick_cube"
LEARNER_ARGS = ("--first-round-episodes", "1", "--round-episodes", "2", "--train-steps", "50")


def test_an_edges_steps_land_in_object_storage_and_the_learner_trains_from_them(
    fleet: Fleet, s3_server: S3Server, s3_url: str
) -> None:
    env = s3_server.env()
    fleet.start_cloud("--store", s3_url, env=env)
    fleet.start_learner("--store", s3_url, *LEARNER_ARGS, env=env)
    fleet.start_edge("robot-1", "--duration", "120", hz=20)
    store = EpisodeStore(f"{s3_url}/store", read_only=True)
    registry = PolicyRegistry(f"{s3_url}/registry")

    def stored_steps() -> int:
        store.refresh()
        return store.committed_rows(DATASET) if DATASET in store.datasets() else 0

    wait_until(lambda: stored_steps() > 30, 90, "the first steps in the bucket")
    fleet.kill("cloud")  # most likely mid-write
    again = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", "cloud", "--root", str(fleet.root / "data"), "--store", s3_url],
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2 and "--take-over-store" in again.stderr, again.stderr[-2000:]
    fleet.start_cloud("--store", s3_url, "--take-over-store", env=env)

    wait_until(lambda: (registry.latest(DATASET) or 0) and registry.latest(DATASET).version >= 1, 120, "a version")

    def runs_a_learned_version() -> bool:
        store.refresh()
        return bool((store.read(DATASET, ["policy_version"])["policy_version"] >= 1).any())

    wait_until(runs_a_learned_version, 60, "steps under the learner's version")
    fleet.processes["robot-1"].send_signal(15)  # the loop stops, the edge waits for its spool to be acked
    assert fleet.processes["robot-1"].wait(timeout=60) == 0, fleet.log("robot-1")[-3000:]
    fleet.stop("learner")
    assert fleet.stop("cloud") == 0

    stored = check_store(EpisodeStore(f"{s3_url}/store", read_only=True), DATASET)["robot-1"]
    stats = fleet.stats("robot-1")
    assert stats["unacked_steps"] == 0 and fleet.spool("robot-1").counts() == (0, 0)
    assert stored.steps == stats["ticks"] and stored.digest == stats["digest"]
    assert not (fleet.root / "data" / "store").exists() and not (fleet.root / "data" / "registry").exists()
    assert f"episode store {s3_url}/store" in fleet.log("cloud")
    EpisodeStore(f"{s3_url}/store").close()  # the cloud's clean stop gave its lease back
