"""The camera codec: RGB frames as H.264 / AV1 video or JPEG, one packet per frame, for the uplink and the store.

An encoder lives per camera per episode. Video packets form segments that decode on their own: a keyframe
opens each (every ``gop`` frames) and carries the stream's headers in-band, so a reader, the gateway or a
fresh decoder can start at any keyframe. No codec here holds a frame back (no B-frames, no lookahead):
each ``encode`` returns the packet of the frame it was given.

Packets come from devices: the decoder treats them as hostile. Sizes are bounded before the decoder sees
them, the decoder refuses pictures larger than the camera's, and every packet must decode to exactly one
frame of the camera's size whose keyframe flag is the one the packet claims; anything else is a CodecError.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from protocol.arrays import CodecError

VIDEO_CODECS = ("h264", "av1")
CODECS = (*VIDEO_CODECS, "jpeg")
UPLINK_CODECS = ("auto", "raw", *CODECS)  # what ``--uplink-codec`` accepts
MAX_CAMERA_SIDE = 4096
MIN_VIDEO_SIDE = 32  # below this, auto sends raw: a keyframe's headers alone outweigh the frame
PACKET_SLACK_BYTES = 64 * 1024  # headers a keyframe may carry beyond its pixels
DEFAULT_GOP_S = 2.0  # seconds between keyframes when no gop is given

# Quality settings, chosen on frames rendered by the simulators (bench/video.py measures them):
# H.264 crf 23 gives about 39 dB PSNR at about 1/80 of the raw bytes on the Panda's front camera.
H264_CRF = 23
AV1_CRF = 30
JPEG_QUALITY = 3  # mjpeg's quantiser scale: 2 is best, 31 worst

_ENCODERS = {"h264": "libx264", "av1": "libsvtav1", "jpeg": "mjpeg"}
_DECODERS = {"h264": "h264", "av1": "libdav1d", "jpeg": "mjpeg"}


@dataclass(frozen=True, slots=True)
class Packet:
    """One encoded frame: ``pts`` counts frames from the encoder's first one."""

    data: bytes
    keyframe: bool
    pts: int


@dataclass(frozen=True)
class PacketColumn:
    """A camera column of consecutive steps as encoded packets, one per step: what an encoded camera is on the wire
    (``StepBatch.video``), in a batch on its way to the store (``StepRows.columns``) and in the store itself.
    ``keyframe[i]`` says whether ``packets[i]`` decodes on its own; a segment (keyframe to the next) decodes alone."""

    codec: str  # one of CODECS
    packets: tuple[bytes, ...]
    keyframe: np.ndarray  # bool, one per packet

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise CodecError("codec", f"{self.codec!r} is not one of {', '.join(CODECS)}")
        if self.keyframe.shape != (len(self.packets),):
            raise CodecError("keyframe", f"{self.keyframe.shape} flags for {len(self.packets)} packets")

    def __len__(self) -> int:
        return len(self.packets)

    @property
    def nbytes(self) -> int:
        return sum(len(packet) for packet in self.packets)

    def __getitem__(self, rows: slice) -> PacketColumn:
        return PacketColumn(self.codec, self.packets[rows], self.keyframe[rows])


def auto_codec(shape: Sequence[int], dtype: str | np.dtype, fps: float) -> str:
    """What ``--uplink-codec auto`` sends for a camera: "h264" or "raw".

    The rule: RGB uint8 frames (H x W x 3) with both sides at least ``MIN_VIDEO_SIDE`` pixels go as H.264;
    anything else (depth, float, grey, tiny images such as a 16x16 policy input) goes raw, because a codec
    either cannot carry it losslessly or its headers cost more than the frame. The rate does not change the
    choice: without B-frames H.264 adds no delay at any rate, and only the keyframe spacing follows ``fps``.
    JPEG is never chosen automatically: it costs about 3x H.264's bytes and is for links that ask for it.
    """
    if fps <= 0 or not math.isfinite(fps):
        raise CodecError("fps", f"must be a positive number, got {fps}")
    if np.dtype(dtype) != np.uint8 or len(shape) != 3 or shape[2] != 3:
        return "raw"
    return "h264" if min(shape[0], shape[1]) >= MIN_VIDEO_SIDE else "raw"


def default_gop(fps: float) -> int:
    """Frames between keyframes: ``DEFAULT_GOP_S`` seconds of frames, at least 1."""
    return max(1, round(fps * DEFAULT_GOP_S))


def _coded_size(width: int, height: int) -> tuple[int, int]:
    """The size the codec works at: whole 16-pixel macroblocks, the frame padded by repeating its edge. 4:2:0 needs
    even sides at least, and mjpeg reads a partial block's missing pixels from whatever lies past the row's end,
    so an odd-sized camera's border came out different at every run."""
    return -(-width // 16) * 16, -(-height // 16) * 16


def _check_camera(codec: str, width: int, height: int, camera: str) -> None:
    if codec not in CODECS:
        raise CodecError(f"{camera}.codec", f"unknown camera codec {codec!r}; known: {list(CODECS)}")
    for name, side in (("width", width), ("height", height)):
        if not isinstance(side, int | np.integer) or not 0 < side <= MAX_CAMERA_SIDE:
            raise CodecError(f"{camera}.{name}", f"must be 1 to {MAX_CAMERA_SIDE} pixels, got {side!r}")
    if codec == "av1" and min(width, height) < 8:
        raise CodecError(camera, f"{width}x{height} is too small for AV1 (at least 8x8); send it raw")


def _frame_rate(fps: float, camera: str) -> Fraction:
    if not isinstance(fps, int | float) or not math.isfinite(fps) or not 0 < fps <= 1000:
        raise CodecError(f"{camera}.fps", f"must be a number in (0, 1000], got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def _encoder_options(codec: str, gop: int) -> dict[str, str]:
    if codec == "h264":
        # Keyframes exactly every gop frames (no scene-cut extras) so segment boundaries are predictable.
        return {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "crf": str(H264_CRF),
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
        }
    if codec == "av1":
        # pred-struct=1 is SVT-AV1's low-delay structure: each frame's packet comes out at once.
        return {"preset": "10", "crf": str(AV1_CRF), "svtav1-params": f"pred-struct=1:lp=1:keyint={gop}"}
    return {"qmin": str(JPEG_QUALITY), "qmax": str(JPEG_QUALITY)}


class CameraEncoder:
    """Encodes one camera's frames for one episode. Not thread-safe: one encoder per camera per thread."""

    def __init__(
        self, codec: str, width: int, height: int, fps: float, gop: int | None = None, camera: str = "camera"
    ) -> None:
        _check_camera(codec, width, height, camera)
        rate = _frame_rate(fps, camera)
        gop = default_gop(fps) if gop is None else gop
        if codec == "jpeg":
            gop = 1
        if not isinstance(gop, int) or not 1 <= gop <= 10_000:
            raise CodecError(f"{camera}.gop", f"must be 1 to 10000 frames, got {gop!r}")
        if codec == "av1":
            # SVT-AV1 prints a banner and notes to stderr unless told otherwise; 0 keeps fatal errors only
            # (the failures that matter come back as return codes, raised here as CodecError).
            os.environ.setdefault("SVT_LOG", "0")
        self.codec, self.width, self.height, self.gop, self.camera = codec, width, height, gop, camera
        self._coded = _coded_size(width, height)
        context = av.CodecContext.create(_ENCODERS[codec], "w")
        context.width, context.height = self._coded
        context.pix_fmt = "yuvj420p" if codec == "jpeg" else "yuv420p"
        context.framerate = rate
        context.time_base = 1 / rate
        context.gop_size = gop
        context.max_b_frames = 0
        context.thread_count = 1  # the edge's cores belong to the control loop and the policy
        context.options = _encoder_options(codec, gop)
        self._context = context
        self._frames = 0
        self._flushed = False

    def encode(self, frame: np.ndarray) -> list[Packet]:
        """The packet(s) of one H x W x 3 uint8 RGB frame: one, at once, for every codec here."""
        if self._flushed:
            raise CodecError(self.camera, "the encoder was flushed; start a new one for the next episode")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.shape != (self.height, self.width, 3):
            raise CodecError(
                self.camera,
                f"frame of {frame.dtype} {list(frame.shape)}, expected uint8 [{self.height}, {self.width}, 3]",
            )
        width, height = self._coded
        if (width, height) != (self.width, self.height):
            frame = np.pad(frame, ((0, height - self.height), (0, width - self.width), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self._frames
        self._frames += 1
        try:
            return self._packets(self._context.encode(video_frame))
        except av.error.FFmpegError as exc:
            raise CodecError(self.camera, f"the {self.codec} encoder failed: {exc}") from exc

    def flush(self) -> list[Packet]:
        """Whatever the encoder still holds (nothing, with these settings); the encoder is done after it."""
        if self._flushed:
            return []
        self._flushed = True
        try:
            return self._packets(self._context.encode(None))
        except av.error.FFmpegError as exc:
            raise CodecError(self.camera, f"the {self.codec} encoder failed to flush: {exc}") from exc

    def _packets(self, packets: list[av.Packet]) -> list[Packet]:
        return [
            Packet(
                data=bytes(p),
                keyframe=bool(p.is_keyframe),
                pts=int(p.pts) if p.pts is not None else self._frames - 1,
            )
            for p in packets
        ]


def max_packet_bytes(width: int, height: int) -> int:
    """The largest packet a camera of this size may send: its raw RGB frame plus header room.

    A compressed frame bigger than the raw one is no camera's doing; refusing it bounds what the decoder reads.
    """
    return width * height * 3 + PACKET_SLACK_BYTES


class CameraDecoder:
    """Decodes one camera's packets from a device, which may be hostile (see the module's docstring).

    Stateful: ``decode`` continues the stream from the previous call. A new decoder, or one after ``reset``
    or after any CodecError, accepts only a keyframe first.
    """

    def __init__(
        self, codec: str, width: int, height: int, camera: str = "camera", packet_limit: int | None = None
    ) -> None:
        """``packet_limit``: the largest packet accepted, in bytes (default ``max_packet_bytes``)."""
        _check_camera(codec, width, height, camera)
        self.codec, self.width, self.height, self.camera = codec, width, height, camera
        self.packet_limit = packet_limit or max_packet_bytes(width, height)
        self._coded = _coded_size(width, height)
        self._context: av.CodecContext | None = None

    def reset(self) -> None:
        """Forget the stream: the next packet must be a keyframe."""
        self._context = None

    def decode(self, packets: Sequence[Packet]) -> list[np.ndarray]:
        """One H x W x 3 uint8 RGB frame per packet, in order."""
        return [self.to_array(frame) for frame in self.decode_frames(packets)]

    def decode_frames(self, packets: Sequence[Packet]) -> list[av.VideoFrame]:
        """As ``decode``, but the frames stay in the decoder's format until a caller converts the ones it keeps."""
        frames = []
        try:
            for index, packet in enumerate(packets):
                frames.append(self._decode_one(packet, f"{self.camera}.packets[{index}]"))
        except CodecError:
            self.reset()  # a decoder that saw bad data may hold broken references; start over at a keyframe
            raise
        return frames

    def _open(self) -> av.CodecContext:
        context = av.CodecContext.create(_DECODERS[self.codec], "r")
        context.thread_count = 1  # one frame in, one frame out, on one core
        width, height = self._coded
        # libavcodec refuses a picture above this many pixels before allocating it (it counts the width
        # padded to its 64-pixel stride alignment); the exact size is checked after decoding.
        options = {"max_pixels": str(-(-width // 64) * 64 * -(-height // 64) * 64)}
        if self.codec == "av1":
            options["max_frame_delay"] = "1"
        context.options = options
        return context

    def _decode_one(self, packet: Packet, field: str) -> av.VideoFrame:
        data = packet.data
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CodecError(f"{field}.data", f"must be bytes, got {type(data).__name__}")
        if len(data) == 0:
            raise CodecError(f"{field}.data", "is empty")  # libavcodec would take it as end of stream
        if len(data) > self.packet_limit:
            raise CodecError(f"{field}.data", f"{len(data)} bytes exceeds the limit of {self.packet_limit}")
        if self._context is None:
            if not packet.keyframe:
                raise CodecError(field, "the segment does not start at a keyframe; decoding must start at one")
            self._context = self._open()
        try:
            frames = self._context.decode(av.Packet(bytes(data)))
        except av.error.FFmpegError as exc:
            raise CodecError(f"{field}.data", f"is not a valid {self.codec} frame of this camera: {exc}") from exc
        if len(frames) != 1:
            raise CodecError(f"{field}.data", f"decoded to {len(frames)} frames, expected exactly 1")
        frame = frames[0]
        if (frame.width, frame.height) != self._coded:
            raise CodecError(
                f"{field}.data", f"decoded to {frame.width}x{frame.height}, the camera is {self.width}x{self.height}"
            )
        if bool(frame.key_frame) != bool(packet.keyframe):
            said = "a keyframe" if packet.keyframe else "not a keyframe"
            raise CodecError(f"{field}.keyframe", f"the packet says it is {said}, its data says otherwise")
        return frame

    def to_array(self, frame: av.VideoFrame) -> np.ndarray:
        """A decoded frame as H x W x 3 uint8 RGB, without the padding an odd-sized camera was coded with."""
        array = frame.to_ndarray(format="rgb24")
        if array.shape[:2] != (self.height, self.width):
            array = np.ascontiguousarray(array[: self.height, : self.width])
        return array


def decode_frame(
    codec: str,
    width: int,
    height: int,
    packets: Sequence[bytes],
    keyframes: Sequence[bool],
    index: int,
    camera: str = "camera",
) -> np.ndarray:
    """Frame ``index`` of a stored sequence: decodes from the keyframe at or before it up to it.

    ``packets`` and ``keyframes`` are the stored columns of one camera (one entry per frame).
    """
    if len(packets) != len(keyframes):
        raise CodecError(f"{camera}.keyframes", f"{len(keyframes)} flags for {len(packets)} packets")
    if not 0 <= index < len(packets):
        raise CodecError(f"{camera}.index", f"frame {index} is outside 0..{len(packets) - 1}")
    start = next((i for i in range(index, -1, -1) if keyframes[i]), None)
    if start is None:
        raise CodecError(f"{camera}.keyframes", f"no keyframe at or before frame {index}")
    decoder = CameraDecoder(codec, width, height, camera=camera)
    segment = [Packet(bytes(packets[i]), bool(keyframes[i]), i) for i in range(start, index + 1)]
    return decoder.to_array(decoder.decode_frames(segment)[-1])


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """Peak signal-to-noise ratio of 8-bit images in dB (infinite when they are equal)."""
    error = np.mean((np.asarray(original, np.float64) - np.asarray(decoded, np.float64)) ** 2)
    return math.inf if error == 0 else float(10 * np.log10(255.0**2 / error))
