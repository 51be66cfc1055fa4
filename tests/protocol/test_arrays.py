import numpy as np
import pytest

from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError, decode_array, encode_array


@pytest.mark.parametrize("dtype", ["f4", "f8", "u1", "i8", "bool"])
@pytest.mark.parametrize("compression", ["", "zlib"])
def test_round_trip(dtype: str, compression: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 2).astype(dtype)
    decoded = decode_array(encode_array(array, compression))
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_object_dtype_cannot_be_encoded() -> None:
    with pytest.raises(CodecError, match="dtype"):
        encode_array(np.array([object()]))


def test_decode_refuses_unknown_dtype() -> None:
    with pytest.raises(CodecError) as err:
        decode_array(pb.Array(dtype="|O", shape=[1], data=b"\0" * 8), field="columns[action]")
    assert err.value.field == "columns[action].dtype"


def test_decode_refuses_length_mismatch() -> None:
    with pytest.raises(CodecError) as err:
        decode_array(pb.Array(dtype="<f4", shape=[2, 2], data=b"\0" * 12))
    assert err.value.field == "array.data"


def test_decode_refuses_oversized_shape_before_allocating() -> None:
    with pytest.raises(CodecError) as err:
        decode_array(pb.Array(dtype="<f8", shape=[1 << 20, 1 << 20], data=b""), max_bytes=1 << 20)
    assert err.value.field == "array.shape"


def test_decode_refuses_zlib_bomb() -> None:
    bomb = encode_array(np.zeros(1 << 20, dtype=np.uint8), "zlib")
    bomb.shape[:] = [16]
    with pytest.raises(CodecError, match="array.data"):
        decode_array(bomb)
