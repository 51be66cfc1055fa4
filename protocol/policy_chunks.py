"""A policy update as the serialized CloudMessages that carry it down a tunnel, made once and shared by every edge.

Each piece is ``CloudMessage{policy: PolicyChunk{...}}`` as protobuf would serialize it, its ``data`` field written
straight from the payload (one copy, instead of a slice, a copy into the message and another when serialized for each
edge). The gateway sends these bytes as they are.
"""

from __future__ import annotations

from protocol import tunnel_pb2 as pb
from protocol.tunnel_pb2 import PolicyChunk

_LENGTH_DELIMITED = 2
_POLICY_FIELD = pb.CloudMessage.DESCRIPTOR.fields_by_name["policy"].number
_DATA_FIELD = PolicyChunk.DESCRIPTOR.fields_by_name["data"].number


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED)


def policy_pieces(template: PolicyChunk, payload: bytes | bytearray | memoryview, chunk_bytes: int) -> list[bytes]:
    """``payload`` in pieces of ``chunk_bytes``, each a serialized CloudMessage whose PolicyChunk is ``template`` (its
    name, version, sha256, kind, base version, ``published_mono_ns``) with this piece's ``offset``, ``data`` and the
    payload's ``total_bytes``."""
    view = memoryview(payload).cast("B")
    return [
        policy_piece(template, len(view), offset, view[offset : offset + chunk_bytes])
        for offset in range(0, max(len(view), 1), chunk_bytes)
    ]


def policy_piece(template: PolicyChunk, total_bytes: int, offset: int, data: bytes | bytearray | memoryview) -> bytes:
    """One piece: ``data`` found at ``offset`` of a payload of ``total_bytes``, as a serialized CloudMessage."""
    head = PolicyChunk()
    head.CopyFrom(template)
    head.ClearField("data")
    head.total_bytes, head.offset = total_bytes, offset
    inner = head.SerializeToString()
    data_field = (_tag(_DATA_FIELD) + _varint(len(data))) if len(data) else b""
    size = len(inner) + len(data_field) + len(data)
    return b"".join((_tag(_POLICY_FIELD), _varint(size), inner, data_field, data))
