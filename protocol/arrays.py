"""The array codec: numpy arrays as dtype + shape + raw bytes, optionally zlib-compressed.

Never pickle: decoding only ever calls ``np.frombuffer`` on a dtype from an allow-list.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from protocol import tunnel_pb2 as pb

# Only plain numeric and boolean dtypes travel; object, void and string dtypes could
# smuggle code or unbounded data.
ALLOWED_DTYPES = frozenset(
    np.dtype(t).str for t in ("bool", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8")
)
COMPRESSIONS = ("", "zlib")
MAX_ARRAY_BYTES = 256 * 1024 * 1024
MAX_DIMS = 8


class CodecError(ValueError):
    """A message is malformed. ``field`` names the offending part of it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def encode_array(array: np.ndarray, compression: str = "") -> pb.Array:
    array = np.asarray(array)
    if not array.flags.c_contiguous:  # np.ascontiguousarray would also turn a 0-d array into shape (1,)
        array = array.copy(order="C")
    dtype = array.dtype.str
    if dtype not in ALLOWED_DTYPES:
        raise CodecError("dtype", f"dtype {array.dtype} cannot travel; allowed: {sorted(ALLOWED_DTYPES)}")
    if compression not in COMPRESSIONS:
        raise CodecError("compression", f"unknown compression {compression!r}; known: {COMPRESSIONS}")
    data = array.tobytes()
    if compression == "zlib":
        data = zlib.compress(data, level=1)
    return pb.Array(dtype=dtype, shape=list(array.shape), data=data, compression=compression)


def decode_array(message: pb.Array, field: str = "array", max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """Decodes and validates an Array message; errors name ``field`` and the part that is wrong.

    The decoded size is checked against ``max_bytes`` before anything is allocated or inflated, and
    compressed data is inflated at most one byte past the size the shape announces (no zlib bombs).
    """
    if message.dtype not in ALLOWED_DTYPES:
        raise CodecError(f"{field}.dtype", f"dtype {message.dtype!r} is not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
    shape = tuple(int(d) for d in message.shape)
    if len(shape) > MAX_DIMS:
        raise CodecError(f"{field}.shape", f"{len(shape)} dimensions, at most {MAX_DIMS}")
    if any(d < 0 for d in shape):
        raise CodecError(f"{field}.shape", f"negative dimension in {list(shape)}")
    dtype = np.dtype(message.dtype)
    # Python integers: numpy's int64 product wraps around (2**32 * 2**32 == 0) and would let a huge shape pass.
    expected = math.prod(shape) * dtype.itemsize
    # Dimensions beside a 0 count too: numpy cannot even describe an empty array of shape (2**62, 0).
    if max(expected, math.prod(max(d, 1) for d in shape) * dtype.itemsize) > max_bytes:
        raise CodecError(f"{field}.shape", f"{list(shape)} of {message.dtype} exceeds the limit of {max_bytes} bytes")
    data = message.data
    if message.compression == "zlib":
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(data, expected + 1)
        except zlib.error as exc:
            raise CodecError(f"{field}.data", f"zlib data is corrupt: {exc}") from exc
        if len(data) == expected and (not inflater.eof or inflater.unused_data):
            # A stream cut short has not had its checksum verified; bytes after its end are not ours.
            why = "is truncated" if not inflater.eof else f"has {len(inflater.unused_data)} bytes after its end"
            raise CodecError(f"{field}.data", f"zlib stream {why}")
    elif message.compression != "":
        raise CodecError(f"{field}.compression", f"unknown compression {message.compression!r}; known: {COMPRESSIONS}")
    if len(data) != expected:
        size = f"{len(data)}" if len(data) <= expected else f"more than {expected}"
        raise CodecError(
            f"{field}.data",
            f"{size} bytes do not match dtype {message.dtype} and shape {list(shape)} ({expected} bytes)",
        )
    values = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype.kind == "b" and expected and np.frombuffer(data, dtype=np.uint8).max() > 1:
        # numpy would carry other byte values as "true" that compare unequal to True.
        raise CodecError(f"{field}.data", "boolean bytes must be 0 or 1")
    return values
