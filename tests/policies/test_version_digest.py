"""A version's digest (``tensors-sha256:``): taken from the signature's tensor digests on the learner and from the
digests the edge takes as pieces arrive, it names the whole file as a sha256 of it would; versions recorded with a
plain sha256 are still checked."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from policies.factory import make_policy
from policies.signing import Signer, StreamCheck
from policies.tensor_view import Layout
from policies.version_digest import PREFIX, digest_matches, digest_of, version_digest
from policies.weights import policy_to_bytes

LEARNER = Signer.generate()


def unsigned(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    config = {"observation": {"state": {"shape": [5], "dtype": "float32"}}, "action_dim": 2, "hidden": [8, 8]}
    return policy_to_bytes(make_policy("mlp", config))


def test_the_learner_the_edge_and_a_whole_file_agree_on_a_digest() -> None:
    weights = unsigned()
    header, data_start, digests = LEARNER.signed_header(weights, "pick", 3)
    signed = header + weights[data_start:]
    check = StreamCheck(LEARNER, "pick", 3, len(signed))
    for offset in range(0, len(signed), 333):  # as pieces arrive on the edge
        check.update(signed[offset : offset + 333])
    check.finish()
    assert check.digests == digests
    digest = version_digest(header, digests)
    assert digest.startswith(PREFIX) and len(digest) == len(PREFIX) + 64
    assert digest == digest_of(signed) and digest != digest_of(LEARNER.sign(unsigned(1), "pick", 3))
    assert digest_matches(signed, digest) and digest_matches(signed, digest, check.digests)


def test_every_byte_of_the_file_is_bound() -> None:
    signed = LEARNER.sign(unsigned(), "pick", 3)
    digest = digest_of(signed)
    layout = Layout.parse(signed)
    for at in (8, layout.header_bytes - 2, layout.header_bytes, len(signed) // 2, len(signed) - 1):
        changed = bytearray(signed)
        changed[at] ^= 0x01
        assert not digest_matches(bytes(changed), digest), at


def test_tensors_renamed_in_the_header_change_the_digest() -> None:
    """Two tensors of one shape swapped by name: the same tensor digests, another header."""
    weights = unsigned()
    n = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8 : 8 + n])
    names = [name for name, info in header.items() if name != "__metadata__" and info["shape"] == [8]]
    assert len(names) >= 2, "the MLP has two biases of 8 values"
    a, b = names[:2]
    header[a], header[b] = header[b], header[a]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    swapped = len(text).to_bytes(8, "little") + text + weights[8 + n :]
    assert Layout.parse(swapped).entries.keys() == Layout.parse(weights).entries.keys()
    assert digest_of(swapped) != digest_of(weights) and not digest_matches(swapped, digest_of(weights))


def test_digests_of_other_tensors_are_not_taken_on_trust() -> None:
    signed = LEARNER.sign(unsigned(), "pick", 3)
    digest = digest_of(signed)
    assert digest_matches(signed, digest, {"another": "0" * 64})  # names that are not the file's: hashed again


@pytest.mark.parametrize("data", [b"two", b"\x00" * 40])
def test_bytes_that_are_no_safetensors_file_have_a_plain_sha256(data: bytes) -> None:
    assert digest_of(data) == hashlib.sha256(data).hexdigest()
    assert digest_matches(data, hashlib.sha256(data).hexdigest())
    assert not digest_matches(data, PREFIX + hashlib.sha256(data).hexdigest())


def test_a_version_recorded_before_is_checked_against_its_plain_sha256() -> None:
    signed = LEARNER.sign(unsigned(), "pick", 3)
    assert digest_matches(signed, hashlib.sha256(signed).hexdigest())
    assert not digest_matches(signed, hashlib.sha256(signed + b"x").hexdigest())
    assert not digest_matches(signed, "")
