"""Canary rollouts on the fleet dashboard, in a real headless Chromium against the real `fleetloop cloud` and edges.

Two ``sim:point_reach`` robots run the learner's trained versions (tests/e2e/reach_versions.py) with no operator; the
cloud runs a canary on one robot and never decides by itself (``--canary-episodes 1000``): the operator does, on the
page. The test checks that a canary in progress shows its version, its canary robot (in the rollout and in the fleet
rows) and each arm's numbers as the store's episodes give them; that Promote sends the better version to every robot;
that Roll back asks first, sends nothing when the person declines, and otherwise sends the canary robot back to the
incumbent and never sends the version again. Each decision reaches the gateway's rollout record and the robots (the
version they report running); screenshots show each state's pill in its colour.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cloud.data.store import EpisodeStore
from cloud.gateway.rollouts import arm_counts
from tests.e2e.fleet import Fleet, free_port, wait_until
from tests.e2e.reach_versions import ReachVersions
from tests.e2e.rollout_checks import POLICY, publish, ran, record_of, state_of, times_ran
from tests.e2e.test_dashboard_page import click, fleet_row, screenshot, size
from tests.e2e.test_phone_page import Chrome, open_phone_page, trust_the_cloud
from tests.e2e.test_takeover_page import add_device

pytestmark = pytest.mark.e2e
ROBOTS = ("robot-1", "robot-2")
PILL = {"canary": (0xFD, 0xF0, 0xD9), "promoted": (0xDF, 0xF3, 0xE7), "rolled back": (0xFB, 0xE3, 0xE0)}


def rollout(chrome: Chrome, version: int) -> str:
    """The text of ``version``'s rollout on the page ('' while it is not shown)."""
    found = f'document.querySelector(\'[data-rollouts="{POLICY}"] .rollout[data-version="{version}"]\')'
    return chrome.js(f"({found} || {{}}).textContent || ''")


def shown_state(chrome: Chrome, version: int) -> str:
    found = f'document.querySelector(\'[data-rollouts="{POLICY}"] .rollout[data-version="{version}"]\')'
    return chrome.js(f"({found} || {{dataset: {{}}}}).dataset.state || ''")


def decide(chrome: Chrome, version: int, decision: str) -> None:
    button = f'[data-rollouts="{POLICY}"] .rollout[data-version="{version}"] button[data-decision="{decision}"]'
    chrome.js(f"document.querySelector('{button}').scrollIntoView(); document.querySelector('{button}').click()")


def assert_pill(chrome: Chrome, version: int, state: str, path: Path) -> None:
    """On a screenshot, ``version``'s state pill is drawn in ``state``'s colour (sampled inside its left padding)."""
    pill = f'[data-rollouts="{POLICY}"] .rollout[data-version="{version}"] .state'
    chrome.js(f"document.querySelector('{pill}').scrollIntoView({{block: 'center'}})")
    box = chrome.js(f"(r => [r.x, r.y, r.width, r.height])(document.querySelector('{pill}').getBoundingClientRect())")
    assert box[2] > 0 and box[3] > 0, f"v{version}'s state is not drawn"
    shot: Image.Image = screenshot(chrome, path)
    pixel = shot.getpixel((round(box[0] + 4), round(box[1] + box[3] / 2)))
    assert max(abs(a - b) for a, b in zip(pixel, PILL[state], strict=True)) < 12, (state, pixel)


def counts_in_words(fleet: Fleet, version: int, incumbent: int) -> str:
    """Both arms' numbers as the page words them, counted from the store's finished episodes."""
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    episodes = store.episodes(POLICY)
    words = []
    for arm, v in (("canary", version), ("incumbent", incumbent)):
        c = arm_counts(episodes, v)
        words.append(f"{arm}: {c.autonomous} of {c.episodes} episodes alone, {c.intervened} taken over")
    return "; ".join(words)


def sign_in(chrome: Chrome, token: str) -> None:
    wait_until(lambda: chrome.js("!!(window.fleetloopDashboard || {}).ready"), 20, "the page's script")
    chrome.js(
        f"document.getElementById('operator').value = 'alice'; document.getElementById('token').value = '{token}';"
        " document.getElementById('login-form').requestSubmit()"
    )
    wait_until(lambda: all(r in fleet_row(chrome, r) for r in ROBOTS), 30, "the robots' rows", interval_s=0.2)


def start(fleet: Fleet, versions: ReachVersions) -> tuple[str, int]:
    """The cloud (canary on one robot, decided by hand) and both robots on v1 (early); the operator's token and the
    dashboard's port."""
    alice = add_device(fleet, "alice", "--kind", "operator")
    tokens = {robot: add_device(fleet, robot, "--policy", POLICY) for robot in ROBOTS}
    assert publish(fleet, versions, "early") == 1
    port = free_port()
    fleet.start_cloud("--phone-port", str(port), "--canary", "1", "--canary-episodes", "1000")
    for seed, robot in enumerate(ROBOTS, start=1):
        env = {"FLEETLOOP_TOKEN": tokens[robot]}
        fleet.start_edge(robot, "--operator", "none", robot="sim:point_reach", hz=20, seed=seed, env=env)
    wait_until(lambda: ran(fleet, 1) == set(ROBOTS), 120, "both robots on v1")
    return alice, port


def test_an_operator_sees_a_canary_and_promotes_and_rolls_back_from_the_dashboard(
    tmp_path: Path, fleet: Fleet, reach_versions: ReachVersions
) -> None:
    alice, port = start(fleet, reach_versions)
    assert publish(fleet, reach_versions, "good") == 2
    wait_until(lambda: len(ran(fleet, 2)) == 1, 60, "v2 on its canary robot")
    (canary,) = ran(fleet, 2)
    (other,) = set(ROBOTS) - {canary}

    chrome = open_phone_page(tmp_path / "chromium", f"https://127.0.0.1:{port}/dashboard", trust_the_cloud(fleet))
    try:
        size(chrome, 1280, 800)
        sign_in(chrome, alice)
        wait_until(lambda: f"canary robots: {canary}" in rollout(chrome, 2), 30, "v2's canary", interval_s=0.2)
        assert rollout(chrome, 2).startswith("v2 against v1: canary") and shown_state(chrome, 2) == "canary"
        assert "canary" in fleet_row(chrome, canary) and "incumbent" in fleet_row(chrome, other)
        assert f"{POLICY} v2" in fleet_row(chrome, canary) and f"{POLICY} v1" in fleet_row(chrome, other)
        shows_the_stores_numbers(chrome, fleet)
        assert_pill(chrome, 2, "canary", tmp_path / "rollout-canary.png")

        chrome.js("window.confirm = (question) => { window.__asked = question; return true; }")
        decide(chrome, 2, "promote")
        assert chrome.js("window.__asked") == f"Promote {POLICY} v2? Every robot on {POLICY} gets it."
        wait_until(lambda: state_of(fleet, 2) == "promoted", 30, "the gateway to promote v2")
        assert record_of(fleet, 2)["decided_by"] == "operator"
        assert record_of(fleet, 2)["reason"].startswith("by an operator (dashboard: alice)")
        wait_until(lambda: ran(fleet, 2) == set(ROBOTS), 60, "both robots on v2")
        wait_until(lambda: shown_state(chrome, 2) == "promoted", 30, "the page to show v2 promoted", interval_s=0.2)
        wait_until(lambda: f"{POLICY} v2" in fleet_row(chrome, other), 30, "the other robot's row on v2")
        assert_pill(chrome, 2, "promoted", tmp_path / "rollout-promoted.png")

        assert publish(fleet, reach_versions, "corrupted") == 3
        wait_until(lambda: len(ran(fleet, 3)) == 1, 60, "v3 on its canary robot")
        (canary,) = ran(fleet, 3)
        wait_until(lambda: shown_state(chrome, 3) == "canary", 30, "v3's canary on the page", interval_s=0.2)
        rolled_back_after_asking(chrome, fleet)
        wait_until(lambda: times_ran(fleet, canary, 2) >= 2, 60, f"{canary} back on v2")
        wait_until(lambda: shown_state(chrome, 3) == "rolled back", 30, "the page to show v3 rolled back")
        assert_pill(chrome, 3, "rolled back", tmp_path / "rollout-rolled-back.png")
    finally:
        chrome.close()
    assert ran(fleet, 3) == {canary}, "the rolled back v3 reached another robot"
    assert "policy point_reach v3 rolled back (by an operator (dashboard: alice)" in fleet.log("cloud")


def shows_the_stores_numbers(chrome: Chrome, fleet: Fleet) -> None:
    """With both robots paused from the page (their counts settle), v2's rollout shows each arm's numbers as the
    store's finished episodes give them; then both resume."""
    wait_until(lambda: "canary: no episodes" not in rollout(chrome, 2), 60, "the canary's first episodes")
    for robot in ROBOTS:
        click(chrome, robot, "pause")
    wait_until(lambda: all("paused" in fleet_row(chrome, r) for r in ROBOTS), 20, "both robots paused")
    wait_until(lambda: counts_in_words(fleet, 2, 1) in rollout(chrome, 2), 30, "the store's numbers on the page")
    for robot in ROBOTS:
        click(chrome, robot, "resume")
    wait_until(lambda: not any("paused" in fleet_row(chrome, r) for r in ROBOTS), 20, "both robots running")


def rolled_back_after_asking(chrome: Chrome, fleet: Fleet) -> None:
    """Roll back asks first: declined, nothing goes to the cloud; confirmed, the gateway rolls v3 back."""
    chrome.js(
        "window.__sent = []; const send = socket.send.bind(socket);"
        " socket.send = (data) => { window.__sent.push(JSON.parse(data)); send(data); };"
        " window.confirm = (question) => { window.__asked = question; return false; }"
    )
    decide(chrome, 3, "rollback")
    assert chrome.js("window.__asked") == "Roll back point_reach v3? Its robots go back to the version before it."
    assert chrome.js("window.__sent") == [], "a declined rollback was sent"
    chrome.js("window.confirm = () => true")
    decide(chrome, 3, "rollback")
    sent = chrome.js("window.__sent")
    assert sent == [{"type": "rollout", "policy": POLICY, "version": 3, "decision": "rollback", "confirmed": True}]
    wait_until(lambda: state_of(fleet, 3) == "rolled back", 30, "the gateway to roll v3 back")
    assert record_of(fleet, 3)["decided_by"] == "operator" and state_of(fleet, 2) == "promoted"
