"""What a person at the robot's takeover page sees: a live view the edge sends up the tunnel while someone watches.

The control thread only keeps references and copies small arrays (``decided`` at the operator's turn, ``applied``
after the driver moved, through ``DriverTap``); a sender thread downscales camera images to JPEG and sends. A view
is sent at most ``rate_hz`` times a second (what the watchers asked for), and none while nobody watches. Its
observation is the newest one: after an action, the one the next tick will act on.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from hal.resource import ArraySpec, Capabilities, Driver, HoldsPosition, Transition
from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError, encode_array
from protocol.person import check_watch

log = logging.getLogger("fleetloop.edge")

JPEG_QUALITY = 70
RATE_SLACK = 0.8  # a view may come this share of a period early: ticks jitter, and a view per tick must pass


def is_camera(spec: ArraySpec, cameras: tuple[str, ...]) -> bool:
    """An observation shown as an image: a named camera, or any uint8 HxW or HxWx{1,3} array."""
    image_shaped = spec.numpy_dtype == np.uint8 and (
        len(spec.shape) == 2 or (len(spec.shape) == 3 and spec.shape[2] in (1, 3))
    )
    return spec.name in cameras or (image_shaped and min(spec.shape[:2]) >= 8)


@dataclass
class _Decided:
    """The operator's turn at one tick."""

    observation: dict[str, np.ndarray]
    intended: np.ndarray | None
    step: int
    controller: str
    note: str
    command_seq: int


class LiveView:
    def __init__(self, capabilities: Capabilities, name: str = "robot") -> None:
        self.name = name
        self.cameras = tuple(s.name for s in capabilities.observation if is_camera(s, capabilities.cameras))
        self.send: Callable[[pb.EdgeMessage], bool] = lambda message: False
        self.policy_version: Callable[[], int] = lambda: 0
        self.episode = 0
        self.sent = 0
        self._watch = pb.WatchRequest()
        self._decided: _Decided | None = None
        self._last_at = 0.0
        self._slot: queue.Queue[pb.LiveView | tuple | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None

    @property
    def watched(self) -> bool:
        return self._watch.watchers > 0

    def watch(self, request: pb.WatchRequest) -> None:
        """From the cloud (the tunnel's thread): how many watch, at what rate and image size."""
        try:
            check_watch(request)
        except CodecError as err:
            log.warning("%s: ignored a watch request from the cloud: %s", self.name, err)
            return
        if request.watchers != self._watch.watchers:
            log.info("%s: %d watching its takeover page", self.name, request.watchers)
        self._watch = request
        if request.watchers and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="live-view", daemon=True)
            self._thread.start()

    # ---- the control thread -------------------------------------------------------------------------------------

    def decided(
        self,
        observation: dict[str, np.ndarray],
        intended: np.ndarray | None,
        step: int,
        controller: str,
        note: str,
        command_seq: int,
    ) -> None:
        """The operator's turn at this tick; sent with the next ``applied`` (or ``held``)."""
        if self.watched:
            self._decided = _Decided(observation, intended, step, controller, note, command_seq)

    def held(self) -> None:
        """Nobody moved the robot this tick: the view shows the observation the tick acted on."""
        decided = self._decided
        if decided is not None:
            self._publish(decided, decided.observation, decided.step, None)

    def applied(self, action: np.ndarray, observation: dict[str, np.ndarray]) -> None:
        """The driver applied ``action`` (after the safety layer); ``observation`` is what followed."""
        decided, self._decided = self._decided, None
        if decided is not None and self.watched:
            self._publish(decided, observation, decided.step + 1, action)

    def _publish(self, decided: _Decided, observation: dict, step: int, applied: np.ndarray | None) -> None:
        now = time.monotonic()
        rate = self._watch.rate_hz
        if not self.watched or now - self._last_at < RATE_SLACK / rate:
            return
        self._last_at = now
        copied = {name: np.array(values) for name, values in observation.items()}  # the driver may reuse buffers
        item = (now, decided, copied, step, None if applied is None else np.array(applied))
        try:
            self._slot.get_nowait()  # the sender is behind: the newest view replaces the waiting one
        except queue.Empty:
            pass
        self._slot.put_nowait(item)

    # ---- the sender thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._slot.get()) is not None:
            try:
                view = self._view(*item)
            except Exception:  # a camera array PIL cannot draw: say so, keep the robot going
                log.exception("%s: could not make a live view", self.name)
                continue
            if self.send(pb.EdgeMessage(live_view=view)):
                self.sent += 1

    def _view(self, now: float, decided: _Decided, observation: dict, step: int, applied) -> pb.LiveView:
        side = self._watch.max_image_side
        view = pb.LiveView(
            mono_ns=int(now * 1e9),
            episode=self.episode,
            step=step,
            intended_step=decided.step,
            controller=decided.controller,
            note=decided.note[:300],
            policy_version=self.policy_version(),
            command_seq=decided.command_seq,
        )
        for name, values in observation.items():
            if name in self.cameras:
                view.frames.append(_jpeg(name, values, side))
            else:
                view.state[name].CopyFrom(encode_array(values))
        if decided.intended is not None:
            view.intended.CopyFrom(encode_array(np.asarray(decided.intended, dtype=np.float32)))
        if applied is not None:
            view.applied.CopyFrom(encode_array(np.asarray(applied, dtype=np.float32)))
        return view

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._slot.get_nowait()
            except queue.Empty:
                pass
            self._slot.put(None)
            self._thread.join(timeout=2)


def _jpeg(camera: str, pixels: np.ndarray, side: int) -> pb.Frame:
    image = Image.fromarray(np.ascontiguousarray(pixels.squeeze()).astype(np.uint8))
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return pb.Frame(camera=camera, format="jpeg", data=out.getvalue(), width=image.width, height=image.height)


class DriverTap(HoldsPosition):
    """A driver that tells the live view what it applied; it sits under the safety layer, so that is the action
    after every limit."""

    def __init__(self, driver: Driver, view: LiveView) -> None:
        self.driver = driver
        self.view = view

    @property
    def capabilities(self) -> Capabilities:
        return self.driver.capabilities

    def reset(self) -> dict[str, np.ndarray]:
        return self.driver.reset()

    def apply(self, action: np.ndarray) -> Transition:
        transition = self.driver.apply(action)
        self.view.applied(action, transition.observation)
        return transition

    def hold(self) -> None:
        self.driver.hold()

    def close(self) -> None:
        self.view.close()
        self.driver.close()

    def action_from_observation(self, observation: dict[str, np.ndarray]) -> np.ndarray | None:
        if isinstance(self.driver, HoldsPosition):
            return self.driver.action_from_observation(observation)
        return None
