"""The phone page in a real headless Chromium against the real `fleetloop cloud`.

The cloud serves the page on its phone port (plain http/ws on loopback here: no --tls, so no certificate to
trust). Chromium runs with a fake camera, and a stub WebXR (`navigator.xr`, injected before the page's scripts)
whose viewer pose moves in a known way: x = 0.05 m/s * t, y = 0.02, z = 0.5, turning about z by 2x radians.
The test drives the page over the Chrome DevTools Protocol: it pairs, records ~2 s, stops, and checks what
landed in the store (the link is dropped mid-episode: the page reconnects with its token and resends from
IndexedDB), then publishes a `phone` policy, screenshots the page and checks the foresight overlay it draws.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from websockets.sync.client import connect

from cloud.learner import policy_for_schema
from cloud.phone_channel import PhoneChannel
from cloud.registry import PolicyRegistry
from cloud.store import ColumnSpec
from policies.weights import policy_to_bytes
from protocol.steps import schema_for
from tests.e2e.fleet import Fleet, free_port, wait_until
from tests.e2e.test_phone_channel import stored_episodes

HEIGHT, WIDTH = 48, 64
STATUS = "document.getElementById('status').textContent"

STUB_XR = """
(() => {
  const t0 = performance.now();
  const pose = () => {
    const x = 0.05 * (performance.now() - t0) / 1000;
    return { position: { x, y: 0.02, z: 0.5, w: 1 }, orientation: { x: 0, y: 0, z: Math.sin(x), w: Math.cos(x) } };
  };
  window.__stubPoseSamples = 0;
  const session = {
    updateRenderState() {},
    addEventListener() {},
    async requestReferenceSpace() { return {}; },
    requestAnimationFrame(callback) {
      return setTimeout(() => {
        window.__stubPoseSamples++;
        callback(performance.now(), { getViewerPose: () => ({ transform: pose(), views: [] }) });
      }, 16);
    },
  };
  window.XRWebGLLayer = function () {};
  Object.defineProperty(navigator, "xr", { configurable: true, value: {
    async isSessionSupported(mode) { return mode === "immersive-ar"; },
    async requestSession() { return session; },
  } });
})();
"""


class Chrome:
    """Headless Debian chromium, driven over the DevTools Protocol (one page target)."""

    def __init__(self, profile: Path) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        assert binary, "Debian's chromium is missing: scripts/bootstrap.sh installs it (apt-get install chromium)"
        args = [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--ignore-certificate-errors",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=420,720",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=open(profile.parent / "chromium.log", "w")
        )  # noqa: SIM115
        active = profile / "DevToolsActivePort"
        wait_until(lambda: active.exists() and len(active.read_text().split()) == 2, 30, "chromium's DevTools port")
        port = active.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 << 20, open_timeout=10).__enter__()
        self.next_id = 0

    def call(self, method: str, timeout_s: float = 20.0, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == self.next_id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def publish_phone_policy(root: Path) -> None:
    """An untrained CNN over the phone dataset's observations, published as policy `phone` (version 1)."""
    spec = [("image", "|u1", (HEIGHT, WIDTH, 3)), ("pose", "<f4", (7,)), ("gripper", "<f4", (1,))]
    schema = schema_for(spec, ("<f4", (8,)))
    policy = policy_for_schema({k: ColumnSpec(d, s) for k, (d, s) in schema.items()}, hidden=(32,))
    PolicyRegistry(root / "data" / "registry").publish("phone", policy_to_bytes(policy))


def test_phone_page_records_an_episode_with_webxr_pose_and_draws_foresight(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    phone_port = free_port()
    fleet.start_cloud("--phone-port", str(phone_port), "--phone-image", f"{HEIGHT}x{WIDTH}")
    chrome = None
    try:
        urls = lambda: re.findall(r"phone pairing URL: (\S+)", fleet.log("cloud"))  # noqa: E731
        wait_until(urls, 30, "the cloud to print a pairing URL")
        url = urls()[0]
        assert url.startswith(f"http://127.0.0.1:{phone_port}/phone?pair=pair_"), url
        assert PhoneChannel  # the page files ship inside the package
        chrome = Chrome(tmp_path / "chromium-profile")
        chrome.call("Page.enable")
        chrome.call("Page.addScriptToEvaluateOnNewDocument", source=STUB_XR)
        chrome.call("Page.navigate", url=url)

        def state(name: str):
            return chrome.js(f"window.fleetloopPhone && window.fleetloopPhone.{name}")

        wait_until(lambda: state("connected"), 20, "the page to pair", interval_s=0.2)
        assert chrome.js("localStorage.getItem('fleetloop.token')").startswith("flt_")
        assert len(re.findall(r"phone pairing token: (pair_\S+)", fleet.log("cloud"))) == 2  # the first is used up
        wait_until(lambda: chrome.js("document.getElementById('video').videoWidth") > 0, 20, "the fake camera")
        assert "immersive-ar supported" in chrome.js("document.getElementById('xr').textContent")

        foresight = "document.getElementById('foresight').textContent"
        wait_until(lambda: state("foresightVersion") == 0, 20, "a foresight answer", interval_s=0.2)
        assert chrome.js(foresight) == "foresight: no phone policy published yet" and state("foresightDrawn") == 0

        chrome.js("document.getElementById('start').click()")
        time.sleep(1.0)
        chrome.js("window.fleetloopPhone.ws.close()")  # the link drops mid-episode: steps wait in IndexedDB
        time.sleep(1.5)
        pose_hz = chrome.js("window.__stubPoseSamples") / 2.5
        chrome.js("document.getElementById('stop').click()")
        try:
            wait_until(lambda: state("stepsAcked") > 0, 30, "the cloud to ack the episode", interval_s=0.2)
        except AssertionError as err:
            raise AssertionError(f"{err}; the page says: {chrome.js(STATUS)}") from None
        sent, acked = state("stepsSent"), state("stepsAcked")
        assert sent >= 15 and acked == state("seq"), (sent, acked)  # ~2.5 s at 10 Hz, every step acked once
        assert state("connections") >= 2  # it reconnected with its own token and resent what the cloud lacked
        assert pose_hz >= 30, pose_hz  # the viewer pose is read at the XR frame rate, not the step rate
        left = chrome.js(
            "new Promise(r => { const o = indexedDB.open('fleetloop-phone'); o.onsuccess = () => {"
            " const q = o.result.transaction('steps').objectStore('steps').count(); q.onsuccess = () => r(q.result);"
            " }; })"
        )
        assert left == 0, f"{left} steps still in IndexedDB after the ack"

        # ---- the store: one phone episode, source phone, poses as the stub moved them
        episodes = stored_episodes(fleet)
        assert len(episodes) == 1, list(episodes)
        (stored,) = episodes.values()
        record = stored["record"]
        assert (record.source, record.num_steps, record.resource_id) == ("phone", acked, state("phoneId"))
        poses = stored["obs.pose"].astype(np.float64)
        x = poses[:, 0]
        assert np.all(np.diff(x) > 0) and x[-1] - x[0] > 0.05 * 1.2, x  # moving at 0.05 m/s for ~2 s
        np.testing.assert_allclose(poses[:, 1:3], np.tile([0.02, 0.5], (len(x), 1)), atol=1e-6)
        np.testing.assert_allclose(poses[:, 3:5], 0, atol=1e-6)
        np.testing.assert_allclose(poses[:, 5], np.sin(x), atol=1e-5)  # turning about z by 2x rad: qz = sin(x)
        np.testing.assert_allclose(poses[:, 6], np.cos(x), atol=1e-5)
        np.testing.assert_allclose(stored["obs.gripper"], 0.05, atol=1e-6)  # the slider's default
        assert np.all(np.diff(stored["t_mono_ns"]) > 0)
        images = stored["obs.image"]
        assert images.shape == (acked, HEIGHT, WIDTH, 3) and images.std() > 5  # the fake camera's frames, not blank

        # ---- foresight: once a phone policy is published, v1 answers and its predicted point is drawn over the view
        publish_phone_policy(tmp_path)
        wait_until(lambda: (state("foresightDrawn") or 0) > 0, 20, "a foresight trajectory drawn", interval_s=0.2)
        assert state("foresightVersion") == 1
        foresight = chrome.js(foresight)
        assert foresight.startswith("foresight: policy phone v1,"), foresight
        status = chrome.js("document.getElementById('status').textContent")
        assert "connected (paired)" in status and f"acked {acked}" in status and "pose WebXR" in status, status
        shot = base64.b64decode(chrome.call("Page.captureScreenshot", format="png")["data"])
        path = tmp_path / "phone-page.png"
        path.write_bytes(shot)
        if os.environ.get("FLEETLOOP_SCREENSHOT_DIR"):
            Path(os.environ["FLEETLOOP_SCREENSHOT_DIR"], "phone-page.png").write_bytes(shot)
        box = chrome.js("JSON.stringify(document.getElementById('overlay').getBoundingClientRect())")
        box = json.loads(box)
        pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
        region = pixels[int(box["top"]) : int(box["bottom"]), int(box["left"]) : int(box["right"])]
        magenta = (region[..., 0] > 200) & (region[..., 1] < 80) & (region[..., 2] > 200)
        assert magenta.sum() >= 50, f"no foresight overlay pixels in {path}"
        print(f"screenshot: {path}\nstatus:\n{status}\n{foresight}")
    finally:
        if chrome is not None:
            chrome.close()
        fleet.stop_all()
