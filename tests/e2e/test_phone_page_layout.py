"""The phone page as a person holding a phone sees it, in a real headless Chromium against the real `fleetloop cloud`.

Chromium emulates a phone (412x915 CSS px, device scale 2, mobile: Emulation.setDeviceMetricsOverride over the
DevTools Protocol) with the stub WebXR pose and camera of test_phone_page.py. The page pairs, records (the link
dropped for a while mid-episode), stops, and the test reads the one-sentence status at each stage; then a `phone`
policy is published and the page is screenshotted at phone size and at laptop size (1280x800), each checked for
what it must show: the camera across the phone's width, Start / Stop / Discard on screen without scrolling and at
least 48 px tall, the foresight overlay over the video and its drawn points where the page projected them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.e2e.fleet import Fleet, free_port, wait_until
from tests.e2e.test_phone_page import (
    HEIGHT,
    STUB_XR,
    WIDTH,
    Chrome,
    open_phone_page,
    pairing_url,
    publish_phone_policy,
    steps_in_indexeddb,
    trust_the_cloud,
    wait_paired,
)

BUTTONS = ("start", "stop", "discard")
SENTENCE = "document.getElementById('sentence').textContent"
PHONE = {"width": 412, "height": 915, "deviceScaleFactor": 2, "mobile": True}
LAPTOP = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}


def rect(chrome: Chrome, element_id: str) -> dict:
    return json.loads(chrome.js(f"JSON.stringify(document.getElementById('{element_id}').getBoundingClientRect())"))


def disabled(chrome: Chrome) -> dict[str, bool]:
    return {b: chrome.js(f"document.getElementById('{b}').disabled") for b in BUTTONS}


def emulate(chrome: Chrome, metrics: dict) -> None:
    """The viewport of a phone or a laptop; waits for the overlay to take the video box's new size."""
    chrome.call("Emulation.setDeviceMetricsOverride", **metrics)
    fitted = (
        "(() => { const o = document.getElementById('overlay'); if (!o || !window.fleetloopPhone) return false;"
        " const r = o.getBoundingClientRect();"
        f" return innerWidth === {metrics['width']} && o.width === Math.round(r.width * devicePixelRatio); }})()"
    )
    wait_until(lambda: chrome.js(fitted), 10, "the overlay to fit the video box", interval_s=0.1)


def steady_screenshot(chrome: Chrome, path: Path) -> tuple[np.ndarray, list]:
    """A screenshot (RGB, device pixels) taken while the overlay showed one trajectory, and that trajectory's points
    (0..1 across and down the picture). Saved to ``path`` and $FLEETLOOP_SCREENSHOT_DIR when set."""
    points = "JSON.stringify(window.fleetloopPhone.foresightOnScreen)"
    for _ in range(10):
        chrome.js("window.fleetloopPhone.foresightWaiting = true")  # no new request meanwhile (one may be in flight)
        before = chrome.js(points)
        shot = base64.b64decode(chrome.call("Page.captureScreenshot", format="png")["data"])
        if chrome.js(points) == before:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the foresight overlay never held still for a screenshot")
    path.write_bytes(shot)
    if os.environ.get("FLEETLOOP_SCREENSHOT_DIR"):
        Path(os.environ["FLEETLOOP_SCREENSHOT_DIR"], path.name).write_bytes(shot)
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int), json.loads(before)


def check_screen(chrome: Chrome, path: Path, full_width: bool) -> None:
    """What the page must show at the emulated size: the screenshot is ``path``."""
    width, height = chrome.js("innerWidth"), chrome.js("innerHeight")
    assert chrome.js("document.documentElement.scrollWidth") <= width  # nothing wider than the screen
    video, overlay = rect(chrome, "video"), rect(chrome, "overlay")
    if full_width:
        assert video["left"] <= 2 and video["right"] >= width - 2, (video, width)
    assert video["left"] >= 0 and video["right"] <= width and video["top"] >= 0, (video, width)
    for side in ("left", "top", "width", "height"):  # the overlay covers the video exactly
        assert abs(overlay[side] - video[side]) <= 1, (side, overlay, video)
    aspect = chrome.js("document.getElementById('video').videoWidth / document.getElementById('video').videoHeight")
    assert abs(video["width"] / video["height"] - aspect) < 0.02, (video, aspect)  # the picture fills the box
    for button in BUTTONS:
        box = rect(chrome, button)
        assert box["height"] >= 48 and 0 <= box["top"] and box["bottom"] <= height, (button, box, height)
        assert box["top"] >= video["bottom"], (button, box, video)  # under the picture, not over it
        at = f"document.elementFromPoint({box['left'] + box['width'] / 2}, {box['top'] + box['height'] / 2}).id"
        assert chrome.js(at) == button, f"{button} is covered at its centre by #{chrome.js(at)}"

    pixels, points = steady_screenshot(chrome, path)
    scale = pixels.shape[1] / width  # device pixels per CSS px
    magenta = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] > 200)
    top, bottom = round(video["top"] * scale), round(video["bottom"] * scale)
    left, right = round(video["left"] * scale), round(video["right"] * scale)
    inside = magenta[top:bottom, left:right].sum()
    assert inside >= 50 and magenta.sum() == inside, f"foresight pixels: {inside} in the video, {magenta.sum()} in all"
    shown = [(x, y) for x, y in points if 0 < x < 1 and 0 < y < 1]
    assert shown, f"no predicted point inside the picture: {points}"
    for x, y in shown:  # each dot sits where the page projected it onto the picture, however wide it is drawn
        px, py = (video["left"] + x * video["width"]) * scale, (video["top"] + y * video["height"]) * scale
        near = magenta[
            max(0, round(py - 3 * scale)) : round(py + 3 * scale), max(0, round(px - 3 * scale)) : round(px + 3 * scale)
        ]
        assert near.any(), f"no foresight dot at {x:.2f}, {y:.2f} of the picture in {path}"


def test_the_phone_page_at_phone_and_laptop_size(tmp_path: Path, fleet: Fleet) -> None:
    phone_port = free_port()
    fleet.start_cloud("--phone-port", str(phone_port), "--phone-image", f"{HEIGHT}x{WIDTH}")
    chrome = open_phone_page(tmp_path / "chromium", pairing_url(fleet), trust_the_cloud(fleet), before_page=STUB_XR)
    try:
        emulate(chrome, PHONE)
        wait_paired(chrome, fleet)
        said = lambda: chrome.js(SENTENCE)  # noqa: E731
        wait_until(lambda: said().startswith("ready: press Start"), 10, "the page to be ready", interval_s=0.1)
        assert disabled(chrome) == {"start": False, "stop": True, "discard": True}

        chrome.js("document.getElementById('start').click()")
        wait_until(lambda: (chrome.phone("seq") or 0) >= 5, 20, "a few steps recorded", interval_s=0.1)
        assert disabled(chrome) == {"start": True, "stop": False, "discard": False}
        recording = re.fullmatch(r"recording, (\d+) steps, sending to the cloud", said())
        assert recording and abs(int(recording[1]) - chrome.phone("seq")) <= 3, said()

        # The link drops and stays down a few seconds: the sentence says the steps wait on the phone.
        chrome.js("window.fleetloopPhone.retryMs = 4000; window.fleetloopPhone.ws.close()")
        wait_until(lambda: "not connected" in said(), 5, "the page to see the link down", interval_s=0.1)
        time.sleep(0.5)
        offline = re.fullmatch(
            r"recording, (\d+) steps, not connected: steps kept on this phone, (\d+) to send", said()
        )
        assert offline, said()
        kept = steps_in_indexeddb(chrome)
        assert int(offline[2]) >= int(offline[1]) - 2 and abs(int(offline[2]) - kept) <= 3, (said(), kept)
        wait_until(lambda: chrome.phone("connections") >= 2, 10, "the page to reconnect", interval_s=0.2)

        chrome.js("document.getElementById('stop').click()")
        wait_until(lambda: chrome.phone("stepsAcked") > 0, 30, "the cloud's ack", interval_s=0.2)
        acked = chrome.phone("stepsAcked")
        assert acked == chrome.phone("seq")
        wait_until(lambda: said() == f"stopped: {acked} steps, all saved", 5, f"'all saved' ({said()})")
        assert disabled(chrome) == {"start": False, "stop": True, "discard": True}

        publish_phone_policy(tmp_path)
        drawn = lambda: (chrome.phone("foresightVersion") == 1 and chrome.phone("foresightDrawn") or 0) > 0  # noqa: E731
        wait_until(drawn, 20, "a foresight trajectory drawn", interval_s=0.2)
        check_screen(chrome, tmp_path / "phone-page-phone.png", full_width=True)
        # Unfolded, the details (pairing, the CA to trust, the developer's status) fit the phone's width too.
        assert chrome.js("document.getElementById('more').open") is False
        assert chrome.js("!!document.querySelector('#more #trust #ca-fingerprint')")  # folded with the details
        chrome.js("document.getElementById('more').open = true")
        check_screen(chrome, tmp_path / "phone-page-details.png", full_width=True)
        assert rect(chrome, "status")["right"] <= PHONE["width"]
        chrome.js("document.getElementById('more').open = false")
        emulate(chrome, LAPTOP)
        check_screen(chrome, tmp_path / "phone-page-laptop.png", full_width=False)
        print(f"screenshots: {tmp_path}/phone-page-phone.png, phone-page-laptop.png; the page says: {said()}")
    finally:
        chrome.close()
