"""Policy pieces serialized once: each parses as the CloudMessage protobuf itself would have made, and the edge reads
them back without copying their data, as protobuf would read them."""

from __future__ import annotations

import os
import random

import pytest
from google.protobuf.message import DecodeError

from protocol import tunnel_pb2 as pb
from protocol.policy_chunks import PolicyPiece, policy_pieces, read_cloud_message


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


def _as_parsed(message: pb.CloudMessage | PolicyPiece) -> pb.CloudMessage:
    """What protobuf would have parsed: a PolicyPiece's chunk with its data put back."""
    if isinstance(message, pb.CloudMessage):
        return message
    chunk = pb.PolicyChunk()
    chunk.CopyFrom(message.chunk)
    chunk.data = bytes(message.data)
    return pb.CloudMessage(policy=chunk)


def test_pieces_are_read_back_with_their_data_viewing_the_bytes_received() -> None:
    payload = os.urandom(2500)
    template = pb.PolicyChunk(policy_name="pick", version=7, sha256="ab" * 32, kind="full", published_mono_ns=123)
    for raw in policy_pieces(template, payload, 1000):
        piece = read_cloud_message(raw)
        assert isinstance(piece, PolicyPiece) and piece.data.obj is raw  # not copied
        assert not piece.chunk.data and _as_parsed(piece) == pb.CloudMessage.FromString(raw)
    assert isinstance(read_cloud_message(policy_pieces(template, b"", 1000)[0]), pb.CloudMessage)  # no data field


def test_other_messages_and_other_layouts_are_parsed_whole() -> None:
    ack = pb.CloudMessage(ack=pb.Ack(batch_id=3, episode_id="e", next_seq=9)).SerializeToString()
    assert read_cloud_message(ack) == pb.CloudMessage.FromString(ack)
    # protobuf's own order puts data before published_mono_ns and kind: not the layout read in place
    chunk = pb.PolicyChunk(policy_name="pick", version=2, data=b"x" * 100, kind="full", total_bytes=100)
    raw = pb.CloudMessage(policy=chunk).SerializeToString()
    message = read_cloud_message(raw)
    assert isinstance(message, pb.CloudMessage) and message.policy == chunk


def test_damaged_pieces_read_as_protobuf_reads_them() -> None:
    """Any byte changed, or the bytes cut short: the same message as protobuf's parse, or the same refusal."""
    template = pb.PolicyChunk(policy_name="pick", version=7, sha256="ab" * 32, kind="full")
    (raw,) = policy_pieces(template, os.urandom(300), 1000)
    rng = random.Random(7)
    cases = [raw[:cut] for cut in range(len(raw))]
    for _ in range(600):
        changed = bytearray(raw)
        changed[rng.randrange(len(raw))] = rng.randrange(256)
        cases.append(bytes(changed))
    for case in cases:
        try:
            expected: pb.CloudMessage | type[Exception] = pb.CloudMessage.FromString(case)
        except DecodeError:
            expected = DecodeError
        if expected is DecodeError:
            with pytest.raises(DecodeError):
                read_cloud_message(case)
        else:
            assert _as_parsed(read_cloud_message(case)) == expected, case
