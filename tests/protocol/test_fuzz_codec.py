"""Property-based fuzzing of the array codec and of step batch decoding.

Whatever arrives, the decoders either return exactly what the bytes say or raise CodecError naming the
field; no other exception, and never an allocation past the byte limit (measured with tracemalloc).
"""

from __future__ import annotations

import math
import os
import re
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import tunnel_pb2 as pb
from protocol.arrays import ALLOWED_DTYPES, MAX_DIMS, CodecError, decode_array, encode_array
from protocol.steps import MAX_ID_LENGTH, MAX_STEPS_PER_BATCH, Schema, decode_batch, encode_batch, schema_for

# `make test` runs a fixed, bounded set of examples; FLEETLOOP_FUZZ_EXAMPLES=5000 hunts with fresh random ones.
EXAMPLES = int(os.environ.get("FLEETLOOP_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 150,
    derandomize=not EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LIMIT = 1 << 16  # decoded bytes the fuzzed decoders may produce
# What a field path looks like: "array.shape", "step_batch.columns[obs.state].data", "step_batch.task", ...
ARRAY_FIELD = re.compile(r"array\.(dtype|shape|data|compression)")
BATCH_FIELD = re.compile(
    r"step_batch(\.(episode_id|first_seq|num_steps|task)"
    r"|\.columns\[(?:[^\[\]'\"\n]+|'.*'(?:\.\.\.)?|\".*\"(?:\.\.\.)?)\](\.(dtype|shape|data|compression))?)?"
)

DTYPES = sorted(ALLOWED_DTYPES)
# 64 MiB of zeros inflate from about 64 KiB: a bomb for every limit used here.
BOMB = zlib.compress(bytes(64 << 20), 9)
wire_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)  # protobuf strings are valid UTF-8


def decode_bounded(message: pb.Array, limit: int = LIMIT) -> np.ndarray:
    """decode_array under tracemalloc: the peak it allocates stays near the limit, whatever the message says."""
    tracemalloc.start()
    try:
        return decode_array(message, max_bytes=limit)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 2 * limit + 2 * len(message.data) + (1 << 16), f"decoding allocated {peak} bytes"


def inflated(message: pb.Array) -> bytes:
    return zlib.decompress(message.data) if message.compression == "zlib" else message.data


def assert_exact(decoded: np.ndarray, message: pb.Array) -> None:
    """What a successful decode must be: the message's dtype and shape over exactly its (inflated) bytes."""
    assert decoded.dtype.str == message.dtype
    assert decoded.shape == tuple(message.shape)
    assert decoded.nbytes <= LIMIT
    assert decoded.tobytes() == inflated(message)
    if decoded.dtype.kind == "b":
        assert set(decoded.view(np.uint8).ravel().tolist()) <= {0, 1}


# ---- arrays ----------------------------------------------------------------------------------------------


@st.composite
def valid_arrays(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    return draw(hnp.arrays(dtype, shape))  # NaN, infinities, subnormals included for floats


@FUZZ
@given(array=valid_arrays(), compression=st.sampled_from(["", "zlib"]))
def test_valid_arrays_round_trip_exactly(array: np.ndarray, compression: str) -> None:
    message = encode_array(array, compression)
    decoded = decode_bounded(pb.Array.FromString(message.SerializeToString()))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()  # bit for bit, NaN payloads too


dims = st.one_of(
    st.integers(0, 8),
    st.integers(-3, -1),
    st.sampled_from([1 << 31, 1 << 32, 1 << 62, (1 << 63) - 1, -(1 << 63)]),
    st.integers(-(1 << 63), (1 << 63) - 1),
)


@st.composite
def arbitrary_arrays(draw) -> pb.Array:
    dtype = draw(
        st.one_of(st.sampled_from(DTYPES), st.sampled_from(["<f16", "|O", "<U4", "|V8", ">f4", "f4"]), wire_text)
    )
    shape = draw(st.lists(dims, max_size=MAX_DIMS + 2))
    compression = draw(st.sampled_from(["", "", "zlib", "zlib", "gzip", "ZLIB", "lz4"]))
    payload = draw(st.binary(max_size=256))
    data = draw(
        st.sampled_from(
            [
                payload,
                zlib.compress(payload),
                zlib.compress(payload)[:-1],  # no checksum
                zlib.compress(payload) + b"tail",
                BOMB,
                BOMB[: len(BOMB) // 2],
            ]
        )
    )
    return pb.Array(dtype=dtype, shape=shape, data=data, compression=compression)


def assert_decodes_exactly_or_names_the_field(message: pb.Array) -> None:
    try:
        decoded = decode_bounded(message)
    except CodecError as err:
        assert ARRAY_FIELD.fullmatch(err.field), err.field
        return
    assert_exact(decoded, message)


@FUZZ
@given(message=arbitrary_arrays())
def test_arbitrary_array_messages_decode_exactly_or_name_the_field(message: pb.Array) -> None:
    assert_decodes_exactly_or_names_the_field(message)


@st.composite
def mutated_arrays(draw) -> pb.Array:
    message = encode_array(draw(valid_arrays()), draw(st.sampled_from(["", "zlib"])))
    mutation = draw(st.sampled_from(["dim", "add_dim", "drop_dim", "dtype", "truncate", "extend", "flip", "plain"]))
    if mutation == "dim" and message.shape:
        i = draw(st.integers(0, len(message.shape) - 1))
        message.shape[i] = draw(dims)
    elif mutation == "add_dim":
        message.shape.insert(draw(st.integers(0, len(message.shape))), draw(dims))
    elif mutation == "drop_dim" and message.shape:
        del message.shape[draw(st.integers(0, len(message.shape) - 1))]
    elif mutation == "dtype":
        message.dtype = draw(st.sampled_from(DTYPES))  # same bytes read as another type: fine if sizes fit
    elif mutation == "truncate" and message.data:
        message.data = message.data[: draw(st.integers(0, len(message.data) - 1))]
    elif mutation == "extend":
        message.data += draw(st.binary(min_size=1, max_size=16))
    elif mutation == "flip" and message.data:
        i = draw(st.integers(0, len(message.data) - 1))
        data = bytearray(message.data)
        data[i] ^= draw(st.integers(1, 255))
        message.data = bytes(data)
    elif mutation == "plain":
        message.compression = "" if message.compression else "zlib"
    return message


@FUZZ
@given(message=mutated_arrays())
def test_mutated_array_messages_decode_exactly_or_name_the_field(message: pb.Array) -> None:
    assert_decodes_exactly_or_names_the_field(message)


@pytest.mark.parametrize(
    ("shape", "compression", "field"),
    [
        ([16], "zlib", "array.data"),  # announces 16 bytes, inflates to 64 MiB
        ([LIMIT], "zlib", "array.data"),  # announces the whole limit, inflates past it
        ([64 << 20], "zlib", "array.shape"),  # announces the truth, which is past the limit
        ([1 << 32, 1 << 32], "", "array.shape"),  # 2**64 elements: wraps to 0 in int64 arithmetic
        ([1 << 62, 4], "", "array.shape"),
    ],
)
def test_bombs_and_overflowing_shapes_are_refused_without_allocating(shape, compression, field) -> None:
    message = pb.Array(dtype="|u1", shape=shape, data=BOMB if compression else b"", compression=compression)
    with pytest.raises(CodecError) as err:
        decode_bounded(message)
    assert err.value.field == field


def test_zlib_stream_cut_short_or_with_trailing_bytes_is_refused() -> None:
    whole = encode_array(np.arange(64, dtype=np.uint8), "zlib")
    for data in (whole.data[:-2], whole.data + b"\0"):
        with pytest.raises(CodecError, match="zlib stream") as err:
            decode_array(pb.Array(dtype="|u1", shape=[64], data=data, compression="zlib"))
        assert err.value.field == "array.data"


def test_booleans_other_than_0_and_1_are_refused() -> None:
    with pytest.raises(CodecError, match="0 or 1") as err:
        decode_array(pb.Array(dtype="|b1", shape=[3], data=b"\x00\x01\x02"), field="step_batch.columns[done]")
    assert err.value.field == "step_batch.columns[done].data"


# ---- step batches ----------------------------------------------------------------------------------------

names = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=8)
float_dtypes = [d for d in DTYPES if d[1] == "f"]


@st.composite
def schemas(draw) -> Schema:
    observations = draw(
        st.lists(
            st.tuples(names, st.sampled_from(DTYPES), hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
            max_size=3,
            unique_by=lambda o: o[0],
        )
    )
    action = (draw(st.sampled_from(float_dtypes)), draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)))
    return schema_for(observations, action)


def valid_columns(draw, schema: Schema, num_steps: int) -> dict[str, np.ndarray]:
    return {
        name: draw(
            hnp.arrays(
                np.dtype(dtype),
                (num_steps, *shape),
                elements={"allow_nan": False, "allow_infinity": False} if dtype[1] == "f" else None,
            )
        )
        for name, (dtype, shape) in schema.items()
    }


episode_ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20)


@st.composite
def valid_batches(draw) -> tuple[Schema, dict[str, np.ndarray], pb.StepBatch]:
    schema = draw(schemas())
    columns = valid_columns(draw, schema, draw(st.integers(1, 6)))
    assume(all(c.view(np.uint8).max(initial=0) <= 1 for c in columns.values() if c.dtype.kind == "b"))
    batch = encode_batch(
        draw(episode_ids.filter(str.isprintable)),
        draw(st.integers(0, (1 << 63) - 1)),
        columns,
        task=draw(st.text(max_size=20).filter(str.isprintable)),
        batch_id=draw(st.integers(-(1 << 63), (1 << 63) - 1)),
        compression=draw(st.sampled_from(["", "zlib"])),
    )
    return schema, columns, batch


@FUZZ
@given(case=valid_batches())
def test_valid_batches_round_trip(case) -> None:
    schema, columns, batch = case
    decoded = decode_batch(pb.StepBatch.FromString(batch.SerializeToString()), schema)
    assert set(decoded) == set(schema)
    for name, values in columns.items():
        assert decoded[name].dtype == values.dtype and decoded[name].tobytes() == values.tobytes()


def assert_valid_result(decoded: dict[str, np.ndarray], batch: pb.StepBatch, schema: Schema) -> None:
    """Everything decode_batch returns satisfies the schema, the id rules and the finiteness rule."""
    assert set(decoded) == set(schema)
    assert 1 <= batch.num_steps <= MAX_STEPS_PER_BATCH and batch.first_seq >= 0
    for text in (batch.episode_id, batch.task):
        assert len(text) <= MAX_ID_LENGTH and text.isprintable()
    assert batch.episode_id
    for name, (dtype, shape) in schema.items():
        values = decoded[name]
        assert values.dtype.str == dtype and values.shape == (batch.num_steps, *shape)
        assert values.tobytes() == inflated(batch.columns[name])
        if values.dtype.kind == "f":
            assert np.isfinite(values).all()


@st.composite
def mutated_batches(draw) -> tuple[Schema, pb.StepBatch]:
    schema, _, batch = draw(valid_batches())
    for _ in range(draw(st.integers(1, 3))):
        mutation = draw(
            st.sampled_from(
                ["drop", "extra", "num_steps", "nonfinite", "episode_id", "first_seq", "task", "column", "bool"]
            )
        )
        column = draw(st.sampled_from(sorted(schema)))
        if mutation == "drop" and column in batch.columns:
            del batch.columns[column]
        elif mutation == "extra":
            rows = max(batch.num_steps, 0) % 64  # num_steps may be mutated already
            batch.columns[draw(st.one_of(names, wire_text))].CopyFrom(encode_array(np.zeros(rows)))
        elif mutation == "num_steps":
            batch.num_steps = draw(st.one_of(st.integers(-2, 8), st.integers(-(1 << 31), (1 << 31) - 1)))
        elif mutation == "nonfinite":
            dtype, shape = schema[column]
            if dtype[1] == "f" and math.prod(shape) > 0 and 1 <= batch.num_steps <= 8:
                values = np.zeros((batch.num_steps, *shape), dtype)
                values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
                batch.columns[column].CopyFrom(encode_array(values, draw(st.sampled_from(["", "zlib"]))))
        elif mutation == "episode_id":
            batch.episode_id = draw(st.one_of(wire_text, st.text(min_size=100, max_size=200), st.just("")))
        elif mutation == "first_seq":
            batch.first_seq = draw(st.integers(-(1 << 63), -1))
        elif mutation == "task":
            batch.task = draw(st.one_of(wire_text, st.text("t", min_size=MAX_ID_LENGTH + 1, max_size=300)))
        elif mutation == "column" and column in batch.columns:
            batch.columns[column].CopyFrom(draw(st.one_of(arbitrary_arrays(), mutated_arrays())))
        elif mutation == "bool":
            data = bytearray(batch.columns["done"].data if batch.columns["done"].compression == "" else b"")
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(2, 255))
                batch.columns["done"].data = bytes(data)
    return schema, batch


def decode_or_name_the_field(batch: pb.StepBatch, schema: Schema) -> None:
    tracemalloc.start()
    try:
        decoded = decode_batch(batch, schema, max_bytes=LIMIT)
    except CodecError as err:
        assert BATCH_FIELD.fullmatch(err.field), err.field
        return
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 4 * LIMIT + 2 * batch.ByteSize(), f"decoding allocated {peak} bytes"
    assert_valid_result(decoded, batch, schema)


@FUZZ
@given(case=mutated_batches())
def test_mutated_batches_decode_exactly_or_name_the_field(case) -> None:
    decode_or_name_the_field(case[1], case[0])


@FUZZ
@given(schema=schemas(), raw=st.binary(max_size=512))
def test_arbitrary_bytes_as_a_batch_never_break_the_decoder(schema: Schema, raw: bytes) -> None:
    from google.protobuf.message import DecodeError

    try:
        batch = pb.StepBatch.FromString(raw)
    except DecodeError:
        return  # what grpc refuses before the gateway sees it
    decode_or_name_the_field(batch, schema)


def test_unknown_column_names_are_quoted_and_cut_short_in_the_field() -> None:
    schema = schema_for([("state", "<f4", (2,))], ("<f4", (1,)))
    batch = encode_batch("ep", 0, {name: np.zeros((1, *shape), dtype) for name, (dtype, shape) in schema.items()})
    batch.columns["x" * 10_000 + "\n"].CopyFrom(encode_array(np.zeros(1)))
    with pytest.raises(CodecError) as err:
        decode_batch(batch, schema)
    assert err.value.field.startswith("step_batch.columns['xxx") and len(err.value.field) < 100


def test_an_overlong_task_is_refused() -> None:
    schema = schema_for([], ("<f4", (1,)))
    batch = encode_batch("ep", 0, {name: np.zeros((1, *shape), dtype) for name, (dtype, shape) in schema.items()})
    batch.task = "t" * (MAX_ID_LENGTH + 1)
    with pytest.raises(CodecError) as err:
        decode_batch(batch, schema)
    assert err.value.field == "step_batch.task"
