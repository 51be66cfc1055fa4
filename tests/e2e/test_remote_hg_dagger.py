"""The takeover page's path carries a real correction signal: HG-DAgger learns from a remote person's interventions.

The real cloud (with its learner) and a simulated Panda with no local operator (`--operator none`); the person
is HG-DAgger's scripted one (``RemoteExpert``), but at the robot's takeover page: it watches the live view at the
robot's control rate and sends take over, the expert's actions and hand back through the page's protocol. Every
step it drives is stored as an intervention by browser:alice; the learner trains on those alone, and autonomous
success (episodes that succeeded with no intervention) rises from none under no policy to at least 0.6 for a
version with at least five episodes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloud.data.store import EpisodeStore
from cloud.data.version_summary import VersionSummary, summarize
from tests.e2e.fleet import Fleet, free_port, wait_until
from tests.e2e.remote_expert import RemoteExpert
from tests.e2e.takeover_client import TakeoverClient
from tests.e2e.test_takeover_page import add_device

HZ = 10.0
MIN_EPISODES = 5


def rated(summary: list[VersionSummary]) -> list[VersionSummary]:
    return [s for s in summary if s.episodes >= MIN_EPISODES and s.autonomous_success is not None]


@pytest.mark.timeout(600)
def test_hg_dagger_learns_from_a_remote_person_s_interventions(tmp_path: Path, fleet: Fleet) -> None:
    alice = add_device(fleet, "alice", "--kind", "operator")
    robot = add_device(fleet, "robot-1", "--policy", "panda_pick_cube")  # its record gives it its task
    phone_port = free_port()
    fleet.start_cloud("--phone-port", str(phone_port), learner=True)
    fleet.start_edge("robot-1", "--operator", "none", hz=HZ, env={"FLEETLOOP_TOKEN": robot})
    wait_until(lambda: "robot-1 connected" in fleet.log("cloud"), 60, "the robot to connect")
    url = f"wss://127.0.0.1:{phone_port}/takeover/robot-1/ws"
    client = TakeoverClient(url, "alice", alice, fleet.root / "data" / "certs" / "ca.pem", rate_hz=HZ)
    person = RemoteExpert(client)
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    started = time.monotonic()
    try:

        def learned() -> bool:
            versions = [s for s in rated(summarize(store, "panda_pick_cube")) if s.version > 0]
            return any(s.autonomous_success >= 0.6 for s in versions)

        try:
            wait_until(learned, 420, "a version with autonomous success >= 0.6", interval_s=2.0)
        except AssertionError as err:
            table = "\n".join(str(s) for s in summarize(store, "panda_pick_cube"))
            raise AssertionError(
                f"{err}\n{table}\n{fleet.log('cloud')[-2000:]}\n{fleet.log('robot-1')[-2000:]}"
            ) from None
    finally:
        client.close()
    summary = summarize(store, "panda_pick_cube")
    for s in summary:
        print(s)
    print(f"{time.monotonic() - started:.0f} s; {person.takeovers} take overs, {person.actions_sent} actions sent")
    v0 = next(s for s in summary if s.version == 0)
    assert v0.autonomous_success is not None and v0.autonomous_success <= 0.2  # no policy: the person drove them all
    assert v0.intervention_rate == 1.0
    best = max((s for s in rated(summary) if s.version > 0), key=lambda s: s.autonomous_success)
    assert best.autonomous_success >= 0.6 and best.version > 0, best
    assert client.errors == [], client.errors
    episodes = [e for e in store.episodes("panda_pick_cube") if e.intervention_steps]
    drivers = {who for e in episodes for who in store.drivers("panda_pick_cube", e.episode_id).values()}
    assert drivers == {"browser:alice"}, drivers  # every correction came through the page, by its person
    assert sum(e.intervention_steps for e in episodes) == sum(
        len(store.drivers("panda_pick_cube", e.episode_id)) for e in episodes
    )
    assert "operator none, takeover page on" in fleet.log("robot-1")  # the edge ran no local operator
