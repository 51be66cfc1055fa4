"""A robot's takeover page in a real headless Chromium against the real `fleetloop cloud` and `fleetloop edge`.

An operator credential (`fleetloop devices add alice --kind operator`) signs in on the page of a simulated Panda
(`--operator none`, no policy: it holds until someone drives). Chrome DevTools Protocol key events take over
(space), move it (arrow up: action dimension 0, the end effector's +x), and hand back; a gamepad (the Gamepad API,
stubbed before the page's scripts) and a phone's pose (a stubbed WebXR session whose viewer moves away from the
person, with the clutch held) drive it too. The store then holds those steps as interventions by browser:alice.
Last, the page is closed mid-takeover (the browser killed while an arrow key is down): the robot records no step
later than its watchdog's deadline after the close, and says it holds.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cloud.data.store import EpisodeStore
from tests.e2e.fleet import Fleet, free_port, wait_until
from tests.e2e.test_phone_page import Chrome, open_phone_page, trust_the_cloud

HZ = 10.0
WATCHDOG_S = max(0.25, 3 / HZ)  # `fleetloop edge`'s default: a person's stale action holds the robot after this
TCP_X = 15  # panda_pick_cube state: the end effector's x
KEYS = {" ": ("Space", 32), "ArrowUp": ("ArrowUp", 38), "ArrowLeft": ("ArrowLeft", 37)}

# A gamepad whose left stick is pushed up (axis 1 = -1), and a WebXR session whose viewer moves away from the
# person (-z, 0.1 m/s) from the moment it starts: both before the page's own scripts.
STUB_INPUTS = """
(() => {
  const buttons = Array.from({ length: 16 }, () => ({ pressed: false, value: 0 }));
  window.__pad = { id: "stub pad", connected: true, axes: [0, 0, 0, 0], buttons };
  navigator.getGamepads = () => [window.__pad];
  const t0 = performance.now();
  const session = {
    updateRenderState() {}, addEventListener() {},
    async requestReferenceSpace() { return {}; },
    requestAnimationFrame(callback) {
      const position = () => ({ x: 0, y: 0, z: -0.1 * (performance.now() - t0) / 1000 });
      const pose = () => ({ transform: { position: position(), orientation: { x: 0, y: 0, z: 0, w: 1 } } });
      return setTimeout(() => callback(performance.now(), { getViewerPose: pose }), 16);
    },
  };
  window.XRWebGLLayer = function () {};
  Object.defineProperty(navigator, "xr", { configurable: true, value: {
    async isSessionSupported(mode) { return mode === "immersive-ar"; },
    async requestSession() { return session; },
  } });
})();
"""


def add_device(fleet: Fleet, name: str, *extra: str) -> str:
    """`fleetloop devices add` on the fleet's data folder; the token it printed."""
    out = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", "devices", "add", name, "--root", str(fleet.root / "data"), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return re.findall(r"flt_[A-Za-z0-9_\-]+", out.stdout)[0]


def press(chrome: Chrome, key: str, down: bool = True, up: bool = True) -> None:
    """A key event through CDP (Input.dispatchKeyEvent), as a keyboard gives the focused page."""
    code, vk = KEYS[key]
    text = {"text": key} if key == " " else {}
    if down:
        chrome.call("Input.dispatchKeyEvent", type="keyDown", key=key, code=code, windowsVirtualKeyCode=vk, **text)
    if up:
        chrome.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=code, windowsVirtualKeyCode=vk)


def page(chrome: Chrome, name: str):
    return chrome.js(f"window.fleetloopTakeover && window.fleetloopTakeover.{name}")


def view(chrome: Chrome, name: str):
    return chrome.js(f"(window.fleetloopTakeover.view || {{}}).{name}")


def screenshot(chrome: Chrome, path: Path) -> None:
    """The page as a PNG (also into $FLEETLOOP_SCREENSHOT_DIR when set, to look at)."""
    shot = base64.b64decode(chrome.call("Page.captureScreenshot", format="png")["data"])
    path.write_bytes(shot)
    if os.environ.get("FLEETLOOP_SCREENSHOT_DIR"):
        Path(os.environ["FLEETLOOP_SCREENSHOT_DIR"], path.name).write_bytes(shot)


def choose_input(chrome: Chrome, mode: str) -> None:
    chrome.js(f"(() => {{ const s = document.getElementById('input'); s.value = '{mode}'; s.onchange(); }})()")


def drive(chrome: Chrome, key: str, seconds: float) -> tuple[float, float]:
    """Takes over, holds ``key`` for ``seconds``, hands back; the end effector's x before and after."""
    x0 = view(chrome, "state.state")[TCP_X]
    press(chrome, " ")
    wait_until(lambda: view(chrome, "controller") == "browser:alice", 10, "the page to drive", interval_s=0.1)
    press(chrome, key, up=False)
    time.sleep(seconds)
    press(chrome, key, down=False)
    x1 = view(chrome, "state.state")[TCP_X]
    press(chrome, " ")
    wait_until(lambda: view(chrome, "controller") == "", 10, "the page to hand back", interval_s=0.1)
    return x0, x1


def stored_interventions(fleet: Fleet) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(actions, t_mono_ns) of robot-1's intervention steps in seq order, and who drove each."""
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    rows = store.read("panda_pick_cube", ["episode_index", "seq", "intervention", "action", "t_mono_ns"])
    (episode,) = store.episodes("panda_pick_cube")  # no policy, no success: one episode still open
    drivers = store.drivers("panda_pick_cube", episode.episode_id)
    order = np.argsort(rows["seq"])
    mask = rows["intervention"][order]
    assert set(rows["seq"][order][mask].tolist()) == set(drivers), "an intervention step without its driver"
    return rows["action"][order][mask], rows["t_mono_ns"][order][mask], drivers


def test_a_person_drives_from_the_page_and_the_robot_holds_when_the_page_closes(tmp_path: Path, fleet: Fleet) -> None:
    alice, robot = (
        add_device(fleet, "alice", "--kind", "operator"),
        add_device(fleet, "robot-1", "--policy", "panda_pick_cube"),
    )
    phone_port = free_port()
    fleet.start_cloud("--phone-port", str(phone_port))
    fleet.start_edge("robot-1", "--operator", "none", hz=HZ, env={"FLEETLOOP_TOKEN": robot})
    wait_until(lambda: "robot-1 connected" in fleet.log("cloud"), 60, "the robot to connect")
    url = f"https://127.0.0.1:{phone_port}/takeover/robot-1"
    assert f"robot takeover pages (operator credential) at https://127.0.0.1:{phone_port}/takeover/" in fleet.log(
        "cloud"
    )
    chrome = open_phone_page(tmp_path / "chromium", url, trust_the_cloud(fleet), before_page=STUB_INPUTS)
    try:
        signin = "(document.getElementById('login') || {style: {}}).style.display"
        wait_until(lambda: chrome.js(signin) == "block", 20, "the page to ask to sign in")
        chrome.js(
            f"document.getElementById('operator').value = 'alice'; document.getElementById('token').value = '{alice}';"
            " document.getElementById('signin').click()"
        )
        wait_until(lambda: (page(chrome, "views") or 0) > 2, 30, "live views on the page", interval_s=0.2)
        assert page(chrome, "who") == "browser:alice" and page(chrome, "robot.action.shape") == [4]
        assert "no policy yet" in view(chrome, "note")  # nobody drives: it holds
        assert chrome.js("localStorage.getItem('fleetloop.operator_token')") == alice

        x0, x1 = drive(chrome, "ArrowUp", 1.5)
        screenshot(chrome, tmp_path / "takeover-page.png")
        assert x1 - x0 > 0.05, (x0, x1)  # 0.5 of 2.5 cm a tick at 10 Hz: about 18 cm in 1.5 s
        driver = chrome.js("document.getElementById('driver').textContent")
        assert driver.startswith("nobody drives robot-1 (holding: no policy yet"), driver

        choose_input(chrome, "gamepad")
        chrome.js("window.__pad.axes[1] = -1")  # left stick up: dimension 0 forward
        press(chrome, " ")
        wait_until(lambda: (view(chrome, "applied") or [0])[0] > 0.4, 10, "the gamepad to drive", interval_s=0.1)
        chrome.js("window.__pad.axes[1] = 0")
        press(chrome, " ")

        choose_input(chrome, "pose")
        wait_until(lambda: page(chrome, "xrActive"), 10, "the WebXR session")
        press(chrome, " ")
        chrome.js("document.getElementById('clutch').onpointerdown()")  # the phone moves away from the person: +x
        wait_until(lambda: (view(chrome, "applied") or [0])[0] > 0.2, 10, "the phone's pose to drive", interval_s=0.1)
        chrome.js("document.getElementById('clutch').onpointerup()")
        press(chrome, " ")
        wait_until(lambda: view(chrome, "controller") == "", 10, "the page to hand back", interval_s=0.1)
        choose_input(chrome, "keyboard")

        # Closing the page mid-takeover: the browser dies while it drives; the robot holds.
        press(chrome, " ")
        press(chrome, "ArrowLeft", up=False)
        wait_until(lambda: (view(chrome, "applied") or [0, 0])[1] > 0.4, 10, "the page to drive left", interval_s=0.1)
    finally:
        closed_ns = time.monotonic_ns()
        chrome.close()
    wait_until(lambda: "closed the takeover page of robot-1" in fleet.log("cloud"), 10, "the cloud to see it closed")
    time.sleep(2 * WATCHDOG_S + 1.0)
    assert "browser:alice closed the takeover page while driving; the robot holds" in fleet.log("robot-1")
    assert fleet.stop("robot-1") == 0
    actions, times, drivers = stored_interventions(fleet)
    # 1.5 s of ArrowUp at 10 Hz, then the gamepad, the pose and ArrowLeft until each moved the robot: about 20 steps
    # here, fewer on a loaded machine (each stretch ends once the page sees the robot move), all of them alice's.
    assert set(drivers.values()) == {"browser:alice"} and len(drivers) >= 12, len(drivers)
    np.testing.assert_allclose(actions[:, 0].max(), 0.5, atol=1e-6)  # ArrowUp at speed 0.5, gamepad and pose alike
    assert (actions[:, 1] == 0.5).any()  # ArrowLeft before the close
    after_close_s = (times.max() - closed_ns) / 1e9
    assert after_close_s < WATCHDOG_S + 1 / HZ, f"a step {after_close_s:.2f} s after the page closed"
    print(f"{len(drivers)} steps driven by browser:alice; the last one {after_close_s * 1000:.0f} ms after the close")
