"""The phone page in a real headless Chromium against the real `fleetloop cloud`.

The cloud serves the page on its phone port, always over HTTPS (browsers give the camera and WebXR only to
secure pages, and a phone is never on loopback): with the certificates of `fleetloop certs init` when present,
else with a CA and server certificate it makes at its first start. Chromium trusts only that server certificate
(--ignore-certificate-errors-spki-list with its public key's hash).

The first test: certificates made at first start. Chromium runs with a fake camera, and a stub WebXR
(`navigator.xr`, injected before the page's scripts) whose viewer pose moves in a known way: x = 0.05 m/s * t,
y = 0.02, z = 0.5, turning about z by 2x radians, and a camera image (raw camera access: a texture in the page's
WebGL context, red over blue) the page reads during the XR frame. The test drives the page over the Chrome
DevTools Protocol: it pairs, records ~2 s, stops, and checks what landed in the store (the link is dropped
mid-episode: the page reconnects with its token and resends from IndexedDB), then publishes a `phone` policy,
screenshots the page and checks the foresight overlay it draws.

The second: `fleetloop certs init` first, then `--tls`: the page over https and wss with those certificates, no
WebXR stub (immersive-ar unsupported): camera and gripper with the identity pose, and a discarded episode.

The third: the cloud's learner trains the `phone` policy on the page's demonstrations, scores a later
demonstration against that policy's foresight, weights it by the error, and each new version reaches the page.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from PIL import Image
from websockets.sync.client import connect

from cloud.channels.phone_channel import PhoneChannel
from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import ColumnSpec
from cloud.learning.policy_choice import policy_for_schema
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
        const views = [{ camera: { width: 64, height: 48 } }];  // raw camera access: this view has a camera
        callback(performance.now(), { getViewerPose: () => ({ transform: pose(), views }) });
      }, 16);
    },
  };
  window.XRWebGLLayer = function () {};
  // The session's camera image: a texture in the page's own WebGL context, top half red, bottom half blue.
  window.__stubCameraImages = 0;
  window.XRWebGLBinding = function (session, gl) {
    const texture = gl.createTexture();
    this.getCameraImage = (camera) => {
      const { width, height } = camera, data = new Uint8Array(width * height * 4);
      for (let i = 0; i < width * height; i++) {
        data.set(i < width * height / 2 ? [220, 30, 30, 255] : [30, 30, 220, 255], i * 4);
      }
      gl.bindTexture(gl.TEXTURE_2D, texture);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, width, height, 0, gl.RGBA, gl.UNSIGNED_BYTE, data);
      window.__stubCameraImages++;
      return texture;
    };
  };
  Object.defineProperty(navigator, "xr", { configurable: true, value: {
    async isSessionSupported(mode) {  // answers late, as a real XR runtime may: the hello has to wait for it
      await new Promise((resolve) => setTimeout(resolve, 300));
      return mode === "immersive-ar";
    },
    async requestSession() { return session; },
  } });
})();
"""


class Chrome:
    """Headless Debian chromium, driven over the DevTools Protocol (one page target)."""

    def __init__(self, profile: Path, *flags: str) -> None:
        """``flags``: more chromium switches (e.g. which server certificate to trust)."""
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
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=420,720",
            *flags,
            "about:blank",
        ]
        self.log = open(profile.parent / f"{profile.name}.log", "w")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)
        self.ws = None
        try:
            active = profile / "DevToolsActivePort"
            wait_until(lambda: active.exists() and len(active.read_text().split()) == 2, 30, "chromium's DevTools")
            port = active.read_text().split()[0]
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            page = next(t for t in targets if t["type"] == "page")
            self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 << 20, open_timeout=10).__enter__()
        except BaseException:
            self.close()
            raise
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

    def phone(self, name: str):
        """A field of the page's state (``window.fleetloopPhone``); None before the page's script ran."""
        return self.js(f"window.fleetloopPhone && window.fleetloopPhone.{name}")

    def close(self) -> None:
        try:
            if self.ws is not None:
                self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.log.close()


def pairing_url(fleet: Fleet) -> str:
    """The phone pairing URL `fleetloop cloud` printed first."""
    urls = lambda: re.findall(r"phone pairing URL: (\S+)", fleet.log("cloud"))  # noqa: E731
    wait_until(urls, 30, "the cloud to print a pairing URL")
    return urls()[0]


def open_phone_page(profile: Path, url: str, *flags: str, before_page: str = "") -> Chrome:
    """Chromium (with ``flags``) on ``url``; ``before_page``: a script run in the page before its own scripts."""
    chrome = Chrome(profile, *flags)
    try:
        chrome.call("Page.enable")
        if before_page:
            chrome.call("Page.addScriptToEvaluateOnNewDocument", source=before_page)
        chrome.call("Page.navigate", url=url)
    except BaseException:
        chrome.close()
        raise
    return chrome


def wait_paired(chrome: Chrome, fleet: Fleet) -> None:
    """The page paired with the pairing token from the URL and keeps its own credential; the token is used up."""
    wait_until(lambda: chrome.phone("connected"), 20, "the page to pair", interval_s=0.2)
    assert chrome.js("localStorage.getItem('fleetloop.token')").startswith("flt_")
    assert len(re.findall(r"phone pairing token: (pair_\S+)", fleet.log("cloud"))) == 2  # the first is used up
    wait_until(lambda: chrome.js("document.getElementById('video').videoWidth") > 0, 20, "the fake camera")


@contextmanager
def recording(chrome: Chrome) -> Iterator[None]:
    """Presses Start, runs the body (the episode being recorded), presses Stop and waits for the cloud's ack."""
    acked_before = chrome.phone("stepsAcked")
    chrome.js("document.getElementById('start').click()")
    yield
    chrome.js("document.getElementById('stop').click()")
    try:
        acked = lambda: chrome.phone("stepsAcked") > acked_before  # noqa: E731
        wait_until(acked, 30, "the cloud to ack the episode", interval_s=0.2)
    except AssertionError as err:
        raise AssertionError(f"{err}; the page says: {chrome.js(STATUS)}") from None


def steps_in_indexeddb(chrome: Chrome) -> int:
    """Steps the page still keeps (it forgets an episode's steps at its ack or discard)."""
    return chrome.js(
        "new Promise(r => { const o = indexedDB.open('fleetloop-phone'); o.onsuccess = () => {"
        " const q = o.result.transaction('steps').objectStore('steps').count(); q.onsuccess = () => r(q.result);"
        " }; })"
    )


def publish_phone_policy(root: Path) -> None:
    """An untrained CNN over the phone dataset's observations, published as policy `phone` (version 1)."""
    spec = [("image", "|u1", (HEIGHT, WIDTH, 3)), ("pose", "<f4", (7,)), ("gripper", "<f4", (1,))]
    schema = schema_for(spec, ("<f4", (8,)))
    policy = policy_for_schema({k: ColumnSpec(d, s) for k, (d, s) in schema.items()}, hidden=(32,))
    signing_registry(DataLayout(root / "data")).publish("phone", policy_to_bytes(policy))


def test_phone_page_records_an_episode_with_webxr_pose_and_draws_foresight(tmp_path: Path, fleet: Fleet) -> None:
    phone_port = free_port()
    fleet.start_cloud("--phone-port", str(phone_port), "--phone-image", f"{HEIGHT}x{WIDTH}")
    chrome = None
    try:
        url = pairing_url(fleet)
        assert url.startswith(f"https://127.0.0.1:{phone_port}/phone?pair=pair_"), url  # always HTTPS
        assert "made a CA and a server certificate for the phone page" in fleet.log("cloud")  # at first start
        assert PhoneChannel  # the page files ship inside the package
        chrome = open_phone_page(tmp_path / "chromium-profile", url, trust_the_cloud(fleet), before_page=STUB_XR)
        state = chrome.phone
        wait_paired(chrome, fleet)
        assert state("poseTracked") is True  # its hello said "pose": true, after WebXR's (late) answer
        assert "no pose tracking" not in fleet.log("cloud")
        assert "immersive-ar supported" in chrome.js("document.getElementById('xr').textContent")

        foresight = "document.getElementById('foresight').textContent"
        wait_until(lambda: state("foresightVersion") == 0, 20, "a foresight answer", interval_s=0.2)
        assert chrome.js(foresight) == "foresight: no phone policy published yet" and state("foresightDrawn") == 0

        with recording(chrome):
            time.sleep(1.0)
            chrome.js("window.fleetloopPhone.ws.close()")  # the link drops mid-episode: steps wait in IndexedDB
            time.sleep(1.5)
            pose_hz = chrome.js("window.__stubPoseSamples") / 2.5
        sent, acked = state("stepsSent"), state("stepsAcked")
        assert sent >= 15 and acked == state("seq"), (sent, acked)  # ~2.5 s at 10 Hz, every step acked once
        assert state("connections") >= 2  # it reconnected with its own token and resent what the cloud lacked
        assert pose_hz >= 30, pose_hz  # the viewer pose is read at the XR frame rate, not the step rate
        left = steps_in_indexeddb(chrome)
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
        images = stored["obs.image"].astype(float)
        assert images.shape == (acked, HEIGHT, WIDTH, 3)
        # The frames came from the XR session's camera (red over blue), not from getUserMedia's fake camera.
        np.testing.assert_allclose(images[:, 4 : HEIGHT // 2 - 4].mean(axis=(0, 1, 2)), [220, 30, 30], atol=20)
        np.testing.assert_allclose(images[:, HEIGHT // 2 + 4 : -4].mean(axis=(0, 1, 2)), [30, 30, 220], atol=20)
        assert chrome.js("window.__stubCameraImages") >= acked

        # ---- foresight: once a phone policy is published, v1 answers and its predicted point is drawn over the view
        publish_phone_policy(tmp_path)
        wait_until(lambda: (state("foresightDrawn") or 0) > 0, 20, "a foresight trajectory drawn", interval_s=0.2)
        assert state("foresightVersion") == 1
        foresight = chrome.js(foresight)
        assert foresight.startswith("foresight: policy phone v1,"), foresight
        status = chrome.js("document.getElementById('status').textContent")
        assert "connected (paired)" in status and f"acked {acked}" in status and "pose WebXR" in status, status
        assert "camera: XR session" in status, status
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


def trust_the_cloud(fleet: Fleet) -> str:
    """The chromium flag that trusts the cloud's server certificate, and only it."""
    return f"--ignore-certificate-errors-spki-list={spki_sha256(fleet.root / 'data' / 'certs' / 'server.pem')}"


def spki_sha256(cert_pem: Path) -> str:
    """base64(sha256(the certificate's SubjectPublicKeyInfo, DER)): what chromium's
    --ignore-certificate-errors-spki-list names a certificate it should trust by."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_phone_page_over_https_without_webxr_records_camera_and_gripper_with_the_identity_pose(
    tmp_path: Path, fleet: Fleet
) -> None:
    """`fleetloop cloud --tls`: the page over https and its websocket over wss, in a browser without WebXR pose.

    Chromium trusts only the cloud's server certificate (--ignore-certificate-errors-spki-list with its public
    key's hash; no blanket --ignore-certificate-errors). No WebXR stub: headless chromium does expose
    `navigator.xr` in a secure context, but `isSessionSupported("immersive-ar")` answers false (no AR runtime on
    desktop Linux), so the page says so and its hello says `"pose": false`. Nothing is injected into the page;
    should a chromium ever report immersive-ar supported here, the test fails on the #xr text. The page records
    ~1.5 s with the gripper slider moved off its default: the store holds camera frames, the identity pose, and
    that gripper value.
    """
    root = tmp_path / "data"
    created = subprocess.run(
        [sys.executable, "-m", "fleetloop.cli", "certs", "init", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    certs = root / "certs"
    phone_port = free_port()
    fleet.start_cloud("--tls", "--phone-port", str(phone_port), "--phone-image", f"{HEIGHT}x{WIDTH}")
    chrome = None
    try:
        url = pairing_url(fleet)
        assert url.startswith(f"https://127.0.0.1:{phone_port}/phone?pair=pair_"), url

        # Without chromium: plain http to the TLS port gets no page; https with the cloud's CA does.
        page = f"127.0.0.1:{phone_port}/phone"
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://{page}", timeout=5)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # a private CA: not trusted
            urllib.request.urlopen(f"https://{page}", timeout=5)
        trusted = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        with urllib.request.urlopen(f"https://{page}", timeout=5, context=trusted) as answer:
            assert answer.status == 200 and answer.headers.get_content_type() == "text/html"
            assert "<title>fleetloop phone</title>" in answer.read().decode()
        with urllib.request.urlopen(f"https://{page}/ca.pem", timeout=5, context=trusted) as answer:
            assert answer.read() == (certs / "ca.pem").read_bytes()  # what a phone installs to trust the cloud
        assert f"installs its CA from https://127.0.0.1:{phone_port}/phone/ca.pem" in fleet.log("cloud")
        assert "made a CA" not in fleet.log("cloud")  # certs init's certificates were there: no new ones

        chrome = open_phone_page(tmp_path / "chromium-profile", url, trust_the_cloud(fleet))
        state = chrome.phone
        wait_paired(chrome, fleet)
        assert chrome.js("location.protocol") == "https:"
        assert chrome.js("window.fleetloopPhone.ws.url").startswith(f"wss://127.0.0.1:{phone_port}/")
        xr = chrome.js("document.getElementById('xr').textContent")
        assert ("NOT supported" in xr or "not available" in xr) and "identity pose" in xr, xr
        assert state("xrSupported") is False and state("poseTracked") is False  # its hello said "pose": false
        phone_id = state("phoneId")
        no_pose = rf"{re.escape(phone_id)} connected \(phone.*no pose tracking \(no WebXR\)"
        phone_log = [line for line in fleet.log("cloud").splitlines() if "fleetloop.phone" in line]
        assert any(re.search(no_pose, line) for line in phone_log), phone_log

        grip = 0.023  # the slider's default is 0.05
        chrome.js(
            "(() => { const g = document.getElementById('gripper'); g.value = '0.023';"
            " g.dispatchEvent(new Event('input')); })()"
        )
        assert chrome.js("document.getElementById('gripper-value').textContent") == "0.023 m"
        with recording(chrome):
            time.sleep(1.5)
        sent, acked = state("stepsSent"), state("stepsAcked")
        assert sent >= 10 and acked == sent == state("seq"), (sent, acked)  # ~1.5 s at 10 Hz, every step acked
        assert state("connections") == 1 and state("xrActive") is False
        status = chrome.js(STATUS)
        assert "connected (paired)" in status and f"acked {acked}" in status, status
        assert "pose identity" in status and "0.000 0.000 0.000 0.000 0.000 0.000 1.000" in status, status
        assert "camera: getUserMedia" in status, status  # no XR session: frames from the browser's camera

        episodes = stored_episodes(fleet)
        assert len(episodes) == 1, list(episodes)
        (stored,) = episodes.values()
        record = stored["record"]
        assert (record.source, record.num_steps, record.resource_id) == ("phone", acked, phone_id)
        identity = np.array([0, 0, 0, 0, 0, 0, 1], np.float32)
        np.testing.assert_array_equal(stored["obs.pose"], np.tile(identity, (acked, 1)))
        np.testing.assert_allclose(stored["obs.gripper"], grip, atol=1e-6)
        np.testing.assert_allclose(stored["action"], np.tile([*identity, grip], (acked, 1)), atol=1e-6)
        assert np.all(np.diff(stored["t_mono_ns"]) > 0)
        images = stored["obs.image"]
        assert images.shape == (acked, HEIGHT, WIDTH, 3) and images.std() > 5  # the fake camera's frames, not blank

        # Discard: an episode started and thrown away never reaches the store, and the page forgets its steps.
        chrome.js("document.getElementById('start').click()")
        wait_until(lambda: steps_in_indexeddb(chrome) > 2, 10, "the page to record a few steps", interval_s=0.1)
        chrome.js("document.getElementById('discard').click()")
        wait_until(lambda: "discarded episode" in fleet.log("cloud"), 10, "the cloud to drop the discarded episode")
        wait_until(lambda: steps_in_indexeddb(chrome) == 0, 10, "the page to forget the discarded steps")
        assert list(stored_episodes(fleet)) == [record.episode_id]
    finally:
        if chrome is not None:
            chrome.close()


def test_the_learner_trains_on_the_page_s_demonstrations_and_each_new_version_reaches_the_page(
    tmp_path: Path, fleet: Fleet
) -> None:
    """Closing the loop end to end: the cloud runs its learner; two demonstrations recorded on the page (stub WebXR
    pose, fake camera) train `phone` v1, whose foresight the page then shows; a third demonstration, recorded while
    v1 was the policy, is scored against v1's foresight, weighted up where it was wrong, and trains v2, which
    reaches the page too. The time from each ack to the page showing the new version is printed."""
    phone_port = free_port()
    learner = ["--first-round-episodes", "2", "--round-episodes", "1", "--train-steps", "40", "--batch-size", "32"]
    learner += ["--chunk-size", "phone=5", "--foresight-tolerance-m", "0.002"]
    fleet.start_cloud("--phone-port", str(phone_port), "--phone-image", f"{HEIGHT}x{WIDTH}", *learner, learner=True)
    chrome = None
    try:
        url = pairing_url(fleet)
        chrome = open_phone_page(tmp_path / "chromium-profile", url, trust_the_cloud(fleet), before_page=STUB_XR)
        wait_paired(chrome, fleet)
        wait_until(lambda: chrome.phone("foresightVersion") == 0, 20, "a foresight answer (no policy yet)")
        seconds = {}
        for version, episodes in ((1, 2), (2, 1)):
            for _ in range(episodes):
                with recording(chrome):
                    time.sleep(1.2)
            acked = time.monotonic()
            try:
                wait_until(
                    lambda v=version: chrome.phone("foresightVersion") == v, 240, f"phone v{version} on the page"
                )
            except AssertionError as err:
                raise AssertionError(f"{err}; the cloud says: {fleet.log('cloud')[-3000:]}") from None
            seconds[version] = time.monotonic() - acked
            foresight = chrome.js("document.getElementById('foresight').textContent")
            assert foresight.startswith(f"foresight: policy phone v{version}, 5 predicted point(s)"), foresight

        episodes = sorted(stored_episodes(fleet).values(), key=lambda e: e["record"].index)
        assert len(episodes) == 3 and all(e["record"].source == "phone" for e in episodes)
        for first in episodes[:2]:  # recorded before any phone policy: nothing to score them with
            assert np.isnan(first["meta.foresight_error"]).all() and not first["meta.foresight_version"].any()
        third = episodes[2]
        assert (third["meta.foresight_version"] == 1).all(), third["meta.foresight_version"]
        errors = third["meta.foresight_error"]
        assert np.isfinite(errors).all() and (errors > 0).all(), errors
        log = fleet.log("cloud")
        assert "foresight of phone v1 was off by" in log
        published = re.findall(r"published phone v2: (.*)", log)
        assert published and "where the foresight was wrong weighted up" in published[0], published
        print(f"new phone versions reached the page {seconds[1]:.1f} s (v1) and {seconds[2]:.1f} s (v2) after the ack")
        print(f"v1's foresight was off by {errors.mean():.3f} m on average over the third demonstration")
        assert max(seconds.values()) < 240
    finally:
        if chrome is not None:
            chrome.close()
