"""Policy pieces serialized once: each parses as the CloudMessage protobuf itself would have made."""

from __future__ import annotations

import os

from protocol import tunnel_pb2 as pb
from protocol.policy_chunks import policy_pieces


def test_pieces_parse_back_to_the_chunks_and_carry_the_payload_whole() -> None:
    payload = os.urandom(2500)
    template = pb.PolicyChunk(
        policy_name="pick", version=7, sha256="ab" * 32, kind="delta", base_version=5, published_mono_ns=123
    )
    pieces = policy_pieces(template, payload, 1000)
    chunks = [pb.CloudMessage.FromString(piece).policy for piece in pieces]
    assert [(c.offset, len(c.data)) for c in chunks] == [(0, 1000), (1000, 1000), (2000, 500)]
    assert b"".join(c.data for c in chunks) == payload
    for chunk in chunks:
        expected = pb.PolicyChunk()
        expected.CopyFrom(template)
        expected.total_bytes, expected.offset = 2500, chunk.offset
        expected.data = payload[chunk.offset : chunk.offset + 1000]
        assert chunk == expected  # (its data field is written last: the bytes differ, what they parse to does not)


def test_an_empty_payload_is_one_piece_without_data() -> None:
    (piece,) = policy_pieces(pb.PolicyChunk(policy_name="pick", version=1), b"", 1000)
    chunk = pb.CloudMessage.FromString(piece).policy
    assert (chunk.policy_name, chunk.total_bytes, chunk.data) == ("pick", 0, b"")
