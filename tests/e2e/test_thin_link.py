"""A link slower than the robot (2 Mbit/s for a 96x96 camera at 20 Hz, ~4.4 Mbit/s raw): the edge's real upload path
(recorder, spool, tunnel client) through the fault proxy to a real gateway process sends the episodes a person
touched ahead of older autonomous backlog, reports its backlog in the fleet view and in its log, and once the
link is wide again every step is in the store exactly once."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from cloud.data.store import EpisodeStore
from edge.recorder import Step, StepRecorder
from edge.spool import Spool
from edge.tunnel_client import TunnelClient, TunnelConfig
from fleetloop.fleet_view import fetch, render
from hal.resource import ArraySpec, Capabilities, ResourceInfo
from protocol import tunnel_pb2 as pb
from tests.e2e.fleet import Fleet, wait_until
from tests.e2e.store_checks import check_store
from tests.faults import LinkProxy

pytestmark = pytest.mark.e2e

DATASET = "thin_link_cam"
HZ, STEPS = 20.0, 20  # one episode a second
RESOURCE = ResourceInfo(
    id="thin-1",
    kind="robot",
    source="sim",
    capabilities=Capabilities(
        observation=(ArraySpec("pixels", "uint8", (96, 96, 3)), ArraySpec("state", "float32", (2,))),
        action=ArraySpec("action", "float32", (2,), (-1, -1), (1, 1)),
        control_hz=HZ,
        cameras=("pixels",),
        embodiment=DATASET,
    ),
)
# Recorded in this order: autonomous backlog builds up, then a person intervenes (i0) and later labels one (i1).
EPISODES = ["a0", "a1", "a2", "a3", "i0", "a4", "i1", "a5"]


def steps_of(episode: str, rng: np.random.Generator) -> list[Step]:
    out = []
    for seq in range(STEPS):
        last = seq == STEPS - 1
        columns = {
            "obs.pixels": rng.integers(0, 256, (96, 96, 3), np.uint8),  # noise: nothing on the way shrinks it
            "obs.state": rng.random(2, np.float32),
            "action": rng.random(2, np.float32),
            "reward": np.float32(0),
            "done": last,
            "success": False,
            "intervention": episode == "i0" and 5 <= seq < 15,
            "policy_version": np.int64(0),
            "t_mono_ns": np.int64(time.monotonic_ns()),
        }
        label = pb.EpisodeLabel(outcome="failure", by="browser:alice") if episode == "i1" and last else None
        out.append(Step(f"thin-1-{episode}", seq, "push", columns, label=label))
    return out


def produce(recorder: StepRecorder) -> None:
    """The robot at 20 Hz: it never waits for the link."""
    rng = np.random.default_rng(0)
    tick = time.monotonic()
    for episode in EPISODES:
        for step in steps_of(episode, rng):
            recorder.record(step)
            tick += 1 / HZ
            time.sleep(max(0.0, tick - time.monotonic()))


def test_a_thin_link_sends_touched_episodes_first_reports_its_backlog_and_loses_nothing(
    fleet: Fleet, tmp_path, caplog
) -> None:
    fleet.start_cloud("--store-codec", "raw")  # stored as sent, so the store's bytes are checked against the robot's
    spool = Spool(tmp_path / "spool.db")
    with LinkProxy(fleet.port) as proxy, caplog.at_level(logging.INFO, logger="fleetloop.tunnel"):
        proxy.set_bandwidth(2e6)
        config = TunnelConfig(
            proxy.address, "p", uplink_codec="raw", window_batches=4, heartbeat_s=0.5, backlog_warn_s=2.0
        )
        client = TunnelClient(config, RESOURCE, spool, on_policy=lambda *_: None)
        recorder = StepRecorder(spool, on_spooled=client.wake, digest=True)
        client.start()
        try:
            wait_until(client.connected.is_set, 20, "the edge to connect through the thin link")
            producer = threading.Thread(target=produce, args=(recorder,), daemon=True)
            producer.start()
            completed: list[str] = []  # episodes in the order the cloud acked their last step
            backlog_seen: list[pb.FleetMember] = []

            def touched_episodes_stored() -> bool:
                held = spool.held()
                for episode in EPISODES[: int(recorder.recorded // STEPS)]:
                    if f"thin-1-{episode}" not in held and episode not in completed:
                        completed.append(episode)
                members = [m for m in fetch(fleet.target).members if m.resource.id == "thin-1"]
                backlog_seen.extend(m for m in members if m.backlog_steps > 0)
                return {"i0", "i1"} <= set(completed)

            wait_until(touched_episodes_stored, 40, "the episodes a person touched to reach the store", 0.1)
            still_waiting = [e for e in EPISODES[: EPISODES.index("i0")] if e not in completed]
            assert still_waiting, f"every older autonomous episode was stored before the intervention: {completed}"
            assert backlog_seen, "the fleet view never showed a backlog while the link was thin"
            member = backlog_seen[-1]
            assert member.backlog_bytes > member.backlog_steps * 96 * 96 * 3 * 0.9 and member.backlog_oldest_s > 0
            table = render(pb.FleetStatus(members=[member]), fleet.target)
            assert "backlog" in [column.header for column in table.columns]
            said = [r.getMessage() for r in caplog.records if "link slower than the robot" in r.getMessage()]
            assert said and "wait to upload" in said[0] and "interventions" in said[0]

            producer.join(timeout=30)
            proxy.set_bandwidth(None)  # the link widens: the autonomous backlog drains
            recorder.flush()
            wait_until(lambda: spool.counts() == (0, 0), 30, "the spool to drain once the link is wide")
            wait_until(lambda: client.backlog_watch.behind_since is None, 5, "the edge to say the backlog drained")
        finally:
            client.stop()
            recorder.close()
    stored = check_store(EpisodeStore(fleet.root / "data" / "store", read_only=True), DATASET)["thin-1"]
    assert stored.steps == len(EPISODES) * STEPS
    made = recorder.digest.per_episode()
    differ = [e for e in made if stored.episodes.get(e) != made[e]]
    assert not differ, f"the store does not hold exactly the steps the robot made in {differ}"
    assert any("upload backlog drained" in r.getMessage() for r in caplog.records)
