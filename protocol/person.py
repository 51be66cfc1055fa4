"""A person at a robot's takeover page, on the wire: the checks both ends run on a person's commands (cloud -> edge),
the watch request, the live view and refusals (edge -> cloud). Every error names the field."""

from __future__ import annotations

import math

import numpy as np

from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError, decode_array
from protocol.limits import check_count, check_size
from protocol.steps import check_id

# What a person says besides moving the robot; the same words as edge.operator.Signal.
SIGNALS = ("take_over", "hand_back", "success", "failure", "rerecord", "scene_ready")
MAX_SIGNALS = 8  # per command: a page sends one or two at a time
MAX_ACTION_VALUES = 4096
MAX_COMMAND_BYTES = 64 << 10
MAX_VIEW_RATE_HZ = 30.0
MAX_IMAGE_SIDE = 1024
FRAME_FORMATS = ("jpeg",)
MAX_FRAMES = 8
MAX_FRAME_BYTES = 1 << 20
MAX_VIEW_BYTES = 4 << 20
MAX_STATE_ARRAYS = 32
MAX_STATE_BYTES = 1 << 20  # the observation's arrays besides images, together
MAX_NOTE = 300
MAX_REFUSED_BYTES = 4096


def _check_text(value: str, field: str, limit: int) -> None:
    if len(value) > limit or not value.isprintable():
        raise CodecError(field, f"must be printable and at most {limit} characters")


def check_person_command(command: pb.PersonCommand, action_dim: int | None = None) -> None:
    """A person's command as the cloud relays it; ``action_dim``: the robot's action size (None: not known here)."""
    check_size(command, MAX_COMMAND_BYTES, "person")
    check_id(command.who, "person.who")
    check_id(command.session, "person.session")
    if command.seq < 1:
        raise CodecError("person.seq", f"must be >= 1, got {command.seq}")
    check_count(command.signals, MAX_SIGNALS, "person.signals", "signals")
    for i, signal in enumerate(command.signals):
        if signal not in SIGNALS:
            shown = signal[:40] if signal.isprintable() else repr(signal[:40])
            raise CodecError(f"person.signals[{i}]", f"must be one of {', '.join(SIGNALS)}, got {shown!r}")
    values = list(command.action)
    check_count(values, MAX_ACTION_VALUES, "person.action", "values")
    if values and action_dim is not None and len(values) != action_dim:
        raise CodecError("person.action", f"this robot's action has {action_dim} values, got {len(values)}")
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise CodecError(f"person.action[{i}]", "is NaN or infinite")


def check_watch(watch: pb.WatchRequest) -> None:
    if not 0 <= watch.watchers <= 1 << 16:
        raise CodecError("watch.watchers", f"must be 0..65536, got {watch.watchers}")
    if watch.watchers and not 0 < watch.rate_hz <= MAX_VIEW_RATE_HZ:  # NaN fails this too
        raise CodecError("watch.rate_hz", f"must be in (0, {MAX_VIEW_RATE_HZ:g}], got {watch.rate_hz}")
    if watch.watchers and not 8 <= watch.max_image_side <= MAX_IMAGE_SIDE:
        raise CodecError("watch.max_image_side", f"must be 8..{MAX_IMAGE_SIDE}, got {watch.max_image_side}")


def check_live_view(view: pb.LiveView) -> None:
    """A live view from an edge, bounded before the cloud decodes or forwards any of it."""
    check_size(view, MAX_VIEW_BYTES, "live_view")
    for name in ("episode", "step", "intended_step", "policy_version", "command_seq"):
        if getattr(view, name) < 0:
            raise CodecError(f"live_view.{name}", f"must be >= 0, got {getattr(view, name)}")
    check_id(view.controller, "live_view.controller", required=False)
    _check_text(view.note, "live_view.note", MAX_NOTE)
    check_count(view.state, MAX_STATE_ARRAYS, "live_view.state", "arrays")
    total = 0
    for name, array in view.state.items():
        check_id(name, "live_view.state")
        total += _finite(array, f"live_view.state[{name}]", MAX_STATE_BYTES).nbytes
        if total > MAX_STATE_BYTES:
            raise CodecError("live_view.state", f"more than {MAX_STATE_BYTES} bytes of arrays")
    for name in ("intended", "applied"):
        if view.HasField(name):
            _finite(getattr(view, name), f"live_view.{name}", 8 * MAX_ACTION_VALUES)
    check_count(view.frames, MAX_FRAMES, "live_view.frames", "frames")
    for i, frame in enumerate(view.frames):
        field = f"live_view.frames[{i}]"
        check_id(frame.camera, f"{field}.camera")
        if frame.format not in FRAME_FORMATS:
            raise CodecError(f"{field}.format", f"must be one of {FRAME_FORMATS}, got {frame.format[:20]!r}")
        if not 0 < len(frame.data) <= MAX_FRAME_BYTES:
            raise CodecError(f"{field}.data", f"{len(frame.data)} bytes, must be 1..{MAX_FRAME_BYTES}")
        for side in ("width", "height"):
            if not 0 < getattr(frame, side) <= MAX_IMAGE_SIDE:
                raise CodecError(f"{field}.{side}", f"must be 1..{MAX_IMAGE_SIDE}, got {getattr(frame, side)}")


def _finite(array: pb.Array, field: str, max_bytes: int) -> np.ndarray:
    values = decode_array(array, field, max_bytes=max_bytes)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise CodecError(f"{field}.data", "contains NaN or infinity")
    return values


def check_person_refused(refused: pb.PersonRefused) -> None:
    check_size(refused, MAX_REFUSED_BYTES, "person_refused")
    check_id(refused.who, "person_refused.who")
    check_id(refused.session, "person_refused.session")
    if refused.seq < 0:
        raise CodecError("person_refused.seq", f"must be >= 0, got {refused.seq}")
    _check_text(refused.reason, "person_refused.reason", MAX_NOTE)
