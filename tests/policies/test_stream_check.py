"""A registry file checked against the learner's signature as its bytes pass by (``StreamCheck``): the same verdicts
as the whole-file check, in any cut of the bytes, and a foreign header refused before the tensors come."""

from __future__ import annotations

import pytest

from policies.factory import make_policy
from policies.signing import Signer, StreamCheck, UnsignedVersion
from policies.weights import policy_to_bytes

LEARNER = Signer.generate()


def signed(version: int = 3) -> bytes:
    policy = make_policy("mlp", {"observation": {"state": {"shape": [5], "dtype": "float32"}}, "action_dim": 2})
    return LEARNER.sign(policy_to_bytes(policy), "pick", version)


def stream(data: bytes, step: int, total: int | None = None, version: int = 3) -> StreamCheck:
    check = StreamCheck(LEARNER, "pick", version, len(data) if total is None else total)
    for offset in range(0, len(data), step):
        check.update(data[offset : offset + step])
    return check


@pytest.mark.parametrize("step", [1, 7, 64, 4096, 1 << 20])
def test_any_cut_of_a_signed_file_passes_and_gives_its_manifest(step: int) -> None:
    data = signed()
    LEARNER.check_file(data, "pick", 3)  # the whole-file check agrees
    manifest = stream(data, step).finish()
    assert (manifest.policy, manifest.version) == ("pick", 3)


def test_a_changed_tensor_byte_is_refused_at_the_end() -> None:
    data = bytearray(signed())
    data[-3] ^= 0x01  # inside the last tensor: the header still passes
    check = stream(bytes(data), 1000)
    assert check.manifest is not None
    with pytest.raises(UnsignedVersion, match="not the ones the learner signed"):
        check.finish()


def test_a_header_signed_by_another_key_is_refused_before_any_tensor_byte() -> None:
    data = Signer.generate().sign(signed(), "pick", 3)
    header_bytes = 8 + int.from_bytes(data[:8], "little")
    check = StreamCheck(LEARNER, "pick", 3, len(data))
    with pytest.raises(UnsignedVersion, match="not signed by this cloud's learner"):
        check.update(data[: header_bytes + 1])


def test_another_version_number_short_bytes_and_extra_bytes_are_refused() -> None:
    data = signed(version=3)
    with pytest.raises(UnsignedVersion, match="signed as pick v3, not as pick v4"):
        stream(data, 1 << 20, version=4)
    with pytest.raises(UnsignedVersion, match="of its"):
        stream(data[:-1], 1 << 20, total=len(data)).finish()
    with pytest.raises(UnsignedVersion, match="longer than"):
        stream(data + b"x", 1 << 20, total=len(data))


def test_bytes_that_are_no_safetensors_file_are_refused_by_name() -> None:
    with pytest.raises(UnsignedVersion, match="not a safetensors file"):
        stream((100).to_bytes(8, "little") + b"{" * 100, 50)
