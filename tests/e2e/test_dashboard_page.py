"""The fleet dashboard in a real headless Chromium against the real `fleetloop cloud` and `fleetloop edge`.

The store holds a dataset of finished episodes under three policy versions (written before the cloud starts) and a
simulated Panda runs with no policy. An operator signs in on ``/dashboard`` with its credential; the test checks,
on screenshots at a laptop's and a tablet's size, that the robot's fleet row is drawn and that the learning curve's
points sit where the store's numbers put them (the pixels under each point are the curve's colour); then it pauses
and resumes the robot, sends it an emergency stop (at once) and releases it (after the page asked to confirm), each
reaching the robot's own log, and opens an episode in the browser. Without a credential, or from another site's
page, the websocket is refused, and so is a stop the page did not confirm.
"""

from __future__ import annotations

import base64
import io
import json
import ssl
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from websockets.sync.client import connect

from cloud.channels.dashboard_views import version_curve
from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
from cloud.learning.tracking import TensorBoardTracker
from protocol.steps import schema_for
from tests.e2e.fleet import Fleet, free_port, wait_until
from tests.e2e.test_phone_page import Chrome, open_phone_page, trust_the_cloud
from tests.e2e.test_takeover_page import add_device
from tests.factories import step_columns

DATASET = "curve_demo"
SUCCESS_GREEN = (0x1F, 0x8A, 0x4C)
# (version, succeeded alone, steps a person drove) per finished episode: 1/4, 2/4 and 4/4 autonomous successes
EPISODES = [(1, True, 0), (1, False, 0), (1, True, 3), (1, False, 5)]
EPISODES += [(2, True, 0), (2, True, 0), (2, False, 0), (2, True, 2)]
EPISODES += [(3, True, 0), (3, True, 0), (3, True, 0), (3, True, 0)]


def seed_store(root: Path) -> list[dict]:
    """Writes the dataset's episodes (10 steps each, a 16x16 camera) into the cloud's store and 20 rounds of training
    loss into its TensorBoard run; its curve as the dashboard's own code computes it from the store, to compare with
    what the page draws."""
    spec = [("state", "<f4", (3,)), ("cam", "|u1", (16, 16, 3))]
    schema = {name: ColumnSpec(dtype, shape) for name, (dtype, shape) in schema_for(spec, ("<f4", (2,))).items()}
    with EpisodeStore(root / "store") as store:
        store.ensure_dataset(DATASET, schema)
        for i, (version, success, driven) in enumerate(EPISODES):
            columns = step_columns(10, intervention=np.arange(10) < driven, done_at_end=True, policy_version=version)
            columns["success"] = np.arange(10) == 9 if success else np.zeros(10, bool)
            columns["action"] = np.linspace(-1, 1, 20, dtype=np.float32).reshape(10, 2)
            columns["obs.cam"] = np.full((10, 16, 16, 3), 40 * (i % 6), np.uint8)
            store.write([StepRows(DATASET, f"ep{i}", "seeded", "sim", DATASET, 0, columns)])
        curve = version_curve(store.episodes(DATASET))
    tracker = TensorBoardTracker(root / "runs" / DATASET)  # as the learner logs its rounds
    for step in range(1, 21):
        tracker.log_scalars(step * 50, {"train/loss": 2.0 / step})
    tracker.close()
    return curve


def screenshot(chrome: Chrome, path: Path) -> Image.Image:
    shot = base64.b64decode(chrome.call("Page.captureScreenshot", format="png")["data"])
    path.write_bytes(shot)
    return Image.open(io.BytesIO(shot)).convert("RGB")


def size(chrome: Chrome, width: int, height: int) -> None:
    chrome.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)


def fleet_row(chrome: Chrome, robot: str) -> str:
    return chrome.js(f"(document.querySelector('#fleet tr[data-robot=\"{robot}\"]') || {{}}).textContent || ''")


def click(chrome: Chrome, robot: str, action: str) -> None:
    chrome.js(f'document.querySelector(\'#fleet tr[data-robot="{robot}"] button[data-action="{action}"]\').click()')


def curve_points(chrome: Chrome) -> list[dict]:
    """The success curve's points: version, value, and their centres on the screen (scrolled into view first)."""
    chrome.js(f"document.querySelector('[data-policy=\"{DATASET}\"]').scrollIntoView()")
    return chrome.js(
        f'[...document.querySelectorAll(\'[data-policy="{DATASET}"] circle[data-series="success"]\')].map(c => {{'
        " const r = c.getBoundingClientRect();"
        " return {version: +c.dataset.version, value: +c.dataset.value, x: r.x + r.width / 2, y: r.y + r.height / 2};"
        " })"
    )


def assert_drawn(shot: Image.Image, points: list[dict]) -> None:
    for point in points:
        pixel = shot.getpixel((round(point["x"]), round(point["y"])))
        assert max(abs(a - b) for a, b in zip(pixel, SUCCESS_GREEN, strict=True)) < 40, (point, pixel)
    ys = [p["y"] for p in sorted(points, key=lambda p: p["value"])]
    assert ys == sorted(ys, reverse=True), "a higher success is not drawn higher"


def test_the_dashboard_shows_fleet_and_curves_and_its_commands_reach_the_robot(tmp_path: Path, fleet: Fleet) -> None:
    curve = seed_store(fleet.root / "data")
    assert [p["successes"] for p in curve] == [1, 2, 4]
    alice = add_device(fleet, "alice", "--kind", "operator")
    robot = add_device(fleet, "robot-1", "--policy", "panda_pick_cube")
    port = free_port()
    fleet.start_cloud("--phone-port", str(port))
    fleet.start_edge("robot-1", "--operator", "none", hz=10.0, env={"FLEETLOOP_TOKEN": robot})
    wait_until(lambda: "robot-1 connected" in fleet.log("cloud"), 60, "the robot to connect")
    assert f"fleet dashboard (operator credential) at https://127.0.0.1:{port}/dashboard" in fleet.log("cloud")
    refused_without_a_credential(fleet, port, alice)

    chrome = open_phone_page(tmp_path / "chromium", f"https://127.0.0.1:{port}/dashboard", trust_the_cloud(fleet))
    try:
        size(chrome, 1280, 800)
        wait_until(lambda: chrome.js("!!(window.fleetloopDashboard || {}).ready"), 20, "the page's script")
        chrome.js(
            f"document.getElementById('operator').value = 'alice'; document.getElementById('token').value = '{alice}';"
            " document.getElementById('login-form').requestSubmit()"
        )
        wait_until(lambda: "robot-1" in fleet_row(chrome, "robot-1"), 30, "robot-1's row", interval_s=0.2)
        assert chrome.js("document.getElementById('status').textContent") == "signed in as alice"
        assert "panda_pick_cube" in fleet_row(chrome, "robot-1")
        wait_until(lambda: len(curve_points(chrome)) == 3, 20, "the learning curve", interval_s=0.2)
        points = curve_points(chrome)
        assert [(p["version"], p["value"]) for p in points] == [(p["version"], p["success"]) for p in curve]
        assert_drawn(screenshot(chrome, tmp_path / "dashboard-laptop.png"), points)
        loss = f'[data-policy="{DATASET}"] svg[data-chart=loss] polyline[data-series=loss]'
        assert chrome.js(f"document.querySelector('{loss}').getAttribute('points').split(' ').length") == 20

        chrome.js("window.scrollTo(0, 0)")
        click(chrome, "robot-1", "pause")
        wait_until(lambda: "paused by the operator" in fleet.log("robot-1"), 20, "the robot to pause")
        wait_until(lambda: "paused" in fleet_row(chrome, "robot-1"), 10, "the row to say paused", interval_s=0.2)
        click(chrome, "robot-1", "resume")
        wait_until(lambda: "paused" not in fleet_row(chrome, "robot-1"), 10, "the row to resume", interval_s=0.2)
        chrome.js("window.confirm = (question) => { window.__asked = question; return true; }")
        click(chrome, "robot-1", "estop")  # at once: no question before an emergency stop
        wait_until(lambda: "EMERGENCY STOP (dashboard: alice)" in fleet.log("robot-1"), 20, "the emergency stop")
        assert chrome.js("window.__asked === undefined")
        wait_until(lambda: "e-stopped" in fleet_row(chrome, "robot-1"), 10, "the row to say e-stopped", interval_s=0.2)
        click(chrome, "robot-1", "release")
        assert chrome.js("window.__asked") == "release robot-1? This lets it move again after its emergency stop."
        wait_until(lambda: "emergency stop released" in fleet.log("robot-1"), 20, "the release")

        chrome.js(f"const s = document.getElementById('dataset'); s.value = '{DATASET}'; s.onchange()")
        wait_until(
            lambda: chrome.js("document.querySelectorAll('#episodes-list tr[data-episode]').length") == 12,
            20,
            "the list",
        )
        chrome.js("document.querySelector('#episodes-list tr[data-episode=\"ep11\"]').click()")
        wait_until(lambda: chrome.js("document.querySelectorAll('#episode img').length") == 10, 20, "its frames")
        assert chrome.js("document.querySelector('#episode h3').textContent").startswith("ep11: success, 10 steps")

        size(chrome, 820, 1180)  # a tablet, upright: the same rows and curve, one column
        points = curve_points(chrome)
        assert_drawn(screenshot(chrome, tmp_path / "dashboard-tablet.png"), points)
        assert (
            chrome.js("document.querySelector('#fleet tr[data-robot=\"robot-1\"]').getBoundingClientRect().width") > 0
        )
    finally:
        chrome.close()
    assert "operator alice on the dashboard: pause robot-1: robot-1 is now paused" in fleet.log("cloud")


def refused_without_a_credential(fleet: Fleet, port: int, alice: str) -> None:
    """A wrong token gets an error naming the field and a closed socket; another site's page never gets to a hello;
    a stop the page did not confirm is refused."""
    context = ssl.create_default_context(cafile=fleet.root / "data" / "certs" / "ca.pem")
    url = f"wss://127.0.0.1:{port}/dashboard/ws"
    with connect(url, ssl=context, server_hostname="127.0.0.1") as ws:
        ws.send(json.dumps({"type": "hello", "operator": "alice", "token": "flt_not-the-token"}))
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "error" and reply["field"].startswith("hello."), reply
    with connect(url, ssl=context, server_hostname="127.0.0.1", origin="https://elsewhere.example") as ws:
        with pytest.raises(Exception, match="origin"):
            ws.send(json.dumps({"type": "hello", "operator": "alice", "token": alice}))
            ws.recv(timeout=10)
    with connect(url, ssl=context, server_hostname="127.0.0.1") as ws:
        ws.send(json.dumps({"type": "hello", "operator": "alice", "token": alice}))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        ws.send(json.dumps({"type": "command", "action": "stop", "robot": "robot-1"}))
        while (reply := json.loads(ws.recv(timeout=10)))["type"] == "fleet":
            pass
        assert reply == {
            "type": "error",
            "field": "confirmed",
            "message": "stop robot-1: the page must ask the person to confirm first",
        }
        ws.send(
            json.dumps(
                {"type": "rollout", "policy": "panda_pick_cube", "version": 1, "decision": "promote", "confirmed": True}
            )
        )
        while (reply := json.loads(ws.recv(timeout=10)))["type"] == "fleet":
            pass
        assert reply["field"] == "rollout" and "--canary" in reply["message"]  # this cloud runs no canaries
    assert "on the dashboard: stop robot-1" not in fleet.log("cloud")  # refused: never carried out
