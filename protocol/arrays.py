"""The array codec: numpy arrays as dtype + shape + raw bytes, optionally zlib-compressed.

Never pickle: decoding only ever calls ``np.frombuffer`` on a dtype from an allow-list.
"""

from __future__ import annotations

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
    array = np.ascontiguousarray(array)
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
    """Decodes and validates an Array message; errors name ``field`` and the part that is wrong."""
    if message.dtype not in ALLOWED_DTYPES:
        raise CodecError(f"{field}.dtype", f"dtype {message.dtype!r} is not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
    if len(message.shape) > MAX_DIMS:
        raise CodecError(f"{field}.shape", f"{len(message.shape)} dimensions, at most {MAX_DIMS}")
    if any(d < 0 for d in message.shape):
        raise CodecError(f"{field}.shape", f"negative dimension in {list(message.shape)}")
    dtype = np.dtype(message.dtype)
    count = int(np.prod(message.shape, dtype=np.int64)) if message.shape else 1
    expected = count * dtype.itemsize
    if expected > max_bytes:
        raise CodecError(f"{field}.shape", f"{expected} bytes exceeds the limit of {max_bytes}")
    data = message.data
    if message.compression == "zlib":
        try:
            inflater = zlib.decompressobj()
            data = inflater.decompress(data, expected + 1)
        except zlib.error as exc:
            raise CodecError(f"{field}.data", f"zlib data is corrupt: {exc}") from exc
    elif message.compression != "":
        raise CodecError(f"{field}.compression", f"unknown compression {message.compression!r}; known: {COMPRESSIONS}")
    if len(data) != expected:
        raise CodecError(
            f"{field}.data",
            f"{len(data)} bytes do not match dtype {message.dtype} and shape {list(message.shape)} ({expected} bytes)",
        )
    return np.frombuffer(data, dtype=dtype).reshape(tuple(message.shape))
