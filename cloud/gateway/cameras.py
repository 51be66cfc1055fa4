"""Camera columns at the gateway: the codec a dataset keeps each camera in (``--store-codec``, fixed when the dataset
is made), what an edge may send for it, the checks of encoded frames, and raw or JPEG frames encoded into the
store's codec just before they are written.

What an edge may send for a camera the store keeps as video: that video codec (stored as it came, no re-encode),
raw frames or JPEG (the gateway encodes them). Another video codec is refused: at the hello when the edge says so
(``Hello.uplink_codec``), else per batch. For a camera the store keeps raw: raw, or JPEG (decoded at ingest).
Encoded frames from a device are hostile: keyframes are decoded alone (cheap) to check they are what they claim;
delta frames are not decoded at ingest, and a reader gives zeros for a segment that does not decode.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
from protocol.arrays import CodecError
from protocol.steps import Columns, Schema
from protocol.video import UPLINK_CODECS, VIDEO_CODECS, CameraDecoder, CameraEncoder, Packet, PacketColumn, auto_codec

log = logging.getLogger("fleetloop.gateway")

STORE_CODECS = ("auto", "raw", *VIDEO_CODECS)  # what ``--store-codec`` accepts
NAMES = {"h264": "H.264", "av1": "AV1", "jpeg": "JPEG", "": "raw", "raw": "raw"}
# Encoders the gateway keeps open for raw frames it encodes (one per episode and camera); past this the oldest is
# closed, and that episode's next batch starts a fresh keyframe: memory stays bounded whatever devices do.
MAX_OPEN_ENCODERS = 256


@dataclass(frozen=True)
class Camera:
    """How a dataset keeps one camera column: ``codec`` ("" raw), frame size, and the rate keyframes follow."""

    codec: str
    height: int
    width: int
    fps: float


def new_dataset_codecs(schema: Schema, fps: float, choice: str) -> dict[str, str]:
    """Camera column -> the codec a new dataset keeps it in: ``choice`` ("auto": ``protocol.video.auto_codec``) for
    every RGB camera of at least ``MIN_VIDEO_SIDE`` pixels; smaller ones, and any other column, stay raw."""
    if choice not in STORE_CODECS:
        raise CodecError("store_codec", f"must be one of {list(STORE_CODECS)}, got {choice!r}")
    codecs = {}
    for name, (dtype, shape) in schema.items():
        if name.startswith("obs.") and auto_codec(shape, dtype, fps) != "raw" and choice != "raw":
            codecs[name] = "h264" if choice == "auto" else choice
    return codecs


def column_spec(dtype: str, shape: tuple[int, ...], codec: str) -> ColumnSpec:
    """The store's spec of a column; an encoded camera's says its codec."""
    return ColumnSpec(dtype, shape, codec=codec) if codec else ColumnSpec(dtype, shape)


def stored_cameras(store: EpisodeStore, dataset: str, fps: float) -> dict[str, Camera]:
    """The dataset's encoded camera columns, as its schema says."""
    return {
        name: Camera(spec.codec, int(spec.shape[0]), int(spec.shape[1]), fps)
        for name, spec in store.schema(dataset).items()
        if spec.codec
    }


def check_uplink(uplink: str, cameras: dict[str, Camera]) -> None:
    """Refuses, at the hello, an edge whose ``--uplink-codec`` is a video codec the store keeps no camera in."""
    if uplink and uplink not in UPLINK_CODECS:
        raise CodecError("hello.uplink_codec", f"must be one of {list(UPLINK_CODECS)}, got {uplink[:16]!r}")
    for name, camera in sorted(cameras.items()):
        if uplink in VIDEO_CODECS and camera.codec != uplink:
            raise CodecError(
                "hello.uplink_codec",
                f"the store keeps {name} as {NAMES[camera.codec]}, not {NAMES[uplink]}: start the edge with "
                f"--uplink-codec auto (or {camera.codec}, or raw)",
            )


def check_cameras(columns: Columns, schema: Schema, cameras: dict[str, Camera], first_seq: int) -> Columns:
    """The batch's encoded cameras, checked against how the store keeps them (runs in the decode pool): JPEG frames
    decoded to arrays (the store encodes them if it keeps video), a video codec only the store's, an episode's
    first packet a keyframe, and every keyframe decoded alone to check it is one of this camera's frames."""
    out = dict(columns)
    for name, column in columns.items():
        if not isinstance(column, PacketColumn):
            continue
        field = f"step_batch.video[{name}]"
        camera = cameras.get(name)
        height, width = schema[name][1][:2]  # decode_batch let only uint8 H x W x 3 columns travel encoded
        if column.codec == "jpeg":
            out[name] = _decode_jpeg(column, height, width, field)
            continue
        if camera is None or camera.codec != column.codec:
            kept = NAMES[camera.codec if camera else ""]
            raise CodecError(
                f"{field}.codec",
                f"the store keeps {name} as {kept}, not {NAMES[column.codec]}; send it raw or as the store keeps it "
                "(--uplink-codec auto)",
            )
        if first_seq == 0 and not column.keyframe[0]:
            raise CodecError(f"{field}.keyframe[0]", "an episode's first frame must be a keyframe")
        for i in np.flatnonzero(column.keyframe):
            _decode_alone(CameraDecoder(column.codec, width, height, camera=field), column, int(i), field)
    return out


def _decode_alone(decoder: CameraDecoder, column: PacketColumn, i: int, field: str) -> np.ndarray:
    """Packet ``i`` decoded on its own (a keyframe, or a JPEG frame); CodecError naming the packet otherwise."""
    try:
        return decoder.decode([Packet(column.packets[i], bool(column.keyframe[i]), i)])[0]
    except CodecError as err:
        raise CodecError(f"{field}.packets[{i}]", err.message) from err


def _decode_jpeg(column: PacketColumn, height: int, width: int, field: str) -> np.ndarray:
    decoder = CameraDecoder("jpeg", width, height, camera=field)
    return np.stack([_decode_alone(decoder, column, i, field) for i in range(len(column))])


class StoreEncoder:
    """Encodes raw camera frames into the store's codec just before they are written (on the store writer's thread):
    one CameraEncoder per (episode, camera), continued while batches follow on without a gap; anything else (a
    gateway restart, a resend, a failed write, an encoder closed for room) starts a fresh keyframe. Rows the store
    already holds are dropped first, so a stored segment never depends on a keyframe the store skipped."""

    def __init__(self) -> None:
        self.cameras: dict[str, dict[str, Camera]] = {}  # dataset -> its encoded camera columns
        self._open: OrderedDict[tuple[str, str], tuple[CameraEncoder, int]] = OrderedDict()  # -> (encoder, next seq)

    def needs(self, rows: StepRows) -> bool:
        """Whether any of the batch's cameras arrives raw for a column the store keeps encoded."""
        cameras = self.cameras.get(rows.dataset, {})
        return any(isinstance(rows.columns.get(name), np.ndarray) for name in cameras)

    def prepare(self, rows: StepRows, start: int) -> StepRows:
        """``rows`` from seq ``start`` on (those before it are stored), with its raw frames encoded."""
        skip = max(0, start - rows.first_seq)
        if skip:
            rows = _rows_from(rows, skip)
        columns = dict(rows.columns)
        for name, camera in self.cameras.get(rows.dataset, {}).items():
            frames = columns.get(name)
            if isinstance(frames, np.ndarray):
                columns[name] = self._encode(rows, name, camera, frames)
        return replace(rows, columns=columns)

    def _encode(self, rows: StepRows, name: str, camera: Camera, frames: np.ndarray) -> PacketColumn:
        key = (rows.episode_id, name)
        encoder, next_seq = self._open.pop(key, (None, -1))
        if encoder is None or next_seq != rows.first_seq:
            encoder = CameraEncoder(camera.codec, camera.width, camera.height, camera.fps, camera=name)
        packets = [packet for frame in frames for packet in encoder.encode(frame)]
        done = rows.columns.get("done")
        if not (isinstance(done, np.ndarray) and len(done) and done[-1]):  # an ended episode needs it no more
            self._open[key] = (encoder, rows.first_seq + len(frames))
            while len(self._open) > MAX_OPEN_ENCODERS:
                self._open.popitem(last=False)
        return PacketColumn(camera.codec, tuple(p.data for p in packets), np.array([p.keyframe for p in packets]))

    def forget(self, episodes: Iterable[str]) -> None:
        """These episodes' writes failed: their next frames start fresh keyframes."""
        gone = set(episodes)
        for key in [key for key in self._open if key[0] in gone]:
            del self._open[key]


def _rows_from(rows: StepRows, skip: int) -> StepRows:
    """The batch without its first ``skip`` rows."""
    columns = {name: values[skip:] for name, values in rows.columns.items()}
    return replace(rows, columns=columns, first_seq=rows.first_seq + skip, operators=rows.operators[skip:])


def row_count(rows: StepRows) -> int:
    return len(rows.columns["action"])
