"""Buffers written whole at an offset: more than one writev takes, and a short write finished."""

from __future__ import annotations

import os

from protocol import file_writes
from protocol.file_writes import IOV_MAX, write_all


def test_more_buffers_than_one_writev_takes_land_in_order(tmp_path) -> None:
    parts = [bytes([i % 251]) * 3 for i in range(IOV_MAX * 2 + 7)]
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert write_all(fd, [b"head", *parts], 10) == 4 + 3 * len(parts)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"\0" * 10 + b"head" + b"".join(parts)


def test_a_short_write_is_finished_part_by_part(tmp_path, monkeypatch) -> None:
    real = os.pwritev
    monkeypatch.setattr(file_writes.os, "pwritev", lambda fd, parts, offset: real(fd, [parts[0][:2]], offset))
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert write_all(fd, [b"abcde", memoryview(b"fgh"), b"ij"], 0) == 10
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"abcdefghij"
