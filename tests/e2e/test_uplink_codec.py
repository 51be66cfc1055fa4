"""Encoded cameras end to end: a real `fleetloop edge` process (the pusht sim, a 96x96 camera) with
--uplink-codec h264 into a real gateway stores every step, its frames decode, and its steps cost at most a tenth of
the bytes on the wire that the same robot's raw frames cost (counted at the gateway, in the same run)."""

from __future__ import annotations

import re

import numpy as np

from cloud.data.store import EpisodeStore
from tests.e2e.fleet import Fleet, publish_untrained_policy, wait_until

DATASET = "pusht"


def steps_of(store: EpisodeStore) -> int:
    store.refresh()
    return store.committed_rows(DATASET) if DATASET in store.datasets() else 0


def bytes_per_step(fleet: Fleet, robot_id: str) -> float:
    """What the gateway says, when the robot's tunnel closes, its steps cost on the wire."""
    pattern = rf"{robot_id} disconnected \((\d+) steps stored this session, (\d+) bytes per step on the wire\)"
    wait_until(lambda: re.search(pattern, fleet.log("cloud")), 30, f"the gateway to close {robot_id}'s tunnel")
    return float(re.findall(pattern, fleet.log("cloud"))[-1][1])


def run_edge(fleet: Fleet, store: EpisodeStore, robot_id: str, codec: str) -> int:
    """Runs the pusht edge for 3 s with ``codec``; returns how many steps it recorded, once they are all stored."""
    before = steps_of(store)
    fleet.start_edge(
        robot_id, "--operator", "none", "--uplink-codec", codec, "--duration", "3", robot="sim:pusht", hz=20
    )
    assert fleet.processes[robot_id].wait(timeout=90) == 0, fleet.log(robot_id)
    ticks = fleet.stats(robot_id)["ticks"]
    wait_until(lambda: steps_of(store) - before >= ticks, 30, f"{robot_id}'s steps in the store")
    assert steps_of(store) - before == ticks and ticks > 20
    return ticks


def test_h264_uplink_stores_every_step_at_a_tenth_of_the_raw_bytes(fleet: Fleet) -> None:
    fleet.start_cloud()
    publish_untrained_policy(fleet.root, DATASET)  # v1: the robot moves with no operator
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    run_edge(fleet, store, "pusht-raw", "raw")
    raw = bytes_per_step(fleet, "pusht-raw")
    run_edge(fleet, store, "pusht-h264", "h264")
    encoded = bytes_per_step(fleet, "pusht-h264")
    assert encoded <= 0.1 * raw, f"{encoded:.0f} bytes per step with H.264 vs {raw:.0f} raw"
    assert "pixels camera: sent as H.264, as the store keeps it" in fleet.log("pusht-h264")
    assert "pixels camera: sent raw (--uplink-codec raw)" in fleet.log("pusht-raw")
    store.refresh()
    assert store.schema(DATASET)["obs.pixels"].codec == "h264"
    pixels = store.read(DATASET, columns=["obs.pixels"])["obs.pixels"]
    assert pixels.shape[1:] == (96, 96, 3) and pixels.dtype == np.uint8 and pixels[-20:].std() > 0
    assert store.bad_frames == 0
