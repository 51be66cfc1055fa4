"""The edge's receiving side of a pushed version, piece by piece: the digest a version sent while it was published
carries on its last piece only, no version is handed on without all its pieces and that digest (``tensors-sha256:``,
or a plain sha256 for a version recorded before), and the tensors it hands on were hashed as they arrived (loading,
and the digest, do not hash them again)."""

from __future__ import annotations

import hashlib

import pytest

from edge.spool import Spool
from edge.tunnel_client import TunnelClient, TunnelConfig
from policies.factory import make_policy
from policies.signing import Signer
from policies.tensor_view import HashedBuffer, Layout, digests
from policies.updates import apply_update
from policies.version_digest import PREFIX, digest_of
from policies.weights import policy_to_bytes
from protocol import tunnel_pb2 as pb
from protocol.policy_chunks import policy_pieces
from tests.attacks.weights_harness import RESOURCE

LEARNER = Signer.generate()


@pytest.fixture
def edge(tmp_path):
    key = tmp_path / "learner.pub"
    key.write_bytes(LEARNER.public_pem())
    got: list[tuple[str, int, bytes]] = []
    config = TunnelConfig("127.0.0.1:1", "pick", learner_key=str(key))
    tunnel = TunnelClient(config, RESOURCE, Spool(tmp_path / "spool.db"), on_policy=lambda *a: got.append(a))
    yield tunnel, got
    tunnel._tensor_hasher.shutdown()


def signed(version: int) -> bytes:
    policy = make_policy("mlp", {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2})
    return LEARNER.sign(policy_to_bytes(policy), "pick", version)


def _padded(data: bytes) -> bool:
    return data[Layout.parse(data).header_bytes - 1] == ord(" ")


def pieces(data: bytes, version: int, sha256_on: str, digest: str = "") -> list[pb.PolicyChunk]:
    """``data`` in 4 KB pieces; its digest (``digest_of`` unless given) on "every" piece, on the "last" only, or on
    "none"."""
    digest = digest or digest_of(data)
    template = pb.PolicyChunk(policy_name="pick", version=version, kind="full")
    out = [pb.CloudMessage.FromString(piece).policy for piece in policy_pieces(template, data, 4096)]
    for i, piece in enumerate(out):
        piece.sha256 = digest if sha256_on == "every" or (sha256_on == "last" and i == len(out) - 1) else ""
    return out


@pytest.mark.parametrize("sha256_on", ["every", "last"])
@pytest.mark.parametrize("recorded", ["tensors", "before"])
def test_a_whole_version_is_handed_on_with_its_tensors_hashed_as_they_came(edge, sha256_on: str, recorded: str) -> None:
    tunnel, got = edge
    data = signed(2)
    digest = digest_of(data) if recorded == "tensors" else hashlib.sha256(data).hexdigest()
    assert digest.startswith(PREFIX) == (recorded == "tensors")
    for piece in pieces(data, 2, sha256_on, digest):
        tunnel._receive_policy_chunk(piece)
    [(name, version, weights)] = got
    assert (name, version, bytes(weights)) == ("pick", 2, data)
    assert isinstance(weights, HashedBuffer)
    assert weights.digests == digests(Layout.parse(data).tensors(data))  # what loading would have hashed
    policy, held = apply_update(weights)
    assert held.digests == weights.digests


def test_no_version_is_handed_on_without_its_last_piece_or_without_a_sha256(edge) -> None:
    tunnel, got = edge
    data = signed(2)
    for piece in pieces(data, 2, "last")[:-1]:  # the publish never finished: the last piece never came
        tunnel._receive_policy_chunk(piece)
    for piece in pieces(data, 2, "none"):  # every piece, but no sha256 to check them against
        tunnel._receive_policy_chunk(piece)
    assert got == []
    wrong = pieces(data, 2, "every")
    wrong[-1].sha256 = digest_of(signed(3))  # the last piece's word is the one checked
    for piece in wrong:
        tunnel._receive_policy_chunk(piece)
    assert got == []


@pytest.mark.parametrize("where", ["a tensor", "the header"])
@pytest.mark.parametrize("recorded", ["tensors", "before"])
def test_a_version_changed_on_the_way_fails_its_digest(edge, where: str, recorded: str) -> None:
    """A byte changed after the digest was taken, in a tensor or in the header's padding (which the signature does
    not cover: a tab for a space leaves the same JSON), is refused before anything is loaded."""
    tunnel, got = edge
    # a version whose header needs padding (a header that happens to end on 8 bytes has none): its number's digits
    # change the header's length
    version = next(v for v in (2, 10, 100, 1000, 10**4, 10**5, 10**6, 10**7) if _padded(signed(v)))
    data = signed(version)
    digest = digest_of(data) if recorded == "tensors" else hashlib.sha256(data).hexdigest()
    changed = bytearray(data)
    if where == "a tensor":
        changed[-3] ^= 0x40
    else:
        pad = Layout.parse(data).header_bytes - 1
        assert changed[pad] == ord(" "), "the header is padded with spaces to 8 bytes"
        changed[pad] = ord("\t")
        assert Layout.parse(bytes(changed)).metadata == Layout.parse(data).metadata
    for piece in pieces(bytes(changed), version, "every", digest):
        tunnel._receive_policy_chunk(piece)
    assert got == []
    for piece in pieces(data, version, "every", digest):  # the same version as it was signed is taken
        tunnel._receive_policy_chunk(piece)
    assert len(got) == 1
