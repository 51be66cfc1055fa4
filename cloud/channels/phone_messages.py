"""The phone wire format (docs/phone-protocol.md): what a phone is, and the checks that turn its JSON messages
and binary step frames into values, refusing anything else with a ``PhoneError`` that names the field."""

from __future__ import annotations

import io
import json
import math
import re
import struct
from collections.abc import Callable, Container
from dataclasses import dataclass

import numpy as np

from hal.resource import ArraySpec, Capabilities
from protocol.arrays import CodecError
from protocol.steps import check_id

DATASET = "phone"  # the dataset (embodiment) every phone's episodes go to
PHONE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a phone id is also its device id
MAX_FRAME_BYTES = 8 << 20  # one websocket message
MAX_IMAGE_PIXELS = 4096 * 4096  # a bigger JPEG is refused before it is decoded
MAX_SEQ = 1_000_000
HEADER = struct.Struct(">I")  # a binary step frame: header length, JSON header, JPEG bytes


class PhoneError(Exception):
    """A message was refused; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class PhoneStep:
    """One recorded step as the cloud holds it until its episode is stored."""

    t_mono_ns: int
    pose: np.ndarray  # (7,) float32: x y z qx qy qz qw
    gripper: float
    image: np.ndarray  # (H, W, 3) uint8

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + 64


@dataclass(frozen=True)
class StepHeader:
    """A step frame's JSON header, checked; its JPEG is decoded later (off the event loop)."""

    episode_id: str
    seq: int
    t_mono_ns: int
    pose: np.ndarray
    gripper: float


@dataclass(frozen=True)
class PhoneHello:
    """A hello's fields, checked: who the phone says it is and how it proves it (``pair`` or ``token``)."""

    phone_id: str
    tracked: bool  # False: no pose tracking (no WebXR), it sends the identity pose
    rate_hz: float
    pair: str | None
    token: str | None


def phone_capabilities(height: int, width: int, control_hz: float) -> Capabilities:
    return Capabilities(
        observation=(
            ArraySpec("image", "|u1", (height, width, 3)),
            ArraySpec("pose", "<f4", (7,)),  # position xyz (m), quaternion xyzw
            ArraySpec("gripper", "<f4", (1,)),  # gripper width (m)
        ),
        action=ArraySpec("action", "<f4", (8,)),  # the next step's pose and gripper width
        control_hz=control_hz,
        embodiment=DATASET,
        cameras=("camera",),
    )


def parse_hello(raw: str | bytes, robot_ids: Container[str]) -> PhoneHello:
    """A hello's fields; ``robot_ids``: the connected robots, whose ids a phone may not take."""
    hello = json_object(raw, "hello")
    if hello.get("type") != "hello":
        raise PhoneError("type", "the first message must be a hello")
    phone_id = hello.get("phone_id")
    if not isinstance(phone_id, str) or not PHONE_ID.fullmatch(phone_id):
        raise PhoneError("hello.phone_id", "must be 1-64 letters, digits, '_', '.', '-'")
    if phone_id in robot_ids:
        raise PhoneError("hello.phone_id", f"{phone_id!r} is a connected robot's id")
    caps = hello.get("capabilities")
    if not isinstance(caps, dict):
        raise PhoneError("hello.capabilities", "must be an object with camera, pose and gripper")
    for name in ("camera", "gripper"):
        if not caps.get(name):
            raise PhoneError(f"hello.capabilities.{name}", "is required (a phone streams camera and gripper)")
    tracked = caps.get("pose", True)
    if not isinstance(tracked, bool):
        raise PhoneError("hello.capabilities.pose", f"must be true or false, got {tracked!r}")
    rate = caps.get("rate_hz", 10)
    if not is_number(rate) or not 0.1 <= rate <= 240:
        raise PhoneError("hello.capabilities.rate_hz", f"must be a number in 0.1..240, got {rate!r}")
    pair, token = hello.get("pair"), hello.get("token")
    if pair is not None and not isinstance(pair, str):
        raise PhoneError("hello.pair", "not the current pairing token (each is used once; see the cloud)")
    if pair is None and token is not None and not isinstance(token, str):
        raise PhoneError("hello.token", "must be a string")
    if pair is None and token is None:
        raise PhoneError("hello.pair", "a hello needs a pairing token (pair) or the phone's credential (token)")
    return PhoneHello(phone_id, tracked, float(rate), pair, token)


def parse_step_header(header: dict) -> StepHeader:
    if header.get("type", "step") != "step":
        raise PhoneError("step.type", "a binary frame holds a step or a foresight request")
    episode_id = episode_id_of(header, "step")
    seq = header.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < MAX_SEQ:
        raise PhoneError("step.seq", f"must be an integer in 0..{MAX_SEQ - 1}, got {seq!r}")
    t_mono_ns = header.get("t_mono_ns")
    if not isinstance(t_mono_ns, int) or isinstance(t_mono_ns, bool) or not 0 <= t_mono_ns < 2**63:
        raise PhoneError("step.t_mono_ns", f"must be a non-negative integer (ns), got {t_mono_ns!r}")
    pose = parse_pose(header.get("pose"))
    gripper = parse_gripper(header.get("gripper"), "step.gripper")
    return StepHeader(episode_id, seq, t_mono_ns, pose, gripper)


def parse_stop(message: dict) -> tuple[int, bool]:
    """A stop's step count and success flag."""
    num_steps = message.get("num_steps")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= MAX_SEQ:
        raise PhoneError("stop.num_steps", f"must be the episode's step count, 1..{MAX_SEQ}, got {num_steps!r}")
    success = message.get("success", False)
    if not isinstance(success, bool):
        raise PhoneError("stop.success", "must be true or false")
    return num_steps, success


def parse_gripper(value: object, field: str) -> float:
    if not isinstance(value, int | float) or not is_number(value) or not 0 <= value <= 1:
        raise PhoneError(field, f"must be a width in metres, 0..1, got {value!r}")
    return float(value)


def as_phone_error(check: Callable[[], object]) -> None:
    """Runs one of protocol's checks; its CodecError becomes a PhoneError naming the same field."""
    try:
        check()
    except CodecError as err:
        raise PhoneError(err.field, err.message) from None


def json_object(raw: str | bytes, what: str) -> dict:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PhoneError(what, f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise PhoneError(what, "must be a JSON object")
    return value


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def episode_id_of(message: dict, what: str) -> str:
    episode_id = message.get("episode_id")
    if not isinstance(episode_id, str):
        raise PhoneError(f"{what}.episode_id", "must be a string")
    as_phone_error(lambda: check_id(episode_id, f"{what}.episode_id"))
    return episode_id


def split_binary_frame(frame: bytes) -> tuple[dict, bytes]:
    """A binary frame: 4-byte big-endian header length, the JSON header, then JPEG bytes."""
    if len(frame) < HEADER.size:
        raise PhoneError("step", "a binary frame starts with a 4-byte header length")
    (length,) = HEADER.unpack_from(frame)
    if length > len(frame) - HEADER.size:
        raise PhoneError("step.header_length", f"{length} exceeds the frame's {len(frame) - HEADER.size} bytes")
    return json_object(frame[HEADER.size : HEADER.size + length], "step"), frame[HEADER.size + length :]


def parse_pose(value: object, field: str = "step.pose") -> np.ndarray:
    if not isinstance(value, list) or len(value) != 7 or not all(is_number(v) for v in value):
        raise PhoneError(field, "must be 7 finite numbers: x y z (m), qx qy qz qw")
    pose = np.array(value, dtype=np.float64)
    if np.abs(pose[:3]).max() > 1000:
        raise PhoneError(field, "position is over 1 km from the origin")
    norm = float(np.linalg.norm(pose[3:]))
    if abs(norm - 1) > 0.01:
        raise PhoneError(field, f"the quaternion must be a unit quaternion, its norm is {norm:.4f}")
    pose[3:] /= norm
    return pose.astype(np.float32)


def decode_jpeg(data: bytes, height: int, width: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise PhoneError("step.image", f"{image.width}x{image.height} is over {MAX_IMAGE_PIXELS} pixels")
            image.draft("RGB", (width, height))  # JPEG decodes straight to a smaller scale when it can
            rgb = image.convert("RGB")
            if rgb.size != (width, height):
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise PhoneError("step.image", f"not a JPEG image: {err}") from None


def seq_ranges(seqs: list[int]) -> str:
    """Sorted seqs as short ranges ("0-3, 7"), at most ten of them."""
    parts, start = [], seqs[0]
    for previous, current in zip(seqs, [*seqs[1:], None], strict=True):
        if current != previous + 1 if current is not None else True:
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = current
    return ", ".join(parts[:10]) + (" ..." if len(parts) > 10 else "")
