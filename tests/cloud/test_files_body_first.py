"""A file written body first (the data section while its signed header is still being made): readers of the
temporary file see it grow from its start once the head is in, and a failure leaves nothing in place."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from cloud.data import files
from cloud.data.files import body_first, temporary_path


def test_the_body_lands_while_the_head_is_made_and_the_file_is_renamed_whole(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(files, "BODY_PIECE", 1000)
    path, body = tmp_path / "v1.bin", os.urandom(10_500)
    landed = threading.Event()
    real_write_all = files.write_all

    def write_all(fd: int, parts, offset: int) -> int:
        written = real_write_all(fd, parts, offset)
        if offset + written == 8 + len(body):
            landed.set()
        return written

    monkeypatch.setattr(files, "write_all", write_all)
    with body_first(path, 8, (body[:4000], memoryview(body)[4000:])) as write_head:
        assert landed.wait(10)  # the whole body before any head
        assert not path.exists()
        write_head(b"HEAD1234")
    assert path.read_bytes() == b"HEAD1234" + body
    assert not temporary_path(path).exists()


@pytest.mark.parametrize("system", ["linux", "none"])
def test_each_piece_of_the_body_starts_to_disk_as_it_is_written(tmp_path, monkeypatch, system: str) -> None:
    """Every byte of the body is handed to writeback in order as its piece lands (the final fsync then finds little
    left); a system without sync_file_range writes the same file."""
    monkeypatch.setattr(files, "BODY_PIECE", 1000)
    ranges: list[tuple[int, int]] = []

    def sync_file_range(fd: int, offset: int, nbytes: int, flags: int) -> int:
        assert flags == files.SYNC_FILE_RANGE_WRITE and os.fstat(fd).st_size >= offset + nbytes
        ranges.append((offset, nbytes))
        return 0

    assert files._SYNC_FILE_RANGE is not None or not sys.platform.startswith("linux")  # found in this C library
    monkeypatch.setattr(files, "_SYNC_FILE_RANGE", sync_file_range if system == "linux" else None)
    path, body = tmp_path / "v1.bin", os.urandom(2_500)
    with body_first(path, 8, (body,)) as write_head:
        write_head(b"HEAD1234")
    assert path.read_bytes() == b"HEAD1234" + body
    assert ranges == ([(8, 1000), (1008, 1000), (2008, 500)] if system == "linux" else [])


def test_a_head_of_another_length_or_none_or_a_failure_places_nothing(tmp_path) -> None:
    path = tmp_path / "v1.bin"
    with pytest.raises(ValueError, match="not the 8"), body_first(path, 8, (b"body",)) as write_head:
        write_head(b"short")
    with pytest.raises(ValueError, match="never written"), body_first(path, 8, (b"body",)):
        pass
    with pytest.raises(RuntimeError, match="signing failed"), body_first(path, 8, (b"x" * 10_000_000,)):
        raise RuntimeError("signing failed")
    assert not path.exists() and not temporary_path(path).exists()  # no head: no one followed it, nothing left


def test_a_body_that_cannot_be_written_fails_the_write(tmp_path) -> None:
    def failing():
        yield b"some"
        raise OSError(28, "No space left on device")

    path = tmp_path / "v1.bin"
    with pytest.raises(OSError, match="No space"), body_first(path, 4, failing()) as write_head:
        write_head(b"HEAD")
    assert not path.exists()
