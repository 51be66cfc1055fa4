"""A policy update as the serialized CloudMessages that carry it down a tunnel, made once and shared by every edge.

Each piece is ``CloudMessage{policy: PolicyChunk{...}}`` as protobuf would serialize it, its ``data`` field written
straight from the payload (one copy, instead of a slice, a copy into the message and another when serialized for each
edge). The gateway sends these bytes as they are. The edge reads them back with ``read_cloud_message``: a piece laid
out so comes as a ``PolicyPiece`` whose data is a view of the bytes received (parsing it as a message copies the data
in, and each read of its ``data`` field copies it again: 400 MB of copies for a 200 MB version).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class PolicyPiece:
    """A piece of a policy update as received: its PolicyChunk without ``data``, and ``data`` viewing the received
    bytes (which it keeps alive)."""

    chunk: PolicyChunk
    data: memoryview


def _read_varint(raw: bytes, at: int) -> tuple[int, int]:
    """The varint at ``at`` and where it ends; ValueError past the end or past 10 bytes."""
    value = shift = 0
    for end in range(at, min(at + 10, len(raw))):
        value |= (raw[end] & 0x7F) << shift
        if raw[end] < 0x80:
            return value, end + 1
        shift += 7
    raise ValueError("a varint runs past its message")


def _data_field_start(raw: bytes, at: int, end: int) -> int | None:
    """Where the ``data`` field's tag starts among the PolicyChunk fields in ``raw[at:end]`` when it comes last and
    once; None otherwise (then the whole message is parsed)."""
    while at < end:
        field_at = at
        key, at = _read_varint(raw, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, at = _read_varint(raw, at)
        elif wire == _LENGTH_DELIMITED:
            length, at = _read_varint(raw, at)
            at += length
            if number == _DATA_FIELD:
                return field_at if at == end else None
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            return None
    return None


def read_cloud_message(raw: bytes) -> pb.CloudMessage | PolicyPiece:
    """A CloudMessage off the tunnel: a policy piece as ``policy_piece`` writes it comes as a ``PolicyPiece`` (its data
    not copied); anything else, or anything unusual, is parsed whole by protobuf (which judges it)."""
    try:
        if raw[:1] == _tag(_POLICY_FIELD):
            size, at = _read_varint(raw, 1)
            if at + size == len(raw) and (data_at := _data_field_start(raw, at, len(raw))) is not None:
                _, length_at = _read_varint(raw, data_at)
                length, data_start = _read_varint(raw, length_at)
                chunk = PolicyChunk.FromString(raw[at:data_at])  # the small fields, checked by protobuf
                return PolicyPiece(chunk, memoryview(raw)[data_start : data_start + length])
    except ValueError:  # a varint past the end: protobuf says what is wrong
        pass
    return pb.CloudMessage.FromString(raw)
