"""Encoded cameras between the store and LeRobotDataset v3's video files, moved as packets: no decode, no encode.

The store keeps an encoded camera as one packet per step (``protocol.video.PacketColumn``); a LeRobotDataset v3
keeps it as MP4 files, one per camera per chunk of episodes. An H.264 or AV1 camera crosses between the two by
remuxing alone:

- H.264: the store holds Annex B access units (start codes, SPS/PPS in-band before each keyframe); MP4 holds the
  same NAL units length-prefixed, with SPS/PPS also in the ``avcC`` box. FFmpeg's MP4 muxer converts on the way
  out, its ``h264_mp4toannexb`` filter on the way in, and the bytes come back identical.
- AV1: the store holds low-overhead OBU streams; MP4 holds the same OBUs less the temporal delimiter each
  packet starts with (ISO-BMFF forbids it in a sample), so import puts that delimiter back.

Only a camera whose sides are whole 16-pixel blocks goes through unchanged: the edge pads other sizes to whole
blocks before encoding (see ``protocol.video``), and its packets decode to the padded picture, which lerobot
would read as the wrong shape. JPEG cameras and those sizes take the decoding path, as raw cameras do.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from cloud.data.columns import ColumnSpec
from protocol.video import PacketColumn, max_packet_bytes

log = logging.getLogger("fleetloop")

RAW_FORMATS = {"h264": "h264", "av1": "obu"}  # store codec -> FFmpeg's demuxer of its bare packet stream
MP4_CODECS = {"h264": "h264", "av1": "av1"}  # MP4 stream codec (its canonical name) -> store codec
AV1_TEMPORAL_DELIMITER = b"\x12\x00"  # OBU type 2, no payload: opens every AV1 packet in the store
BLOCK = 16


def why_not_passthrough(spec: ColumnSpec) -> str:
    """Why a store column cannot go into an MP4 as its stored packets ("" when it can)."""
    if not spec.codec:
        return "it is stored raw"
    if spec.codec not in RAW_FORMATS:
        return f"{spec.codec} is not a codec LeRobotDataset videos hold"
    height, width = spec.shape[:2]
    if height % BLOCK or width % BLOCK:
        return f"{width}x{height} is coded padded to whole {BLOCK}-pixel blocks"
    return ""


def _template(first: bytes, codec: str) -> av.container.InputContainer:
    """A demuxer over the episode's first keyframe: its stream carries the codec parameters the MP4 needs."""
    return av.open(io.BytesIO(first), format=RAW_FORMATS[codec])


def mux(packets: PacketColumn, fps: int, path: Path) -> None:
    """Writes one episode's packets to an MP4 at ``path``: frame i at i/fps seconds, each lasting 1/fps."""
    if not len(packets) or not packets.keyframe[0]:
        raise ValueError(f"the {packets.codec} packets do not start at a keyframe; they cannot open a video")
    rate = Fraction(1, fps)
    with _template(packets.packets[0], packets.codec) as source, av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream_from_template(source.streams.video[0], opaque=True)  # no encoder is opened
        stream.time_base = rate
        for index, (data, key) in enumerate(zip(packets.packets, packets.keyframe, strict=True)):
            packet = av.Packet(bytes(data))
            packet.stream = stream
            packet.pts = packet.dts = index
            packet.duration = 1
            packet.time_base = rate
            packet.is_keyframe = bool(key)
            out.mux(packet)


@dataclass(frozen=True)
class VideoPackets:
    """One MP4 video stream's packets in store form, with each packet's presentation time in seconds."""

    codec: str
    packets: list[bytes]
    keyframe: np.ndarray
    seconds: np.ndarray


def mp4_codec(path: Path) -> str:
    """The store codec of an MP4's first video stream ("" when the store cannot keep its packets)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return MP4_CODECS.get(stream.codec_context.codec.canonical_name if stream.codec_context else "", "")


def _to_store(packet: bytes, codec: str) -> bytes:
    return AV1_TEMPORAL_DELIMITER + packet if codec == "av1" else packet


def demux(path: Path, start_s: float, stop_s: float) -> VideoPackets:
    """The packets of the MP4 at ``path`` presented in [start_s, stop_s), in store form (no decoding)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = MP4_CODECS[stream.codec_context.codec.canonical_name]
        bsf = av.BitStreamFilterContext("h264_mp4toannexb", stream) if codec == "h264" else None
        found: list[tuple[float, bytes, bool]] = []
        for packet in container.demux(stream):
            if packet.pts is None:
                continue  # the demuxer's end-of-stream marker
            seconds = float(packet.pts * stream.time_base)
            if not start_s - 1e-4 <= seconds < stop_s - 1e-4:
                continue
            key = bool(packet.is_keyframe)
            for out in bsf.filter(packet) if bsf else [packet]:
                found.append((seconds, _to_store(bytes(out), codec), key))
    found.sort(key=lambda item: item[0])
    return VideoPackets(
        codec,
        [data for _, data, _ in found],
        np.array([key for _, _, key in found], bool),
        np.array([seconds for seconds, _, _ in found], np.float64),
    )


class PacketMuxer:
    """Stands in for lerobot's ``StreamingVideoEncoder`` in its dataset writer: the cameras in ``packet_keys``
    become MP4s muxed from the store's packets, the others go to lerobot's own encoder (``delegate``).

    The writer still hands every frame over (decoded from the store): they feed the per-channel statistics
    lerobot keeps for each camera, computed as its own streaming encoder computes them.
    """

    def __init__(self, fps: int, packet_keys: list[str], delegate: Any) -> None:
        self.fps, self.packet_keys, self.delegate = fps, list(packet_keys), delegate
        self._episode: dict[str, PacketColumn] = {}
        self._stats: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        self._temp_dir: Path | None = None

    def load(self, episode: dict[str, PacketColumn]) -> None:
        """The packets of the episode the writer is about to receive, by lerobot feature."""
        self._episode = episode

    def start_episode(self, video_keys: list[str], temp_dir: Path, depth_video_keys: list[str] | None = None) -> None:
        from lerobot.datasets.compute_stats import RunningQuantileStats

        others = [k for k in video_keys if k not in self.packet_keys]
        self.delegate.start_episode(video_keys=others, temp_dir=temp_dir, depth_video_keys=depth_video_keys)
        self._temp_dir = Path(temp_dir)
        self._stats = {key: RunningQuantileStats() for key in self.packet_keys}
        self._counts = dict.fromkeys(self.packet_keys, 0)

    def feed_frame(self, video_key: str, image: np.ndarray) -> None:
        if video_key not in self._stats:
            self.delegate.feed_frame(video_key, image)
            return
        from lerobot.datasets.compute_stats import auto_downsample_height_width

        small = auto_downsample_height_width(np.asarray(image).transpose(2, 0, 1))
        self._stats[video_key].update(small.transpose(1, 2, 0).reshape(-1, small.shape[0]))
        self._counts[video_key] += 1

    def finish_episode(self) -> dict[str, tuple[Path, dict | None]]:
        results = self.delegate.finish_episode()
        for key in self.packet_keys:
            packets = self._episode[key]
            if len(packets) != self._counts[key]:
                raise RuntimeError(f"{key}: {len(packets)} stored packets for {self._counts[key]} frames")
            path = Path(tempfile.mkdtemp(dir=self._temp_dir)) / f"{key}.mp4"  # lerobot removes this folder
            mux(packets, self.fps, path)
            results[key] = (path, self._stats[key].get_statistics() if self._counts[key] >= 2 else None)
        return results

    def cancel_episode(self) -> None:
        self.delegate.cancel_episode()

    def close(self) -> None:
        self.delegate.close()


def _episode_span(lerobot: Any, episode: int, key: str) -> tuple[Path, float, float]:
    """The MP4 holding ``key`` of an episode of a LeRobotDataset, and the episode's time span within it."""
    meta = lerobot.meta
    row = meta.episodes[episode]
    start, stop = float(row[f"videos/{key}/from_timestamp"]), float(row[f"videos/{key}/to_timestamp"])
    return Path(lerobot.root) / meta.get_video_file_path(episode, key), start, stop


def _file_problem(lerobot: Any, key: str, codec: str, shape: tuple[int, ...]) -> str:
    """ "" when every file of ``key`` holds ``codec`` at the feature's size (whatever info.json claims) and every
    episode's first packet is a keyframe; else what is wrong. Reads packet headers only, decodes nothing."""
    firsts: dict[Path, dict[float, int]] = {}
    for episode in range(lerobot.meta.total_episodes):
        path, start, _ = _episode_span(lerobot, episode, key)
        firsts.setdefault(path, {})[round(start, 3)] = episode
    for path, wanted in firsts.items():
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            found = MP4_CODECS.get(stream.codec_context.codec.canonical_name, "")
            if (found, stream.height, stream.width) != (codec, shape[0], shape[1]):
                return f"{path.name} holds {stream.codec_context.codec.canonical_name} {stream.width}x{stream.height}"
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                episode = wanted.pop(round(float(packet.pts * stream.time_base), 3), None)
                if episode is not None and not packet.is_keyframe:
                    return f"episode {episode} starts between keyframes"
        if wanted:
            return f"episode {next(iter(wanted.values()))} has no frame at its from_timestamp"
    return ""


def packet_features(lerobot: Any, columns: dict[str, str], schema: dict[str, ColumnSpec]) -> dict[str, str]:
    """Which video features of a LeRobotDataset the store can keep as their packets: lerobot feature -> codec.

    ``columns`` maps lerobot features to store columns, ``schema`` gives those columns. A video qualifies when its
    files hold H.264 or AV1 at the column's size, whole 16-pixel blocks (the store's decoder expects that coded
    size), and each episode starts at a keyframe; the others are decoded, as images are, and the log says why.
    """
    kept = {}
    for key, column in columns.items():
        feature = lerobot.meta.features[key]
        if feature.get("dtype") != "video":
            continue
        info = feature.get("info") or {}
        codec = MP4_CODECS.get(str(info.get("video.codec", "")), "")
        spec = replace(schema[column], codec=codec)
        reason = (
            f"its codec {info.get('video.codec')!r} is not one the store keeps"
            if not codec
            else why_not_passthrough(spec) or _file_problem(lerobot, key, codec, spec.shape)
        )
        if reason:
            log.info("import: video %s is decoded into frames (%s)", key, reason)
        else:
            log.info("import: video %s is kept as its %s packets, not decoded", key, codec)
            kept[key] = codec
    return kept


def episode_packets(lerobot: Any, episode: int, key: str, shape: tuple[int, ...], steps: int) -> PacketColumn:
    """One episode's packets of a video feature, in store form; ValueError when they are not one per step."""
    path, start, stop = _episode_span(lerobot, episode, key)
    height, width = shape[:2]
    found = demux(path, start, stop)
    if len(found.packets) != steps or not found.keyframe[0]:
        raise ValueError(
            f"--from: {key} of episode {episode} has {len(found.packets)} packets for {steps} frames "
            f"in {path.name} [{start:.3f}s, {stop:.3f}s)"
        )
    limit = max_packet_bytes(width, height)
    for index, data in enumerate(found.packets):
        if not data or len(data) > limit:  # what the gateway refuses from a device, refused from a file too
            raise ValueError(f"--from: {key} of episode {episode}: frame {index} is {len(data)} bytes (1-{limit})")
    return PacketColumn(found.codec, tuple(found.packets), found.keyframe)
