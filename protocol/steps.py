"""Columnar step batches: what a step carries, and how a batch is built and checked.

A batch holds consecutive steps of one episode. Every column has one row per step; the
schema (dtype and per-row shape of each column) follows from the resource's capabilities. A camera column
(uint8 H x W x 3) travels either raw in ``columns`` or encoded in ``video`` (``protocol.video.PacketColumn``).
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError, decode_array, encode_array
from protocol.policy_chunks import _varint
from protocol.video import CODECS, PacketColumn, max_packet_bytes

# Columns every step carries besides its observations, with dtype and per-row shape.
PROVENANCE_COLUMNS: dict[str, tuple[str, tuple[int, ...]]] = {
    "reward": ("<f4", ()),
    "done": ("|b1", ()),
    "success": ("|b1", ()),
    "intervention": ("|b1", ()),
    "policy_version": ("<i8", ()),
    "t_mono_ns": ("<i8", ()),
}
# What a person may say of an episode (``StepBatch.label.outcome``); "discarded": re-recorded, kept, never trained on.
OUTCOMES = ("success", "failure", "discarded")
MAX_STEPS_PER_BATCH = 4096
MAX_BATCH_BYTES = 32 * 1024 * 1024
# What one message may decode to, all its columns together: as much as an uncompressed batch may carry, so
# compression only ever saves bandwidth (1 MiB of zlib could otherwise become a GiB on the gateway).
MAX_DECODED_BYTES = MAX_BATCH_BYTES
MAX_ID_LENGTH = 128

Schema = dict[str, tuple[str, tuple[int, ...]]]
Columns = dict[str, np.ndarray | PacketColumn]  # a decoded batch: arrays, and encoded cameras as they came


def schema_for(observation: list[tuple[str, str, tuple[int, ...]]], action: tuple[str, tuple[int, ...]]) -> Schema:
    """The column schema of a resource: ``obs.<name>`` per observation, ``action``, provenance."""
    schema: Schema = {f"obs.{name}": (np.dtype(dtype).str, tuple(shape)) for name, dtype, shape in observation}
    schema["action"] = (np.dtype(action[0]).str, tuple(action[1]))
    schema.update(PROVENANCE_COLUMNS)
    return schema


def encode_batch(
    episode_id: str,
    first_seq: int,
    columns: dict[str, np.ndarray],
    task: str = "",
    batch_id: int = 0,
    compression: str = "",
    label: pb.EpisodeLabel | None = None,
    video: dict[str, PacketColumn] | None = None,
) -> pb.StepBatch:
    """``label``: a person's verdict on the episode, on its last batch only. ``video``: encoded camera columns, each
    absent from ``columns``."""
    num_steps = len(next(iter(columns.values())))
    return pb.StepBatch(
        batch_id=batch_id,
        episode_id=episode_id,
        first_seq=first_seq,
        num_steps=num_steps,
        task=task,
        columns={name: encode_array(np.asarray(values), compression) for name, values in columns.items()},
        label=label,
        video={name: encode_video(column) for name, column in (video or {}).items()},
    )


def encode_video(column: PacketColumn) -> pb.EncodedFrames:
    """A camera column's packets as they travel in ``StepBatch.video``."""
    return pb.EncodedFrames(codec=column.codec, packets=column.packets, keyframe=column.keyframe.tolist())


def is_camera(dtype: str, shape: tuple[int, ...]) -> bool:
    """Whether a column's rows are RGB images (uint8 H x W x 3): the only columns that may travel encoded."""
    return np.dtype(dtype) == np.uint8 and len(shape) == 3 and shape[2] == 3


def decode_video(
    message: pb.EncodedFrames, field: str, num_steps: int, dtype: str, shape: tuple[int, ...]
) -> PacketColumn:
    """An encoded camera column, checked without decoding a pixel: a known codec, one packet per step, none empty
    or larger than the camera's raw frame plus header room (``max_packet_bytes``), every JPEG packet a keyframe.
    Whether the packets decode to this camera's frames is the receiver's to check (keyframes cheaply)."""
    if not is_camera(dtype, shape):
        raise CodecError(field, f"is {dtype} {list(shape)}; only uint8 H x W x 3 camera columns travel encoded")
    if message.codec not in CODECS:
        raise CodecError(f"{field}.codec", f"must be one of {list(CODECS)}, got {quoted(message.codec)}")
    if len(message.packets) != num_steps:
        raise CodecError(f"{field}.packets", f"{len(message.packets)} packets for {num_steps} steps")
    if len(message.keyframe) != num_steps:
        raise CodecError(f"{field}.keyframe", f"{len(message.keyframe)} flags for {num_steps} steps")
    limit = max_packet_bytes(shape[1], shape[0])
    for i, packet in enumerate(message.packets):
        if not packet:
            raise CodecError(f"{field}.packets[{i}]", "is empty")
        if len(packet) > limit:
            raise CodecError(f"{field}.packets[{i}]", f"{len(packet)} bytes, over this camera's limit of {limit}")
    keyframe = np.array(message.keyframe, dtype=bool)
    if message.codec == "jpeg" and not keyframe.all():
        raise CodecError(
            f"{field}.keyframe[{int(np.argmin(keyframe))}]", "every JPEG frame decodes alone: must be true"
        )
    return PacketColumn(message.codec, tuple(message.packets), keyframe)


def check_id(value: str, field: str, required: bool = True) -> None:
    """An id or a short label: printable, at most MAX_ID_LENGTH characters (empty only when not ``required``)."""
    if not value:
        if required:
            raise CodecError(field, "is missing")
        return
    if len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise CodecError(field, f"must be printable and at most {MAX_ID_LENGTH} characters")


def quoted(name: str, limit: int = 64) -> str:
    """A name the sender chose, made safe to put in a field path: short and printable."""
    if name and len(name) <= limit and name.isprintable() and not set(name) & set("[]'\""):
        return name
    return repr(name[:limit]) + ("..." if len(name) > limit else "")


def decoded_bytes(schema: Schema, rows: int = 1, prefix: str = "", skip: Collection[str] = ()) -> int:
    """The bytes ``rows`` rows of the schema's columns (those whose name starts with ``prefix``, but not those in
    ``skip``) decode to."""
    return rows * sum(
        math.prod(shape) * np.dtype(dtype).itemsize
        for name, (dtype, shape) in schema.items()
        if name.startswith(prefix) and name not in skip
    )


def check_decoded_size(size: int, limit: int, field: str) -> None:
    """Refuses a message whose arrays would decode to more than ``limit`` bytes, before any is inflated."""
    if size > limit:
        raise CodecError(
            field, f"decodes to {size} bytes (its arrays together), over the limit of {limit} (max_decoded_bytes)"
        )


def decode_batch(
    batch: pb.StepBatch,
    schema: Schema,
    max_bytes: int = MAX_BATCH_BYTES,
    max_decoded: int = MAX_DECODED_BYTES,
    size: int | None = None,
) -> Columns:
    """Checks a batch against the schema and returns its columns; errors name the offending field. ``size``: its
    bytes when the caller knows them, or an upper bound (the message it came in), spares walking it to count them.

    Every column must have the schema's shape, so what the batch decodes to is known from ``num_steps``: past
    ``max_decoded`` bytes it is refused before anything is inflated. Encoded cameras (``video``) come back as
    ``PacketColumn``s, not decoded (see ``decode_video``); only their keyframes count towards ``max_decoded``.
    """
    check_id(batch.episode_id, "step_batch.episode_id")
    check_id(batch.task, "step_batch.task", required=False)
    if batch.first_seq < 0:
        raise CodecError("step_batch.first_seq", f"must be >= 0, got {batch.first_seq}")
    if not 1 <= batch.num_steps <= MAX_STEPS_PER_BATCH:
        raise CodecError("step_batch.num_steps", f"must be 1..{MAX_STEPS_PER_BATCH}, got {batch.num_steps}")
    size = batch.ByteSize() if size is None else size
    if size > max_bytes:
        raise CodecError("step_batch", f"{size} bytes exceeds the limit of {max_bytes}")
    _check_names(batch, schema)
    # Of an encoded camera, the receiver decodes its keyframes (and JPEG frames) alone to check them: those count.
    checked_frames = sum(
        decoded_bytes({name: schema[name]}, sum(video.keyframe)) for name, video in batch.video.items()
    )
    size = decoded_bytes(schema, batch.num_steps, skip=batch.video) + checked_frames
    check_decoded_size(size, max_decoded, "step_batch")
    columns: Columns = {}
    for name, (dtype, row_shape) in schema.items():
        if name in batch.video:
            field = f"step_batch.video[{name}]"
            columns[name] = decode_video(batch.video[name], field, batch.num_steps, dtype, row_shape)
        else:
            field = f"step_batch.columns[{name}]"
            columns[name] = decode_checked(batch.columns[name], field, dtype, (batch.num_steps, *row_shape), max_bytes)
    check_label(batch, columns)
    return columns


def only_copies(batch: pb.StepBatch) -> bool:
    """Whether decoding the batch only copies and checks bytes: no encoded frames, no compressed column."""
    return not batch.video and not any(column.compression for column in batch.columns.values())


def _check_names(batch: pb.StepBatch, schema: Schema) -> None:
    """Every schema column once, in ``columns`` or in ``video``, and nothing else."""
    for where, names in (("video", batch.video), ("columns", batch.columns)):
        unknown = sorted(set(names) - set(schema))
        if unknown:
            raise CodecError(
                f"step_batch.{where}[{quoted(unknown[0])}]", f"is not in this resource's schema {sorted(schema)}"
            )
    both = sorted(set(batch.video) & set(batch.columns))
    if both:
        raise CodecError(
            f"step_batch.video[{both[0]}]", "is also in columns; a camera travels raw or encoded, not both"
        )
    missing = sorted(set(schema) - set(batch.columns) - set(batch.video))
    if missing:
        raise CodecError(f"step_batch.columns[{missing[0]}]", "is missing")


def check_label(batch: pb.StepBatch, columns: Columns) -> None:
    """A person's label: a known outcome, a printable bounded name, only where the episode ends, agreeing with its last
    step's success."""
    if not batch.HasField("label"):
        return
    label = batch.label
    if label.outcome not in OUTCOMES:
        raise CodecError("step_batch.label.outcome", f"must be one of {list(OUTCOMES)}, got {quoted(label.outcome)}")
    check_id(label.by, "step_batch.label.by")
    if "done" in columns and not columns["done"][-1]:
        raise CodecError("step_batch.label", "only the batch that ends its episode (its last step done) has a label")
    if (
        "success" in columns
        and label.outcome != "discarded"
        and bool(columns["success"][-1]) != (label.outcome == "success")
    ):
        raise CodecError(
            "step_batch.label.outcome",
            f"{label.outcome!r} but the last step's success is {bool(columns['success'][-1])}",
        )


def decode_operators(batch: pb.StepBatch, intervention: np.ndarray) -> tuple[str, ...]:
    """Who drove each step of a batch: none, or one entry per step, a person's identity only on intervention steps."""
    operators = tuple(batch.operators)
    if not operators:
        return ()
    if len(operators) != batch.num_steps:
        raise CodecError("step_batch.operators", f"{len(operators)} entries for {batch.num_steps} steps")
    for i, who in enumerate(operators):
        check_id(who, f"step_batch.operators[{i}]", required=False)
        if who and not intervention[i]:
            raise CodecError(f"step_batch.operators[{i}]", "names a person on a step that is not an intervention")
    return operators


def decode_checked(message: pb.Array, field: str, dtype: str, shape: tuple[int, ...], max_bytes: int) -> np.ndarray:
    """An array that must have exactly this dtype and shape and, if float, only finite values."""
    if message.dtype != dtype:
        raise CodecError(f"{field}.dtype", f"expected {dtype}, got {message.dtype!r}")
    if tuple(message.shape) != tuple(shape):
        raise CodecError(f"{field}.shape", f"expected {list(shape)}, got {list(message.shape)}")
    values = decode_array(message, field, max_bytes=max_bytes)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise CodecError(f"{field}.data", "contains NaN or infinity")
    return values


def decode_observation(
    request: pb.InferenceRequest,
    schema: Schema,
    max_bytes: int = MAX_BATCH_BYTES,
    max_decoded: int = MAX_DECODED_BYTES,
) -> dict[str, np.ndarray]:
    """One observation for remote inference, keyed by observation name (no "obs." prefix); errors name the field."""
    size = request.ByteSize()
    if size > max_bytes:
        raise CodecError("infer", f"{size} bytes exceeds the limit of {max_bytes}")
    check_decoded_size(decoded_bytes(schema, prefix="obs."), max_decoded, "infer")
    expected = {name.removeprefix("obs."): spec for name, spec in schema.items() if name.startswith("obs.")}
    missing = sorted(set(expected) - set(request.observation))
    if missing:
        raise CodecError(f"infer.observation[{missing[0]}]", "is missing")
    unknown = sorted(set(request.observation) - set(expected))
    if unknown:
        raise CodecError(f"infer.observation[{quoted(unknown[0])}]", f"is not one of {sorted(expected)}")
    return {
        name: decode_checked(request.observation[name], f"infer.observation[{name}]", dtype, shape, max_bytes)
        for name, (dtype, shape) in expected.items()
    }


_STEPS_TAG = _varint(pb.EdgeMessage.DESCRIPTOR.fields_by_name["steps"].number << 3 | 2)  # length-delimited
_BATCH_ID_TAG = _varint(pb.StepBatch.DESCRIPTOR.fields_by_name["batch_id"].number << 3)  # varint


def steps_message(batch: bytes, batch_id: int) -> bytes:
    """The bytes of ``EdgeMessage(steps=<batch with batch_id set>)`` from a serialized StepBatch, without parsing it
    or serializing it again (an edge sends its spooled batches this way): a scalar field appended to a message
    overrides any earlier value of it, and a message field is its bytes behind a tag and a length."""
    return b"".join(steps_message_parts(batch, batch_id))


def steps_message_parts(batch: bytes, batch_id: int) -> tuple[bytes, bytes, bytes]:
    """``steps_message`` as the parts to write one after another (the batch not copied): head, batch, tail."""
    tail = _BATCH_ID_TAG + _varint(batch_id & (1 << 64) - 1)  # a negative int64 as its two's complement
    return _STEPS_TAG + _varint(len(batch) + len(tail)), batch, tail


def batch_of_message(message: bytes, batch_id: int) -> memoryview:
    """The serialized StepBatch inside ``steps_message(batch, batch_id)``'s bytes, not copied."""
    at, length, shift = len(_STEPS_TAG), 0, 0
    while True:  # the length's varint
        byte = message[at]
        length |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            break
    tail = len(_BATCH_ID_TAG) + len(_varint(batch_id & (1 << 64) - 1))
    if message[: len(_STEPS_TAG)] != _STEPS_TAG or at + length != len(message) or length < tail:
        raise ValueError("not the bytes of a steps message")
    return memoryview(message)[at : len(message) - tail]
