"""Cameras on the way up: which codec each camera column travels in (``--uplink-codec``), and its encoding on the
spool writer's thread, one ``CameraEncoder`` per camera per episode, so the spool keeps the encoded batch and a
resend (after a reconnect or a restart) sends the same bytes.

The codec of an episode's camera is fixed at the episode's first spooled step: a new episode starts at a keyframe,
and a change of mind (the first Welcome, a store that keeps another codec) takes effect at the next episode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import numpy as np

from hal.resource import Capabilities
from protocol.arrays import CodecError
from protocol.steps import is_camera
from protocol.video import UPLINK_CODECS, VIDEO_CODECS, CameraEncoder, PacketColumn

log = logging.getLogger("fleetloop.edge")

CODEC_NAMES = {"h264": "H.264", "av1": "AV1", "jpeg": "JPEG", "raw": "raw"}


def camera_columns(capabilities: Capabilities) -> dict[str, tuple[int, int]]:
    """``obs.<name>`` -> (height, width) of every RGB camera among the observations (uint8 H x W x 3)."""
    return {
        f"obs.{spec.name}": (int(spec.shape[0]), int(spec.shape[1]))
        for spec in capabilities.observation
        if is_camera(spec.dtype, tuple(spec.shape))
    }


class UplinkCodecs:
    """The codec each camera column goes up in, from the edge's ``--uplink-codec`` and what the store keeps (the
    Welcome's ``store_codecs``). Told by the tunnel thread, read by the spool writer's."""

    def __init__(self, choice: str, cameras: Mapping[str, tuple[int, int]]) -> None:
        if choice not in UPLINK_CODECS:
            raise CodecError("uplink_codec", f"must be one of {list(UPLINK_CODECS)}, got {choice!r}")
        self.choice = choice
        self.cameras = dict(cameras)
        self._store: dict[str, str] | None = None  # None until the first Welcome
        self._lock = threading.Lock()

    def welcomed(self, store_codecs: Mapping[str, str]) -> None:
        """The cloud said how its store keeps each camera (column -> codec, "" raw)."""
        with self._lock:
            self._store = {name: store_codecs.get(name, "") for name in self.cameras}

    def choose(self) -> dict[str, tuple[str, str]]:
        """Camera column -> (codec, why) for an episode that starts now; "raw" sends the frames as arrays."""
        with self._lock:
            store = self._store
        return {name: self._one(name, store) for name in self.cameras}

    def _one(self, name: str, store: dict[str, str] | None) -> tuple[str, str]:
        if self.choice == "raw":
            return "raw", "--uplink-codec raw"
        if self.choice == "jpeg":
            return "jpeg", "--uplink-codec jpeg: every frame on its own, the cloud encodes it for the store"
        if store is None:  # the cloud has not said yet (it always has before a task starts the first episode)
            return "raw", "the cloud has not yet said how its store keeps it"
        kept = store.get(name, "")
        if kept not in VIDEO_CODECS:
            return "raw", "the store keeps it raw"
        if self.choice in ("auto", kept):
            return kept, "as the store keeps it"
        return "raw", f"the store keeps it as {CODEC_NAMES[kept]}, not {CODEC_NAMES[self.choice]}"


class CameraUplink:
    """Encodes the camera columns of the current episode's batches (on the spool writer's thread only)."""

    def __init__(self, codecs: UplinkCodecs, fps: float) -> None:
        self.codecs = codecs
        self.fps = fps
        self._episode = ""
        self._chosen: dict[str, tuple[str, str]] = {}
        self._encoders: dict[str, CameraEncoder] = {}
        self._said: dict[str, str] = {}  # camera -> the codec the log last named for it
        self.encode_s: dict[str, float] = {}  # camera -> seconds spent encoding (for the once-per-camera line)
        self.frames: dict[str, int] = {}

    def take(self, episode_id: str, columns: dict[str, np.ndarray]) -> dict[str, PacketColumn]:
        """Removes from ``columns`` the cameras this episode sends encoded and returns them encoded."""
        if episode_id != self._episode:
            self._episode, self._chosen, self._encoders = episode_id, self.codecs.choose(), {}
        video: dict[str, PacketColumn] = {}
        for name, (codec, why) in self._chosen.items():
            if codec == "raw" or name not in columns:
                self._say(name, codec, why)
                continue
            try:
                video[name] = self._encode(name, codec, columns[name])
            except CodecError as err:  # frames this camera should not make: the rest of the episode goes raw
                log.error("%s: cannot encode as %s (%s); sending it raw this episode", name, CODEC_NAMES[codec], err)
                self._chosen[name] = ("raw", "its encoder failed")
                continue
            del columns[name]
            self._say(name, codec, why)
        return video

    def _encode(self, name: str, codec: str, frames: np.ndarray) -> PacketColumn:
        encoder = self._encoders.get(name)
        if encoder is None:
            height, width = self.codecs.cameras[name]
            encoder = self._encoders[name] = CameraEncoder(codec, width, height, self.fps, camera=name)
        started = time.perf_counter()
        packets = [packet for frame in frames for packet in encoder.encode(frame)]
        self.encode_s[name] = self.encode_s.get(name, 0.0) + time.perf_counter() - started
        self.frames[name] = self.frames.get(name, 0) + len(frames)
        if len(packets) != len(frames):  # every codec here gives one packet per frame at once (protocol/video.py)
            raise CodecError(name, f"{len(packets)} packets for {len(frames)} frames")
        return PacketColumn(codec, tuple(p.data for p in packets), np.array([p.keyframe for p in packets], bool))

    def _say(self, name: str, codec: str, why: str) -> None:
        """One line per camera, and again only when its codec changes."""
        if self._said.get(name) == codec:
            return
        self._said[name] = codec
        camera = name.removeprefix("obs.")
        if codec == "raw":
            log.info("%s camera: sent raw (%s)", camera, why)
            return
        per_frame = 1000 * self.encode_s.get(name, 0.0) / max(1, self.frames.get(name, 0))
        log.info("%s camera: sent as %s, %s, %.1f ms per frame", camera, CODEC_NAMES[codec], why, per_frame)
