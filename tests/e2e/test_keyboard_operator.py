"""A person at the keyboard, for real: key events injected into an X server drive a simulated Panda through
``fleetloop edge --operator keyboard`` (lerobot's pynput keyboard), beside a real ``fleetloop cloud``.

Re-record, scene ready, take over, move, hand back, success: the store then holds the person's steps as
interventions with their identity, the episode with their success label, the re-recorded one discarded, and the
fleet view showed the robot waiting for its scene in between. Xvfb and xdotool are Debian packages
(scripts/bootstrap.sh installs them); without them this test fails and says so.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import numpy as np
import pytest

from cloud.data.store import EpisodeStore
from fleetloop.fleet_view import fetch
from tests.e2e.fleet import Fleet, publish_untrained_policy, wait_until
from tests.e2e.x_display import press, x_display

DATASET = "panda_pick_cube"
WHO = "ana@arm-1"
TCP_Y = 16  # panda_pick_cube state: qpos 7, qvel 7, gripper 1, tcp xyz 3, cube xyz 3


@pytest.fixture
def display() -> Iterator[str]:
    with x_display() as name:
        yield name


def member_state(fleet: Fleet) -> str:
    return next((m.state for m in fetch(fleet.target).members if m.resource.id == "arm-1"), "")


def test_keys_in_an_x_server_drive_the_panda_and_label_its_episodes(fleet: Fleet, display: str) -> None:
    fleet.start_cloud()
    publish_untrained_policy(fleet.root, DATASET)  # the policy drives whenever the person does not
    extra = ("--operator", "keyboard", "--operator-name", WHO)
    fleet.start_edge("arm-1", *extra, hz=10, env={"DISPLAY": display})

    def said(text: str) -> bool:
        assert fleet.processes["arm-1"].poll() is None, f"the edge exited:\n{fleet.log('arm-1')}"
        return text in fleet.log("arm-1")

    wait_until(lambda: said("switched to policy panda_pick_cube v1"), 90, "the policy to reach the edge")
    press(display, "key", "r")  # re-record: the episode under way ends, discarded
    wait_until(lambda: said("asked to re-record it: kept, never trained on"), 20, "the re-record")
    wait_until(
        lambda: said("waiting for the scene to be reset (press Enter or press scene ready on the takeover page"),
        10,
        "the wait",
    )
    wait_until(lambda: member_state(fleet) == "waiting for reset", 10, "the fleet view to show the wait")
    press(display, "key", "Return")
    wait_until(lambda: said(f"the scene is ready ({WHO} says so)"), 10, "scene ready")
    wait_until(lambda: member_state(fleet) == "running", 10, "the fleet view to show it working again")
    press(display, "key", "space")
    wait_until(lambda: said(f"{WHO} takes over"), 10, "the take over")
    press(display, "keydown", "Up")  # held for a while: keyboard_ee reads keys held, as a person holds them
    time.sleep(1.0)
    press(display, "keyup", "Up")
    press(display, "key", "space")
    wait_until(lambda: said(f"{WHO} hands back to the policy"), 10, "the hand back")
    time.sleep(0.5)  # the policy drives a few steps again
    press(display, "key", "s")
    wait_until(lambda: re.search(rf"episode \d+ succeeded \({WHO} says so\)", fleet.log("arm-1")), 15, "success")

    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)

    def labelled() -> list:
        store.refresh()
        return [e for e in store.episodes(DATASET) if e.label] if DATASET in store.datasets() else []

    wait_until(lambda: [e.label for e in labelled()] == ["discarded", "success"], 30, "both labels in the store")
    discarded, success = labelled()
    assert discarded.labelled_by == WHO and discarded.discarded
    assert (success.labelled_by, success.done, success.success) == (WHO, True, True)
    rows = store.read(DATASET, ["episode_index", "seq", "intervention", "action", "obs.state", "done"])
    mine = np.flatnonzero(rows["episode_index"] == success.index)
    mine = mine[np.argsort(rows["seq"][mine])]  # this episode's rows, in step order
    assert len(mine) == success.num_steps and rows["done"][mine[-1]] and not rows["done"][mine[:-1]].any()
    intervention = rows["intervention"][mine]
    assert 0 < intervention.sum() < len(mine), "both the person and the policy drove this episode"
    drivers = store.drivers(DATASET, success.episode_id)  # seq -> who, for the steps a person drove
    assert drivers == dict.fromkeys(rows["seq"][mine][intervention].tolist(), WHO)
    up = np.flatnonzero(intervention & (rows["action"][mine][:, 1] == -1.0))  # keyboard_ee: Up is delta_y -1
    assert len(up) >= 5, f"the Up key drove {len(up)} steps"
    moved = rows["obs.state"][mine[up[0]], TCP_Y] - rows["obs.state"][mine[up[-1] + 1], TCP_Y]
    assert moved > 0.01, f"the hand moved {moved:.3f} m in y while Up was held"
